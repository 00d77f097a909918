"""The command-line input checks shared by ``train``, ``pretrain``, ``run`` and ``compare``.

Each check raises a ``ConfigError`` with one line that says what is wrong and what to give
instead, before any data is read or any model is trained:

- :func:`check_options`: numbers that must be positive (image size, batch size, steps, ...) or
  non-negative (workers), thread counts, the device, the seed list;
- :func:`check_writable_dir`: an output folder (``--out``, ``--runs``) can be created and written;
- :func:`check_model_input`: the image size is large enough for the model (the minimum is
  found by a forward pass on the meta device, which allocates nothing) and the activations of one
  training batch fit in the device's memory (estimated by the same forward pass).
"""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

from transfusion.errors import ConfigError

DEVICE_HELP = "cpu, cuda or cuda:N"


def check_positive(option: str, value) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}")


def check_device(option: str, device: str | None) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` (that exists); None means the default."""
    if device is None:
        return
    import torch

    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ConfigError(f"{option} {device!r} is not a device transfusion runs on; give "
                          f"{DEVICE_HELP}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {device}: no CUDA device is visible on this machine "
                              "(or this torch has no CUDA); use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"{option} {device}: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s), numbered from 0")


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """``"0,1,2"`` -> (0, 1, 2); None (not given) stays None. Empty, non-integer, negative or
    repeated seeds are refused (a repeated seed would count one run twice)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(p == "" for p in parts):
        raise ConfigError(f"--seeds {text!r} has an empty entry; give comma-separated integers, "
                          "e.g. --seeds 0,1,2 (or leave --seeds out for the preset's)")
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: seeds are integers, e.g. --seeds 0,1,2") from None
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {text!r}: seeds must be >= 0")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"--seeds {text!r} repeats seed(s) {', '.join(map(str, dup))}: each "
                          "seed is one run, give each once")
    return seeds


def check_options(*, image_size=None, batch_size=None, steps=None, workers=None, threads=None,
                  device=None, device_option: str = "--device", **positive) -> None:
    """The numeric and device options of a command (None: not given). ``positive`` holds more
    options that must be >= 1, keyed by their flag without dashes (e.g. ``images=200``)."""
    check_positive("--image-size", image_size)
    check_positive("--batch-size", batch_size)
    check_positive("--steps", steps)
    for name, value in positive.items():
        check_positive("--" + name.replace("_", "-"), value)
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be 0 (load data in the main process) or more, got {workers}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    check_device(device_option, device)


def check_writable_dir(option: str, path: str | os.PathLike) -> None:
    """Create ``path`` if needed and write a probe file there, so that a folder that cannot be
    written fails now, not after hours of training."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {str(path)!r} is a file, not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{option} {str(path)!r} cannot be written ({e.strerror or e}); give a "
                          "folder you can write to") from None


def check_writable_file(option: str, path: str | os.PathLike) -> None:
    """The folder of an output file can be written (see :func:`check_writable_dir`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {str(path)!r} is a folder; give a file name")
    check_writable_dir(option, path.parent if str(path.parent) else Path("."))


# --------------------------------------------------------------------------- model vs input
def _forward_fits(model_name: str, size: int, in_channels: int) -> bool:
    import torch

    model = _skeleton(model_name, in_channels)
    try:
        with torch.no_grad():
            model(torch.empty(2, in_channels, size, size, device="meta"))
    except (RuntimeError, ValueError):
        return False
    return True


@lru_cache(maxsize=None)
def _skeleton(model_name: str, in_channels: int):
    from transfusion.models import model_skeleton

    return model_skeleton(model_name, 2, in_channels).train()


@lru_cache(maxsize=None)
def minimum_image_size(model_name: str, in_channels: int = 3) -> int:
    """The smallest square image ``model_name`` accepts (binary search over meta forwards)."""
    lo, hi = 1, 32
    while not _forward_fits(model_name, hi, in_channels):
        if hi >= 1024:
            return hi
        lo, hi = hi + 1, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if _forward_fits(model_name, mid, in_channels):
            hi = mid
        else:
            lo = mid + 1
    return lo


def activation_bytes(model_name: str, image_size: int, batch_size: int, in_channels: int = 3) -> int:
    """Bytes autograd saves for the backward pass of one float32 training batch, from a forward
    pass on the meta device (nothing is allocated). Measured against
    ``transfusion.memory.saved_activation_bytes`` on real tensors: within 1% for the ResNets and
    Inception-v3, about 1.6x above it for the fused CBR models (it counts each saved tensor)."""
    import torch

    model = _skeleton(model_name, in_channels)
    own = {id(t) for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, tuple] = {}

    def pack(t):
        saved[id(t)] = (t, t.numel() * t.element_size())  # keeps t alive: ids stay distinct
        return t

    x = torch.empty(batch_size, in_channels, image_size, image_size, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(n for k, (_, n) in saved.items() if k not in own)


def device_memory_bytes(device) -> int:
    """Total memory of ``device`` (a CUDA device's, else this machine's RAM)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_model_input(model_name: str, image_size: int, batch_size: int, in_channels: int = 3,
                      device="cpu") -> None:
    """Refuse an image size below the model's minimum, or a batch whose activations alone exceed
    the device's memory. Models not in the registry (test fakes) are not checked."""
    from transfusion.models import MODEL_NAMES

    if model_name not in MODEL_NAMES:
        return
    if image_size > 16384:
        raise ConfigError(f"image size {image_size} px is beyond any real image (the paper uses "
                          "224-587 px); give a smaller --image-size")
    if not _forward_fits(model_name, image_size, in_channels):
        smallest = minimum_image_size(model_name, in_channels)
        raise ConfigError(f"{model_name} needs images of at least {smallest}x{smallest} pixels, "
                          f"got {image_size}; give --image-size {smallest} or more")
    need = activation_bytes(model_name, image_size, batch_size, in_channels)
    have = device_memory_bytes(device)
    if need > have:
        raise ConfigError(
            f"{model_name} at {image_size} px with batch {batch_size} needs at least "
            f"{need / 2**30:.1f} GiB for its activations, more than the {have / 2**30:.1f} GiB of "
            f"{device}; lower --image-size or --batch-size")
