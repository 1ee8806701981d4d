"""``report.html`` of a training run folder, read from the files the trainers write (``metrics.csv``,
``manifest.json``, ``config.yaml``, ``images/step_*.png``, ``samples.jsonl``), never from the trainer code:
the app layer must not import harness/, and a page can then be made for a finished, crashed or still
running folder alike (a torn last CSV line is skipped).

Charts: the reward and each component, KL, clip fraction, the ratio and its on-policy self-test, the
held-out eval rewards, the losses; then every logged image grid with what each image was rewarded.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evalsuite.charts import line_chart
from evalsuite.errors import ConfigError
from evalsuite.pages import esc, fmt, link, page, table
from evalsuite.store import JsonlLog, atomic_write_text

GRID = re.compile(r"step_(\d+)\.png$")
RECORDS_PER_GRID = 16  # the records listed under a grid (a grid holds `logged_images` images)


def _is_component(col: str) -> bool:
    return col.startswith("reward/") and col.endswith("/mean") and col != "reward/mean"


# (chart name, title, which columns): the first group that takes a column keeps it.
CHARTS: list[tuple[str, str, Callable[[str], bool]]] = [
    ("reward", "reward (total and each component, mean over the batch)",
     lambda c: c == "reward/mean" or _is_component(c)),
    ("kl", "KL to the reference", lambda c: c.rsplit("/", 1)[-1] in ("kl", "kl_mean")),
    ("clip", "clip fraction", lambda c: c.endswith("clip_fraction")),
    ("ratio", "importance ratio (min / mean / max)",
     lambda c: re.search(r"ratio_(min|mean|max)$", c) is not None),
    ("selftest", "ratio self-test: max |log p − recorded log p| (≈ 0 when on-policy)",
     lambda c: c.startswith("selftest/")),
    ("eval", "held-out eval rewards", lambda c: c.startswith("eval/")),
    ("loss", "losses", lambda c: c.endswith("loss")),
]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """``metrics.csv`` as numbers (blank or unparsable cells: NaN); a torn or garbled row is skipped."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            if None in raw or any(v is None for v in raw.values()):
                continue  # a row cut short (the trainer is writing it, or died mid-write)
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value)
                except ValueError:
                    row[key] = math.nan
            if math.isfinite(row.get("step", math.nan)):
                rows.append(row)
    return rows


def _charts(rows: list[dict[str, float]]) -> tuple[list[str], list[str]]:
    """(the chart SVGs, the names of the charts drawn)."""
    columns = [c for c in rows[0] if c != "step"] if rows else []
    steps = [r["step"] for r in rows]
    taken: set[str] = set()
    out, names = [], []
    for name, title, wanted in CHARTS:
        cols = [c for c in columns if c not in taken and wanted(c)]
        taken.update(cols)
        cols = [c for c in cols if any(math.isfinite(r[c]) for r in rows)]
        if cols:
            series = {c: (steps, [r[c] for r in rows]) for c in cols}
            out.append(line_chart(f"train-{name}", title, series))
            names.append(name)
    return out, names


def _settings(manifest: dict[str, Any]) -> list[list[str]]:
    config = manifest.get("config") or {}
    model = (manifest.get("flow") or {}).get("model") or (config.get("policy") or {}).get("model")
    weights = (manifest.get("rewards") or {}).get("weights")
    grpo = config.get("grpo") or {}
    rows = [("kind", manifest.get("kind")), ("model", model), ("reward weights", weights),
            ("steps", config.get("steps")), ("seed", config.get("seed")),
            ("group size × prompts/step", f"{grpo.get('group_size')} × {grpo.get('prompts_per_step')}"
             if grpo else None), ("beta (KL)", grpo.get("beta")), ("clip eps", grpo.get("clip_eps")),
            ("learning rate", (config.get("optim") or {}).get("lr")), ("ranks", manifest.get("world_size"))]
    return [[esc(k), esc(v)] for k, v in rows if v not in (None, "", {})]


def _grids(out_dir: Path) -> str:
    by_step: dict[int, list[dict[str, Any]]] = {}
    for rec in JsonlLog(out_dir / "samples.jsonl").read():
        if isinstance(rec.get("step"), int):
            by_step.setdefault(rec["step"], []).append(rec)
    parts = []
    for grid in sorted((out_dir / "images").glob("step_*.png")):
        step = int(GRID.search(grid.name).group(1))
        recs = by_step.get(step, [])[:RECORDS_PER_GRID]
        cells = [[esc(r.get("prompt")), esc(r.get("rendered")) if r.get("rendered") != r.get("prompt")
                  else "", fmt(r.get("reward"))] for r in recs]
        listing = table(["prompt", "rendered as", "reward"], cells, text_cols=2) if cells else ""
        parts.append(f"<section class='grid-step' data-step='{step}'><h3>step {step}</h3>"
                     f"<img loading='lazy' src='{esc(link(grid, out_dir))}' alt='images at step {step}'>"
                     f"{listing}</section>")
    return "<h2>Logged images</h2><div class='grids'>" + "".join(parts) + "</div>" if parts else ""


def render_training_report(out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/report.html`` for a training run folder; returns its path."""
    import json

    out_dir = Path(out_dir)
    metrics = out_dir / "metrics.csv"
    if not metrics.is_file():
        raise ConfigError(f"{out_dir}: not a training run folder (no metrics.csv; `evalsuite train` writes "
                          "one after its first step)")
    rows = read_metrics(metrics)
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    charts, _ = _charts(rows)
    last = rows[-1] if rows else {}
    logs = ("manifest.json", "config.yaml", "metrics.csv", "samples.jsonl")
    files = " · ".join(f"<a href='{esc(n)}'>{esc(n)}</a>" for n in logs if (out_dir / n).exists())
    body = (f"<p>{esc(out_dir.resolve())} — {len(rows)} steps logged. {files}</p>"
            + table(["setting", "value"], _settings(manifest), text_cols=2)
            + f"<h2>Curves</h2><div class='charts'>{''.join(charts)}</div>"
            + (f"<h2>Last step ({fmt(last.get('step'), 0)})</h2>"
               + table(["metric", "value"], [[esc(k), fmt(v, 6)] for k, v in last.items() if k != "step"])
               if last else "")
            + _grids(out_dir))
    title = f"training: {manifest.get('kind', 'run')} {out_dir.name}"
    return atomic_write_text(out_dir / "report.html", page(title, body, kind="training"))
