"""``transfusion train`` (one run) and ``transfusion pretrain`` (a model checkpoint from a
natural-image source), registered on the main app by :func:`register`.

Both work unchanged under ``torchrun --nproc-per-node N`` (DistributedDataParallel).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer

from transfusion.errors import USER_ERROR_EXIT, ConfigError, TransfusionError
from transfusion.utils import atomic_copy
from transfusion.validation import check_options, check_writable_dir, check_writable_file

log = logging.getLogger(__name__)


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")


def parse_sets(items: list[str] | None) -> dict:
    """``["lr=0.01", "augment=false"]`` -> {"lr": "0.01", "augment": "false"} (typed by the recipe)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set eval_every=100")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _finish(result: dict, run_dir: Path) -> None:
    import os

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        if result.get("status") == "interrupted":
            raise typer.Exit(code={"SIGINT": 130, "SIGTERM": 143}.get(result.get("stopped_by"), 0))
        return
    if result.get("status") == "interrupted":
        typer.echo(result["message"], err=True)
        code = {"SIGINT": 130, "SIGTERM": 143}.get(result.get("stopped_by"), 0)
        raise typer.Exit(code=code)
    head = result.get("headline")
    typer.echo(f"run {result['run_id']} finished: {head} = {result.get(head)} "
               f"(final.json in {run_dir})")


def train(
    spec_file: Optional[Path] = typer.Option(None, "--spec", help=("A RunSpec JSON file (or a run's config.json); "
        "flags below override its fields.")),
    model: Optional[str] = typer.Option(None, help=("Model name, e.g. cbr_small, resnet50 (see "
        "transfusion.models.MODEL_NAMES).")),
    dataset: Optional[str] = typer.Option(None, help="eyepacs | aptos | medmnist | chexpert | imagefolder."),
    data_root: Optional[str] = typer.Option(None, help=("Dataset folder (medmnist: the .npz), or 'synthetic' for the "
        "built-in synthetic set.")),
    task: Optional[str] = typer.Option(None, help="retina | chexpert | natural (default: from the dataset)."),
    init: Optional[str] = typer.Option(None, help="random | transfer | mean_var | transfuse | slim | gabor."),
    checkpoint: Optional[str] = typer.Option(None, help="Pretrained weights for non-random inits."),
    upto: Optional[str] = typer.Option(None, help="Stage name for 'transfuse' (e.g. block2)."),
    recipe: Optional[str] = typer.Option(None, help="retina | chexpert | pretrain (default: the task's)."),
    seed: Optional[int] = typer.Option(None, help="Training seed (model init, data order, augmentation)."),
    steps: Optional[int] = typer.Option(None, help="Number of training steps (overrides the recipe)."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate every k steps (and at step 0 and the end)."),
    image_size: Optional[int] = typer.Option(None, help="Image size (overrides the recipe)."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size (overrides the recipe)."),
    label_policy: Optional[str] = typer.Option(None, help="CheXpert uncertainty policy: ignore | zeros | ones."),
    split: Optional[str] = typer.Option(None, help="Training split (default train)."),
    eval_split: Optional[str] = typer.Option(None, help="Evaluation split (default val)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training images (small-data runs)."),
    eval_limit: Optional[int] = typer.Option(None, help="Use only the first N evaluation images."),
    test_split: Optional[str] = typer.Option(None, help=("Also evaluate the final model once on this held-out split "
        "(e.g. test); metrics in final.json's \"test\".")),
    in_channels: Optional[int] = typer.Option(None, help="Input channels (1 or 3; default 3)."),
    synthetic_images: Optional[int] = typer.Option(None, help="Images in the synthetic set (data_root 'synthetic')."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=("Recipe override KEY=VALUE (repeatable): lr, "
        "weight_decay, augment, amp=bf16, channels_last=true, checkpoint_every, log_every, snapshot_every=N (keep the "
        "model every N steps), bn_recalibration_images=N (BatchNorm statistics re-estimated on N training images "
        "before each evaluation), ...")),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders go."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)."),
    workers: int = typer.Option(0, help="Data-loading worker processes (0: exact resume, see docs)."),
    max_steps_this_session: Optional[int] = typer.Option(None, help=("Stop (with a checkpoint) after this many steps; "
        "rerun to continue.")),
    keep_training_state: bool = typer.Option(False, help=("Keep checkpoints/last.pt (optimizer, RNG state) after the "
        "run finishes; by default it is deleted (model_final.pt stays).")),
    dry_run: bool = typer.Option(False, help="Print the spec and its run_id, train nothing."),
) -> None:
    """Train one run; writes runs/<run_id>/. Rerunning the same command resumes or skips it."""
    _setup_logging()
    from transfusion.train.spec import RunSpec

    try:
        check_options(image_size=image_size, batch_size=batch_size, steps=steps, workers=workers,
                      device=device, eval_every=eval_every, limit=limit, eval_limit=eval_limit,
                      synthetic_images=synthetic_images,
                      max_steps_this_session=max_steps_this_session)
        if not dry_run:
            check_writable_dir("--runs-dir", runs_dir)
        base = RunSpec.from_json_file(spec_file).to_dict() if spec_file else {}
        given = dict(model=model, dataset=dataset, data_root=data_root, task=task, init=init,
                     checkpoint=checkpoint, upto=upto, recipe=recipe, seed=seed, steps=steps,
                     eval_every=eval_every, image_size=image_size, batch_size=batch_size,
                     label_policy=label_policy, split=split, eval_split=eval_split, limit=limit,
                     eval_limit=eval_limit, in_channels=in_channels,
                     synthetic_images=synthetic_images, test_split=test_split)
        base.update({k: v for k, v in given.items() if v is not None})
        if set_:
            base["overrides"] = {**base.get("overrides", {}), **parse_sets(set_)}
        missing = [k for k in ("model", "dataset", "data_root") if not base.get(k)]
        if missing:
            raise ConfigError(f"missing {', '.join('--' + m.replace('_', '-') for m in missing)} "
                              f"(or give --spec FILE)")
        spec = RunSpec.from_dict(base)
        if dry_run:
            typer.echo(json.dumps({"run_id": spec.run_id, "spec": spec.to_dict()}, indent=2))
            return
        from transfusion.train import run_training

        result = run_training(spec, runs_dir, device=device, num_workers=workers,
                              max_steps_this_session=max_steps_this_session,
                              keep_training_state=keep_training_state)
    except TransfusionError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=USER_ERROR_EXIT) from None
    _finish(result, runs_dir / spec.run_id)


