"""Files a hostile user would hand the tool, and the one-error-line check."""
from __future__ import annotations

import torch


class CodePayload:
    """Unpickling this creates ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload_file(path, marker, **extra) -> None:
    """A torch file whose unpickling would create ``marker``."""
    torch.save({"format": "transfusion-model", "payload": CodePayload(marker), **extra}, path)


def assert_one_error_line(code, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], errors[0]
