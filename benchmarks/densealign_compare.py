"""Judge two DenseAlignBench runs against each other, resumably, on the shared run store and manifest.

``compare_runs`` shows a pairwise judge (any :class:`evalsuite.scorer.PairJudge`, e.g. the registered
``judge`` scorer) each caption with the image of run A and of run B, in the order given by the pair's swap
coin. Verdicts go to an append-only ``judgements.jsonl`` (:class:`evalsuite.store.JsonlLog`) as they
arrive, and the output folder is guarded by the same manifest check as a run (``manifest.json`` with the
comparison's fingerprint), so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from evalsuite.benchmarks.densealign import DenseAlignBench, prompt_id
from evalsuite.benchmarks.densealign_rules import outcome_of, pairwise_stats, position_bias, swap_for
from evalsuite.errors import ConfigError
from evalsuite.images import to_rgb
from evalsuite.manifest import check_or_write_manifest
from evalsuite.scorer import PREFERENCES, Judgement, PairJudge
from evalsuite.store import JsonlLog, atomic_write_json, atomic_write_text

LOG_NAME = "judgements.jsonl"
PUBLISHED = {
    "Z-Image + PromptEcho vs base": {"win": 61.5, "loss": 34.7, "tie": 3.8, "net_pp": 26.8},
    "QwenImage-2512 + PromptEcho vs base": {"win": 53.3, "loss": 37.0, "tie": 9.7, "net_pp": 16.2},
}


# -- reading runs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunImage:
    prompt: str
    path: Path
    score: float | None = None


def pair_id(record_id: str, index: int = 0) -> str:
    """Canonical id of a (prompt, image index): numeric prompt ids are zero-padded like ours."""
    rid = str(record_id)
    if rid.isdigit():
        rid = prompt_id(int(rid))
    return f"{rid}/{index}"


def load_run(run_dir: str | os.PathLike) -> dict[str, RunImage]:
    """Images of a run by pair id: an ``evaluate()`` run (``samples.jsonl``) or an official layout
    (``metadata.jsonl`` with caption, filename and data_id or index)."""
    run = Path(run_dir)
    out: dict[str, RunImage] = {}
    if (run / "samples.jsonl").is_file():
        for rec in JsonlLog(run / "samples.jsonl"):
            record_id, _, idx = str(rec["id"]).rpartition("/")
            score = rec.get("score")
            ok = isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)
            item = RunImage(rec["prompt"], run / rec["image"], score if ok else None)
            out[pair_id(record_id, int(idx))] = item
        return out
    if (run / "metadata.jsonl").is_file():
        with open(run / "metadata.jsonl", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rec = json.loads(line)
                rid = rec.get("data_id", rec.get("index"))
                if rid is None or "caption" not in rec or "filename" not in rec:
                    raise ConfigError(
                        f"{run / 'metadata.jsonl'} line {n}: needs caption, filename and data_id or index"
                    )
                out[pair_id(str(rid), 0)] = RunImage(rec["caption"], run / rec["filename"])
        return out
    raise ConfigError(
        f"{run} is not a run: it has neither samples.jsonl (evaluate() output) nor an official "
        "metadata.jsonl; finish the run first (rerun evaluate() on it)"
    )


def _sort_key(pid: str) -> tuple:
    rid, _, idx = pid.rpartition("/")
    return (0, int(rid), int(idx)) if rid.isdigit() else (1, rid, int(idx))


# -- the comparison ------------------------------------------------------------------------------
@dataclass
class ComparisonResult:
    out_dir: Path
    results: dict[str, Any]
    records: list[dict[str, Any]]  # the latest verdict per pair, in pair order
    markdown: str


def compare_runs(
    run_a_dir: str | os.PathLike,
    run_b_dir: str | os.PathLike,
    judge: PairJudge,
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    swap_prob: float = 0.5,
    workers: int | None = None,
    limit: int | None = None,
    ci: str = "normal",
    ci_level: float = 0.95,
    n_boot: int = 10_000,
    name_a: str | None = None,
    name_b: str | None = None,
    retry_failed: bool = True,
    drain_timeout: float = 60.0,
) -> ComparisonResult:
    """Judge run A against run B on every prompt both have; resumable; writes results.json + summary.md.

    Verdicts are appended to ``out_dir/judgements.jsonl`` as they complete, so an interrupted comparison
    (Ctrl-C, crash) resumes where it stopped: pairs with a verdict are never judged again; failed ones
    are retried on the next call unless ``retry_failed=False``. ``workers`` pairs are judged at once
    (default: the judge's ``max_concurrency``). On an interrupt, verdicts already in flight get up to
    ``drain_timeout`` seconds to finish and are logged before the interrupt propagates.
    """
    if not 0.0 <= swap_prob <= 1.0:
        raise ConfigError(f"swap_prob must be in [0, 1], got {swap_prob}")
    run_a, run_b, out = Path(run_a_dir).resolve(), Path(run_b_dir).resolve(), Path(out_dir).resolve()
    if out in (run_a, run_b):
        raise ConfigError("out_dir must be a folder of its own, not one of the compared runs")
    a, b = load_run(run_a), load_run(run_b)
    common = sorted(set(a) & set(b), key=_sort_key)
    differ = [p for p in common if a[p].prompt != b[p].prompt]
    if differ:
        raise ConfigError(
            f"{len(differ)} pairs have different prompts in the two runs (e.g. {differ[:3]}); "
            "they are not runs of the same benchmark"
        )
    if not common:
        raise ConfigError(f"{run_a} and {run_b} share no prompt ids")
    if limit is not None:
        common = common[:limit]
    names = (name_a or run_a.name, name_b or run_b.name)
    fingerprint = {
        "benchmark": DenseAlignBench.name,
        "run_a": str(run_a),
        "run_b": str(run_b),
        "judge": judge.describe(),
        "seed": seed,
        "swap_prob": swap_prob,
    }
    check_or_write_manifest(out, fingerprint, f"{out} holds a different comparison (use a new folder)")

    journal = JsonlLog(out / LOG_NAME)
    latest = _latest(journal)
    missing, plan = [], []
    for pid in common:
        rec = latest.get(pid)
        if rec is not None and (rec["outcome"] != "failed" or not retry_failed):
            continue
        if not (a[pid].path.is_file() and b[pid].path.is_file()):
            missing.append(pid)
        else:
            plan.append(pid)

    def task(pid: str) -> dict[str, Any]:
        return _judge_pair(pid, a[pid], b[pid], judge, seed, swap_prob, (run_a, run_b))

    if plan:
        _run_pool(plan, task, workers or judge.max_concurrency, journal, drain_timeout)

    latest = _latest(journal)
    records = [latest[p] for p in common if p in latest]
    results = _results(
        records,
        common,
        missing,
        a,
        b,
        names,
        (run_a, run_b),
        fingerprint,
        ci=ci,
        level=ci_level,
        n_boot=n_boot,
        seed=seed,
        swap_prob=swap_prob,
    )
    markdown = summary_markdown(results)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "summary.md", markdown)
    return ComparisonResult(out, results, records, markdown)


def _latest(journal: JsonlLog) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for rec in journal:
        latest[rec["pair_id"]] = rec
    return latest


def _judge_pair(
    pid: str,
    item_a: RunImage,
    item_b: RunImage,
    judge: PairJudge,
    seed: int,
    swap_prob: float,
    roots: tuple[Path, Path],
) -> dict[str, Any]:
    swapped = swap_for(seed, pid, swap_prob)
    first, second = (item_b, item_a) if swapped else (item_a, item_b)
    started = time.monotonic()
    try:
        image_1, image_2 = to_rgb(first.path, f"{pid} (first)"), to_rgb(second.path, f"{pid} (second)")
        verdict = judge.judge(item_a.prompt, image_1, image_2)
        if not isinstance(verdict, Judgement) or verdict.preference not in (*PREFERENCES, None):
            raise TypeError(f"judge returned {verdict!r}, not a Judgement with a preference in {PREFERENCES}")
    except Exception as e:  # a judge bug or an unreadable image fails this pair only
        verdict = Judgement(None, error=f"{type(e).__name__}: {e}", errors=[f"{type(e).__name__}: {e}"])
    rec: dict[str, Any] = {
        "pair_id": pid,
        "swapped": swapped,
        "shown_first": "b" if swapped else "a",
        "preference": verdict.preference,
        "outcome": outcome_of(verdict.preference, swapped),
        "reasoning": verdict.reasoning,
        "attempts": verdict.attempts,
        "error": verdict.error,
        "seconds": round(time.monotonic() - started, 3),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "image_first": _rel(first.path, roots),
        "image_second": _rel(second.path, roots),
    }
    if not verdict.ok:
        rec["errors"] = verdict.errors
        rec["raw"] = verdict.raw
    if verdict.details:
        rec["details"] = verdict.details
    return rec


def _rel(path: Path, roots: tuple[Path, Path]) -> str:
    for tag, root in zip(("a", "b"), roots):
        try:
            return f"{tag}:{path.resolve().relative_to(root)}"
        except ValueError:
            continue
    return str(path)


def _run_pool(plan: list[str], task, workers: int, journal: JsonlLog, drain_timeout: float) -> None:
    """Judge ``plan`` with a bounded pool (at most 2·workers pairs queued); log each verdict on arrival."""
    from tqdm.auto import tqdm

    from evalsuite.progress import enabled

    workers = max(1, int(workers))
    window = 2 * workers
    todo = iter(plan)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="densealign-judge")
    pending: set[Future] = set()
    recorded: set[Future] = set()
    done: set[Future] = set()
    bar = tqdm(
        total=len(plan), desc="densealign judge", unit="pair", disable=not enabled(), dynamic_ncols=True
    )
    try:
        pending.update(pool.submit(task, pid) for pid in islice(todo, window))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                journal.append([f.result()])  # an interrupt raised inside a worker surfaces here
                recorded.add(f)
                bar.update(1)
            pending.update(pool.submit(task, pid) for pid in islice(todo, window - len(pending)))
    except BaseException:
        # Keep every verdict already paid for: let running calls finish (bounded), log them, then stop.
        for f in pending:
            f.cancel()
        running = {f for f in pending | done if not f.cancelled()}
        wait(running, timeout=drain_timeout)
        salvage = [f for f in running - recorded if f.done() and not f.cancelled() and f.exception() is None]
        journal.append(f.result() for f in salvage)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)


def _results(
    records, common, missing, a, b, names, roots, fingerprint, *, ci, level, n_boot, seed, swap_prob
) -> dict[str, Any]:
    stats = pairwise_stats((r["outcome"] for r in records), ci=ci, level=level, n_boot=n_boot, seed=seed)
    bias = position_bias(
        ((r["swapped"], r["preference"]) for r in records if r["outcome"] != "failed"), swap_prob
    )
    failures = [
        {"pair_id": r["pair_id"], "error": r.get("error")} for r in records if r["outcome"] == "failed"
    ]
    only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
    return {
        "benchmark": DenseAlignBench.name,
        "run_a": {"name": names[0], "path": str(roots[0]), "n_images": len(a)},
        "run_b": {"name": names[1], "path": str(roots[1]), "n_images": len(b)},
        "judge": fingerprint["judge"],
        "seed": seed,
        "swap_prob": swap_prob,
        "pairs": {
            "compared": len(common),
            "with_verdict": stats["n_judged"],
            "failed": stats["failed"],
            "not_judged_yet": len(common) - len(records) - len(missing),
            "missing_images": len(missing),
            "only_in_a": only_a,
            "only_in_b": only_b,
        },
        "complete": len(records) == len(common) and not failures,
        **{k: stats[k] for k in ("win_rate", "loss_rate", "tie_rate", "net_pp", "net_ci")},
        "stats": stats,
        "position_bias": bias,
        "companion": _companion(records, a, b),
        "failures": failures[:50],
        "missing": missing[:50],
        "published_reference": PUBLISHED,
    }


def _companion(records, a, b) -> dict[str, Any] | None:
    """Paired means of the runs' own absolute scores (e.g. PromptEcho), when both runs have them."""
    pairs = [(a[r["pair_id"]].score, b[r["pair_id"]].score) for r in records]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    if not pairs:
        return None
    n = len(pairs)
    mean_a, mean_b = sum(x for x, _ in pairs) / n, sum(y for _, y in pairs) / n
    return {
        "n": n,
        "mean_a": mean_a,
        "mean_b": mean_b,
        "mean_diff": mean_a - mean_b,
        "a_higher_rate": 100.0 * sum(x > y for x, y in pairs) / n,
    }


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def summary_markdown(results: dict[str, Any]) -> str:
    s, bias, pairs = results["stats"], results["position_bias"], results["pairs"]
    a, b = results["run_a"]["name"], results["run_b"]["name"]
    ci = s["net_ci"] or [None, None]
    judge = ", ".join(f"{k}={v}" for k, v in results["judge"].items())
    lines = [
        f"# DenseAlignBench: {a} vs {b}",
        "",
        f"| comparison | {a} wins % | {b} wins % | tie % | net (pp) | {int(s['ci_level'] * 100)}% CI "
        f"({s['ci_method']}) | judged | failed |",
        "|---|---|---|---|---|---|---|---|",
        f"| {a} vs {b} | {_f(s['win_rate'])} | {_f(s['loss_rate'])} | {_f(s['tie_rate'])} | "
        f"{'+' if (s['net_pp'] or 0) > 0 else ''}{_f(s['net_pp'])} | [{_f(ci[0])}, {_f(ci[1])}] | "
        f"{s['n_judged']} | {s['failed']} |",
        "",
        f"- pairs compared: {pairs['compared']} (missing images: {pairs['missing_images']}, not judged yet: "
        f"{pairs['not_judged_yet']}, only in {a}: {pairs['only_in_a']}, only in {b}: {pairs['only_in_b']})",
        f"- failed judgements (not counted as ties, excluded from the rates): {s['failed']}",
        f"- position bias: first-shown image preferred in {_f(bias['first_shown_rate'])}% of "
        f"{bias['n_decisive']} decisive verdicts (binomial p = {_f(bias['binomial_p'], 4)}); order x outcome "
        f"chi-square = {_f(bias['chi2'], 3)}, p = {_f(bias['chi2_p'], 4)} → {bias['interpretation']}",
        f"- {a} win rate when shown first: {_f(bias['win_rate_not_swapped'])}%, when shown second: "
        f"{_f(bias['win_rate_swapped'])}%",
        f"- judge: {judge}",
        f"- seed {results['seed']}, swap probability {results['swap_prob']}",
    ]
    comp = results.get("companion")
    if comp:
        lines.append(
            f"- companion score (mean over {comp['n']} pairs): {a} {comp['mean_a']:.4f}, {b} "
            f"{comp['mean_b']:.4f}, {a} higher on {comp['a_higher_rate']:.1f}% of prompts"
        )
    lines.append("")
    return "\n".join(lines)