def pretrain(
    model: str = typer.Option("cbr_small", help="Model to pretrain (any name of transfusion.models)."),
    source: str = typer.Option("synthetic", help=("'synthetic' (the built-in natural-image set) or an ImageFolder "
        "directory.")),
    out: Optional[Path] = typer.Option(None, help="Also copy the final model checkpoint here."),
    image_size: Optional[int] = typer.Option(None, help="Image size (recipe 'pretrain': 224)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (recipe 'pretrain': 10000)."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size (recipe: 64)."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate every k steps."),
    synthetic_images: int = typer.Option(2000, help="Images in the synthetic natural set."),
    in_channels: int = typer.Option(3, help="Input channels of the pretrained model."),
    seed: int = typer.Option(0, help="Training seed."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Recipe override KEY=VALUE (repeatable)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders go."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)."),
    workers: int = typer.Option(0, help="Data-loading worker processes."),
    max_steps_this_session: Optional[int] = typer.Option(None, help="Stop (with a checkpoint) after this many steps."),
) -> None:
    """Pretrain a model on a natural-image source (synthetic by default) and save a model checkpoint
    that `--init transfer --checkpoint <file>` loads: how the CBR models get their 'ImageNet'
    weights (the authors pretrained them themselves) and how demos run offline."""
    _setup_logging()
    from transfusion.train.spec import RunSpec

    try:
        check_options(image_size=image_size, batch_size=batch_size, steps=steps, workers=workers,
                      device=device, eval_every=eval_every, synthetic_images=synthetic_images,
                      max_steps_this_session=max_steps_this_session)
        check_writable_dir("--runs-dir", runs_dir)
        if out is not None:
            check_writable_file("--out", out)
        spec = RunSpec(model=model, dataset="imagefolder", task="natural", data_root=source,
                       recipe="pretrain", seed=seed, steps=steps, eval_every=eval_every,
                       image_size=image_size, batch_size=batch_size, in_channels=in_channels,
                       synthetic_images=synthetic_images, overrides=parse_sets(set_))
        from transfusion.train import run_training

        result = run_training(spec, runs_dir, device=device, num_workers=workers,
                              max_steps_this_session=max_steps_this_session)
    except TransfusionError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=USER_ERROR_EXIT) from None
    run_dir = runs_dir / spec.run_id
    _finish(result, run_dir)
    from transfusion.train.run_folder import RunFolder

    ckpt = RunFolder(run_dir).model_final
    if out is not None:
        atomic_copy(ckpt, out)
        ckpt = out
    typer.echo(f"pretrained {model} checkpoint: {ckpt}\n"
               f"use it with: transfusion train --model {model} --init transfer --checkpoint {ckpt} ...")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("pretrain")(pretrain)
