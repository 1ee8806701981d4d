"""Run outputs: results.json, the per-sample table, a markdown summary and an HTML report.

The HTML report is self-contained apart from the run's own images (linked by relative path): a summary
table, a bar chart (inline SVG, no plotting dependency) and a grid of every prompt's images with each
image's score and, where it failed, why.
"""

from __future__ import annotations

import contextlib
import html
import math
from pathlib import Path
from typing import Any

from evalsuite.store import JsonlLog, atomic_write_json, atomic_write_text

# Per-sample columns shown under each image when present, and the one that explains a failure.
SHOWN_FIELDS = ("score", "correct")
REASON_FIELDS = ("reason", "error", "not_applicable")


def markdown_table(frame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join([str(frame.index.name or ""), *cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [_fmt(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def describe_run(benchmark, per_sample) -> dict[str, Any]:
    """The benchmark's description with the images per prompt the run really has: ``--images-per-prompt``
    overrides the benchmark's official number, and results must not claim the official one."""
    desc = dict(benchmark.describe())
    if "images_per_prompt" in desc and "group" in per_sample and len(per_sample):
        desc["images_per_prompt"] = int(per_sample.groupby("group").size().max())
    return desc


def write_outputs(out: Path, benchmark, summary: dict[str, Any], table, per_sample) -> None:
    desc = describe_run(benchmark, per_sample)
    atomic_write_json(out / "results.json", {
        "benchmark": desc,
        "summary": summary,
        "table": {str(k): v for k, v in table.to_dict(orient="index").items()},
        "n_images": len(per_sample),
    })
    records = per_sample.to_dict(orient="records")
    tmp = out / ".samples.jsonl.tmp"
    tmp.unlink(missing_ok=True)
    JsonlLog(tmp).append(records)
    tmp.replace(out / "samples.jsonl")
    # pyarrow absent or a column it cannot store: the JSONL table is the canonical one anyway
    with contextlib.suppress(ImportError, ValueError, TypeError):
        per_sample.to_parquet(out / "samples.parquet", index=False)
    atomic_write_text(out / "summary.md", _markdown(benchmark.name, desc, summary, table))
    atomic_write_text(out / "report.html", html_report(benchmark, summary, table, per_sample))


def _markdown(name: str, desc: dict[str, Any], summary: dict[str, Any], table) -> str:
    head = [f"# {name}", ""]
    head += [f"- **{k}**: {_fmt(v)}" for k, v in summary.items()]
    head += ["", "Scored by: " + ", ".join(f"{k}={v}" for k, v in desc.items() if k != "name"), ""]
    return "\n".join(head) + markdown_table(table) + "\n"


def _bar_chart(table) -> str:
    numeric = table.select_dtypes("number")
    if numeric.empty:
        return ""
    col = numeric.columns[0]
    values = [(str(i), float(v)) for i, v in numeric[col].items() if not math.isnan(float(v))]
    if not values:
        return ""
    top = max(1.0, max(v for _, v in values))
    bar_h, label_w, width = 22, 160, 360
    rows = []
    for n, (label, v) in enumerate(values):
        y = n * bar_h
        w = max(1, int(width * v / top))
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{bar_h - 6}" fill="#4c78a8"/>'
            f'<text x="{label_w + w + 4}" y="{y + 15}">{v:.3f}</text>'
        )
    h = bar_h * len(values)
    return (f'<h2>{html.escape(str(col))}</h2><svg class="chart" width="{label_w + width + 60}" height="{h}" '
            f'font-size="12">{"".join(rows)}</svg>')


def _cell(row: dict[str, Any]) -> str:
    bits = []
    for f in SHOWN_FIELDS:
        if f in row and row[f] is not None and not (isinstance(row[f], float) and math.isnan(row[f])):
            bits.append(f"{f}: {_fmt(row[f])}")
    failed = row.get("correct") is False or (isinstance(row.get("score"), float) and row.get("score") == 0.0)
    reason = next((row[f] for f in REASON_FIELDS if row.get(f)), None)
    klass = "fail" if failed or row.get("error") else "ok"
    reason_html = f'<div class="reason">{html.escape(str(reason))}</div>' if reason else ""
    rendered = row.get("rendered_prompt")
    if rendered and rendered != row.get("prompt"):
        reason_html += f'<div class="rendered">rendered: {html.escape(str(rendered))}</div>'
    return (f'<figure class="{klass}"><img loading="lazy" src="{html.escape(str(row["image"]))}" '
            f'alt="{html.escape(row["id"])}"><figcaption>{html.escape(" · ".join(bits))}{reason_html}'
            "</figcaption></figure>")


def html_report(benchmark, summary: dict[str, Any], table, per_sample) -> str:
    groups: dict[str, list[dict]] = {}
    for row in per_sample.to_dict(orient="records"):
        groups.setdefault(str(row.get("group")), []).append(row)
    prompts = "".join(
        f'<section class="prompt"><h3>{html.escape(gid)} — {html.escape(str(rows[0]["prompt"]))}</h3>'
        f'<div class="grid">{"".join(_cell(r) for r in rows)}</div></section>'
        for gid, rows in groups.items()
    )
    summary_items = "".join(f"<li><b>{html.escape(str(k))}</b>: {_fmt(v)}</li>" for k, v in summary.items())
    scorers = html.escape(", ".join(f"{k}={v}" for k, v in describe_run(benchmark, per_sample).items()))
    style = (
        "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        ".grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:160px;border:2px solid #8c8}"
        "figure.fail{border-color:#d66}figure img{width:160px;height:160px;object-fit:contain;"
        "background:#eee;display:block}figcaption{font-size:11px;padding:2px}.reason{color:#a33}"
        "section.prompt{margin:16px 0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(benchmark.name)} report"
        f"</title><style>{style}</style></head><body><h1>{html.escape(benchmark.name)}</h1>"
        f"<ul>{summary_items}</ul><p>Scored by: {scorers}</p>{table.to_html(float_format='%.4f')}"
        f"{_bar_chart(table)}<h2>Samples</h2>{prompts}</body></html>\n"
    )
