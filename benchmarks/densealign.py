"""DenseAlignBench (PromptEcho, arXiv 2604.12652): pairwise prompt adherence on 2000 dense captions.

There is no absolute score. Two runs (e.g. a fine-tuned model and its base) each render one image per
caption with ``evaluate()``; ``compare_runs`` then shows a VLM judge each caption with the two images
and asks which one follows it better (``image_a`` / ``image_b`` / ``tie``, adherence only). Reported:
win / loss / tie rates of run A against run B and net = win − loss in percentage points (published:
Z-Image + PromptEcho vs base 61.5 / 34.7 / 3.8 → +26.8 pp), plus a position-bias check.

Protocol details, from the official ``dense_align_bench`` code (roooobotx/prompt_echo):

- Prompt ids are the 0-based line indices of ``metadata.jsonl`` (written here as ``0000``…``1999``).
- The order shown to the judge is swapped with probability 0.5. Here the swap of a pair is a pure
  function of (seed, pair id), so any subset or a resumed run shows every pair exactly as a full run.
- A judgement that fails after its retries is dropped from the rates by the official script; here it is
  kept in the log, counted as ``failed`` and reported, but never counted as a tie. Rates are over the
  pairs with a verdict (win + loss + tie = 100 %).
- Position bias: the official script runs a chi-square test of independence between the shown order
  (swapped or not) and the outcome (A wins / B wins / tie) (scipy ``chi2_contingency``, Yates-corrected
  when it has one degree of freedom). We report it, plus the share of decisive verdicts that went to
  the image shown first with an exact two-sided binomial test against 50 % (valid for swap p = 0.5).

Confidence interval of net (documented choice): each judged pair scores x = +1 (win), −1 (loss) or 0
(tie), net = 100 · mean(x). ``ci="normal"`` (default) is the Wald interval net ± z·100·sqrt(v/n) with
v = p_win + p_loss − (p_win − p_loss)², the variance of x; ``ci="bootstrap"`` resamples the n outcomes
(drawn as one multinomial per replicate, which is the same distribution) with a seeded generator and
takes percentiles. Both are clipped to [−100, 100].

Scoring one run with ``evaluate()`` can add the judge-free PromptEcho reward as a companion absolute
metric (``companion="auto"`` uses it when it can be built; ``None`` turns it off; a ``Reward`` instance
is used as given).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from evalsuite.benchmarks.judges import PREFERENCES, Judgement, PairJudge

from evalsuite.benchmark import Benchmark, PromptRecord, split_sample_id
from evalsuite.data import resolve
from evalsuite.errors import ConfigError
from evalsuite.images import to_rgb
from evalsuite.manifest import build_manifest
from evalsuite.reward import Reward
from evalsuite.sample import Sample
from evalsuite.store import JsonlLog, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

DATA_KEY = "densealignbench/metadata.jsonl"
OUTCOMES = ("win", "loss", "tie", "failed")
LOG_NAME = "judgements.jsonl"
MANIFEST = "manifest.json"
PUBLISHED = {
    "Z-Image + PromptEcho vs base": {"win": 61.5, "loss": 34.7, "tie": 3.8, "net_pp": 26.8},
    "QwenImage-2512 + PromptEcho vs base": {"win": 53.3, "loss": 37.0, "tie": 9.7, "net_pp": 16.2},
}


def prompt_id(index: int) -> str:
    """Id of the caption on 0-based line ``index`` (zero-padded so ids sort in file order)."""
    return f"{index:04d}"


# -- the benchmark (generation + optional companion metric) ---------------------------------------
class DenseAlignBench(Benchmark):
    """The 2000 captions, one image each. Scoring is pairwise (``compare_runs``); ``score`` only adds
    the optional judge-free companion metric (PromptEcho) so a single run still has a number."""

    name = "densealignbench"
    images_per_prompt = 1
    data_files = (DATA_KEY,)

    def __init__(
        self,
        companion: str | Reward | None = "auto",
        *,
        companion_model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        **companion_options: Any,
    ) -> None:
        self.companion: Reward | None = None
        self.companion_note: str | None = None
        if isinstance(companion, Reward):
            self.companion = companion
        elif companion in (None, "none", "off", False):
            self.companion_note = "disabled"
        elif isinstance(companion, str):
            kwargs = {
                k: v
                for k, v in {
                    "model": companion_model,
                    "device": device,
                    "dtype": dtype,
                    "batch_size": batch_size,
                }.items()
                if v is not None
            }
            name = "promptecho" if companion == "auto" else companion
            try:
                from evalsuite.registry import get_reward

                self.companion = get_reward(name, **kwargs, **companion_options)
            except Exception as e:
                if companion != "auto":
                    raise
                self.companion_note = f"unavailable ({type(e).__name__}: {e})"
                log.warning("densealignbench: no companion metric, %s cannot be built: %s", name, e)
        else:
            raise ConfigError(f"companion must be a reward name, a Reward, 'auto' or None, got {companion!r}")

    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        path = resolve(DATA_KEY, data_dir)
        records = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                caption = json.loads(line)["caption"]
                records.append(PromptRecord(prompt_id(i), caption, {"index": i}))
        return records

    def image_path(self, sample: Sample) -> str:
        record_id, index = split_sample_id(sample)
        return _image_name(record_id, index)

    def write_layout(self, out_dir, records: Sequence[PromptRecord]) -> None:
        """The official per-model ``metadata.jsonl`` (data_id, index, caption, filename), so a run folder
        is also an input of the official ``evaluate_pairwise.py``."""
        lines = [
            json.dumps(
                {
                    "data_id": r.id,
                    "index": r.metadata.get("index"),
                    "caption": r.prompt,
                    "filename": _image_name(r.id, 0),
                },
                ensure_ascii=False,
            )
            for r in records
        ]
        atomic_write_text(Path(out_dir) / "metadata.jsonl", "".join(line + "\n" for line in lines))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "images_per_prompt": self.images_per_prompt,
            "mode": "pairwise: verdicts come from compare_runs(); score is the companion metric only",
            "companion": self.companion.name if self.companion is not None else None,
        }
        if self.companion is not None:
            out["companion_backend"] = self.companion.backend
            out["companion_model"] = self.companion.model_id
            out["companion_settings"] = self.companion.describe()
        else:
            out["companion_note"] = self.companion_note
        return out

    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        if self.companion is None:
            reason = f"no companion metric ({self.companion_note}); DenseAlignBench is judged pairwise"
            return [{"score": None, "reason": reason} for _ in samples]
        name = self.companion.name
        out = self.companion.score(samples)
        records = []
        for value, ok, details, error in zip(out.scores, out.applicable, out.details, out.errors):
            kept = value if ok else None
            rec: dict[str, Any] = {"score": kept, name: kept, "error": error}
            if details.get("not_applicable"):
                rec["reason"] = details["not_applicable"]
            rec.update({f"{name}.{k}": v for k, v in details.items() if k != "not_applicable"})
            records.append(rec)
        return records

    def aggregate(self, per_sample):
        import pandas as pd

        row: dict[str, Any] = {"n_images": len(per_sample)}
        if self.companion is not None and "score" in per_sample:
            scores = pd.to_numeric(per_sample["score"], errors="coerce")
            row[self.companion.name] = float(scores.mean()) if scores.notna().any() else math.nan
            row["n_scored"] = int(scores.notna().sum())
        table = pd.DataFrame([row], index=[self.name])
        table.index.name = "benchmark"
        return table

    def summary(self, table, per_sample) -> dict[str, Any]:
        row = table.iloc[0].to_dict()
        out: dict[str, Any] = {"n_images": int(row["n_images"])}
        if self.companion is not None:
            out[self.companion.name] = row.get(self.companion.name)
            out["n_scored"] = int(row.get("n_scored", 0))
        return out


def _image_name(record_id: str, index: int) -> str:
    from evalsuite.benchmark import safe_name

    stem = safe_name(record_id)
    return f"images/{stem}.png" if index == 0 else f"images/{stem}_{index}.png"


# -- pure rules ----------------------------------------------------------------------------------
def swap_for(seed: int, pair_id: str, swap_prob: float = 0.5) -> bool:
    """Whether pair ``pair_id`` is shown B-first: a fixed coin per (seed, pair), independent of order."""
    digest = hashlib.sha256(f"densealign-swap\x00{seed}\x00{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < swap_prob


def outcome_of(preference: str | None, swapped: bool) -> str:
    """Run A's outcome from the judge's answer about the images as shown (A first unless swapped)."""
    if preference is None:
        return "failed"
    if preference == "tie":
        return "tie"
    if preference not in ("image_a", "image_b"):
        raise ValueError(f"unknown preference {preference!r}")
    first_won = preference == "image_a"
    return "win" if first_won != swapped else "loss"


def net_ci_normal(win: int, loss: int, tie: int, level: float = 0.95) -> tuple[float, float]:
    """Wald interval of net = 100·(p_win − p_loss), in percentage points (see module docstring)."""
    n = win + loss + tie
    if n == 0:
        return (math.nan, math.nan)
    pw, pl = win / n, loss / n
    var = pw + pl - (pw - pl) ** 2
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    half = 100.0 * z * math.sqrt(max(var, 0.0) / n)
    net = 100.0 * (pw - pl)
    return (max(-100.0, net - half), min(100.0, net + half))


def net_ci_bootstrap(
    win: int, loss: int, tie: int, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap of net (pp): n outcomes resampled with replacement = one multinomial draw."""
    import numpy as np

    n = win + loss + tie
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [win / n, loss / n, tie / n], size=n_boot)
    nets = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    lo, hi = np.quantile(nets, [0.5 - level / 2, 0.5 + level / 2])
    return (max(-100.0, float(lo)), min(100.0, float(hi)))


