"""The one catalogue of tasks and dataset formats (issue 13: adding a format touched 5 files).

A *task* is what a model learns (``retina``: DR grades; ``chexpert``: 5 pathologies; ``natural``:
the pretraining source's classes). A *format* is how a dataset lies on disk (``eyepacs``,
``aptos``, ``medmnist``, ``chexpert``, ``imagefolder``); each format serves one task, or, for
medmnist, the task its file holds. Every other module reads these two tables:
``load_dataset`` (a lookup plus one generic call), RunSpec (the task of a format, the task's
default recipe), the experiments' config (tasks and the formats that serve them), the synthetic
stand-ins and the headline metric.

Adding a format: write its loader (``loader(req: LoadRequest) -> Loaded``) and add one
:class:`DatasetFormat` to :data:`FORMATS` (or call :func:`register`). This module imports neither
torch nor the loaders (they are named as ``"module:function"`` and imported on first use), so
``transfusion --help`` stays fast; data ranks below train and experiments, so it knows no recipe
or metric code, only their names.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from transfusion.data.tasks import CHEXPERT, RETINA, Task
from transfusion.errors import ConfigError

if TYPE_CHECKING:
    from transfusion.data.base import ItemTable


@dataclass(frozen=True)
class LoadRequest:
    """What every loader is given (one signature for all formats): the dataset folder (medmnist:
    the .npz), the split, the patient-hash split seed, a split file, CheXpert's uncertainty
    policy and view choice (formats without labels policies or views ignore those)."""

    root: Path
    split: str
    seed: int = 0
    split_file: str | None = None
    label_policy: str | dict = "ignore"
    frontal_only: bool = True


@dataclass
class Loaded:
    """What every loader returns: the split's items and what it learned about them.

    task: the task the file holds (medmnist), None: the format's task. classes: a multiclass
    format's class names (imagefolder). label_policy: the uncertainty policy's name (chexpert).
    extra: what ``describe()`` shows (e.g. ``split_source``)."""

    table: "ItemTable"
    task: Task | None = None
    classes: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)
    label_policy: str | None = None


@dataclass(frozen=True)
class TaskEntry:
    """A task: what its model predicts (``spec``: a data.tasks.Task, None: the classes of the
    dataset), its headline metric (a key of train.metrics' results), its default recipe (a name
    in train.recipes.RECIPES), its usual format (also the one its synthetic stand-in is written
    in; listed first among the task's formats), the augmentation of its training images (a name
    in data.transforms) and whether the experiments study it (``medical``; natural is the
    pretraining source)."""

    name: str
    spec: Task | None
    headline: str
    recipe: str
    format: str
    augment: str
    medical: bool = True

    @property
    def kind(self) -> str:
        """grade | multilabel (the Task's), multiclass (a dataset's classes)."""
        return self.spec.kind if self.spec is not None else "multiclass"


@dataclass(frozen=True)
class DatasetFormat:
    """A dataset format: its loader (a ``loader(req: LoadRequest) -> Loaded`` or the
    ``"module:function"`` that names one), the task it serves (None: the file says; then
    ``tasks`` lists the ones it can hold), other names it is known by (compared lower-case
    without - and _), how images are fitted to a square (``pad`` keeps a fundus round,
    ``stretch``), the augmentation (a name in data.transforms; None: the task's) and the kind of
    synthetic set (data.synthetic.KINDS) written in this format (None: none)."""

    name: str
    loader: Callable[[LoadRequest], Loaded] | str
    task: str | None
    tasks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    fit: str = "stretch"
    augment: str | None = None
    synthetic: str | None = None

    def serves(self) -> tuple[str, ...]:
        """The tasks this format's files can hold."""
        return (self.task,) if self.task else self.tasks

    def load(self, req: LoadRequest) -> Loaded:
        fn = self.loader
        if isinstance(fn, str):
            module, _, name = fn.partition(":")
            fn = getattr(importlib.import_module(module), name)
        return fn(req)


#: task name -> entry; the order is the one error messages list
TASKS: dict[str, TaskEntry] = {
    "retina": TaskEntry("retina", RETINA, headline="auc_referable", recipe="retina",
                        format="eyepacs", augment="RETINA_AUGMENT"),
    "chexpert": TaskEntry("chexpert", CHEXPERT, headline="auc_mean", recipe="chexpert",
                          format="chexpert", augment="CHEXPERT_AUGMENT"),
    "natural": TaskEntry("natural", None, headline="accuracy", recipe="pretrain",
                         format="imagefolder", augment="NATURAL_AUGMENT", medical=False),
}

#: format name -> entry; the order is the one error messages and help texts list
FORMATS: dict[str, DatasetFormat] = {f.name: f for f in (
    DatasetFormat("eyepacs", "transfusion.data.retina:load_eyepacs", task="retina", fit="pad",
                  synthetic="fundus"),
    DatasetFormat("aptos", "transfusion.data.retina:load_aptos", task="retina", fit="pad"),
    DatasetFormat("medmnist", "transfusion.data.medmnist:load_medmnist", task=None,
                  tasks=("retina", "chexpert"), aliases=("retinamnist", "chestmnist")),
    DatasetFormat("chexpert", "transfusion.data.chexpert:load_chexpert", task="chexpert",
                  aliases=("chexpertsmall", "chexpertv10small", "chexpertv10"), synthetic="chexpert"),
    DatasetFormat("imagefolder", "transfusion.data.imagefolder:load_imagefolder", task="natural",
                  synthetic="natural"),
)}


def register(fmt: DatasetFormat) -> DatasetFormat:
    """Add a format to :data:`FORMATS` (its task must be in :data:`TASKS`)."""
    for t in fmt.serves():
        if t not in TASKS:
            raise ConfigError(f"format {fmt.name!r}: unknown task {t!r}: use one of {', '.join(TASKS)}")
    FORMATS[fmt.name] = fmt
    return fmt


def format_names() -> tuple[str, ...]:
    return tuple(FORMATS)


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def find_format(name: str) -> DatasetFormat:
    """The format called ``name`` or one of its aliases (case, - and _ do not matter)."""
    key = _key(name)
    for f in FORMATS.values():
        if key == _key(f.name) or key in (_key(a) for a in f.aliases):
            return f
    raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(FORMATS)}")


