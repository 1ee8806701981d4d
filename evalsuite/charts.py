"""Charts for the static HTML pages: matplotlib figures written as inline SVG.

Inline SVG keeps every page one self-contained file that opens from ``file://`` with no network and no
JavaScript; text stays text (``svg.fonttype=none``) so the pages can be searched and checked in the DOM,
and a fixed hash salt makes the same data give the same bytes.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from typing import Any

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def _svg(fig: Any, name: str, title: str) -> str:
    """The figure as an inline ``<svg>`` inside a ``<figure class="chart" data-chart=NAME>``."""
    plt = _pyplot()
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and doctype: the SVG is inline in HTML
    name, title = html.escape(name), html.escape(title)
    return f'<figure class="chart" data-chart="{name}" title="{title}">{svg}</figure>'


def _finite(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def line_chart(name: str, title: str, series: dict[str, tuple[Sequence[float], Sequence[float | None]]],
               *, xlabel: str = "step", ylabel: str = "") -> str:
    """One line per series (x, y); a missing y (None/NaN) is a gap, a lone point is a marker."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 2.8), dpi=100)
    for i, (label, (xs, ys)) in enumerate(series.items()):
        pts = [(x, y) for x, y in zip(xs, _finite(ys)) if math.isfinite(y)]
        if not pts:
            continue
        px, py = zip(*pts)
        ax.plot(px, py, marker="o", markersize=3, linewidth=1.5, color=PALETTE[i % len(PALETTE)], label=label)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _svg(fig, name, title)


def bar_chart(name: str, title: str, labels: Sequence[str], values: Sequence[float | None],
              *, errors: Sequence[tuple[float, float] | None] | None = None, zero_line: bool = False) -> str:
    """Horizontal bars, one per label; ``errors`` are (low, high) interval ends drawn as whiskers."""
    plt = _pyplot()
    ys = list(range(len(labels)))
    vals = _finite(values)
    fig, ax = plt.subplots(figsize=(5.2, 0.6 + 0.32 * max(1, len(labels))), dpi=100)
    colors = [PALETTE[0] if not zero_line or v >= 0 else PALETTE[3] for v in (0 if math.isnan(v) else v
                                                                               for v in vals)]
    ax.barh(ys, [0 if math.isnan(v) else v for v in vals], color=colors)
    if errors is not None:
        for y, v, ci in zip(ys, vals, errors):
            if ci is not None and math.isfinite(v):
                ax.errorbar(v, y, xerr=[[v - ci[0]], [ci[1] - v]], fmt="none", ecolor="#222", capsize=3)
    for y, v in zip(ys, vals):
        ax.annotate("n/a" if math.isnan(v) else f"{v:.3f}", (0 if math.isnan(v) else v, y),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    if zero_line:
        ax.axvline(0, color="#222", linewidth=0.8)
    else:  # scores: the axis starts at 0 so bar lengths compare (and all-zero rows still get an axis)
        top = max([v for v in vals if math.isfinite(v)], default=0.0)
        ax.set_xlim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_yticks(ys, [str(label) for label in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, name, title)