def pairwise_stats(
    outcomes: Iterable[str], *, ci: str = "normal", level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Counts, rates (% of judged pairs), net (pp) and its CI from per-pair outcomes of run A."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for o in outcomes:
        if o not in counts:
            raise ValueError(f"unknown outcome {o!r}; expected one of {OUTCOMES}")
        counts[o] += 1
    win, loss, tie, failed = (counts[k] for k in OUTCOMES)
    judged = win + loss + tie
    if ci == "normal":
        lo, hi = net_ci_normal(win, loss, tie, level)
    elif ci == "bootstrap":
        lo, hi = net_ci_bootstrap(win, loss, tie, level, n_boot, seed)
    else:
        raise ConfigError(f"ci must be 'normal' or 'bootstrap', got {ci!r}")

    def pct(k: int) -> float | None:
        return 100.0 * k / judged if judged else None

    return {
        "n_pairs": judged + failed,
        "n_judged": judged,
        "win": win,
        "loss": loss,
        "tie": tie,
        "failed": failed,
        "win_rate": pct(win),
        "loss_rate": pct(loss),
        "tie_rate": pct(tie),
        "net_pp": pct(win - loss) if judged else None,
        "net_ci": [lo, hi] if judged else None,
        "ci_method": ci,
        "ci_level": level,
        "failed_rate": 100.0 * failed / (judged + failed) if judged + failed else None,
    }


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n trials against p = 1/2."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got {k=}, {n=}")
    if n == 0:
        return 1.0
    m = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(m + 1))
    return min(1.0, 2 * tail / 2**n)


