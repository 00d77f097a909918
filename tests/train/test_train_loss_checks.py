"""Issue 18: the loop keeps the training loss on the device (no host sync per step) and checks it
for NaN/Inf at train rows, evaluations, checkpoints and the end, with the same one-line error
naming the steps where it happened. CPU metrics and exact resume are covered unchanged by
test_train_loop.py (the rows there are bit-identical to the per-step float(loss) loop's)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402

from transfusion.errors import ConfigError  # noqa: E402
from transfusion.train import loop as L  # noqa: E402
from transfusion.train import run_training  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec(**overrides):
    ovr = {"eval_every": 100, "log_every": 4, "checkpoint_every": 100, "eval_batch_size": 16,
           "augment": False, **overrides}
    return train_fakes.tiny_spec(ovr, seed=5)


class NoHostCopy(torch.Tensor):
    """A loss that refuses to become a Python number or a bool: each would be a host sync."""

    def _refuse(self, *a, **k):
        raise AssertionError("the loop synchronised on the per-step loss")

    __float__ = __bool__ = item = tolist = _refuse


def test_no_step_turns_the_loss_into_a_python_number(tmp_path, monkeypatch):
    real = L.loss_fn

    def guarded(kind, logits, target, mask, reduction="mean"):
        out = real(kind, logits, target, mask, reduction)
        return out.as_subclass(NoHostCopy) if reduction == "mean" else out

    syncs = []
    value = L.LossWindow.value
    monkeypatch.setattr(L, "loss_fn", guarded)
    monkeypatch.setattr(L.LossWindow, "value", lambda self: syncs.append(1) or value(self))
    final = run_training(spec(), tmp_path, components=train_fakes.components(), progress=False)
    assert final["status"] == "finished"
    assert len(syncs) == 3  # steps 4, 8, 12 (train rows): 3 syncs in 12 steps


@pytest.mark.parametrize("bad_step,window", [(3, "3..4"), (6, "5..6")])
def test_nan_loss_stops_with_the_step_range_and_saves_no_nan_checkpoint(tmp_path, bad_step, window):
    calls = {"n": 0}

    def poisoned(name, num_classes, in_channels=3, **kw):
        model = train_fakes.build_model(name, num_classes, in_channels)
        inner = model.forward

        def forward(x):
            if model.training:
                calls["n"] += 1
                if calls["n"] == bad_step:
                    return inner(x) * float("nan")
            return inner(x)

        model.forward = forward
        return model

    c = train_fakes.components()
    c.build_model = poisoned
    s = spec(checkpoint_every=2)
    with pytest.raises(ConfigError) as e:
        run_training(s, tmp_path, components=c, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "nan" in msg and f"steps {window}" in msg and "learning rate" in msg
    last = tmp_path / s.run_id / "checkpoints" / "last.pt"
    if bad_step > 2:  # a checkpoint (every 2 steps) taken before the NaN
        state = torch.load(last, weights_only=False)
        assert state["step"] < bad_step
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_loss_window_sums_like_python_floats():
    losses = torch.rand(50, dtype=torch.float32) * 3
    w = L.LossWindow(torch.device("cpu"), 0.25)
    ref = 0.25
    for x in losses:
        w.add(x)
        ref += float(x)
    assert w.value() == ref  # bit for bit: the same float64 additions in the same order
