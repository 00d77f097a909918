"""Training recipes as data: the paper's retina and CheXpert recipes, and our pretraining recipe.

A :class:`Recipe` is a frozen dataclass; :func:`get_recipe` returns a named one with any field
overridden (image size, steps, batch, lr, eval_every, weight decay, augmentation, ...), and every
run records the resolved recipe it actually used in its config.json. ``snapshot_every`` (default 0,
off) keeps a model checkpoint every N steps (``--set snapshot_every=N``); it changes no number
of the run, only what the run folder keeps. ``bn_recalibration_images`` (default 0, off)
re-estimates the BatchNorm statistics before each evaluation (``transfusion.train.evaluation``);
it changes the evaluation numbers only, never the training.

Choices where the paper is silent (recorded in every run's config.json under ``recipe.notes``):

- retina: Adam lr 1e-3, batch 8, 587 px, constant lr (docs/paper.md). Weight decay 0 (Adam's default;
  not stated). Augmentation on: transfusion.data's retina augmentation (flips, small rotations/scale,
  brightness/contrast), since a 150k-step run on a finite set would otherwise overfit.
- chexpert: SGD momentum 0.9, batch 32, 224 px, lr 0.1 * batch/256 (= 0.0125 at batch 32) reached by
  a linear warm-up from 0 over 5 epochs, then divided by 10 at epochs 30, 60 and 90 (docs/paper.md).
  An "epoch" is ``train_size / batch_size`` steps (a float; the data order crosses epoch borders
  without dropping a batch). Weight decay 1e-4 (the standard value for this SGD/step recipe;
  not stated). Augmentation on (transfusion.data's CheXpert augmentation). The lr follows the
  linear-scaling rule when the batch is overridden (``lr_per_256``); an explicit ``lr`` override
  fixes it instead.
- splits (not stated in the paper): transfusion.data's patient-level hashed splits, seeded by the
  run spec's ``data_seed`` (0), identical for every training seed; config.json records each
  split's description (size, class counts, label policy).
- pretrain (natural-image source, our choice): the standard ImageNet ResNet recipe scaled down:
  SGD momentum 0.9, weight decay 1e-4, batch 64, lr 0.1 * batch/256, warm-up over 1 epoch, /10 at
  epochs 30, 60, 80, 224 px, augmentation on. Runs are usually given far fewer steps (``steps``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from transfusion.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str  # "adam" | "sgd"
    lr: float
    batch_size: int
    image_size: int
    steps: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_per_256: float | None = None  # if set, lr = lr_per_256 * batch_size / 256 (linear scaling)
    # "constant" | "warmup_step" | "cosine" (lr * (1 + cos(pi * step / steps)) / 2: to 0 at the
    # last step, which steadies the final weights of a short run)
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    decay_epochs: tuple[float, ...] = ()
    decay_factor: float = 0.1
    eval_every: int = 1000
    log_every: int = 50
    checkpoint_every: int = 1000
    # model snapshots (weights only, checkpoints/step<N>.pt, kept after the run) at every N-th
    # step; 0 = none. A spec that does not set it keeps its run_id (overrides hold only what is set)
    snapshot_every: int = 0
    eval_batch_size: int = 64
    # BatchNorm-stable evaluation: before each evaluation, re-estimate every BatchNorm's running
    # mean/var (cumulative average) on this many fixed, seeded, unaugmented training images, on
    # the evaluated weights; the training state's buffers are restored after. 0 = off
    bn_recalibration_images: int = 0
    augment: bool = True
    amp: str = "none"  # "none" | "bf16" (autocast on the device; use on GPUs)
    channels_last: bool = False
    # DDP only: SyncBatchNorm (batch statistics over all processes' shares of the global batch);
    # needs CUDA devices (NCCL): torch's SyncBatchNorm does not run on CPU/gloo
    sync_bn: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms + no cudnn.benchmark
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["decay_epochs"] = list(self.decay_epochs)
        d["notes"] = list(self.notes)
        return d


RECIPES: dict[str, Recipe] = {
    "retina": Recipe(
        name="retina", optimizer="adam", lr=1e-3, batch_size=8, image_size=587, steps=150_000,
        schedule="constant", weight_decay=0.0, augment=True, eval_every=1000,
        notes=("paper: Adam 1e-3, batch 8, 587px, constant lr (schedule not stated otherwise)",
               "our choice: weight decay 0, augmentation on (transfusion.data's retina augmentation)")),
    "chexpert": Recipe(
        name="chexpert", optimizer="sgd", lr=0.1 * 32 / 256, lr_per_256=0.1, batch_size=32,
        image_size=224, steps=100_000, momentum=0.9, weight_decay=1e-4, schedule="warmup_step",
        warmup_epochs=5, decay_epochs=(30, 60, 90), decay_factor=0.1, augment=True, eval_every=1000,
        notes=("paper: SGD momentum 0.9, batch 32, 224px, linear warm-up 0 -> 0.1*32/256 over 5 "
               "epochs, /10 at epochs 30, 60, 90",
               "epoch = train_size / batch_size steps",
               "our choice: weight decay 1e-4, augmentation on (transfusion.data's CheXpert augmentation)")),
    "pretrain": Recipe(
        name="pretrain", optimizer="sgd", lr=0.1 * 64 / 256, lr_per_256=0.1, batch_size=64,
        image_size=224, steps=10_000, momentum=0.9, weight_decay=1e-4, schedule="warmup_step",
        warmup_epochs=1, decay_epochs=(30, 60, 80), decay_factor=0.1, augment=True,
        eval_every=1000,
        notes=("our choice for the natural-image source (the paper pretrained its CBRs on ImageNet "
               "without giving the recipe): standard ImageNet ResNet SGD recipe, lr 0.1*batch/256, "
               "1-epoch warm-up, /10 at epochs 30, 60, 80, weight decay 1e-4",)),
}

_FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
_FIELD_TYPES = {name: str(f.type).split(" ")[0].split("[")[0] for name, f in _FIELDS.items()}


def _coerce(name: str, value):
    """Turn a command-line string (or JSON value) into the type of Recipe field ``name``."""
    kind = _FIELD_TYPES[name]  # the declared type, not the type of a default (5 is an int)
    if name == "decay_epochs":
        if isinstance(value, str):
            value = [v for v in value.replace(";", ",").split(",") if v.strip()]
        return tuple(float(v) for v in value)
    if name == "notes":
        return tuple(value) if not isinstance(value, str) else (value,)
    if name == "lr_per_256":
        return None if value in (None, "", "none", "None") else float(value)
    if kind == "bool":
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ConfigError(f"recipe field {name}={value!r} is not a boolean: use true or false")
            return low in ("1", "true", "yes", "on")
        return bool(value)
    try:
        if kind == "int":
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError, OverflowError):
        what = {"int": "a whole number", "float": "a number"}.get(kind, kind)
        raise ConfigError(f"recipe field {name}={value!r} is not a {kind} ({what})") from None
    return str(value)


def coerce_overrides(overrides: dict | None) -> dict:
    """Typed, JSON-ready overrides ({"eval_every": "1"} -> {"eval_every": 1}); unknown fields raise.
    Run specs store them this way so that equal settings hash to the same run_id."""
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(_FIELDS) | ({"name"} & set(overrides)))
    if bad:
        raise ConfigError(f"unknown recipe field(s) {', '.join(bad)}: the fields are "
                          f"{', '.join(f for f in _FIELDS if f != 'name')}")
    out = {}
    for k, v in overrides.items():
        if v is None:
            continue
        v = _coerce(k, v)
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def get_recipe(name: str, overrides: dict | None = None) -> Recipe:
    """The named recipe with ``overrides`` ({field: value}, strings are converted) applied."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    r = RECIPES[name]
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(_FIELDS) | ({"name"} & set(overrides)))
    if bad:
        raise ConfigError(f"unknown recipe field(s) {', '.join(bad)}: the fields are "
                          f"{', '.join(f for f in _FIELDS if f != 'name')}")
    values = {k: _coerce(k, v) for k, v in overrides.items() if v is not None}
    if "lr" in values:
        values.setdefault("lr_per_256", None)  # an explicit lr wins over linear scaling
    r = dataclasses.replace(r, **values)
    if r.lr_per_256 is not None:
        r = dataclasses.replace(r, lr=r.lr_per_256 * r.batch_size / 256)
    validate(r)
    return r