def chi2_independence(table: Sequence[Sequence[int]]) -> tuple[float, int, float] | None:
    """(chi2, dof, p) of a test of independence (as scipy's chi2_contingency: Yates-corrected at dof 1).

    All-zero columns are dropped (an outcome nobody got carries no information); None when a row is
    empty or fewer than two columns remain (the test is undefined).
    """
    cols = [j for j in range(len(table[0])) if any(row[j] for row in table)]
    obs = [[float(row[j]) for j in cols] for row in table]
    if len(cols) < 2 or any(sum(row) == 0 for row in obs):
        return None
    total = sum(map(sum, obs))
    row_sums = [sum(row) for row in obs]
    col_sums = [sum(row[j] for row in obs) for j in range(len(cols))]
    dof = (len(obs) - 1) * (len(cols) - 1)
    chi2 = 0.0
    for i, row in enumerate(obs):
        for j, o in enumerate(row):
            e = row_sums[i] * col_sums[j] / total
            d = abs(o - e)
            if dof == 1:
                d = max(0.0, d - 0.5)  # Yates: |O - E| shrunk by min(0.5, |O - E|)
            chi2 += d * d / e
    return chi2, dof, _chi2_sf(chi2, dof)


def _chi2_sf(x: float, dof: int) -> float:
    """Upper tail of the chi-square distribution for an integer dof (closed forms, no scipy)."""
    if x <= 0:
        return 1.0
    if dof % 2 == 0:  # sf = exp(-x/2) * sum_{k < dof/2} (x/2)^k / k!
        term, total = 1.0, 1.0
        for k in range(1, dof // 2):
            term *= (x / 2) / k
            total += term
        return math.exp(-x / 2) * total
    # odd dof: erfc(sqrt(x/2)) + correction terms
    total = math.erfc(math.sqrt(x / 2))
    term = math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
    for k in range(1, (dof + 1) // 2):
        total += term
        term *= x / (2 * k + 1)
    return min(1.0, total)


def position_bias(verdicts: Iterable[tuple[bool, str]], swap_prob: float = 0.5) -> dict[str, Any]:
    """Does the judge favour the image shown first? ``verdicts``: (swapped, preference) of judged pairs.

    - ``first_shown_rate``: % of decisive verdicts (not ties) that chose the first-shown image, with an
      exact two-sided binomial p-value against 50 % (only for swap_prob = 0.5, where it is exact).
    - the official check: chi-square test of shown order (not swapped / swapped) x outcome of run A
      (win / loss / tie), and the win rate of run A in each order.
    """
    table = {
        "not_swapped": dict.fromkeys(("win", "loss", "tie"), 0),
        "swapped": dict.fromkeys(("win", "loss", "tie"), 0),
    }
    first = decisive = 0
    for swapped, pref in verdicts:
        table["swapped" if swapped else "not_swapped"][outcome_of(pref, swapped)] += 1
        if pref in ("image_a", "image_b"):
            decisive += 1
            first += pref == "image_a"
    chi = chi2_independence([list(table["not_swapped"].values()), list(table["swapped"].values())])
    binom = binomial_two_sided_p(first, decisive) if decisive and swap_prob == 0.5 else None

    def win_rate(row: dict[str, int]) -> float | None:
        n = sum(row.values())
        return 100.0 * row["win"] / n if n else None

    p_for_verdict = binom if binom is not None else (chi[2] if chi else None)
    if p_for_verdict is None:
        verdict = "not testable (too few or one-sided verdicts)"
    elif p_for_verdict < 0.01:
        verdict = "significant position bias (p < 0.01)"
    elif p_for_verdict < 0.05:
        verdict = "possible position bias (p < 0.05)"
    else:
        verdict = "no significant position bias"
    return {
        "n_decisive": decisive,
        "first_shown_preferred": first,
        "first_shown_rate": 100.0 * first / decisive if decisive else None,
        "binomial_p": binom,
        "chi2": chi[0] if chi else None,
        "chi2_dof": chi[1] if chi else None,
        "chi2_p": chi[2] if chi else None,
        "table": table,
        "win_rate_not_swapped": win_rate(table["not_swapped"]),
        "win_rate_swapped": win_rate(table["swapped"]),
        "interpretation": verdict,
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
    _check_or_write_manifest(out, fingerprint)

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


def _check_or_write_manifest(out: Path, fingerprint: dict[str, Any]) -> None:
    path = out / MANIFEST
    expected = json.loads(json.dumps(fingerprint, default=str))
    if path.exists():
        if json.loads(path.read_text()).get("fingerprint") != expected:
            raise ConfigError(
                f"{out} holds a different comparison (runs, judge, seed or swap_prob differ "
                f"from its {MANIFEST}); use a new output directory"
            )
        return
    atomic_write_json(path, build_manifest(fingerprint=fingerprint))


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
