"""``transfusion run <experiment>``, ``transfusion run all``, ``transfusion report`` and
``transfusion compare``: the commands a researcher runs.

Every ``run`` command takes the same options (data, models, seeds, steps, image size, pretrained
weights, output folders, executor, preset); its help says what the experiment asks and what it
writes. Registered in transfusion/cli.py by ``register(app, run_app)``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List, Optional

import typer

from transfusion.data import catalogue
from transfusion.experiments import EXPERIMENT_NAMES, experiment_module

log = logging.getLogger(__name__)

PRESET_HELP = ("micro: seconds per experiment (tests); demo: synthetic data on a CPU, the whole "
               "`run all` in about 16 minutes on 2 cores (956 s measured); paper: the paper's "
               "protocol on real data (GPUs).")
# --dataset / --data-format help, from the catalogue of tasks and formats
DATASET_HELP = " or ".join(catalogue.medical_tasks()) + "."
DATA_FORMAT_HELP = ("; ".join(f"{', '.join(catalogue.formats_for(t))} ({t})" for t in catalogue.medical_tasks())
                    + ". Default: " + " / ".join(catalogue.formats_for(t)[0] for t in catalogue.medical_tasks())
                    + ".")


def _run(name: str, *, preset, dataset, data_dir, data_format, models, seeds, steps, image_size,
         batch_size, pretrained, out, runs, executor, threshold, small_data=None, upto=None,
         cache=None, device=None, threads=None, executor_param=None, snapshots=None,
         parallel_runs=None) -> None:
    from transfusion.experiments import config as C
    from transfusion.experiments.engine import run_experiment
    from transfusion.validation import check_options, check_writable_dir, parse_seeds

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_options(image_size=image_size, batch_size=batch_size, steps=steps, threads=threads,
                  device=device, small_data=small_data, parallel_runs=parallel_runs)
    seed_list = parse_seeds(seeds)
    executor_params = C.parse_executor_params(executor_param)
    check_writable_dir("--out", out)
    check_writable_dir("--runs", runs)
    names = EXPERIMENT_NAMES if name == "all" else (name,)
    t_all = time.perf_counter()
    index = None
    cfgs = [C.make_config(
        n, preset=preset, dataset=dataset, data_dir=data_dir, data_format=data_format,
        models=C.parse_list(models), seeds=seed_list, steps=steps,
        image_size=image_size, batch_size=batch_size, pretrained=C.parse_pretrained(pretrained),
        out=out, runs=runs, executor=executor, executor_params=executor_params,
        threshold=threshold,
        small_data=small_data, upto=upto, cache=cache, device=device, threads=threads,
        snapshots=snapshots, parallel_runs=parallel_runs) for n in names]
    if name == "all" and cfgs[0].executor == "local" and cfgs[0].parallel_runs > 1:
        from transfusion.experiments.engine import train_together

        typer.echo(f"== training every experiment's runs in one pool of {cfgs[0].parallel_runs} "
                   "workers (runs shared between experiments are trained once)")
        train_together(cfgs)
    for n, cfg in zip(names, cfgs):
        t0 = time.perf_counter()
        typer.echo(f"== transfusion run {n} (preset {cfg.preset}, {cfg.dataset}, "
                   f"{'data ' + cfg.data_dir if cfg.data_dir else 'SYNTHETIC data'})")
        report = run_experiment(cfg)
        typer.echo(f"   done in {time.perf_counter() - t0:.1f} s: {report}")
        from transfusion.experiments.claims import write_index

        index = write_index(Path(out))  # every experiment's findings so far, one table
    if name == "all":
        typer.echo(f"== all experiments done in {time.perf_counter() - t_all:.1f} s; results in {out}")
    if index:
        typer.echo(f"   findings: {index[1]} ({index[0].name})")


def _make_command(name: str, doc: str, *, small_data: bool = False, upto: bool = False):
    def command(
        preset: str = typer.Option("demo", help=PRESET_HELP),
        dataset: str = typer.Option("retina", help=DATASET_HELP),
        data_dir: Optional[str] = typer.Option(None, help="Real dataset folder (EyePACS/APTOS/CheXpert "
                                               "folder or MedMNIST .npz); default: built-in synthetic data."),
        data_format: Optional[str] = typer.Option(None, help=DATA_FORMAT_HELP),
        models: Optional[str] = typer.Option(None, help="Comma-separated model names (default: the preset's)."),
        seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds, e.g. 0,1,2."),
        steps: Optional[int] = typer.Option(None, help="Training steps per run (default: the preset's)."),
        image_size: Optional[int] = typer.Option(None, help="Image side in pixels (default: the preset's)."),
        batch_size: Optional[int] = typer.Option(None, help="Batch size (default: preset / recipe)."),
        pretrained: Optional[List[str]] = typer.Option(
            None, help="MODEL=PATH, repeatable: a torchvision/timm/transfusion checkpoint per model, e.g. "
                       "resnet50=/path/resnet50-0676ba61.pth. Without it weights are pretrained on the "
                       "fly on the synthetic natural-image source (said loudly in the report)."),
        out: str = typer.Option("results", help="Results folder (results/<experiment>/)."),
        runs: str = typer.Option("runs", help="Run folders (runs/<run_id>/), shared by all experiments."),
        executor: str = typer.Option("local", help="local (resumable, skips finished runs) or submitit (Slurm)."),
        executor_param: Optional[List[str]] = typer.Option(
            None, "--executor-param",
            help="KEY=VALUE for --executor submitit, repeatable: submitit's update_parameters "
                 "(timeout_min=600, cpus_per_task=8, gpus_per_node=1, mem_gb=32, "
                 "partition=gpu, array_parallelism=4: at most 4 jobs of the array at once, ...), "
                 "cluster=slurm|local|debug, folder=PATH. Recorded in plan.json with the job ids."),
        threshold: Optional[float] = typer.Option(None, help="AUC level for steps-to-threshold "
                                                  "(default: the preset's; paper 0.91)."),
        cache: Optional[str] = typer.Option(None, help="Where synthetic data is cached (default: beside runs/)."),
        device: Optional[str] = typer.Option(None, help="Device of the similarity analysis (default cpu)."),
        threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: 1 for the micro "
                                              "and demo presets, which target a shared small CPU; "
                                              "torch's default otherwise)."),
        parallel_runs: Optional[int] = typer.Option(
            None, help="Runs trained at once on this machine (local executor), each on "
                       "cpu_count/N torch threads (default: the preset's: demo 2, others 1). "
                       "Ctrl-C stops them all; rerunning resumes each."),
        snapshots: Optional[int] = typer.Option(
            None, help="Model snapshots kept per training run, evenly spaced (default: the "
                       "preset's: micro 2, demo 4, paper 0); feature-reuse draws similarity over "
                       "training time from them. Part of every run's spec: give the same value to "
                       "every experiment so they share runs."),
        small_data_opt: Optional[int] = typer.Option(None, "--small-data", hidden=not small_data,
                                                     help="Train on this many images (Table 3: 5000)."),
        upto_opt: Optional[str] = typer.Option(None, "--upto", hidden=not upto,
                                               help="Run one cut only: conv1, block1, block2, block3, block4."),
    ) -> None:
        _run(name, preset=preset, dataset=dataset, data_dir=data_dir, data_format=data_format,
             models=models, seeds=seeds, steps=steps, image_size=image_size, batch_size=batch_size,
             pretrained=pretrained, out=out, runs=runs, executor=executor, threshold=threshold,
             small_data=small_data_opt, upto=upto_opt, cache=cache, device=device, threads=threads,
             executor_param=executor_param, snapshots=snapshots, parallel_runs=parallel_runs)

    command.__doc__ = doc
    return command


def _doc(name: str) -> str:
    m = experiment_module(name)
    return f"{m.QUESTION}\n\n{(m.__doc__ or '').strip()}\n\nWrites results/{name}/: {m.WRITES}."


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    for name in EXPERIMENT_NAMES:
        options = set(getattr(experiment_module(name), "OPTIONS", ()))
        run_app.command(name, help=_doc(name))(
            _make_command(name, _doc(name), small_data="small_data" in options, upto="upto" in options))
    run_app.command("all", help="Run every experiment in turn (runs shared between experiments are "
                    "trained once). Interrupt and rerun: finished runs are skipped, an interrupted run "
                    "resumes. Writes results/<experiment>/ for each.")(
        _make_command("all", "Run every experiment."))
    app.command("report")(report)
    app.command("compare")(compare)


def report(
    directory: Path = typer.Argument(..., help="results/<experiment>/ or results/."),
    runs: Optional[str] = typer.Option(None, help="Run folders (default: the one recorded in plan.json)."),
) -> None:
    """Rebuild results.csv, the figures and report.md from the run folders (never from memory)."""
    from transfusion.experiments.engine import rebuild_report

    for p in rebuild_report(directory, Path(runs) if runs else None):
        typer.echo(str(p))
    from transfusion.experiments.claims import write_index

    root = directory if not (Path(directory) / "plan.json").is_file() else Path(directory).parent
    index = write_index(root)
    if index:
        typer.echo(str(index[1]))


def compare(
    ckpt_a: Path = typer.Argument(..., help="A transfusion model checkpoint (e.g. runs/<id>/model_final.pt)."),
    ckpt_b: Path = typer.Argument(..., help="Another one (may be another architecture)."),
    data: str = typer.Option("synthetic", help="Dataset folder, or 'synthetic' for the built-in fundus set."),
    data_format: str = typer.Option("eyepacs", help=", ".join(catalogue.FORMATS) + "."),
    split: str = typer.Option("test", help="Which split's images to feed."),
    images: int = typer.Option(200, help="Number of evaluation images."),
    image_size: Optional[int] = typer.Option(None, help="Image size (default: from checkpoint meta, else 64)."),
    pool: int = typer.Option(4, help="Conv outputs are average-pooled to pool x pool positions."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    cache: str = typer.Option("data-cache", help="Synthetic data cache."),
    heatmap: Optional[Path] = typer.Option(None, "--map", help="Also draw the cross-layer CKA map "
                                           "(every stage of A against every stage of B) to this PNG."),
) -> None:
    """Print the per-layer SVCCA and linear CKA between two checkpoints (one pass over the data),
    and, when both are the same architecture, each stage's relative weight distance ||w_B - w_A|| /
    ||w_A|| (its parameters: conv/linear weights and biases, BatchNorm affine parameters)."""
    from transfusion.analysis.feature_reuse import same_architecture, stage_weight_distances
    from transfusion.analysis.similarity import compare_models, eval_batches, load_checkpoint_model
    from transfusion.data import load_dataset
    from transfusion.errors import CheckpointError
    from transfusion.validation import check_model_input, check_options

    check_options(image_size=image_size, device=device, images=images, pool=pool)
    if heatmap is not None:
        from transfusion.validation import check_writable_file

        check_writable_file("--map", heatmap)
    a, ha = load_checkpoint_model(ckpt_a)
    b, hb = load_checkpoint_model(ckpt_b)
    if ha.get("in_channels", 3) != hb.get("in_channels", 3):
        raise CheckpointError(f"{ckpt_a} takes {ha.get('in_channels', 3)}-channel images and "
                              f"{ckpt_b} {hb.get('in_channels', 3)}-channel images: one set of "
                              "images cannot feed both; compare models trained on the same inputs")
    size = image_size or (ha.get("meta") or {}).get("image_size") or 64
    for header in (ha, hb):
        check_model_input(header["model_name"], size, 32, header.get("in_channels", 3), device)
    if data == "synthetic":
        from transfusion.data.synthetic import ensure_synthetic

        root = ensure_synthetic(catalogue.synthetic_kind("retina"), Path(cache),
                                n_images=max(images * 3, 100), image_size=size, seed=0)
        data_format = catalogue.synthetic_format("retina")
    else:
        root = data
    ds = load_dataset(data_format, root, split, image_size=size, augment=False,
                      in_channels=ha.get("in_channels", 3))
    dist = stage_weight_distances(a, b) if same_architecture(a, b) else None
    rows = compare_models({"a": a, "b": b}, [("a", "b")], eval_batches(ds, images), pool=pool,
                          device=device)
    if not rows:
        typer.echo("the two models share no stage names; nothing to compare")
        raise typer.Exit(1)
    wcol = f"{'WDIST':>8}" if dist is not None else ""
    typer.echo(f"{'layer':<16}{'SVCCA':>8}{'CKA':>8}{wcol}   ({rows[0]['n_images']} images, pool "
               f"{pool}x{pool}" + ("; WDIST = ||w_b - w_a|| / ||w_a||" if dist is not None else "") + ")")
    for r in rows:
        w = f"{dist[r['layer']]:>8.3f}" if dist is not None else ""
        typer.echo(f"{r['layer']:<16}{r['svcca']:>8.3f}{r['cka']:>8.3f}{w}")
    if heatmap is not None:
        from transfusion.analysis.similarity import cross_layer_map
        from transfusion.report.figures import similarity_heatmap

        m = cross_layer_map(a, b, eval_batches(ds, images), pool=pool, device=device)
        similarity_heatmap(m.values, m.rows, m.cols, heatmap, row_label=f"A: {ckpt_a.name}",
                           col_label=f"B: {ckpt_b.name}", value_label="linear CKA",
                           title=f"cross-layer CKA ({m.n} datapoints: {images} images x {pool}x{pool})")
        typer.echo(f"cross-layer CKA map: {heatmap}")
