"""Every paper experiment as a plan of training runs plus an aggregation into results/<experiment>/.

``EXPERIMENTS`` maps the command name (``transfusion run <name>``) to its module; each module has
``TITLE``, ``QUESTION``, ``WRITES``, ``plan(cfg, make) -> list[PlannedRun]``, optionally
``OPTIONS`` (the experiment-specific options its ``run`` command offers: ``small_data``, ``upto``),
``analyse(cfg, planned, runs_dir, ctx)`` (similarity computations after training) and
``report(plan_doc, runs_dir, out_dir)`` (results.csv, figures and report.md from files only).
``transfusion.experiments.engine.run_experiment`` drives them; ``runs.py`` holds the
run spec and the executors.
"""
from __future__ import annotations

import importlib

_MODULES = {
    "performance": "performance",
    "representations": "representations",
    "layer-change": "layer_change",
    "feature-reuse": "feature_reuse",
    "mean-var": "mean_var",
    "weight-transfusion": "weight_transfusion",
    "slim": "slim",
    "gabor": "gabor",
}
EXPERIMENT_NAMES = tuple(_MODULES)


def experiment_module(name: str):
    from transfusion.errors import ConfigError

    if name not in _MODULES:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(f"transfusion.experiments.{_MODULES[name]}")