def task_of_format(name: str) -> str | None:
    """The task a format serves when a run does not say (None: unknown, or the file says)."""
    f = FORMATS.get(name.lower())
    return f.task if f else None


def formats_for(task: str) -> tuple[str, ...]:
    """The formats whose files can hold ``task``, its usual format first."""
    first = TASKS[task].format
    return (first,) + tuple(n for n, f in FORMATS.items() if n != first and task in f.serves())


def medical_tasks() -> tuple[str, ...]:
    return tuple(n for n, t in TASKS.items() if t.medical)


def synthetic_format(task: str) -> str:
    """The format ``task``'s synthetic stand-in is written in (and read back as)."""
    return TASKS[task].format


def synthetic_kind(task: str) -> str:
    """The data.synthetic kind of ``task``'s stand-in (``ensure_synthetic(kind, ...)``)."""
    kind = FORMATS[synthetic_format(task)].synthetic
    if kind is None:
        raise ConfigError(f"task {task!r} has no synthetic stand-in: give a dataset folder")
    return kind


def format_of_synthetic(kind: str) -> str:
    """The format a synthetic kind is written in (fundus -> eyepacs)."""
    return next(n for n, f in FORMATS.items() if f.synthetic == kind)


def headline(task: str) -> str:
    """The metric the paper reports for ``task`` (retina: referable-DR AUC, chexpert: mean AUC)."""
    return TASKS[task].headline


def default_recipe(task: str) -> str:
    return TASKS[task].recipe


def augment_name(fmt: DatasetFormat, task: Task | None) -> str:
    """The data.transforms augmentation of a format's training images (for ``task``, the one
    the loader found, else the format's)."""
    if fmt.augment:
        return fmt.augment
    name = task.name if task is not None else fmt.task
    return TASKS[name].augment
