"""The one place that names the files of a run folder ``runs/<run_id>/``.

Training writes them (``transfusion.train.loop``); experiments, analyses and reports read them
through the same names, so a file is never looked for under a name the loop does not write.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transfusion.errors import ConfigError


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
        return self.checkpoints / "step0.pt"

    @property
    def training_state(self) -> Path:
        """Model, optimizer, scheduler and RNG state to resume from (deleted once finished)."""
        return self.checkpoints / "last.pt"

    @property
    def model_final(self) -> Path:
        return self.path / "model_final.pt"

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
