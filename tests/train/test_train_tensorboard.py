"""Issue 18: TensorBoard event files beside metrics.jsonl, the same numbers by step, none twice
after a resume; without the tensorboard package one log line per process says how to get it."""
import builtins
import json
import logging
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402

from transfusion.experiments.runs import RunSpec  # noqa: E402
from transfusion.train import (
    run_log,  # noqa: E402
    run_training,  # noqa: E402
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OVR = {"eval_every": 4, "log_every": 2, "checkpoint_every": 5, "eval_batch_size": 16}


def spec():
    return train_fakes.tiny_spec(OVR, seed=2)


def run(s, d, **kw):
    return run_training(s, d, components=train_fakes.components(), progress=False, **kw)


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(tb_dir), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in r.items():
            if k not in ("step", "kind") and isinstance(v, (int, float)):
                out.setdefault(f"{r['kind']}/{k}", []).append((r["step"], v))
    return out


def same(got, want):
    assert got.keys() == want.keys()
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag  # no step twice
        for (_, a), (_, b) in zip(got[tag], want[tag]):  # event values are float32
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6), tag


def crashing_components(at_step: int):
    """The fakes, with a training forward that raises at step ``at_step`` (a crash, no checkpoint)."""
    calls = {"n": 0}

    def build(name, num_classes, in_channels=3, **kw):
        model = train_fakes.build_model(name, num_classes, in_channels)
        inner = model.forward

        def forward(x):
            if model.training:
                calls["n"] += 1
                if calls["n"] == at_step:
                    raise RuntimeError("simulated crash")
            return inner(x)

        model.forward = forward
        return model

    c = train_fakes.components()
    c.build_model = build
    return c


def test_event_files_hold_the_metrics_of_a_crashed_and_resumed_run(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    s = spec()
    run(s, tmp_path / "a")
    # crash in step 10: the last checkpoint is step 5, rows at 6 and 8 were logged after it
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(s, tmp_path / "b", components=crashing_components(10), progress=False)
    before = scalars(tmp_path / "b" / s.run_id / "tensorboard")
    assert [x for x, _ in before["train/loss"]] == [2, 4, 6, 8]
    run(s, tmp_path / "b")  # resumes from step 5 and logs 6 and 8 again
    for d in (tmp_path / "a" / s.run_id, tmp_path / "b" / s.run_id):
        assert list((d / "tensorboard").glob("events.out.tfevents.*"))
        got, want = scalars(d / "tensorboard"), expected(d)
        assert {"train/loss", "train/lr", "eval/auc_referable", "eval/eval_loss"} <= set(got)
        assert [st for st, _ in got["eval/eval_loss"]] == [0, 4, 8, 12]
        same(got, want)  # one value per step (the purge dropped the crashed session's 6 and 8)
    a = scalars(tmp_path / "a" / s.run_id / "tensorboard")["train/loss"]
    b = scalars(tmp_path / "b" / s.run_id / "tensorboard")["train/loss"]
    assert a == b and [x for x, _ in a] == [2, 4, 6, 8, 10, 12]


def test_without_tensorboard_one_line_says_how_to_get_it(tmp_path, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr(run_log, "_TB_SAID", False)
    s = spec()
    with caplog.at_level(logging.INFO, logger="transfusion.train.run_log"):
        run(s, tmp_path / "a")
        run(RunSpec(**{**s.to_dict(), "seed": 9}), tmp_path / "a")
    said = [r.getMessage() for r in caplog.records if "pip install tensorboard" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]  # once per process
    assert not (tmp_path / "a" / s.run_id / "tensorboard").exists()
    assert (tmp_path / "a" / s.run_id / "final.json").is_file()


def test_tensorboard_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFUSION_TENSORBOARD", "0")
    s = spec()
    run(s, tmp_path)
    assert not (tmp_path / s.run_id / "tensorboard").exists()
