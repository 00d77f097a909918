"""Executors: run lists of :class:`~transfusion.train.spec.RunSpec` (defined by training, where a
run's spec belongs; re-exported here with ``run_id`` and ``is_finished`` for experiments).

Executors: :class:`LocalExecutor` (sequential, or a process pool with ``workers > 1``) and
:class:`SubmititExecutor` (Slurm through submitit, imported lazily). Both skip finished runs
(``final.json`` present) and resume interrupted ones; ``executor.run(specs) -> list[final dicts]``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transfusion.errors import ConfigError
from transfusion.train.run_folder import RunFolder
from transfusion.train.spec import TASK_FOR_DATASET, TASKS, RunSpec, is_finished, run_id  # noqa: F401

log = logging.getLogger(__name__)

def _run_one(spec_dict: dict, runs_dir: str, device: str | None, num_workers: int,
             threads: int | None) -> dict:
    """Top-level (picklable) worker of the executors."""
    import torch

    from transfusion.train import run_training

    if threads:
        torch.set_num_threads(threads)
    return run_training(RunSpec.from_dict(spec_dict), Path(runs_dir), device=device,
                        num_workers=num_workers)


class LocalExecutor:
    """Run specs on this machine: one after the other (``workers=1``) or in a process pool."""

    def __init__(self, workers: int = 1, runs_dir: str | os.PathLike = "runs",
                 device: str | None = None, num_workers: int = 0) -> None:
        if workers < 1:
            raise ConfigError(f"LocalExecutor workers must be >= 1, got {workers}")
        self.workers, self.runs_dir, self.device, self.num_workers = workers, Path(runs_dir), device, num_workers

    def run(self, specs: list[RunSpec], runs_dir: str | os.PathLike | None = None) -> list[dict]:
        runs_dir = Path(runs_dir) if runs_dir is not None else self.runs_dir
        specs = list(specs)
        todo = [s for s in specs if not is_finished(s, runs_dir)]
        if len(todo) < len(specs):
            (log.info if len(specs) > 1 else log.debug)(
                "%d of %d runs already finished: skipped", len(specs) - len(todo), len(specs))
        progress = Progress(len(todo)) if len(todo) > 1 else None
        if self.workers == 1 or len(todo) <= 1:
            for s in todo:
                if progress:
                    progress.starting(s.run_id)
                _run_one(s.to_dict(), str(runs_dir), self.device, self.num_workers, None)
                if progress:
                    progress.finished(s.run_id)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = max(1, (os.cpu_count() or 1) // self.workers)
            with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
                futs = {pool.submit(_run_one, s.to_dict(), str(runs_dir), self.device,
                                    self.num_workers, threads): s for s in todo}
                log.info("%d runs on %d worker processes", len(todo), self.workers)
                for f in as_completed(futs):
                    f.result()
                    if progress:
                        progress.finished(futs[f].run_id, parallel=self.workers)
        return [_final_or_status(s, runs_dir) for s in specs]


class Progress:
    """'run i/N' lines with an ETA from the mean time of the runs finished so far."""

    def __init__(self, total: int) -> None:
        import time

        self.total, self.done, self.t0, self._clock = total, 0, time.monotonic(), time.monotonic

    def starting(self, run_id: str) -> None:
        log.info("run %d/%d: %s%s", self.done + 1, self.total, run_id, self._eta())

    def finished(self, run_id: str, parallel: int = 1) -> None:
        self.done += 1
        if parallel > 1:
            log.info("finished %d/%d: %s%s", self.done, self.total, run_id, self._eta())

    def _eta(self) -> str:
        if self.done == 0:
            return ""
        left = (self._clock() - self.t0) / self.done * (self.total - self.done)
        return f" (about {int(left // 60)} min {int(left % 60):02d} s left)"


def _final_or_status(spec: RunSpec, runs_dir: Path) -> dict:
    p = RunFolder.of(runs_dir, spec.run_id).final
    if p.is_file():
        return json.loads(p.read_text())
    return {"run_id": spec.run_id, "status": "unfinished"}


class SubmititExecutor:
    """Run each spec as a Slurm job through submitit (``pip install submitit``); waits for them.

    ``parameters`` go to ``AutoExecutor.update_parameters`` (e.g. timeout_min=600,
    slurm_partition="gpu", gpus_per_node=1, cpus_per_task=8).
    """

    def __init__(self, folder: str | os.PathLike = "runs/_submitit",
                 runs_dir: str | os.PathLike = "runs", num_workers: int = 4, **parameters) -> None:
        self.folder, self.runs_dir, self.num_workers = Path(folder), Path(runs_dir), num_workers
        self.parameters = {"timeout_min": 24 * 60, "gpus_per_node": 1, **parameters}

    def run(self, specs: list[RunSpec], runs_dir: str | os.PathLike | None = None) -> list[dict]:
        try:
            import submitit
        except ImportError:
            raise ConfigError("the submitit executor needs the submitit package: "
                              "`pip install submitit` (or `pip install transfusion[cluster]`), "
                              "or use the local executor") from None
        runs_dir = Path(runs_dir) if runs_dir is not None else self.runs_dir
        ex = submitit.AutoExecutor(folder=str(self.folder))
        ex.update_parameters(**self.parameters)
        todo = [s for s in specs if not is_finished(s, runs_dir)]
        jobs = [ex.submit(_run_one, s.to_dict(), str(runs_dir.resolve()), None, self.num_workers,
                          None) for s in todo]
        for s, j in zip(todo, jobs):
            log.info("submitted %s as job %s", s.run_id, j.job_id)
        for j in jobs:
            j.result()
        return [_final_or_status(s, runs_dir) for s in specs]


EXECUTORS = {"local": LocalExecutor, "submitit": SubmititExecutor}


def make_executor(name: str = "local", **kwargs):
    """``"local"`` or ``"submitit"`` (kwargs go to the executor's constructor)."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**kwargs)
