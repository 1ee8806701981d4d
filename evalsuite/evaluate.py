"""``evaluate()``: generate (or find) images for a benchmark, score them, aggregate, report. Resumable.

Work is cut into fixed chunks (by position in the benchmark's sample list), so a resumed or sharded run
batches exactly like an uninterrupted one and reproduces its numbers bit for bit. Each finished chunk is
recorded in an append-only log (``generated.rank<r>.jsonl``, ``scores.rank<r>.jsonl``); a restart skips
recorded chunks and redoes only the chunk that was in flight. Under ``accelerate launch`` rank r takes
chunks r, r+W, r+2W…; rank 0 aggregates once every rank is done.

A rerun trusts no file blindly: an unreadable journal line is skipped (its samples are redone), and a
generated image that has gone missing or broken is regenerated and rescored. One run per output folder
(per rank) at a time: a second is refused (``run_lock``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalsuite.benchmark import Benchmark
from evalsuite.errors import ConfigError
from evalsuite.generator import GenerationRequest, Generator
from evalsuite.images import BadImageError, ImageFailure, image_file_problem, to_rgb
from evalsuite.manifest import check_or_write_manifest
from evalsuite.progress import progress
from evalsuite.run_lock import run_lock
from evalsuite.sample import Sample
from evalsuite.store import JsonlLog, atomic_save_image

if TYPE_CHECKING:
    from evalsuite.protocols import Protocol

log = logging.getLogger(__name__)



@dataclass
class RunResult:
    out_dir: Path
    summary: dict[str, Any]
    table: Any  # pandas.DataFrame: the benchmark's summary table
    per_sample: Any  # pandas.DataFrame: one row per image


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from the environment ``accelerate launch`` / ``torchrun`` set."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def evaluate(
    benchmark: Benchmark,
    out_dir: str | os.PathLike,
    *,
    generator: Generator | None = None,
    images_dir: str | os.PathLike | None = None,
    images_per_prompt: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    gen_batch_size: int = 4,
    score_batch_size: int = 16,
    data_dir: str | os.PathLike | None = None,
    rewriter: Any = None,
    rank: int | None = None,
    world_size: int | None = None,
    run_info: dict[str, Any] | None = None,
    protocol: Protocol | None = None,
) -> RunResult | None:
    """Run ``benchmark`` end to end into ``out_dir``; returns the result on rank 0 (None elsewhere).

    Images come from ``generator`` (written in the benchmark's layout under ``out_dir``) or, to score
    images made elsewhere, from ``images_dir`` in the same layout. A ``rewriter`` (anything with
    ``rewrite(prompts, seed) -> list[str]``, e.g. a trained RePrompt policy) rewrites each prompt before it
    is rendered; the image is still scored against the original prompt, and the table shows both. A
    ``protocol`` (``evalsuite.protocols.Protocol``) sets the seed rule and joins the fingerprint.
    """
    if (generator is None) == (images_dir is None):
        raise ConfigError("evaluate() needs exactly one of generator (to render) or images_dir (to score)")
    env_rank, env_world = distributed_rank()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    out = Path(out_dir)
    image_root = out if images_dir is None else Path(images_dir)

    records = benchmark.prompts(None if data_dir is None else str(data_dir))
    if limit is not None:
        records = records[:limit]
    seed_rule = {} if protocol is None else {"seed_rule": protocol.seed_rule}
    samples = benchmark.samples(records, base_seed=seed, images_per_prompt=images_per_prompt, **seed_rule)

    fingerprint = {
        "benchmark": benchmark.describe(),
        "generator": generator.describe() if generator is not None else None,
        "rewriter": rewriter.describe() if rewriter is not None and hasattr(rewriter, "describe") else (
            None if rewriter is None else type(rewriter).__name__),
        "images_dir": str(images_dir) if images_dir is not None else None,
        "prompts": len(records),
        "images_per_prompt": images_per_prompt or benchmark.images_per_prompt,
        "limit": limit,
        "seed": seed,
        "gen_batch_size": gen_batch_size,
        "score_batch_size": score_batch_size,
    }
    if protocol is not None:  # only then: folders made before protocols existed keep their fingerprint
        fingerprint["protocol"] = protocol.record()
    with run_lock(out, rank):
        _check_or_write_manifest(out, fingerprint, run_info or {}, rank)
        redo: set[str] = set()
        if generator is not None:
            if rank == 0:
                benchmark.write_layout(out, records)
            redo = _to_redo(benchmark, samples, out, (gen_batch_size, score_batch_size), rank, world_size)
            _wait_for_everyone(world_size)  # every rank has checked the images before any is rewritten
            _generate(benchmark, generator, samples, out, gen_batch_size, rank, world_size, rewriter, redo)
            _wait_for_everyone(world_size)  # a rank may score images that another rank generated
        _score(benchmark, samples, image_root, out, score_batch_size, rank, world_size, redo)
        _wait_for_everyone(world_size)
        if rank != 0:
            return None
        return _finish(benchmark, samples, image_root, out)


def _check_or_write_manifest(out: Path, fingerprint: dict, run_info: dict, rank: int) -> None:
    check_or_write_manifest(out, fingerprint, f"{out} holds a different run (use a new output directory to "
                            "start a new run)", write=rank == 0, **run_info)


def _chunks(items: Sequence[Sample], size: int) -> list[list[Sample]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _my_chunks(samples: Sequence[Sample], size: int, rank: int, world: int) -> list[list[Sample]]:
    return [c for i, c in enumerate(_chunks(samples, size)) if i % world == rank]


def _journal(out: Path, stem: str) -> list[dict[str, Any]]:
    """Every rank's records of ``stem``, oldest first within each rank (so a redo outranks the original)."""
    return [rec for path in sorted(out.glob(f"{stem}.rank*.jsonl")) for rec in JsonlLog(path)
            if isinstance(rec.get("id"), str)]


def _done_ids(out: Path, stem: str) -> set[str]:
    return {rec["id"] for rec in _journal(out, stem)}


def _to_redo(benchmark, samples, out: Path, sizes: tuple[int, ...], rank: int, world: int) -> set[str]:
    """Ids this rank must (re)generate or rescore: never journaled as generated, or the image is missing
    or broken (a cheap header check). Covers the samples this rank generates and those it scores."""
    generated = _done_ids(out, "generated")
    mine = {s.id: s for size in sizes for chunk in _my_chunks(samples, size, rank, world) for s in chunk}
    redo = set()
    for sid, s in mine.items():
        if sid not in generated:
            redo.add(sid)
            continue
        path = out / benchmark.image_path(s)
        problem = image_file_problem(path)
        if problem:
            log.warning("%s: %s; regenerating and rescoring sample %r", path, problem, sid)
            redo.add(sid)
    return redo


def _generate(benchmark, generator, samples, out, batch_size, rank, world, rewriter, redo: set[str]) -> None:
    # A whole chunk is generated even for one missing image: batch composition can change an image's bits,
    # and the chunk is what an uninterrupted run rendered together. Only the redone images are written.
    todo = [c for c in _my_chunks(samples, batch_size, rank, world) if any(s.id in redo for s in c)]
    journal = JsonlLog(out / f"generated.rank{rank}.jsonl")
    for chunk in progress(todo, desc=f"generate {benchmark.name}", unit="batch"):
        rendered = [s.rendered_prompt for s in chunk]
        if rewriter is not None:  # one seed per chunk: the chunk partition is fixed, so this reproduces
            rendered = list(rewriter.rewrite(rendered, seed=chunk[0].seed))
        requests = [GenerationRequest(p, s.seed, s.source_image) for p, s in zip(rendered, chunk)]
        images = generator.generate(requests)
        for s, img in zip(chunk, images):
            if s.id in redo:
                atomic_save_image(out / benchmark.image_path(s), img)
        done_at = time.time()  # per-chunk timestamps: throughput without start-up, visible to users
        journal.append({"id": s.id, "seed": s.seed, "path": benchmark.image_path(s), "t": done_at,
                        "rendered_prompt": p} for s, p in zip(chunk, rendered) if s.id in redo)


def _load_image(root: Path, benchmark: Benchmark, sample: Sample) -> Sample:
    path = root / benchmark.image_path(sample)
    try:
        return replace(sample, image=to_rgb(path, sample.id))
    except BadImageError as e:  # the scorer reports the real cause (missing, truncated…), naming the sample
        return replace(sample, image=ImageFailure(str(e)))


def _score(benchmark, samples, image_root, out, batch_size, rank, world, redo: set[str]) -> None:
    # Like generation, a whole chunk is scored together (a reward's batch can change its numbers); only
    # the samples that had no valid score are journaled.
    done = _done_ids(out, "scores") - redo
    todo = [c for c in _my_chunks(samples, batch_size, rank, world) if any(s.id not in done for s in c)]
    journal = JsonlLog(out / f"scores.rank{rank}.jsonl")
    for chunk in progress(todo, desc=f"score {benchmark.name}", unit="batch"):
        loaded = [_load_image(image_root, benchmark, s) for s in chunk]
        records = benchmark.score(loaded)
        journal.append({"id": s.id, **rec} for s, rec in zip(chunk, records) if s.id not in done)


def _wait_for_everyone(world: int) -> None:
    if world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def _finish(benchmark: Benchmark, samples, image_root: Path, out: Path) -> RunResult:
    import pandas as pd

    from evalsuite.report import write_outputs

    rendered = {rec["id"]: rec.get("rendered_prompt") for rec in _journal(out, "generated")}
    by_id = {rec["id"]: rec for rec in _journal(out, "scores")}  # the latest record: a rescore wins
    missing = [s.id for s in samples if s.id not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} samples have no score (e.g. {missing[:3]}); rerun to finish")
    rows = []
    for s in samples:
        rows.append({"id": s.id, "group": s.group, "prompt": s.prompt,
                     "rendered_prompt": rendered.get(s.id) or s.rendered_prompt, "seed": s.seed,
                     "image": os.path.relpath(image_root / benchmark.image_path(s), out),
                     "metadata": s.metadata, **by_id[s.id]})
    per_sample = pd.DataFrame(rows)
    table = benchmark.aggregate(per_sample)
    summary = benchmark.summary(table, per_sample)
    write_outputs(out, benchmark, summary, table, per_sample)
    return RunResult(out, summary, table, per_sample)
