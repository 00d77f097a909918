"""Training: recipes (``recipes``), the step-based loop (``loop.run_training``), metrics
(``metrics``), checkpoints (``checkpoint``) and multi-process training (``distributed``)."""
from __future__ import annotations


def run_training(spec, runs_dir="runs", **kwargs) -> dict:
    """Train one :class:`transfusion.experiments.runs.RunSpec`; see :mod:`transfusion.train.loop`."""
    from transfusion.train.loop import run_training as _run

    return _run(spec, runs_dir, **kwargs)


__all__ = ["run_training"]
