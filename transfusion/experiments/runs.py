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
import threading
from pathlib import Path

from transfusion.errors import ConfigError
from transfusion.train.run_folder import RunFolder
from transfusion.train.spec import RunSpec, is_finished  # noqa: F401

log = logging.getLogger(__name__)

def _run_one(spec_dict: dict, runs_dir: str, device: str | None, num_workers: int,
             threads: int | None) -> dict:
    """Top-level (picklable) worker of the executors."""
    import torch

    if not logging.getLogger().handlers:  # a spawned pool worker: log like the parent command
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

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
            self._run_parallel(todo, runs_dir, progress)
        return [_final_or_status(s, runs_dir) for s in specs]

    def _run_parallel(self, todo: list[RunSpec], runs_dir: Path, progress: "Progress | None") -> None:
        """The runs on ``workers`` processes of cpu_count // workers torch threads each.

        A run that stops early (Ctrl-C reaches every process of the terminal's group; SIGTERM
        sent to this process is passed on to the workers) cancels the runs not yet started, the
        running ones checkpoint and stop, and the caller sees their status: rerunning resumes.
        """
        import multiprocessing as mp
        import signal
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_run_one, s.to_dict(), str(runs_dir), self.device,
                                self.num_workers, threads): s for s in todo}
            log.info("%d runs on %d worker processes (%d torch thread%s each)", len(todo),
                     self.workers, threads, "" if threads == 1 else "s")

            def pass_on(signum, frame):  # noqa: ARG001
                pool.shutdown(wait=False, cancel_futures=True)
                for proc in list(getattr(pool, "_processes", {}).values()):
                    if proc.is_alive():
                        os.kill(proc.pid, signum)

            old = (signal.signal(signal.SIGTERM, pass_on)
                   if threading.current_thread() is threading.main_thread() else None)
            try:
                for f in as_completed(futs):
                    if f.cancelled():  # a run stopped early and the queue was dropped
                        continue
                    result = f.result()
                    if result.get("status") != "finished":
                        pool.shutdown(wait=False, cancel_futures=True)
                    elif progress:
                        progress.finished(futs[f].run_id, parallel=self.workers)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                for f in futs:  # the workers got the same Ctrl-C: let them write their checkpoint
                    if not f.cancelled():
                        try:
                            f.result()
                        except BaseException:  # noqa: BLE001 - a second Ctrl-C, a dead worker
                            pass
                raise
            except BrokenProcessPool:
                raise ConfigError("a training process died without a word (killed, or out of "
                                  "memory?); rerun the same command: finished runs are skipped "
                                  "and the others resume from their last checkpoint") from None
            finally:
                if old is not None:
                    signal.signal(signal.SIGTERM, old)


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


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("the submitit executor needs the submitit package: "
                          "`pip install submitit` (or `pip install transfusion[cluster]`), "
                          "or use the local executor") from None
    return submitit


#: keys of --executor-param that are ours (AutoExecutor's constructor), not update_parameters'
SUBMITIT_OWN_KEYS = ("cluster", "folder")


def submitit_parameters(params: dict) -> dict:
    """``--executor-param`` values checked against submitit and put in the form it takes:
    AutoExecutor's shared parameters (timeout_min, mem_gb, cpus_per_task, gpus_per_node, nodes,
    tasks_per_node, name, stderr_to_stdout) with their types, ``<cluster>_<name>`` ones
    (slurm_partition, local_setup, ...), a Slurm parameter without its prefix (``partition``,
    ``array_parallelism`` -> ``slurm_array_parallelism``: how many jobs of the array run at
    once), ``cluster`` (slurm, local or debug; default: what submitit detects) and ``folder``
    (submitit's logs and pickles; default runs/_submitit). Anything else: one-line ConfigError."""
    submitit = _import_submitit()
    from submitit.core import plugins

    executors = plugins.get_executors()
    shared = submitit.AutoExecutor._typed_parameters()
    slurm = executors["slurm"]._valid_parameters() if "slurm" in executors else set()
    out: dict = {}
    for key, value in params.items():
        if key == "cluster":
            if value not in executors:
                raise ConfigError(f"--executor-param cluster={value}: submitit knows the clusters "
                                  f"{', '.join(executors)}")
            out[key] = value
        elif key == "folder":
            out[key] = str(value)
        elif key in shared:
            kind = shared[key]
            ok = {int: isinstance(value, int) and not isinstance(value, bool),
                  float: isinstance(value, (int, float)) and not isinstance(value, bool),
                  bool: isinstance(value, bool), str: True}[kind]
            if not ok:
                raise ConfigError(f"--executor-param {key}={value}: submitit wants {key} to be "
                                  f"{'a whole number' if kind is int else kind.__name__}")
            out[key] = str(value) if kind is str else value
        elif key.split("_", 1)[0] in executors and "_" in key:
            ex, arg = key.split("_", 1)
            if arg not in executors[ex]._valid_parameters() and arg not in shared:
                raise ConfigError(f"--executor-param {key}: submitit's {ex} executor has no "
                                  f"parameter {arg!r}; see its documentation for the list")
            out[key] = value
        elif key in slurm:
            out[f"slurm_{key}"] = value
        else:
            raise ConfigError(f"--executor-param {key}: not a submitit parameter; use a shared one "
                              f"({', '.join(sorted(shared))}), a Slurm one (partition, qos, "
                              f"account, constraint, array_parallelism, ...), cluster or folder")
    return out


