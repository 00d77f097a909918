"""Small file helpers: every file is written atomically (temp file in the same folder, then
``os.replace``), so a crash never leaves half a file behind.

Temp files are named ``.<name>.<random>.tmp`` (``TEMP_PREFIX`` / ``TEMP_SUFFIX``); a SIGKILL
between creating and renaming one leaves it behind, so a run removes its folder's stale ones
when it starts again (``remove_stale_temp_files``, called under the run's lock). Files get the
mode a plain ``open`` would give (0666 minus the process umask), not mkstemp's 0600."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_file_for(path) -> tuple[int, str]:
    """(fd, name) of a new temp file beside ``path`` with the project's temp naming and the
    umask's mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, _default_mode())
    except OSError:
        pass
    return fd, tmp


def is_temp_file(path) -> bool:
    name = Path(path).name
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3


def remove_stale_temp_files(folder) -> list[Path]:
    """Delete leftover temp files (``.<name>.<random>.tmp``) under ``folder``; returns them.
    Call it only while no other process writes the folder (under its RunLock)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if p.is_file() and is_temp_file(p):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def _atomic_file(path):
    """A binary file object that becomes ``path`` (fsync, then rename) when the block ends
    without an exception; on any exception the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_for(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with _atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path, data: str) -> None:
    atomic_write_bytes(path, data.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path, data) -> None:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_copy(src, dst) -> None:
    """Copy ``src`` to ``dst`` atomically (temp file beside ``dst``, then rename)."""
    import shutil

    with open(src, "rb") as inp, _atomic_file(dst) as out:
        shutil.copyfileobj(inp, out, 1 << 20)
