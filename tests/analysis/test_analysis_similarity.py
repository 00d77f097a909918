import json

import pytest
import torch

from transfusion.analysis.activations import StageRecorder, to_datapoints
from transfusion.analysis.similarity import compare_models, init_vs_final, load_checkpoint_model
from transfusion.errors import CheckpointError, ConfigError
from transfusion.initializers import save_model_checkpoint
from transfusion.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batches(n=6, bs=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, size, size, generator=g) for _ in range(n)]


def test_to_datapoints_pools_without_upsampling():
    x = torch.randn(2, 8, 6, 6)
    assert to_datapoints(x, pool=4).shape == (2 * 16, 8)
    assert to_datapoints(torch.randn(2, 8, 2, 2), pool=4).shape == (2 * 4, 8)  # 2x2 stays 2x2
    assert to_datapoints(torch.randn(5, 7)).shape == (5, 7)


def test_recorder_hooks_every_stage_and_removes_them():
    torch.manual_seed(0)
    m = build_model("cbr_tiny", 5)
    seen = {}
    with StageRecorder(m, "a", lambda k, x: seen.setdefault(k, x.shape), pool=2):
        m(torch.randn(3, 3, 32, 32))
    assert list(seen) == [f"a/{s}" for s in m.stage_names]
    assert all(s[1] > 0 for s in seen.values())
    n = len(seen)
    m(torch.randn(1, 3, 32, 32))  # hooks removed: nothing more recorded
    assert len(seen) == n
    with pytest.raises(ConfigError, match="unknown stage"):
        StageRecorder(m, "a", print, stages=["conv9"])


def test_model_vs_itself_is_one_and_vs_other_lower_in_one_pass():
    torch.manual_seed(0)
    a, b = build_model("cbr_tiny", 5), build_model("cbr_tiny", 5)
    calls = {"a": 0}
    a.register_forward_pre_hook(lambda *_: calls.__setitem__("a", calls["a"] + 1))
    data = _batches()
    rows = compare_models({"a": a, "a2": a, "b": b}, [("a", "a2"), ("a", "b")], iter(data), pool=2)
    assert calls["a"] == len(data)  # 'a' and 'a2' are the same module: it runs once per batch
    self_rows = [r for r in rows if r["model_b"] == "a2"]
    other = [r for r in rows if r["model_b"] == "b"]
    assert [r["layer"] for r in self_rows] == list(a.stage_names)
    for r in self_rows:
        assert r["svcca"] == pytest.approx(1.0, abs=1e-4) and r["cka"] == pytest.approx(1.0, abs=1e-4)
        assert r["n_images"] == 6 * 16
    assert all(r["cka"] < 0.999 for r in other)


def test_init_vs_final_from_checkpoints_writes_json(tmp_path):
    torch.manual_seed(0)
    m = build_model("cbr_tiny", 5)
    save_model_checkpoint(tmp_path / "step0.pt", m, "cbr_tiny", {"step": 0})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model_checkpoint(tmp_path / "final.pt", m, "cbr_tiny", {"step": 10})
    rows = init_vs_final(tmp_path / "step0.pt", tmp_path / "final.pt", iter(_batches(4)),
                         out=tmp_path / "similarity.json", pool=2)
    doc = json.loads((tmp_path / "similarity.json").read_text())
    assert [r["layer"] for r in doc["rows"]] == ["cbr1", "cbr2", "cbr3", "cbr4"] == [r["layer"] for r in rows]
    assert all(0.0 < r["svcca"] <= 1.0 + 1e-6 for r in rows)
    model, header = load_checkpoint_model(tmp_path / "final.pt")
    assert header["model_name"] == "cbr_tiny"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_model(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a transfusion model checkpoint"):
        load_checkpoint_model(tmp_path / "other.pt")
