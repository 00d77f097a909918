"""One training run = one :class:`RunSpec`, with a stable ``run_id``.

A run writes only inside ``runs/<run_id>/`` (see :func:`transfusion.train.run_training`).
``run_id`` = readable prefix (model, init, cut, seed) + a short hash of the spec's canonical JSON,
so the same spec always maps to the same folder and any change to it to a new one. The spec
belongs to training (it says what a run computes); experiments build lists of them and
executors (``transfusion.experiments.runs``) run them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from transfusion.data import catalogue
from transfusion.errors import ConfigError

#: fields added after run ids were first published: left out of to_dict() (and so of the hash
#: behind run_id and of config.json's spec) while they hold their default, so that adding a field
#: never renames existing runs
OMITTED_AT_DEFAULT = {"test_split": None}


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides what a training run computes (and nothing that does not, such as
    the device or the number of data-loading workers).

    data_root: the folder (or .npz) to pass to ``load_dataset``, or ``"synthetic"``: the
    data package's synthetic set of the task (``synthetic_images`` images at the recipe's image size,
    made once under $TRANSFUSION_CACHE, default ~/.cache/transfusion).
    recipe: a name in ``transfusion.train.recipes.RECIPES`` (default: the task's, filled in);
    ``overrides`` changes any recipe field (stored typed, so "1" and 1 give one run_id); ``steps``,
    ``eval_every``, ``image_size`` and ``batch_size`` are shortcuts for the most common overrides
    (they win over ``overrides``).
    test_split: a held-out split (e.g. ``"test"``) on which the final model is evaluated once,
    after the last step, into final.json's ``"test"`` (capped by ``eval_limit`` like the
    evaluation set); None (default): no test evaluation. A field at its default is left out of
    the spec's JSON (:data:`OMITTED_AT_DEFAULT`), so specs that do not set it keep their run_id.
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
    test_split: str | None = None

    def __post_init__(self):
        # the task a format serves when the spec does not say (medmnist: give ``task``)
        task = self.task or catalogue.task_of_format(self.dataset)
        tasks = catalogue.TASKS
        if task is None:
            raise ConfigError(f"RunSpec: cannot tell the task of dataset {self.dataset!r}: pass "
                              f"task= one of {', '.join(tasks)}")
        if task not in tasks:
            raise ConfigError(f"RunSpec: unknown task {task!r}: use one of {', '.join(tasks)}")
        object.__setattr__(self, "task", task)
        if self.init == "transfuse" and not self.upto:
            raise ConfigError("RunSpec: init 'transfuse' needs upto= a stage name (e.g. block2)")
        from transfusion.train.recipes import RECIPES, coerce_overrides

        recipe = self.recipe or catalogue.default_recipe(task)
        if recipe not in RECIPES:
            raise ConfigError(f"RunSpec: unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")
        object.__setattr__(self, "recipe", recipe)
        object.__setattr__(self, "overrides", coerce_overrides(self.overrides))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name, default in OMITTED_AT_DEFAULT.items():
            if d[name] == default:
                del d[name]
        return d

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
    from transfusion.train.run_folder import RunFolder

    return RunFolder.of(runs_dir, spec.run_id).is_finished()