class SubmititExecutor:
    """Run each spec as a cluster job through submitit (``pip install submitit``); waits for them.

    ``parameters`` go to ``AutoExecutor.update_parameters`` (e.g. timeout_min=600,
    slurm_partition="gpu", gpus_per_node=1, cpus_per_task=8, slurm_array_parallelism=4); the
    specs of one ``run`` call are one job array. ``cluster``: slurm, local (subprocesses on this
    machine, what the tests use) or debug (in this process); default: what submitit detects.
    ``folder`` (submitit's logs and pickles): default ``<runs_dir>/_submitit``. ``threads``:
    torch CPU threads in each job. ``on_submit(jobs)`` is called with
    ``[{"run_id", "job_id"}, ...]`` once a batch is submitted, before waiting for it.
    """

    DEFAULTS = {"timeout_min": 24 * 60, "gpus_per_node": 1}

    def __init__(self, folder: str | os.PathLike | None = None,
                 runs_dir: str | os.PathLike = "runs", num_workers: int = 4,
                 cluster: str | None = None, threads: int | None = None,
                 on_submit=None, **parameters) -> None:
        self.runs_dir, self.num_workers = Path(runs_dir), num_workers
        self.folder = Path(folder) if folder is not None else None
        self.cluster, self.threads, self.on_submit = cluster, threads, on_submit
        self.parameters = {**self.DEFAULTS, **parameters}
        self.jobs: list[dict] = []

    def run(self, specs: list[RunSpec], runs_dir: str | os.PathLike | None = None) -> list[dict]:
        submitit = _import_submitit()
        runs_dir = Path(runs_dir) if runs_dir is not None else self.runs_dir
        folder = self.folder if self.folder is not None else runs_dir / "_submitit"
        try:
            ex = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster)
            ex.update_parameters(**self.parameters)
        except (NameError, AssertionError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"submitit refused the executor parameters {self.parameters}: "
                              f"{first}") from None
        self.cluster = ex.cluster
        todo = [s for s in specs if not is_finished(s, runs_dir)]
        if not todo:
            return [_final_or_status(s, runs_dir) for s in specs]
        with ex.batch():  # one job array (slurm_array_parallelism applies to it)
            jobs = [ex.submit(_run_one, s.to_dict(), str(runs_dir.resolve()), None,
                              self.num_workers, self.threads) for s in todo]
        submitted = [{"run_id": s.run_id, "job_id": str(j.job_id)} for s, j in zip(todo, jobs)]
        self.jobs += submitted
        for rec in submitted:
            log.info("submitted %s as %s job %s (logs in %s)", rec["run_id"], ex.cluster,
                     rec["job_id"], folder)
        if self.on_submit is not None:
            self.on_submit(submitted)
        failed = []
        for s, j in zip(todo, jobs):
            try:
                j.result()
            except Exception as e:  # noqa: BLE001 - a job's failure, reported in one line below
                lines = [x for x in str(e).splitlines() if x.strip()]
                failed.append((s.run_id, j, lines[-1].strip() if lines else type(e).__name__))
        if failed:
            run_id, j, why = failed[0]
            raise ConfigError(f"{len(failed)} of {len(todo)} submitit job(s) failed; the first, "
                              f"job {j.job_id} (run {run_id}): {why}; its log: "
                              f"{j.paths.stderr}. Rerun the same command to retry: finished runs "
                              f"are skipped")
        return [_final_or_status(s, runs_dir) for s in specs]


EXECUTORS = {"local": LocalExecutor, "submitit": SubmititExecutor}


def make_executor(name: str = "local", **kwargs):
    """``"local"`` or ``"submitit"`` (kwargs go to the executor's constructor)."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**kwargs)
