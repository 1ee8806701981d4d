"""What the static HTML pages (compare, leaderboard, training) share: the page shell, number formatting and
links that still work when the folder is opened from ``file://`` or copied into an artifact viewer."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

STYLE = (
    "body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right}th{background:#f3f3f3}td.text,th.text{text-align:left}"
    ".charts{display:flex;flex-wrap:wrap;gap:12px}figure.chart{margin:0;border:1px solid #ddd;padding:4px}"
    "figure.chart svg{display:block;max-width:560px;height:auto}figure.chart figcaption{font-size:11px}"
    ".warn{background:#fff4d6;border:1px solid #e0b84c;padding:6px 10px;margin:8px 0}"
    ".pair{display:flex;gap:6px;margin:6px 0;align-items:flex-start;border-bottom:1px solid #eee}"
    ".pair figure{margin:0;width:180px}.pair img,.grids img{width:180px;height:180px;object-fit:contain;"
    "background:#eee;display:block}.pair figcaption{font-size:11px}.pair .prompt{width:320px;font-size:12px}"
    ".grids img{width:512px;max-width:100%;height:auto;image-rendering:pixelated}"
    ".small{font-size:11px;display:inline-block;min-width:240px;max-width:420px;overflow-wrap:anywhere}"
    ".pos{color:#1a7f37}.neg{color:#b42318}.muted{color:#777}"
)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell: floats rounded, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def signed(value: float | None, digits: int = 4) -> str:
    """``+0.0123`` in green, ``-0.0123`` in red (a delta cell)."""
    if value is None or math.isnan(value):
        return "–"
    klass = "pos" if value > 0 else "neg" if value < 0 else "muted"
    return f'<span class="{klass}">{value:+.{digits}f}</span>'


def link(target: str | os.PathLike, page_dir: str | os.PathLike) -> str:
    """``target`` as seen from a page in ``page_dir``: relative when both sit on one tree (so a copied
    folder keeps working), else a ``file://`` URI."""
    target = Path(target).resolve()
    try:
        return Path(os.path.relpath(target, Path(page_dir).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return target.as_uri()


def table(head: list[str], rows: list[list[str]], *, text_cols: int = 1) -> str:
    """An HTML table from already-escaped cells; the first ``text_cols`` columns are left-aligned."""
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag} class="text">{v}</{tag}>' if i < text_cols else f"<{tag}>{v}</{tag}>"
                       for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str, *, kind: str) -> str:
    """A whole self-contained page (no script, no external resource but the run's own images)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body data-page='{esc(kind)}'><h1>{esc(title)}</h1>{body}"
            "</body></html>\n")
