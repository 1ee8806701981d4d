"""Run outputs: results.json, the per-sample table, a markdown summary and an HTML report.

The HTML report is self-contained apart from the run's own images and their thumbnails (linked by relative
path; it works from file:// with no network): a summary table, a bar chart (inline SVG) and a filterable,
sortable grid of every image with its score, why it failed, and the evidence drawn over it
(:mod:`evalsuite.report_samples` builds the data, ``report_assets/report.js`` renders it).
"""

from __future__ import annotations

import contextlib
import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from evalsuite.charts import bar_chart
from evalsuite.errors import ConfigError
from evalsuite.report_samples import cards
from evalsuite.store import JsonlLog, atomic_write_json, atomic_write_text


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
        "table_index": table.index.name,  # the table's index column (task, category, …) for re-rendering
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
    atomic_write_text(out / "report.html", html_report(benchmark, summary, table, per_sample, out))


def _markdown(name: str, desc: dict[str, Any], summary: dict[str, Any], table) -> str:
    head = [f"# {name}", ""]
    head += [f"- **{k}**: {_fmt(v)}" for k, v in summary.items()]
    head += ["", "Scored by: " + ", ".join(f"{k}={v}" for k, v in desc.items() if k != "name"), ""]
    return "\n".join(head) + markdown_table(table) + "\n"


def _bar_chart(table) -> str:
    """The first numeric column of the summary table, a bar per row (the shared matplotlib chart)."""
    numeric = table.select_dtypes("number")
    if numeric.empty:
        return ""
    col = numeric.columns[0]
    values = [(str(i), float(v)) for i, v in numeric[col].items() if not math.isnan(float(v))]
    if not values:
        return ""
    labels, scores = zip(*values)
    return f"<h2>{html.escape(str(col))}</h2>" + bar_chart("summary", str(col), labels, scores)


_CARDS_TAG = "<script type='application/json' id='cards'>"


def _asset(name: str) -> str:
    return (resources.files("evalsuite") / "report_assets" / name).read_text(encoding="utf-8")


def _json_script(value: Any) -> str:
    """JSON safe to inline in a <script> element (no "</script>" or "<!--" can end it early)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def cards_in(page: str) -> list[dict[str, Any]]:
    """The sample cards a written report holds (its JSON blob), for tools and tests that read reports."""
    start = page.find(_CARDS_TAG)
    if start < 0:
        raise ValueError("not an evalsuite run report: no sample cards blob")
    start += len(_CARDS_TAG)
    return json.loads(page[start:page.index("</script>", start)])


def html_report(benchmark, summary: dict[str, Any], table, per_sample, out: Path | None = None) -> str:
    """The page: summary, table, chart, and the sample grid that ``report.js`` renders from one JSON blob.

    ``out``: the run folder; when given, grid thumbnails are written under ``out/thumbs`` (once).
    """
    summary_items = "".join(f"<li><b>{html.escape(str(k))}</b>: {_fmt(v)}</li>" for k, v in summary.items())
    scorers = html.escape(", ".join(f"{k}={v}" for k, v in describe_run(benchmark, per_sample).items()))
    blob = _json_script(cards(per_sample, out))
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(benchmark.name)} "
        f"report</title><meta name='viewport' content='width=device-width'><style>{_asset('report.css')}"
        f"</style></head><body><h1>{html.escape(benchmark.name)}</h1>"
        f"<ul>{summary_items}</ul><p>Scored by: {scorers}</p>{table.to_html(float_format='%.4f')}"
        f"{_bar_chart(table)}<h2>Samples</h2><div id='controls' role='search'></div><div id='grid'></div>"
        f"<noscript>The sample grid needs JavaScript; every record is in samples.jsonl.</noscript>"
        f"{_CARDS_TAG}{blob}</script><script>{_asset('report.js')}</script>"
        "</body></html>\n"
    )


class _DescribedBenchmark:
    """The benchmark as its results.json describes it: all a page needs (name, describe())."""

    def __init__(self, description: dict[str, Any]) -> None:
        self.name = str(description.get("name", "run"))
        self._description = description

    def describe(self) -> dict[str, Any]:
        return dict(self._description)


def is_run_folder(run_dir: Path) -> bool:
    return (run_dir / "results.json").is_file() and (run_dir / "samples.jsonl").is_file()


def rerender_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` of an ``evalsuite run`` folder again from its own files (results.json,
    samples.jsonl), e.g. after an upgrade of the report, with thumbnails made where missing. No model,
    benchmark code or data files are needed: the page shows what the run recorded."""
    import pandas as pd

    out = Path(run_dir)
    if not is_run_folder(out):
        missing = [n for n in ("results.json", "samples.jsonl") if not (out / n).is_file()]
        raise ConfigError(f"{out}: not an evaluation run folder (no {' or '.join(missing)}; `evalsuite run` "
                          "writes both when it finishes)")
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        per_sample = pd.DataFrame(list(JsonlLog(out / "samples.jsonl")))
    except ValueError as e:
        raise ConfigError(f"{out}: results.json or samples.jsonl cannot be read ({e})") from e
    table = pd.DataFrame.from_dict(results.get("table") or {}, orient="index")
    table.index.name = results.get("table_index")
    benchmark = _DescribedBenchmark(results.get("benchmark") or {})
    atomic_write_text(out / "report.html", html_report(benchmark, results.get("summary") or {}, table,
                                                       per_sample, out))
    return out / "report.html"
