"""Error messages that contradicted themselves or advised what does not exist (issue 14)."""
from __future__ import annotations

import pytest
import torch

from transfusion.errors import CheckpointError
from transfusion.initializers import initialize, save_model_checkpoint
from transfusion.models import build_model


def test_a_checkpoint_that_does_not_fit_its_own_architecture_is_described_truthfully(tmp_path):
    # issue 14: "This is a CBR-Tiny checkpoint, not CBR-Tiny" for a file whose metadata says
    # cbr_tiny but whose tensors were changed
    sd = build_model("cbr_tiny", 5).state_dict()
    key = next(k for k, v in sd.items() if k.endswith("conv.weight") and not k.startswith("cbr1"))
    sd[key] = sd[key][:-1].clone()  # one filter fewer
    path = tmp_path / "edited.pt"
    torch.save({"format": "transfusion-model", "version": 1, "model_name": "cbr_tiny",
                "num_classes": 5, "in_channels": 3, "state_dict": sd, "meta": {}}, path)
    with pytest.raises(CheckpointError) as info:
        initialize(build_model("cbr_tiny", 5), "transfer", model_name="cbr_tiny", checkpoint=path)
    msg = str(info.value)
    assert "\n" not in msg and "does not fit CBR-Tiny" in msg and key in msg
    assert "not CBR-Tiny" not in msg and "checkpoint ('cbr_tiny')" not in msg
    assert "its metadata says 'cbr_tiny'" in msg


def test_a_foreign_architecture_names_what_to_build(tmp_path):
    path = tmp_path / "small.pt"
    save_model_checkpoint(path, build_model("cbr_small", 5), "cbr_small")
    with pytest.raises(CheckpointError, match=r"are a CBR-Small checkpoint \('cbr_small'\), not "
                                              r"CBR-Tiny.*--model cbr_small"):
        initialize(build_model("cbr_tiny", 5), "transfer", model_name="cbr_tiny", checkpoint=path)
