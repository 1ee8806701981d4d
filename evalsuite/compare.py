"""Run against run: ``evalsuite compare RUN_A RUN_B`` pairs two runs' samples and says where they differ.

A run is a folder written by ``evalsuite run`` (``samples.jsonl``, ``results.json``, ``manifest.json``) or the
JSONL that ``evalsuite score --output`` writes (a column per reward). Samples pair by id, and only where both
runs gave the sample the same prompt.

The uncertainty is over prompts, because prompts are what a benchmark samples: each shared prompt gives
one difference d = mean score of A's images − mean score of B's (the images paired by id), and a task's
delta is the mean of its prompts' d with a **paired normal 95% interval**, mean(d) ± z·sd(d)/√n
(z = Φ⁻¹(0.975) ≈ 1.96, sd with n − 1). It is the interval of the mean of per-prompt differences, not
of the benchmark's own headline number (GenEval's overall is a mean of task means); the headline numbers
of both runs are shown next to it, without an interval.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

from evalsuite.errors import ConfigError
from evalsuite.settings_diff import describe_changes, setting_changes
from evalsuite.store import JsonlLog

log = logging.getLogger(__name__)

# Per-sample columns that name a sample's task, in the order benchmarks use them (GenEval: tag).
TASK_FIELDS = ("tag", "category", "task", "skill")
# Fingerprint entries expected to differ between two runs being compared (what is compared, and how
# the work was batched); every other difference is a warning.
COMPARED_SETTINGS = ("generator.model", "generator.revision", "generator.lora", "rewriter", "images_dir",
                     "gen_batch_size", "score_batch_size", "limit", "prompts")
ALL_TASKS = "all prompts"


@dataclass
class Run:
    """One side of a comparison: its samples with a score per metric (None: not scored)."""

    path: Path
    benchmark: str
    label: str
    samples: dict[str, dict[str, Any]]  # id -> {prompt, group, task, image, correct, reason, scores}
    metrics: list[str]
    summary: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)


def paired_normal_ci(diffs: list[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high) of the mean of paired differences: mean ± z·sd/√n; None below two pairs."""
    n = len(diffs)
    if n < 2:
        return None
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = NormalDist().inv_cdf(0.5 + level / 2) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _task(row: dict[str, Any]) -> str:
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    for key in TASK_FIELDS:
        for source in (row, meta):
            if source.get(key) not in (None, ""):
                return str(source[key])
    return "all"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None
    return data if isinstance(data, dict) else {}


def _run_dir(path: Path) -> Run:
    results = _read_json(path / "results.json") if (path / "results.json").is_file() else {}
    manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else {}
    fingerprint = manifest.get("fingerprint") or {}
    bench = (results.get("benchmark") or {}).get("name") or (fingerprint.get("benchmark") or {}).get("name")
    if not bench:
        raise ConfigError(f"{path}: neither results.json nor manifest.json names the benchmark of this run")
    samples = {}
    for row in JsonlLog(path / "samples.jsonl").read():
        sid = str(row.get("id"))
        score = None if row.get("error") else _score(row.get("score"))
        samples[sid] = {"prompt": row.get("prompt"), "group": str(row.get("group") or row.get("prompt")),
                        "task": _task(row), "image": path / str(row.get("image")),
                        "correct": row.get("correct") if isinstance(row.get("correct"), bool) else None,
                        "reason": row.get("reason") or row.get("error"), "scores": {"score": score}}
    gen = fingerprint.get("generator") or {}
    label = gen.get("model") or fingerprint.get("images_dir") or path.name
    if gen.get("lora"):
        label += f" + {gen['lora']}"
    return Run(path, bench, str(label), samples, ["score"], results.get("summary") or {}, fingerprint)


def _score_listing(path: Path) -> Run:
    """The JSONL of ``evalsuite score --output``: ``score``/``applicable`` or ``NAME``/``NAME.applicable``."""
    rows = JsonlLog(path).read()
    if not rows:
        raise ConfigError(f"{path}: no scored rows")
    first = rows[0]
    metrics = ["score"] if "applicable" in first else [k[: -len(".applicable")] for k in first
                                                        if k.endswith(".applicable")]
    if not metrics or "prompt" not in first:
        raise ConfigError(f"{path}: not a run folder nor the output of `evalsuite score` (no score columns)")
    samples = {}
    for n, row in enumerate(rows):
        image = Path(str(row.get("image")))
        if not image.is_absolute() and not image.exists():
            image = path.parent / image
        scores = {}
        for m in metrics:
            ok = row.get("applicable" if m == "score" else f"{m}.applicable")
            scores[m] = _score(row.get(m)) if ok else None
        samples[str(row.get("id", n))] = {"prompt": row.get("prompt"), "group": str(row.get("prompt")),
                                          "task": "all", "image": image, "correct": None,
                                          "reason": row.get("error"), "scores": scores}
    return Run(path, "evalsuite score", path.stem, samples, metrics)


