"""Run parity rows and keep their last results (``docs/parity.json``, rendered as ``docs/parity.md``).

A model row scores the same image files and prompts with the official code (side venv, subprocess) and with
our reward; it matches when ``max |ours - official| <= TOLERANCE * max |official|``. A row that cannot run
(its side venv does not build, the official code fails) is recorded with the exact error and does not fail
the command; a row that runs and does not match does.
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalsuite.parity.envs import ENVS, SideEnvError, build, dry_run, run_side
from evalsuite.parity.models import MODEL_ROWS, PROMPTS, ModelRow, ProbeRow, write_images
from evalsuite.parity.reasons import ReasonRow

__all__ = ["TOLERANCE", "RowResult", "compare", "run_model_row", "run_probe_row", "run_reason_row"]

TOLERANCE = 1e-5


@dataclass
class RowResult:
    """One line of the table. ``status``: ``match``, ``MISMATCH``, ``known gap`` (over the tolerance for the
    documented cause in ``error``), ``not run`` (``error`` says why)."""

    row: str
    official: str
    status: str
    command: str
    date: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    weights: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    n_images: int = 0
    max_abs: float | None = None
    max_rel: float | None = None
    error: str = ""
    env_build_s: float | None = None
    seconds: float | None = None
    passed: int | None = None
    total: int | None = None
    skipped: int | None = None
    scores: dict[str, list[float]] = field(default_factory=dict)  # "ours" / "official", per image

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(ours: list[float], official: list[float]) -> tuple[float, float]:
    """``(max abs error, max abs error / max |official|)``: relative to the scale of the scores, so a score
    that happens to sit near zero cannot turn float32 noise into a large relative error."""
    if len(ours) != len(official) or not ours:
        raise ValueError(f"score lists differ in length: {len(ours)} vs {len(official)}")
    if any(not math.isfinite(x) for x in (*ours, *official)):
        raise ValueError(f"non-finite score: ours {ours}, official {official}")
    max_abs = max(abs(a - b) for a, b in zip(ours, official))
    scale = max(abs(b) for b in official)
    return max_abs, (max_abs / scale if scale else math.inf if max_abs else 0.0)


def _ours(row: ModelRow, kwargs: dict[str, Any], prompts: list[str], images: list[Path]) -> list[float]:
    from PIL import Image

    from evalsuite.registry import get_reward
    from evalsuite.sample import Sample

    samples = []
    for prompt, path in zip(prompts, images):
        with Image.open(path) as im:
            samples.append(Sample(id=path.stem, prompt=prompt, image=im.copy()))
    reward = get_reward(row.reward or row.name, device="cpu", dtype="float32", batch_size=len(samples),
                        **kwargs)
    out = reward.score(samples)
    bad = [i for i, ok in enumerate(out.applicable) if not ok]
    if bad:
        raise SideEnvError(f"our {row.name} gave no score for samples {bad}: {[out.errors[i] for i in bad]}")
    return list(out.scores)


def run_model_row(row: ModelRow, command: str, work: Path | None = None) -> RowResult:
    """Build/reuse the row's side venv, write the shared weights and images, score both sides, compare."""
    package = row.package or ENVS[row.env].requirements[0]
    result = RowResult(row.name, f"`{package}`: {row.official}", "not run", command)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"parity-{row.name}-") as tmp:
        folder = work or Path(tmp)
        try:
            _, result.env_build_s = build(ENVS[row.env])
            images = write_images(folder / "images")
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
            prepared = row.prepare(folder)
            result.weights, result.n_images = prepared.weights, len(images)
            request = {**prepared.request, "prompts": prompts, "images": [str(p) for p in images]}
            side = run_side(ENVS[row.env], row.script, request, folder)
            result.versions = side["versions"]
            ours = _ours(row, prepared.reward_kwargs, prompts, images)
            result.scores = {"ours": ours, "official": side["scores"]}
            result.max_abs, result.max_rel = compare(ours, side["scores"])
            result.status = ("match" if result.max_rel <= TOLERANCE
                             else "known gap" if row.cause else "MISMATCH")
            result.error = row.cause if result.status == "known gap" else ""
        except SideEnvError as e:
            result.error = str(e)
        except Exception as e:  # the table records why a row could not run
            result.error = f"{type(e).__name__}: {e}"
            if result.max_abs is None and result.versions:
                result.status = "MISMATCH"  # the official side ran; ours failed: that is a failure
    result.seconds = round(time.monotonic() - start, 1)
    return result


def run_probe_row(row: ProbeRow, command: str) -> RowResult:
    """Build/reuse the side venv and import the official package there: the versions, and why unmeasured."""
    result = RowResult(row.name, f"`{ENVS[row.env].requirements[0]}`: {row.official}", "not run", command)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"parity-{row.name}-") as tmp:
        try:
            _, result.env_build_s = build(ENVS[row.env])
            side = run_side(ENVS[row.env], "official_probe.py",
                            {"imports": list(row.imports), "dists": row.dists}, Path(tmp))
            result.versions, result.error = side["versions"], row.reason
        except (SideEnvError, OSError) as e:
            result.error = str(e)
    result.seconds = round(time.monotonic() - start, 1)
    return result


def run_reason_row(row: ReasonRow, command: str) -> RowResult:
    """A row that is not measured: its reason, plus pip's own answer for the official pins when it has any."""
    result = RowResult(row.name, row.official, "not run", command, error=row.reason)
    start = time.monotonic()
    if row.dry_run:
        resolves, said = dry_run(row.dry_run)
        pins = " ".join(row.dry_run)
        result.error += (f". `pip install --dry-run {pins}`: " + ("resolves: " if resolves else "fails: ")
                         + said)
    result.seconds = round(time.monotonic() - start, 1)
    return result


def model_rows(names: list[str] | None, full: bool) -> list[ModelRow]:
    """The rows to run: the named ones, else the cheap ones (and the full-size ones with ``full``)."""
    if names:
        return [MODEL_ROWS[n] for n in names if n in MODEL_ROWS]
    return [row for row in MODEL_ROWS.values() if full or not row.full]
