"""Score existing images with any reward: ``evalsuite score`` and ``evalsuite compare --reward``.

Inputs are a run directory (its ``samples.jsonl`` names each image and prompt) or a JSONL file of
``{"image": path, "prompt": str, "metadata": {...}, "source_image": path}`` lines (paths relative to
the file). Images are loaded lazily, batch by batch.

Several rewards in one pass (``--reward a,b,c`` or a named set): each is built, run over every item and
dropped before the next is built, so each model loads once and only one is in memory at a time.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite.errors import ConfigError
from evalsuite.progress import progress
from evalsuite.reward import Reward
from evalsuite.sample import Sample

log = logging.getLogger(__name__)

_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


@dataclass
class Item:
    id: str
    prompt: str
    image: Path
    metadata: dict[str, Any]
    source_image: Path | None = None


def read_items(path: str | Path) -> list[Item]:
    """Items of a run directory (``samples.jsonl``) or of a JSONL listing."""
    path = Path(path)
    listing = path / "samples.jsonl" if path.is_dir() else path
    if not listing.is_file():
        raise ConfigError(f"{path}: expected a run directory with samples.jsonl or a JSONL listing of images")
    base = listing.parent
    items = []
    for n, raw in enumerate(listing.read_bytes().splitlines()):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{listing}:{n + 1}: not UTF-8 text (byte {e.start + 1}: {e.reason})") from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise TypeError(f"a JSON object is needed, got {_JSON_KINDS.get(type(rec), 'a value')}")
            items.append(Item(
                id=str(rec.get("id", n)), prompt=rec["prompt"], image=base / rec["image"],
                metadata=dict(rec.get("metadata") or {}),
                source_image=base / rec["source_image"] if rec.get("source_image") else None,
            ))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{listing}:{n + 1}: bad line ({e}); need at least 'image' and 'prompt'") from e
    return items


def score_items(reward: Reward, items: Sequence[Item], batch_size: int = 16) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for start in progress(range(0, len(items), batch_size), desc=f"score {reward.name}", unit="batch"):
        chunk = items[start : start + batch_size]
        samples = [Sample(it.id, it.prompt, it.image, metadata=it.metadata, source_image=it.source_image)
                   for it in chunk]
        out = reward.score(samples)
        for it, s, ok, err, det in zip(chunk, out.scores, out.applicable, out.errors, out.details):
            rows.append({"id": it.id, "prompt": it.prompt, "image": str(it.image), "score": s,
                         "applicable": ok, "error": err, **{f"detail.{k}": v for k, v in det.items()}})
    return rows


def reward_list(spec: str) -> list[str] | None:
    """The rewards ``--reward`` names for a column each, or None when it names one reward or a weighted sum.

    ``a,b,c``: those rewards (each must be registered). A registered benchmark with ``paper_rewards`` names
    a set (``drawbench``: the DiffusionNFT paper's six); members not registered here are skipped with a
    warning. ``NAME:WEIGHT,...`` stays one weighted-sum reward (``multi``)."""
    from evalsuite.registry import registry

    if ":" in spec:
        return None
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    rewards = set(registry.names("rewards"))
    if len(names) == 1 and names[0] not in rewards and names[0] in registry.names("benchmarks"):
        members = getattr(registry.get("benchmarks", names[0]), "paper_rewards", None)
        if members:
            skipped = [n for n in members if n not in rewards]
            if skipped:
                log.warning("reward set %s: not registered in this install, skipped: %s", names[0],
                            ", ".join(skipped))
            return [n for n in members if n in rewards]
    if len(names) < 2:
        return None
    for n in names:
        registry.entry("rewards", n)  # an unknown name fails here, listing the registered ones
    return names


def score_items_by_reward(
    factories: dict[str, Callable[[], Reward]], items: Sequence[Item], batch_size: int = 16
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """(one row per item with a column per reward, each reward's own ``score_items`` rows).

    A row holds ``<name>`` (the score), ``<name>.applicable``, ``<name>.error``, ``<name>.detail.*`` per
    reward, and ``error``: every reward's error, joined (None when all scored)."""
    by_reward: dict[str, list[dict[str, Any]]] = {}
    for name, factory in factories.items():
        reward = factory()
        by_reward[name] = score_items(reward, items, batch_size)
        del reward
        _release_memory()
    rows: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        row: dict[str, Any] = {"id": it.id, "prompt": it.prompt, "image": str(it.image)}
        errors = []
        for name, reward_rows in by_reward.items():
            r = reward_rows[i]
            row.update({name: r["score"], f"{name}.applicable": r["applicable"], f"{name}.error": r["error"]})
            row.update({f"{name}.{k}": v for k, v in r.items() if k.startswith("detail.")})
            if r["error"]:
                errors.append(f"{name}: {r['error']}")
        row["error"] = "; ".join(errors) or None
        rows.append(row)
    return rows, by_reward


def _release_memory() -> None:
    """Free the reward just used before the next one loads (GPU memory is the tight one)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def split_reward_options(names: Sequence[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``--option KEY=V`` goes to every reward, ``--option NAME.KEY=V`` to reward NAME only."""
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in options.items():
        target, dot, option = key.rpartition(".")
        if not dot:
            for n in names:
                out[n][key] = value
        elif target in out:
            out[target][option] = value
        else:
            raise ConfigError(
                f"--option {key}: {target!r} is not one of the rewards scored ({', '.join(names)})")
    return out


def summary_line(name: str, rows: Sequence[dict[str, Any]]) -> str:
    """``NAME: mean M over N images (K not applicable, E errors)``, what ``evalsuite score`` prints."""
    bad = sum(1 for r in rows if r["error"])
    na = sum(1 for r in rows if not r["applicable"] and not r["error"])
    return (f"{name}: mean {mean_score(rows):.6f} over {len(rows) - bad - na} images "
            f"({na} not applicable, {bad} errors)")


def mean_score(rows: Sequence[dict[str, Any]]) -> float:
    vals = [r["score"] for r in rows if r["applicable"] and math.isfinite(r["score"])]
    return sum(vals) / len(vals) if vals else math.nan


def compare_with_reward(
    run_a: str | Path, run_b: str | Path, reward: Reward, *, batch_size: int = 16, tie_tolerance: float = 0.0
) -> dict[str, Any]:
    """Score both runs' images with ``reward`` and compare them pair by pair (same sample id)."""
    items_a = {it.id: it for it in read_items(run_a)}
    items_b = {it.id: it for it in read_items(run_b)}
    common = [i for i in items_a if i in items_b]
    if not common:
        raise ConfigError(f"{run_a} and {run_b} share no sample ids")
    mismatched = [i for i in common if items_a[i].prompt != items_b[i].prompt]
    if mismatched:
        raise ConfigError(
            f"runs disagree on the prompt of {len(mismatched)} samples (e.g. {mismatched[0]!r})")
    rows_a = score_items(reward, [items_a[i] for i in common], batch_size)
    rows_b = score_items(reward, [items_b[i] for i in common], batch_size)
    wins = losses = ties = skipped = 0
    diffs = []
    for ra, rb in zip(rows_a, rows_b):
        if not (ra["applicable"] and rb["applicable"]):
            skipped += 1
            continue
        d = ra["score"] - rb["score"]
        diffs.append(d)
        if abs(d) <= tie_tolerance:
            ties += 1
        elif d > 0:
            wins += 1
        else:
            losses += 1
    n = len(diffs)
    mean_diff = sum(diffs) / n if n else math.nan
    sd = math.sqrt(sum((d - mean_diff) ** 2 for d in diffs) / (n - 1)) if n > 1 else math.nan
    return {
        "reward": reward.describe(), "pairs": len(common), "compared": n, "skipped": skipped,
        "mean_a": mean_score(rows_a), "mean_b": mean_score(rows_b), "mean_diff": mean_diff,
        "mean_diff_ci95": [mean_diff - 1.96 * sd / math.sqrt(n), mean_diff + 1.96 * sd / math.sqrt(n)]
        if n > 1 else None,
        "win": wins / n if n else math.nan, "loss": losses / n if n else math.nan,
        "tie": ties / n if n else math.nan,
    }
