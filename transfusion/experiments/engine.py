"""Drive one experiment: data, pretrained weights, plan, execute, analyse, report.

``run_experiment(cfg)``:
1. the data: a real folder (``--data-dir``) or the built-in synthetic set, made once and cached;
2. pretrained weights for every model a non-random init needs: ``--pretrained MODEL=PATH`` or, when
   none is given, a pretraining run on the synthetic natural-image source (an ordinary run in
   runs/, so it is made once per model and setting and reused by every experiment) — this is said
   loudly in the log, plan.json and report.md;
3. the plan (``module.plan``) written to results/<experiment>/plan.json;
4. the runs executed by the chosen executor (finished runs skipped, interrupted ones resumed);
5. the experiment's analysis (similarities), then its report, from files only.

Everything that knows training's ``RunSpec`` fields is in ``training_spec`` below.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from transfusion.data import catalogue
from transfusion.errors import ConfigError
from transfusion.experiments import experiment_module
from transfusion.experiments.common import PlannedRun, read_plan, write_plan
from transfusion.experiments.config import ExperimentConfig
from transfusion.train.run_folder import RunFolder

log = logging.getLogger(__name__)

#: every medical run evaluates its final model once on this held-out split (final.json "test",
#: test_outputs.npz): the experiments report it, as the paper reports a held-out test set
TEST_SPLIT = "test"


# --------------------------------------------------------------------------------------- data
def data_source(cfg: ExperimentConfig) -> dict:
    """{'dataset': load_dataset name, 'root': folder, 'synthetic': bool} for the medical task."""
    if cfg.data_dir is not None:
        return {"dataset": cfg.data_format, "root": cfg.data_dir, "synthetic": False}
    from transfusion.data.synthetic import ensure_synthetic

    root = ensure_synthetic(catalogue.synthetic_kind(cfg.dataset), Path(cfg.cache),
                            n_images=cfg.synthetic_images + cfg.synthetic_eval_images,
                            image_size=cfg.image_size, seed=0,
                            test_images=cfg.synthetic_eval_images)
    return {"dataset": catalogue.synthetic_format(cfg.dataset), "root": str(root), "synthetic": True}


def machine_cache() -> Path:
    """This machine's cache ($TRANSFUSION_CACHE, default ~/.cache/transfusion)."""
    from transfusion.train.data_stream import cache_root

    return cache_root()


def pretrain_runs_dir() -> Path:
    """Where on-the-fly pretraining runs live: once per machine, so every runs/ and results/
    folder finds the same weights (their data, the synthetic natural-image source, is in the
    same cache, so their run ids do not depend on where an experiment writes)."""
    return machine_cache() / "pretrained"


def natural_source(cfg: ExperimentConfig) -> dict:
    from transfusion.data.synthetic import ensure_synthetic

    root = ensure_synthetic(catalogue.synthetic_kind("natural"), machine_cache() / "data",
                            n_images=cfg.pretrain_images, image_size=cfg.image_size, seed=0,
                            n_classes=cfg.pretrain_classes)
    return {"dataset": catalogue.synthetic_format("natural"), "root": str(root), "synthetic": True}


# --------------------------------------------------------------------------- training specs
def training_spec(*, model: str, task: str, data: dict, init: str, seed: int, steps: int,
                  eval_every: int, image_size: int, batch_size: int | None,
                  checkpoint: str | None = None, upto: str | None = None, limit: int | None = None,
                  snapshot_every: int = 0, bn_recalibration_images: int = 0,
                  test_split: str | None = None, recipe_overrides: dict | None = None):
    """Training's RunSpec for one run (the one place that knows its fields).

    Checkpoints are written at every evaluation so an interrupted short run resumes close to
    where it stopped (the recipe default, 1000 steps, is for long runs). ``snapshot_every`` > 0
    keeps the model every that many steps (feature-reuse's similarity over training time); it is
    set only when asked, so the specs (run_ids) of runs without snapshots are unchanged.
    """
    from transfusion.experiments.runs import RunSpec

    overrides = {**(recipe_overrides or {}), "checkpoint_every": eval_every,
                 "log_every": max(1, min(50, eval_every))}
    if snapshot_every:
        overrides["snapshot_every"] = int(snapshot_every)
    if bn_recalibration_images:
        overrides["bn_recalibration_images"] = int(bn_recalibration_images)
    return RunSpec(model=model, task=task, dataset=data["dataset"], data_root=data["root"],
                   init=init, checkpoint=checkpoint, upto=upto, seed=seed, steps=steps,
                   eval_every=eval_every, image_size=image_size, batch_size=batch_size,
                   limit=limit, overrides=overrides, test_split=test_split)


