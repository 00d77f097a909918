"""What a run records as it goes: config.json (with its sessions), metrics.jsonl + metrics.csv,
TensorBoard event files with the same numbers, and final.json's record. Main process only.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

from transfusion.errors import ConfigError
from transfusion.train import metrics as M
from transfusion.train.run_folder import RunFolder
from transfusion.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """metrics.jsonl (one JSON object per line, appended), metrics.csv (rewritten from it) and,
    when TensorBoard is installed, event files in tensorboard/ with the same numbers (tags
    ``train/<key>`` and ``eval/<key>``, by step). Main process only (``enabled``)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        folder = RunFolder(run_dir)
        self.jsonl, self.csv, self.tb_dir = folder.metrics_jsonl, folder.metrics_csv, folder.tensorboard
        self.enabled = enabled
        self.tb = None

    def start(self, resume_step: int | None) -> None:
        """A fresh start drops what a run that died before its first checkpoint logged; a resume
        drops what was logged after the checkpoint it resumes from (it will be redone): in
        metrics.jsonl by rewriting it, in TensorBoard by ``purge_step`` (events at later steps
        are discarded when read), so no scalar appears twice."""
        if not self.enabled:
            return
        if resume_step is None:
            if self.jsonl.exists():
                self.jsonl.unlink()
            if self.tb_dir.is_dir():
                shutil.rmtree(self.tb_dir)
        else:
            self.truncate_after(resume_step)
        self.tb = tensorboard_writer(self.tb_dir, None if resume_step is None else resume_step + 1)

    def rows(self) -> list[dict]:
        return M.read_metrics(self.jsonl) if self.jsonl.is_file() else []

    def truncate_after(self, step: int) -> None:
        """Drop records logged after the checkpoint we resume from (they will be redone)."""
        if not self.enabled or not self.jsonl.is_file():
            return
        rows = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self.write_csv()

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{row['kind']}/{k}", v, row["step"])

    def write_csv(self) -> None:
        if not self.enabled:
            return
        rows = self.rows()
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.csv, buf.getvalue())
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


_TB_SAID = False


def tensorboard_writer(log_dir: Path, purge_step: int | None):
    """torch's SummaryWriter on ``log_dir``, or None: without the tensorboard package (one log
    line per process says how to get it) or with TRANSFUSION_TENSORBOARD=0."""
    global _TB_SAID
    if os.environ.get("TRANSFUSION_TENSORBOARD", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken tensorboard/protobuf pair
        if not _TB_SAID:
            _TB_SAID = True
            why = "" if isinstance(e, ImportError) else f" (importing it failed: {e})"
            log.info("TensorBoard event files are off%s: `pip install tensorboard` (or "
                     "transfusion[tensorboard]) to get runs/<id>/tensorboard/ beside metrics.jsonl",
                     why)
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def environment() -> dict:
    try:
        from transfusion.environment import environment_info

        return environment_info()
    except Exception as e:  # noqa: BLE001 - the environment record must never stop a run
        return {"error": f"environment_info failed: {e}"}


def write_config(folder: RunFolder, spec, config: dict) -> None:
    """config.json on a fresh start; on a resume, a check that it holds this spec."""
    path = folder.config
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("spec") != json.loads(json.dumps(spec.to_dict())):
            raise ConfigError(f"{path} holds a different spec than run {spec.run_id}: the "
                              f"folder was edited or copied; move it away to start afresh")
    else:
        atomic_write_json(path, config)


def record_session(folder: RunFolder, runtime: dict, start_step: int) -> None:
    """config.json's ``sessions``: where and from which step each session trained."""
    cfg = json.loads(folder.config.read_text())
    cfg.setdefault("sessions", []).append(
        {**runtime, "from_step": start_step,
         "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    atomic_write_json(folder.config, cfg)


def final_record(spec, task, total: int, last_eval: dict, evals: list[dict]) -> dict:
    """final.json's content (without the test metrics and the session's wall time): the last
    evaluation's metrics and the best headline value over ``evals`` (metrics.jsonl's eval rows)."""
    head = task.headline
    finite = [r for r in evals if isinstance(r.get(head), (int, float)) and not math.isnan(r[head])]
    best = max(finite, key=lambda r: r[head]) if finite else None
    metrics = {k: v for k, v in last_eval.items() if k not in ("step", "kind", "eval_s")}
    return {"run_id": spec.run_id, "status": "finished", "steps": total, "task": task.name,
            "headline": head, head: metrics.get(head), "metrics": metrics,
            "best": {"value": best[head], "step": best["step"]} if best else None}
