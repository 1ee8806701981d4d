"""The comparison page of ``evalsuite compare RUN_A RUN_B``: deltas with intervals, a chart per metric, the
prompts where the runs disagree with both images side by side. Numbers also go to ``compare.json``."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from evalsuite.charts import bar_chart
from evalsuite.compare import Comparison, flips, largest_gaps
from evalsuite.pages import esc, fmt, link, page, signed, table
from evalsuite.store import atomic_write_json, atomic_write_text

SHOWN_PAIRS = 24  # side-by-side pairs per list; the counts say how many there are in all


def _pair(cmp: Comparison, sid: str, out_dir: Path, metric: str) -> str:
    a, b = cmp.a.samples[sid], cmp.b.samples[sid]

    def side(name: str, s: dict) -> str:
        verdict = "" if s["correct"] is None else (" · correct" if s["correct"] else " · failed")
        reason = f"<br><span class='neg'>{esc(s['reason'])}</span>" if s["reason"] else ""
        return (f"<figure><img loading='lazy' src='{esc(link(s['image'], out_dir))}' alt='{name} {esc(sid)}'>"
                f"<figcaption><b>{name}</b> {metric} {fmt(s['scores'].get(metric))}{verdict}{reason}"
                "</figcaption></figure>")

    return (f"<div class='pair' data-id='{esc(sid)}'><div class='prompt'><b>{esc(sid)}</b> "
            f"<span class='muted'>[{esc(a['task'])}]</span><br>{esc(a['prompt'])}</div>"
            f"{side('A', a)}{side('B', b)}</div>")


def _pairs_section(title: str, ids: list[str], cmp: Comparison, out_dir: Path, metric: str, key: str) -> str:
    shown = "".join(_pair(cmp, sid, out_dir, metric) for sid in ids[:SHOWN_PAIRS])
    more = f" (first {SHOWN_PAIRS} shown)" if len(ids) > SHOWN_PAIRS else ""
    return f"<section data-list='{key}'><h3>{esc(title)}: {len(ids)}{more}</h3>{shown}</section>"


def _summary_table(cmp: Comparison) -> str:
    keys = [k for k, v in cmp.a.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and isinstance(cmp.b.summary.get(k), (int, float))]
    if not keys:
        return ""
    rows = [[esc(k), fmt(cmp.a.summary[k]), fmt(cmp.b.summary[k]),
             signed(float(cmp.a.summary[k]) - float(cmp.b.summary[k]))] for k in keys]
    return ("<h2>Headline numbers (each run's results.json; all its prompts, no interval)</h2>"
            + table(["", "A", "B", "A − B"], rows))


def render(cmp: Comparison, out_dir: Path) -> str:
    warnings = "".join(f"<div class='warn'>warning: {esc(w)}</div>" for w in cmp.warnings)
    head = table(["", "run", "model / source", "samples"], [
        ["A", esc(cmp.a.path), esc(cmp.a.label), str(len(cmp.a.samples))],
        ["B", esc(cmp.b.path), esc(cmp.b.label), str(len(cmp.b.samples))],
    ], text_cols=3)
    method = ("<p>Δ = A − B over the prompts both runs share. 95% interval: "
              "<b>paired normal over prompts</b> (each prompt's mean score in A minus in B; "
              "mean ± 1.96·sd/√n). "
              f"{len(cmp.shared)} paired samples.</p>")
    sections = []
    for metric in dict.fromkeys(d.metric for d in cmp.deltas):
        rows = [d for d in cmp.deltas if d.metric == metric]
        cells = [[esc(d.task), str(d.prompts), fmt(d.mean_a), fmt(d.mean_b), signed(d.delta),
                  "–" if d.ci is None else f"[{d.ci[0]:+.4f}, {d.ci[1]:+.4f}]"] for d in rows]
        chart = bar_chart(f"delta-{metric}", f"{metric}: A − B per task (95% paired CI)",
                          [d.task for d in rows], [d.delta for d in rows],
                          errors=[d.ci for d in rows], zero_line=True)
        sections.append(f"<h2>{esc(metric)} per task</h2>"
                        + table(["task", "prompts", "A", "B", "Δ", "95% CI"], cells)
                        + f"<div class='charts'>{chart}</div>")
    metric = cmp.deltas[0].metric
    a_only, b_only = flips(cmp)
    disagree = "<h2>Where they disagree</h2>"
    if a_only or b_only:
        disagree += _pairs_section("A correct, B failed", a_only, cmp, out_dir, metric, "a-only")
        disagree += _pairs_section("B correct, A failed", b_only, cmp, out_dir, metric, "b-only")
    gaps = [sid for sid, _ in largest_gaps(cmp, metric, SHOWN_PAIRS)]
    disagree += _pairs_section(f"largest {metric} gaps", gaps, cmp, out_dir, metric, "gaps")
    body = head + warnings + method + "".join(sections) + _summary_table(cmp) + disagree
    return page(f"{cmp.a.benchmark}: A vs B", body, kind="compare")


def write_compare_page(cmp: Comparison, out_dir: str | os.PathLike) -> Path:
    """``out_dir/index.html`` and ``out_dir/compare.json``; returns the page's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a_only, b_only = flips(cmp)
    atomic_write_json(out_dir / "compare.json", {
        "benchmark": cmp.a.benchmark, "run_a": str(cmp.a.path), "run_b": str(cmp.b.path),
        "paired_samples": len(cmp.shared), "interval": "paired normal over prompts, 95%",
        "deltas": [asdict(d) for d in cmp.deltas], "warnings": cmp.warnings,
        "a_correct_b_failed": a_only, "b_correct_a_failed": b_only,
    })
    return atomic_write_text(out_dir / "index.html", render(cmp, out_dir))
