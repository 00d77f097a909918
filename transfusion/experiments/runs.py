"""One training run = one :class:`RunSpec`, with a stable ``run_id``; executors run lists of them.

A run writes only inside ``runs/<run_id>/`` (see :func:`transfusion.train.run_training`).
``run_id`` = readable prefix (model, init, cut, seed) + a short hash of the spec's canonical JSON,
so the same spec always maps to the same folder and any change to it to a new one.

Executors: :class:`LocalExecutor` (sequential, or a process pool with ``workers > 1``) and
:class:`SubmititExecutor` (Slurm through submitit, imported lazily). Both skip finished runs
(``final.json`` present) and resume interrupted ones; ``executor.run(specs) -> list[final dicts]``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from transfusion.errors import ConfigError

log = logging.getLogger(__name__)

#: which task a dataset serves when the spec does not say (medmnist: give ``task``)
TASK_FOR_DATASET = {"eyepacs": "retina", "aptos": "retina", "chexpert": "chexpert",
                    "imagefolder": "natural"}
TASKS = ("retina", "chexpert", "natural")


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides what a training run computes (and nothing that does not, such as
    the device or the number of data-loading workers).

    data_root: the folder (or .npz) to pass to ``load_dataset``, or ``"synthetic"``: the data
    stream's synthetic set of the task (``synthetic_images`` images at the recipe's image size,
    made once under $TRANSFUSION_CACHE, default ~/.cache/transfusion).
    recipe: a name in ``transfusion.train.recipes.RECIPES`` (default: the task's, filled in);
    ``overrides`` changes any recipe field (stored typed, so "1" and 1 give one run_id); ``steps``, ``eval_every``, ``image_size`` and ``batch_size`` are
    shortcuts for the most common overrides (they win over ``overrides``).
    """

    model: str
    dataset: str
    data_root: str
    task: str | None = None
    init: str = "random"
    checkpoint: str | None = None
    upto: str | None = None
    recipe: str | None = None
    overrides: dict = field(default_factory=dict)
    seed: int = 0
    steps: int | None = None
    eval_every: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    label_policy: str | dict = "ignore"
    split: str = "train"
    eval_split: str = "val"
    limit: int | None = None
    eval_limit: int | None = None
    in_channels: int = 3
    synthetic_images: int = 200
    data_seed: int = 0

    def __post_init__(self):
        task = self.task or TASK_FOR_DATASET.get(self.dataset.lower())
        if task is None:
            raise ConfigError(f"RunSpec: cannot tell the task of dataset {self.dataset!r}: pass "
                              f"task= one of {', '.join(TASKS)}")
        if task not in TASKS:
            raise ConfigError(f"RunSpec: unknown task {task!r}: use one of {', '.join(TASKS)}")
        object.__setattr__(self, "task", task)
        if self.init == "transfuse" and not self.upto:
            raise ConfigError("RunSpec: init 'transfuse' needs upto= a stage name (e.g. block2)")
        from transfusion.train.recipes import RECIPE_FOR_TASK, RECIPES, coerce_overrides

        recipe = self.recipe or RECIPE_FOR_TASK[task]
        if recipe not in RECIPES:
            raise ConfigError(f"RunSpec: unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")
        object.__setattr__(self, "recipe", recipe)
        object.__setattr__(self, "overrides", coerce_overrides(self.overrides))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"run spec has unknown field(s) {', '.join(unknown)}; the fields are "
                              f"{', '.join(sorted(names))}")
        return cls(**d)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "RunSpec":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read run spec {path}: {e}; give a JSON object of RunSpec "
                              f"fields") from None
        if "spec" in d and isinstance(d["spec"], dict):  # a run's config.json works too
            d = d["spec"]
        return cls.from_dict(d)

    @property
    def recipe_name(self) -> str:
        return self.recipe

    def recipe_overrides(self) -> dict:
        o = dict(self.overrides)
        for k in ("steps", "eval_every", "image_size", "batch_size"):
            if getattr(self, k) is not None:
                o[k] = getattr(self, k)
        return o

    @property
    def run_id(self) -> str:
        return run_id(self)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", str(s).lower()).strip("_")


def run_id(spec: RunSpec) -> str:
    """``[pretrain_]<model>-<init>[_<upto>]-s<seed>-<hash>``: readable prefix + 10 hex digits of
    the sha256 of the spec's canonical JSON (``pretrain_`` for the natural-image task)."""
    h = hashlib.sha256(spec.to_json().encode()).hexdigest()[:10]
    init = _slug(spec.init) + (f"_{_slug(spec.upto)}" if spec.upto else "")
    model = ("pretrain_" if spec.task == "natural" else "") + _slug(spec.model)
    return f"{model}-{init}-s{spec.seed}-{h}"


def is_finished(spec: RunSpec, runs_dir: str | os.PathLike) -> bool:
    return (Path(runs_dir) / spec.run_id / "final.json").is_file()


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
            log.info("%d of %d runs already finished: skipped", len(specs) - len(todo), len(specs))
        if self.workers == 1 or len(todo) <= 1:
            for s in todo:
                _run_one(s.to_dict(), str(runs_dir), self.device, self.num_workers, None)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, (os.cpu_count() or 1) // self.workers)
            with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
                futs = [pool.submit(_run_one, s.to_dict(), str(runs_dir), self.device,
                                    self.num_workers, threads) for s in todo]
                for f in futs:
                    f.result()
        return [_final_or_status(s, runs_dir) for s in specs]


def _final_or_status(spec: RunSpec, runs_dir: Path) -> dict:
    p = Path(runs_dir) / spec.run_id / "final.json"
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
