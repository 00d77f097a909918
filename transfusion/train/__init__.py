"""Training: what a run computes (``spec.RunSpec``), recipes (``recipes``), the step-based loop
(``loop.run_training``) and its parts (``data_stream``, ``task``, ``evaluation``, ``checkpoint``,
``run_log``, ``stopping``), metrics (``metrics``) and multi-process training (``distributed``).
Nothing here imports experiments, analysis or the command line."""
from __future__ import annotations


def run_training(spec, runs_dir="runs", **kwargs) -> dict:
    """Train one :class:`transfusion.train.spec.RunSpec`; see :mod:`transfusion.train.loop`."""
    from transfusion.train.loop import run_training as _run

    return _run(spec, runs_dir, **kwargs)


__all__ = ["run_training"]
