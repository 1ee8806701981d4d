"""Leaderboards: one row per (run, benchmark) in ``<dir>/<benchmark>.jsonl``, rendered to ``<benchmark>.md``
and ``<benchmark>.html`` (a row per run linking to its report and manifest, a chart per task).

A row carries the scorer backends and modes next to the numbers, because numbers from different
backends (mmdet vs transformers detector, mPLUG vs Qwen VQA) must never be ranked together silently.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from evalsuite.store import JsonlLog, atomic_write_text


def _scorer_label(describe: dict[str, Any]) -> str:
    keys = [k for k in describe if k not in ("name", "images_per_prompt")]
    return ", ".join(f"{k}={describe[k]}" for k in keys) or "default"


def add_run(directory: str | os.PathLike, run_dir: str | os.PathLike, *, model: str | None = None) -> Path:
    """Upsert the row of ``run_dir`` (a finished ``evaluate()`` run) and re-render the markdown table."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    bench = results["benchmark"]["name"]
    gen = manifest.get("fingerprint", {}).get("generator") or {}
    row = {
        "run": str(run_dir.resolve()),
        "model": model or gen.get("model") or manifest.get("fingerprint", {}).get("images_dir"),
        "benchmark": bench,
        "scorers": _scorer_label(results["benchmark"]),
        "images": results.get("n_images"),
        "created": manifest.get("created"),
        **{f"{k}": v for k, v in results["summary"].items()},
    }
    directory = Path(directory)
    path = directory / f"{bench}.jsonl"
    rows = [r for r in JsonlLog(path).read() if r.get("run") != row["run"]] + [row]
    tmp = directory / f".{bench}.jsonl.tmp"
    tmp.unlink(missing_ok=True)
    JsonlLog(tmp).append(rows)
    tmp.replace(path)
    render(directory, bench)
    return path


def render(directory: str | os.PathLike, benchmark: str) -> str:
    """Markdown table of a benchmark's rows, best first by its first numeric column (and the HTML page)."""
    from evalsuite.leaderboard_page import render_html

    directory = Path(directory)
    rows = JsonlLog(directory / f"{benchmark}.jsonl").read()
    fixed = ["model", "scorers", "images", "created"]
    metrics = [k for r in rows for k, v in r.items()
               if k not in fixed and k not in ("run", "benchmark") and isinstance(v, (int, float))]
    metrics = list(dict.fromkeys(metrics))
    if metrics:
        def rank(r: dict[str, Any]) -> float:
            v = r.get(metrics[0])
            return -v if isinstance(v, (int, float)) else math.inf

        rows.sort(key=rank)
    cols = ["model", *metrics, "scorers", "images", "created"]
    lines = [f"# {benchmark}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(directory / f"{benchmark}.md", text)
    atomic_write_text(directory / f"{benchmark}.html", render_html(directory, benchmark, rows, metrics))
    return text
