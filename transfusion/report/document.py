"""report.md: one Markdown document per experiment that states what was run and shows the results.

Every report states the data and its label policy, the training recipe, the seeds, the source of
the pretrained weights (loudly when they were made on the fly from synthetic natural images) and
the paper's numbers beside ours, then embeds the figures (PNG files beside report.md).
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from transfusion.report.tables import PAPER_SOURCE
from transfusion.utils import atomic_write_text


def setup_section(cfg: dict, *, data: dict, recipe: dict, pretrained: dict[str, str]) -> str:
    """The 'what was run' block: data, label policy, recipe, seeds, pretrained source, scale."""
    lines = ["## What was run", ""]
    if cfg.get("data_dir"):
        lines.append(f"- **Data**: {cfg['dataset']} from `{cfg['data_dir']}` (format "
                     f"{cfg.get('data_format')}).")
    else:
        lines.append(f"- **Data**: the built-in SYNTHETIC {cfg['dataset']} set (written in the real "
                     f"file formats; its numbers say nothing about real medical images).")
    for k, v in data.items():
        lines.append(f"- {k}: {v}")
    lines.append(f"- **Preset**: {cfg['preset']}; image size {cfg['image_size']} px; "
                 f"{cfg['steps']} steps per run, evaluated every {cfg['eval_every']} steps.")
    lines.append(f"- **Seeds**: {', '.join(str(s) for s in cfg['seeds'])}.")
    if recipe:
        lines.append("- **Recipe**: " + ", ".join(f"{k} {v}" for k, v in recipe.items()) + ".")
    lines.append(f"- **Steps-to-threshold level**: {cfg['threshold']} ({cfg.get('threshold_note', '')}).")
    if pretrained:
        lines.append("- **Pretrained weights**:")
        for model, src in pretrained.items():
            loud = "**" if "synthetic" in src.lower() else ""
            lines.append(f"  - {model}: {loud}{src}{loud}")
    lines.append(f"- **Executor**: {cfg.get('executor', 'local')}.")
    return "\n".join(lines) + "\n"


def write_report(out_dir, *, title: str, question: str, setup: str, sections: list[tuple[str, str]],
                 figures: list[tuple[str, str]], warnings: list[str] = ()) -> Path:
    """Write ``out_dir/report.md``; ``figures`` are (caption, file name relative to out_dir)."""
    out_dir = Path(out_dir)
    parts = [f"# {title}", "", f"*Question (paper):* {question}", "",
             f"_Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
             f"`transfusion report` from the run folders; table rows are in `results.csv`._", ""]
    if warnings:
        parts += ["> **Read this first**", ">"] + [f"> - {w}" for w in warnings] + [""]
    parts.append(setup)
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    if figures:
        parts += ["## Figures", ""]
        for caption, name in figures:
            parts += [f"**{caption}**", "", f"![{caption}]({name})", ""]
    parts += ["## Source of the paper's numbers", "", PAPER_SOURCE + ".", ""]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path