def read_run(path: str | os.PathLike) -> Run:
    """A run folder (``evalsuite run``) or a score listing (``evalsuite score --output``)."""
    path = Path(path)
    if path.is_dir() and (path / "samples.jsonl").is_file():
        return _run_dir(path)
    if path.is_file():
        return _score_listing(path)
    raise ConfigError(f"{path}: expected a run folder with samples.jsonl (evalsuite run) or the JSONL "
                      "written by `evalsuite score --output`")


@dataclass
class TaskDelta:
    metric: str
    task: str
    prompts: int
    mean_a: float
    mean_b: float
    delta: float
    ci: tuple[float, float] | None


@dataclass
class Comparison:
    a: Run
    b: Run
    shared: list[str]  # sample ids in both runs with the same prompt
    deltas: list[TaskDelta]
    warnings: list[str]


def _check_comparable(a: Run, b: Run) -> tuple[list[str], list[str]]:
    if a.benchmark != b.benchmark:
        raise ConfigError(f"cannot compare runs of different benchmarks: {a.path} is {a.benchmark!r}, "
                          f"{b.path} is {b.benchmark!r}")
    metrics = [m for m in a.metrics if m in b.metrics]
    if not metrics:
        raise ConfigError(f"{a.path} scores {', '.join(a.metrics)} and {b.path} scores "
                          f"{', '.join(b.metrics)}: no reward in common")
    shared = [i for i, s in a.samples.items() if i in b.samples and b.samples[i]["prompt"] == s["prompt"]]
    if not shared:
        raise ConfigError(f"{a.path} and {b.path} share no prompts (no sample id with the same prompt in "
                          "both)")
    return metrics, shared


def _setting_warnings(a: Run, b: Run, shared: list[str]) -> list[str]:
    out = []
    changes = setting_changes(a.fingerprint, b.fingerprint, skip=COMPARED_SETTINGS)
    if changes:
        out.append(f"the runs were made with different settings (A → B): {describe_changes(changes)}")
    for run in (a, b):
        left = len(run.samples) - len(shared)
        if left:
            out.append(f"{left} of {len(run.samples)} samples of {run.path} have no partner in the other "
                       "run and are left out")
    return out


def task_deltas(a: Run, b: Run, shared: list[str], metric: str) -> list[TaskDelta]:
    """Per task (and over all prompts): the per-prompt paired differences and their normal interval."""
    per_prompt: dict[str, list[tuple[float, float]]] = defaultdict(list)
    task_of: dict[str, str] = {}
    for sid in shared:
        sa, sb = a.samples[sid]["scores"].get(metric), b.samples[sid]["scores"].get(metric)
        if sa is None or sb is None:
            continue
        group = a.samples[sid]["group"]
        per_prompt[group].append((sa, sb))
        task_of[group] = a.samples[sid]["task"]
    means = {g: (sum(p[0] for p in v) / len(v), sum(p[1] for p in v) / len(v)) for g, v in per_prompt.items()}
    tasks = list(dict.fromkeys(task_of.values()))
    out = []
    for task in [*tasks, ALL_TASKS] if len(tasks) > 1 else tasks:
        groups = [g for g in means if task in (ALL_TASKS, task_of[g])]
        ma, mb = [means[g][0] for g in groups], [means[g][1] for g in groups]
        ci = paired_normal_ci([x - y for x, y in zip(ma, mb)])
        out.append(TaskDelta(metric, task, len(groups), sum(ma) / len(ma), sum(mb) / len(mb),
                             sum(ma) / len(ma) - sum(mb) / len(mb), None if ci is None else ci[1:]))
    return out


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike) -> Comparison:
    """Pair two runs; refuse runs of different benchmarks or with no prompt in common."""
    a, b = read_run(run_a), read_run(run_b)
    metrics, shared = _check_comparable(a, b)
    warnings = _setting_warnings(a, b, shared)
    for w in warnings:
        log.warning("%s", w)
    deltas = [d for m in metrics for d in task_deltas(a, b, shared, m)]
    return Comparison(a, b, shared, deltas, warnings)


def flips(cmp: Comparison) -> tuple[list[str], list[str]]:
    """(ids A got right and B wrong, ids B got right and A wrong), where the runs record correctness."""
    a_only, b_only = [], []
    for sid in cmp.shared:
        ca, cb = cmp.a.samples[sid]["correct"], cmp.b.samples[sid]["correct"]
        if ca is not None and cb is not None and ca != cb:
            (a_only if ca else b_only).append(sid)
    return a_only, b_only


def largest_gaps(cmp: Comparison, metric: str, limit: int) -> list[tuple[str, float]]:
    """The ``limit`` shared samples with the largest |score A − score B| (zero gaps left out)."""
    gaps = []
    for sid in cmp.shared:
        sa, sb = cmp.a.samples[sid]["scores"].get(metric), cmp.b.samples[sid]["scores"].get(metric)
        if sa is not None and sb is not None and sa != sb:
            gaps.append((sid, sa - sb))
    gaps.sort(key=lambda g: (-abs(g[1]), g[0]))
    return gaps[:limit]