class RunsInterrupted(ConfigError):
    """A run stopped before its end (Ctrl-C, SIGTERM): rerun the same command to resume it."""


def execute(cfg: ExperimentConfig, specs: list, jobs: "JobLog | None" = None,
            runs_dir: Path | None = None) -> None:
    """Run the specs with the chosen executor; finished runs are skipped, interrupted ones resumed.

    Locally the specs go one at a time, so that an interrupted run stops the whole plan (instead
    of the executor moving on to the next run) and the rerun continues exactly there; with
    ``cfg.parallel_runs`` > 1 they go to a pool of that many processes, which stops queueing runs when
    one stops early (Ctrl-C stops them all; each resumes from its checkpoint). With
    submitit they go as one job array, with ``cfg.executor_params``; ``jobs`` records the ids.
    """
    unique = list({s.run_id: s for s in specs}.values())
    if not unique:
        return
    runs_dir = Path(runs_dir) if runs_dir is not None else cfg.runs_dir
    with _decode_cache_env(cfg.decode_cache):
        _execute(cfg, unique, jobs, runs_dir)


@contextlib.contextmanager
def _decode_cache_env(on: bool):
    """DECODE_CACHE_ENV set to 1 while ``on`` runs train (the pool's workers inherit it), then put
    back, so a later run in the same process (another preset, real 587 px data) does not cache."""
    from transfusion.train.data_stream import DECODE_CACHE_ENV

    old = os.environ.get(DECODE_CACHE_ENV)
    if on:
        os.environ[DECODE_CACHE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(DECODE_CACHE_ENV, None)
        else:
            os.environ[DECODE_CACHE_ENV] = old


def _execute(cfg: ExperimentConfig, unique: list, jobs: "JobLog | None", runs_dir: Path) -> None:
    from transfusion.experiments.runs import make_executor

    if cfg.executor == "submitit":
        kwargs = {"threads": cfg.threads, **cfg.executor_params}
        # submitit's logs stay beside this experiment's runs, also for the machine-wide pretraining
        kwargs.setdefault("folder", str(cfg.runs_dir / "_submitit"))
        if jobs is not None:
            kwargs["on_submit"] = jobs.add
    else:
        kwargs = {"device": cfg.device} if cfg.device else {}
        kwargs["workers"] = cfg.parallel_runs
    ex = make_executor(cfg.executor, runs_dir=runs_dir, **kwargs)
    # one spec at a time locally (an interrupted run stops the plan there); a local pool and
    # submitit take the whole list (the pool stops queueing when a run stops early)
    one_by_one = cfg.executor == "local" and cfg.parallel_runs == 1
    batches = [[s] for s in unique] if one_by_one else [unique]
    from transfusion.experiments.runs import Progress
    from transfusion.train.spec import is_finished

    todo = [s for s in unique if not is_finished(s, runs_dir)]
    progress = Progress(len(todo)) if one_by_one and todo else None
    if len(todo) < len(unique):
        log.info("%d of %d runs of this plan already finished: skipped", len(unique) - len(todo),
                 len(unique))
    for batch in batches:
        if progress and batch[0] in todo:
            progress.starting(batch[0].run_id)
        results = ex.run(batch, runs_dir)
        if progress and batch[0] in todo:
            progress.finished(batch[0].run_id)
        if jobs is not None and cfg.executor == "submitit":
            jobs.cluster = ex.cluster
        stopped = [r for r in results if r.get("status") != "finished"]
        if stopped:
            raise RunsInterrupted(
                f"run {stopped[0].get('run_id')} did not finish ({stopped[0].get('status')}: "
                f"{stopped[0].get('message', '')}); rerun the same command: finished runs are "
                f"skipped and this one resumes from its last checkpoint")


class JobLog:
    """plan.json's ``executor`` entry: the executor, the parameters it was given (defaults
    included) and every submitted job's id with its run, saved again as soon as jobs are
    submitted (before waiting for them) once plan.json exists."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.name, self.parameters, self.cluster, self.folder = cfg.executor, {}, None, None
        if cfg.executor == "submitit":
            from transfusion.experiments.runs import SUBMITIT_OWN_KEYS, SubmititExecutor

            p = cfg.executor_params
            self.parameters = {**SubmititExecutor.DEFAULTS,
                               **{k: v for k, v in p.items() if k not in SUBMITIT_OWN_KEYS}}
            self.cluster = p.get("cluster")  # None until submitit has chosen one
            self.folder = str(p.get("folder") or cfg.runs_dir / "_submitit")
        self.jobs: list[dict] = []
        self.save = None  # set once plan.json is written

    def add(self, submitted: list[dict]) -> None:
        self.jobs += submitted
        if self.save is not None:
            self.save()

    def to_dict(self) -> dict:
        d = {"name": self.name, "parameters": self.parameters, "jobs": self.jobs}
        if self.name == "submitit":
            d.update(cluster=self.cluster, folder=self.folder)
        return d


# ------------------------------------------------------------------------ pretrained weights
#: Seed of the on-the-fly pretraining runs. It must differ from every experiment seed: with the
#: same seed the pretraining run starts from exactly the random-init run's weights, so a short
#: pretraining leaves 'transfer' close to 'random seed 0' and inflates CCA(random, transfer).
PRETRAIN_SEED = 10_000


def pretrain_spec(cfg: ExperimentConfig, model: str):
    return training_spec(model=model, task="natural", data=natural_source(cfg), init="random",
                         seed=PRETRAIN_SEED, steps=cfg.pretrain_steps,
                         eval_every=cfg.pretrain_steps, image_size=cfg.image_size,
                         batch_size=cfg.batch_size)


def resolve_pretrained(cfg: ExperimentConfig, models: list[str], jobs: JobLog | None = None
                       ) -> dict[str, dict]:
    """{model: {'path': checkpoint, 'source': description}}; pretrains on the fly where needed."""
    out, todo = {}, []
    for m in models:
        if m in cfg.pretrained:
            out[m] = {"path": cfg.pretrained[m], "source": f"given: {cfg.pretrained[m]}"}
        else:
            todo.append(m)
    if todo:
        specs = {m: pretrain_spec(cfg, m) for m in todo}
        where = pretrain_runs_dir()
        log.warning("NO --pretrained WEIGHTS for %s: pretraining them on the SYNTHETIC natural-image "
                    "source (dead leaves, %d steps; made once per machine under %s). 'transfer' then "
                    "means transfer from synthetic dead-leaves images, NOT ImageNet.", ", ".join(todo),
                    cfg.pretrain_steps, where)
        execute(cfg, list(specs.values()), jobs, runs_dir=where)
        for m, spec in specs.items():
            run = where / spec.run_id
            out[m] = {"path": str(final_checkpoint(run)),
                      "source": (f"pretrained ON THE FLY on the SYNTHETIC natural-image source "
                                 f"(dead-leaves images, {cfg.pretrain_steps} steps, "
                                 f"{cfg.pretrain_images} images, {cfg.pretrain_classes} classes; run "
                                 f"{run}), NOT ImageNet; remake it with `transfusion train --spec "
                                 f"{run}/config.json --runs-dir {where}` after deleting that folder")}
    return out


# ------------------------------------------------------------------------------ run folders
def final_checkpoint(run_dir: Path) -> Path:
    folder = RunFolder(Path(run_dir))
    return folder.require(folder.model_final, "final model checkpoint")


def step0_checkpoint(run_dir: Path) -> Path:
    folder = RunFolder(Path(run_dir))
    return folder.require(folder.step0, "step-0 model checkpoint")


@dataclass
class Context:
    """What an experiment's analysis step needs: the fixed evaluation images, the device, checkpoints."""

    cfg: ExperimentConfig
    data: dict
    device: str = "cpu"

    def dataset(self, split: str = "test"):
        """One split of the medical data, unaugmented (the fixed evaluation set is 'test')."""
        from transfusion.data import load_dataset
        from transfusion.train.data_stream import decoded_images_dir

        cache = str(decoded_images_dir()) if self.cfg.decode_cache else None
        return load_dataset(self.data["dataset"], self.data["root"], split, image_size=self.cfg.image_size,
                            augment=False, seed=0, cache_dir=cache)

    def eval_batches(self):
        from transfusion.analysis.similarity import eval_batches

        return eval_batches(self.dataset("test"), self.cfg.similarity_images, batch_size=32)

    final_checkpoint = staticmethod(final_checkpoint)
    step0_checkpoint = staticmethod(step0_checkpoint)


# ------------------------------------------------------------------------------- the driver
def plan_experiment(cfg: ExperimentConfig, module, data: dict, pretrained: dict[str, dict]
                    ) -> list[PlannedRun]:
    def make(*, model: str, init: str, seed: int, upto: str | None = None, limit: int | None = None,
             slot: str | None = None, source_model: str | None = None,
             triplet: int | None = None) -> PlannedRun:
        ckpt = None
        if init != "random":
            src = source_model or model
            if src not in pretrained:
                raise ConfigError(f"no pretrained weights for {src}")
            ckpt = pretrained[src]["path"]
        spec = training_spec(model=model, task=cfg.dataset, data=data, init=init, seed=seed,
                             steps=cfg.steps, eval_every=cfg.eval_every, image_size=cfg.image_size,
                             batch_size=cfg.batch_size, checkpoint=ckpt, upto=upto, limit=limit,
                             snapshot_every=cfg.snapshot_every,
                             bn_recalibration_images=cfg.bn_recalibration_images,
                             test_split=TEST_SPLIT,
                             recipe_overrides={**cfg.recipe_overrides, **cfg.model_overrides.get(model, {})})
        role = {"model": model, "init": init, "seed": seed, "upto": upto, "limit": limit}
        if slot:
            role["slot"] = slot
        if triplet is not None:
            role["triplet"] = triplet
        if source_model:
            role["source_model"] = source_model
        return PlannedRun(role=role, spec=spec)

    return module.plan(cfg, make)


def needed_pretrained(cfg: ExperimentConfig, module) -> list[str]:
    """The models whose pretrained weights the plan needs (a dry plan that records roles only)."""
    needed: list[str] = []

    def dry(*, model, init, seed, upto=None, limit=None, slot=None, source_model=None, triplet=None):
        src = source_model or model
        if init != "random" and src not in needed:
            needed.append(src)
        return None

    module.plan(cfg, dry)
    return needed


def run_experiment(cfg: ExperimentConfig) -> Path:
    """Plan, train (resumably), analyse and report one experiment; returns report.md's path."""
    module = experiment_module(cfg.experiment)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    data = data_source(cfg)
    jobs = JobLog(cfg)
    pretrained = resolve_pretrained(cfg, needed_pretrained(cfg, module), jobs)
    planned = plan_experiment(cfg, module, data, pretrained)
    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    def save_plan() -> None:
        write_plan(out_dir, cfg, planned, pretrained={m: p["source"] for m, p in pretrained.items()},
                   extra={"data": data, "executor": jobs.to_dict()})

    save_plan()
    jobs.save = save_plan
    log.info("%s: %d runs (%d distinct) -> %s", cfg.experiment, len(planned),
             len({p.run_id for p in planned}), cfg.runs_dir)
    try:
        execute(cfg, [p.spec for p in planned], jobs)
    finally:
        if cfg.executor == "submitit":
            save_plan()  # the cluster submitit chose
    if hasattr(module, "analyse"):
        with _analysis_threads(cfg):
            module.analyse(cfg, planned, cfg.runs_dir, Context(cfg, data, cfg.device or "cpu"))
    return module.report(read_plan(out_dir), cfg.runs_dir, out_dir)


@contextlib.contextmanager
def _analysis_threads(cfg: ExperimentConfig):
    """The analysis runs after the training pool has finished: with ``parallel_runs`` workers of
    ``threads`` each, it may use the cores they used (parallel_runs x threads torch threads)."""
    import torch

    n = torch.get_num_threads()
    if cfg.threads and cfg.parallel_runs > 1:
        torch.set_num_threads(cfg.threads * cfg.parallel_runs)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def train_together(cfgs: list[ExperimentConfig]) -> None:
    """`run all` on a local pool: the pretraining, then every experiment's runs as one list, so
    that no worker idles at the end of each experiment while the other finishes its last run. The
    experiments then find their runs finished and go straight to their analyses and reports."""
    modules = [experiment_module(c.experiment) for c in cfgs]
    needed = list(dict.fromkeys(m for c, mod in zip(cfgs, modules) for m in needed_pretrained(c, mod)))
    pretrained = resolve_pretrained(cfgs[0], needed)
    data = data_source(cfgs[0])
    specs = [p.spec for c, mod in zip(cfgs, modules) for p in plan_experiment(c, mod, data, pretrained)]
    log.info("run all: %d distinct training runs over %d experiments", len({s.run_id for s in specs}),
             len(cfgs))
    execute(cfgs[0], specs)


def rebuild_report(out_dir: Path, runs_dir: Path | None = None) -> list[Path]:
    """Rebuild results.csv, figures and report.md of one results/<experiment>/ folder (or of every
    experiment folder under a results/ folder) from plan.json and the run folders."""
    out_dir = Path(out_dir)
    targets = [out_dir] if (out_dir / "plan.json").is_file() else sorted(
        p.parent for p in out_dir.glob("*/plan.json"))
    if not targets:
        raise ConfigError(f"no plan.json in {out_dir} or its sub-folders: give results/<experiment>/ "
                          f"or results/ as written by `transfusion run`")
    done = []
    for t in targets:
        plan = read_plan(t)
        module = experiment_module(plan["config"]["experiment"])
        rd = Path(runs_dir) if runs_dir else Path(plan["config"]["runs"])
        done.append(module.report(plan, rd, t))
    return done