def validate(r: Recipe) -> None:
    if r.optimizer not in ("adam", "sgd"):
        raise ConfigError(f"recipe optimizer {r.optimizer!r} unknown: use adam or sgd")
    if r.schedule not in ("constant", "warmup_step", "cosine"):
        raise ConfigError(f"recipe schedule {r.schedule!r} unknown: use constant, warmup_step or cosine")
    if r.amp not in ("none", "bf16"):
        raise ConfigError(f"recipe amp {r.amp!r} unknown: use none or bf16")
    for k in ("batch_size", "image_size", "eval_every", "log_every", "checkpoint_every",
              "eval_batch_size"):
        if getattr(r, k) < 1:
            raise ConfigError(f"recipe {k} must be >= 1, got {getattr(r, k)}")
    if r.steps < 0:
        raise ConfigError(f"recipe steps must be >= 0, got {r.steps}")
    if r.bn_recalibration_images < 0:
        raise ConfigError(f"recipe bn_recalibration_images must be >= 0 (0: off), got "
                          f"{r.bn_recalibration_images}")
    if r.snapshot_every < 0:
        raise ConfigError(f"recipe snapshot_every must be >= 0 (0: no snapshots), got "
                          f"{r.snapshot_every}")
    if not (math.isfinite(r.lr) and r.lr > 0):
        raise ConfigError(f"recipe lr must be a finite number > 0, got {r.lr}")
    for k in ("momentum", "weight_decay", "warmup_epochs", "decay_factor"):
        v = getattr(r, k)
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"recipe {k} must be a finite number >= 0, got {v}")
    if r.momentum >= 1:
        raise ConfigError(f"recipe momentum must be below 1, got {r.momentum}")
    if not all(math.isfinite(e) and e >= 0 for e in r.decay_epochs):
        raise ConfigError(f"recipe decay_epochs must be finite numbers >= 0, got {list(r.decay_epochs)}")


