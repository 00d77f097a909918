"""The one place that names the files of a run folder ``runs/<run_id>/``.

Training writes them (``transfusion.train.loop``); experiments, analyses and reports read them
through the same names, so a file is never looked for under a name the loop does not write.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from transfusion.errors import ConfigError

_SNAPSHOT = re.compile(r"step(\d+)\.pt")


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def of(cls, runs_dir, run_id: str) -> "RunFolder":
        return cls(Path(runs_dir) / run_id)

    # what the loop writes
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def init_summary(self) -> Path:
        return self.path / "init_summary.json"

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (the numbers of metrics.jsonl), when tensorboard is installed."""
        return self.path / "tensorboard"

    @property
    def final(self) -> Path:
        return self.path / "final.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def step0(self) -> Path:
        """The model at step 0 (after initialisation, before training)."""
        return self.snapshot(0)

    def snapshot(self, step: int) -> Path:
        """The model (weights only, step0.pt's format) after ``step`` training steps: written at
        every ``snapshot_every``-th step (recipe field, 0 = off) and kept after the run ends."""
        if int(step) != step or step < 0:
            raise ConfigError(f"a snapshot step is a whole number >= 0, got {step!r}")
        return self.checkpoints / f"step{int(step)}.pt"

    def snapshots(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every model snapshot on disk, step0.pt included, in step order
        (temp files of an interrupted write do not match the name and are not listed)."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = _SNAPSHOT.fullmatch(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    @property
    def training_state(self) -> Path:
        """Model, optimizer, scheduler and RNG state to resume from (deleted once finished,
        unlike the snapshots)."""
        return self.checkpoints / "last.pt"

    @property
    def model_final(self) -> Path:
        return self.path / "model_final.pt"

    @property
    def test_outputs(self) -> Path:
        """The final model's outputs on the test split (``RunSpec.test_split``), one row per image
        in the split's order: npz of ``logits`` (n, outputs), ``targets`` and ``masks``; paired
        comparisons over one shared test set (bootstrap, DeLong) read them."""
        return self.path / "test_outputs.npz"

    # what analyses add
    @property
    def similarity(self) -> Path:
        return self.path / "similarity.json"

    @property
    def feature_reuse(self) -> Path:
        """Per-stage weight distance, reset AUCs and k-NN AUCs (experiment feature-reuse)."""
        return self.path / "feature_reuse.json"

    def is_finished(self) -> bool:
        return self.final.is_file()

    def require(self, file: Path, what: str) -> Path:
        """``file`` if it exists, else a one-line error saying the run did not finish."""
        if not file.is_file():
            raise ConfigError(f"run folder {self.path} has no {what} ({file.relative_to(self.path)}); "
                              f"the run did not finish: rerun the same command to resume it")
        return file
