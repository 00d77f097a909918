"""``transfusion data``: make synthetic datasets in the real formats, describe any dataset."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from transfusion.data.catalogue import FORMATS, format_of_synthetic

data_app = typer.Typer(help="Datasets: make synthetic data in the real formats; describe a dataset.",
                       no_args_is_help=True)


class Kind(str, Enum):
    fundus = "fundus"
    chexpert = "chexpert"
    natural = "natural"


@data_app.command()
def make(
    kind: Kind = typer.Argument(..., help="fundus (EyePACS layout), chexpert (CheXpert-v1.0-small) "
                                          "or natural (ImageFolder)."),
    out: Path = typer.Option(..., "--out", help="Folder to create (must be new or empty)."),
    n: int = typer.Option(2000, "--n", help="Number of images."),
    size: int = typer.Option(128, "--size", help="Image size in pixels (fundus: height; width is 1.25x)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives byte-identical files."),
    classes: int = typer.Option(100, "--classes", help="natural only: number of classes."),
    workers: int = typer.Option(0, "--workers", help="Processes (0: one per CPU core)."),
) -> None:
    """Write a synthetic dataset to --out in the same format as the real one."""
    import time

    from transfusion.data import synthetic
    from transfusion.validation import check_options, check_writable_dir

    check_options(workers=workers, n=n, size=size, classes=classes)
    check_writable_dir("--out", out)
    t0 = time.perf_counter()
    w = workers or None
    if kind is Kind.fundus:
        root = synthetic.make_fundus(out, n, size, seed, workers=w)
    elif kind is Kind.chexpert:
        root = synthetic.make_chexpert(out, n, size, seed, workers=w)
    else:
        root = synthetic.make_natural(out, n, size, classes, seed, workers=w)
    name = format_of_synthetic(kind.value)  # the format it is written in: fundus -> eyepacs
    typer.echo(f"wrote {n} synthetic {kind.value} images ({size} px, seed {seed}) to {root} "
               f"in {time.perf_counter() - t0:.1f} s; read it with load_dataset({name!r}, {str(root)!r}, ...)"
               f" or `transfusion data describe {name} {root}`")


@data_app.command()
def describe(
    name: str = typer.Argument(..., help=" | ".join(FORMATS)),
    root: Path = typer.Argument(..., help="Dataset folder (medmnist: the .npz file)."),
    split: str = typer.Option("all", help="train, val, test or all."),
    seed: int = typer.Option(0, help="Split seed."),
    policy: str = typer.Option("ignore", help="CheXpert uncertainty policy: ignore, zeros or ones."),
    all_views: bool = typer.Option(False, "--all-views", help="CheXpert: keep lateral views too."),
    split_file: Path = typer.Option(None, help="CSV id,split overriding the hash split."),
    skip_missing: bool = typer.Option(False, help="Leave missing images out instead of failing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print image, patient and class counts per split."""
    from transfusion.data import load_dataset
    from transfusion.errors import USER_ERROR_EXIT, TransfusionError

    splits = ["train", "val", "test"] if split == "all" else [split]
    out = []
    for s in splits:
        try:
            ds = load_dataset(name, root, s, image_size=32, augment=False, seed=seed, label_policy=policy,
                              frontal_only=not all_views, split_file=str(split_file) if split_file else None,
                              skip_missing=skip_missing)
        except TransfusionError as e:
            if split == "all" and "split is empty" in str(e):
                out.append({"dataset": name, "split": s, "n": 0, "empty": True})
                continue
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(code=USER_ERROR_EXIT) from None
        out.append(ds.describe())
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    for d in out:
        if d.get("empty"):
            typer.echo(f"{d['dataset']} {d['split']}: empty")
            continue
        typer.echo(f"{d['dataset']} {d['split']}: {d['n']} images, {d['n_patients']} patients"
                   + (f", label policy {d['label_policy']}" if d.get("label_policy") else "")
                   + f"  [{d.get('split_source', '')}]")
        counts = d["counts"]
        for k, v in counts.items():
            typer.echo(f"    {k:<18} {v if not isinstance(v, dict) else '  '.join(f'{a} {b}' for a, b in v.items())}")
        if d["single_class"]:
            typer.echo(f"    single class (no AUC): {', '.join(d['single_class'])}")
        if d["n_missing_skipped"]:
            typer.echo(f"    missing images skipped: {d['n_missing_skipped']}")