def lr_factor(step: int, recipe: Recipe, steps_per_epoch: float) -> float:
    """Multiplier of ``recipe.lr`` used for the update made at ``step`` (0-based).

    cosine: ``(1 + cos(pi * step / steps)) / 2``.
    warmup_step: ``step / warmup_steps`` while ``step < warmup_steps`` (so 0 at step 0), then
    ``decay_factor ** (number of decay epochs already reached)``.
    """
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, recipe.steps) / max(1, recipe.steps)))
    warm = recipe.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return step / warm
    n = sum(1 for e in recipe.decay_epochs if step >= e * steps_per_epoch)
    return recipe.decay_factor ** n


def lr_at(step: int, recipe: Recipe, steps_per_epoch: float) -> float:
    return recipe.lr * lr_factor(step, recipe, steps_per_epoch)


def steps_per_epoch(train_size: int, batch_size: int) -> float:
    if train_size < 1:
        raise ConfigError("the training set is empty: check the data root, split and limit")
    return train_size / batch_size


def describe_schedule(recipe: Recipe, spe: float) -> dict:
    """The schedule in steps (recorded in config.json)."""
    d = {"steps_per_epoch": spe}
    if recipe.schedule == "warmup_step":
        d["warmup_steps"] = recipe.warmup_epochs * spe
        d["decay_steps"] = [e * spe for e in recipe.decay_epochs]
    return d if not math.isnan(spe) else {}
