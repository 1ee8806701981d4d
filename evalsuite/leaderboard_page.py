"""``leaderboards/<benchmark>.html``: the leaderboard's rows, each linking to its run's report and manifest
with what the manifest says made the number (model, protocol, seed, sampler), and a chart per task.

Rows come from ``<benchmark>.jsonl`` (``evalsuite.leaderboard``); each run's manifest is read when the page
is drawn, so a run folder that has moved or gone shows as such instead of breaking the page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalsuite.charts import bar_chart
from evalsuite.pages import esc, fmt, link, page, table

NOT_CHARTED = ("errors",)  # counts, not scores
LABEL_CHARS = 40


def _manifest(run: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _made_with(manifest: dict[str, Any] | None) -> str:
    """Protocol, seed, images per prompt and the sampler settings the manifest records."""
    if manifest is None:
        return "<span class='muted'>manifest missing</span>"
    fp = manifest.get("fingerprint") or {}
    gen = fp.get("generator") or {}
    protocol = (fp.get("protocol") or {}).get("name") or (manifest.get("command") or {}).get("protocol")
    bits = [("protocol", protocol), ("seed", fp.get("seed")), ("images/prompt", fp.get("images_per_prompt")),
            ("steps", gen.get("num_inference_steps")), ("guidance", gen.get("guidance_scale")),
            ("size", f"{gen['width']}×{gen['height']}" if gen.get("width") and gen.get("height") else None),
            ("dtype", gen.get("dtype"))]
    return ", ".join(f"{k} {esc(v)}" for k, v in bits if v is not None) or "–"


def _links(run: Path, page_dir: Path) -> str:
    out = []
    for name, label in (("report.html", "report"), ("manifest.json", "manifest")):
        target = run / name
        out.append(f"<a href='{esc(link(target, page_dir))}'>{label}</a>" if target.is_file()
                   else f"<span class='muted'>no {label}</span>")
    return " · ".join(out)


def render_html(directory: Path, benchmark: str, rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """The page for rows already ranked (best first) with their metric columns."""
    head = ["#", "model (how the number was made)", *metrics, "images", "created"]
    cells = []
    for rank, r in enumerate(rows, 1):
        run = Path(str(r.get("run")))
        about = (f"<b>{esc(r.get('model'))}</b> {_links(run, directory)}<br><span class='small'>"
                 f"{_made_with(_manifest(run))}<br>scorers: {esc(r.get('scorers'))}</span>")
        cells.append([str(rank), about, *[fmt(r.get(m)) for m in metrics], fmt(r.get("images")),
                      esc(r.get("created"))])
    labels = [f"{i}. {str(r.get('model'))[-LABEL_CHARS:]}" for i, r in enumerate(rows, 1)]
    charts = [bar_chart(f"task-{m}", m, labels, [r.get(m) for r in rows]) for m in metrics
              if m not in NOT_CHARTED and any(isinstance(r.get(m), (int, float)) for r in rows)]
    body = (f"<p>{len(rows)} runs, best first by {esc(metrics[0]) if metrics else '–'}. "
            "Numbers from different scorer backends are not comparable: check the scorers column.</p>"
            + table(head, cells, text_cols=2)
            + f"<h2>Per task</h2><div class='charts'>{''.join(charts)}</div>")
    return page(f"{benchmark} leaderboard", body, kind="leaderboard")
