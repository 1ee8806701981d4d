"""A rerun trusts no file blindly: bad journal lines, missing or broken images, a second process, modes."""

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalsuite import ConfigError, DiffusersGenerator
from evalsuite.evaluate import evaluate
from evalsuite.run_lock import acquire, lock_path, release
from evalsuite.store import JsonlLog, atomic_save_image, atomic_write_bytes
from tests.toy_benchmark import ToyBenchmark


class NoiseGenerator:
    """Cheap and deterministic per seed; records every batch it is asked for."""

    def __init__(self):
        self.calls: list[list[int]] = []

    def generate(self, requests):
        self.calls.append([r.seed for r in requests])
        return [Image.fromarray(np.random.default_rng(r.seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))
                for r in requests]

    def describe(self):
        return {"name": "noise"}


class CountingToy(ToyBenchmark):
    def __init__(self):
        super().__init__()
        self.scored: list[list[str]] = []

    def score(self, samples):
        self.scored.append([s.id for s in samples])
        return super().score(samples)


def ids(out: Path, stem: str) -> list[str]:
    return [r["id"] for r in JsonlLog(out / f"{stem}.rank0.jsonl")]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def samples_table(out: Path) -> list[dict]:
    return [{k: r[k] for k in ("id", "score", "error")} for r in JsonlLog(out / "samples.jsonl")]


@pytest.fixture
def finished(tmp_path):
    """A finished run (reference copy alongside) of the toy benchmark: 12 images, chunks of 2 and 4."""
    kwargs = {"gen_batch_size": 2, "score_batch_size": 4}
    ref = evaluate(ToyBenchmark(), tmp_path / "ref", generator=NoiseGenerator(), **kwargs)
    evaluate(ToyBenchmark(), tmp_path / "run", generator=NoiseGenerator(), **kwargs)
    return tmp_path / "run", ref, kwargs


# -- 3. one bad journal line never blocks resume -------------------------------------------------
def test_zero_filled_last_score_record_is_skipped_and_rescored(finished, caplog):
    out, ref, kwargs = finished
    journal = out / "scores.rank0.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[-1] = b"\0" * (len(lines[-1]) - 1) + b"\n"  # a crash left zeros where the record was
    journal.write_bytes(b"".join(lines))
    bench = CountingToy()
    with caplog.at_level(logging.WARNING, logger="evalsuite"):
        evaluate(bench, out, generator=NoiseGenerator(), **kwargs)
    assert f"{journal}:12: skipping an unreadable record" in caplog.text
    assert bench.scored == [[f"p{i // 2}/{i % 2}" for i in range(8, 12)]]  # the last chunk, once
    assert samples_table(out) == samples_table(ref.out_dir) and results(out)["summary"] == ref.summary
    evaluate(bench, out, generator=NoiseGenerator(), **kwargs)  # finished now: nothing redone
    assert len(bench.scored) == 1 and len(journal.read_bytes().splitlines()) == 13


def test_garbled_generation_line_redoes_only_its_chunk(finished, caplog):
    out, ref, kwargs = finished
    journal = out / "generated.rank0.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[4] = b'{"id": "p2/0", "se\xff\xfe garbage\n'  # sample p2/0, chunk [p2/0, p2/1]
    journal.write_bytes(b"".join(lines))
    gen, bench = NoiseGenerator(), CountingToy()
    with caplog.at_level(logging.WARNING, logger="evalsuite"):
        evaluate(bench, out, generator=gen, **kwargs)
    assert f"{journal}:5: skipping an unreadable record" in caplog.text
    assert len(gen.calls) == 1 and len(gen.calls[0]) == 2  # the chunk holding p2/0, not the rest
    assert ids(out, "generated")[-1:] == ["p2/0"]
    assert bench.scored == [[f"p{i // 2}/{i % 2}" for i in range(4, 8)]]  # its score chunk, rescored
    assert samples_table(out) == samples_table(ref.out_dir)
    evaluate(bench, out, generator=gen, **kwargs)
    assert len(gen.calls) == 1 and len(bench.scored) == 1


# -- 4. a finished run still checks its outputs --------------------------------------------------
class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, requests):
        self.calls.append([r.seed for r in requests])
        return self.inner.generate(requests)

    def describe(self):
        return self.inner.describe()


def test_missing_and_truncated_images_are_regenerated_and_rescored(tiny_dir, tmp_path, caplog):
    flux = DiffusersGenerator.from_pretrained(str(tiny_dir / "flux"), dtype="float32", num_inference_steps=2,
                                              height=32, width=32)
    kwargs = {"gen_batch_size": 2, "score_batch_size": 2}
    reference = evaluate(ToyBenchmark(), tmp_path / "ref", generator=flux, **kwargs)
    out = tmp_path / "run"
    shutil.copytree(tmp_path / "ref", out)  # a finished run
    (out / "images/p1/0000.png").unlink()
    truncated = out / "images/p4/0001.png"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    gen, bench = Counting(flux), CountingToy()
    with caplog.at_level(logging.WARNING, logger="evalsuite"):
        res = evaluate(bench, out, generator=gen, **kwargs)
    assert "images/p1/0000.png: missing" in caplog.text and "images/p4/0001.png: truncated" in caplog.text
    seeds = {s.id: s.seed for s in ToyBenchmark().samples(ToyBenchmark().prompts())}
    # whole chunks are rendered and scored (batch composition), only the two broken images are redone
    assert gen.calls == [[seeds["p1/0"], seeds["p1/1"]], [seeds["p4/0"], seeds["p4/1"]]]
    assert bench.scored == [["p1/0", "p1/1"], ["p4/0", "p4/1"]]
    assert ids(out, "generated")[12:] == ["p1/0", "p4/1"] and ids(out, "scores")[12:] == ["p1/0", "p4/1"]
    assert list(res.per_sample["score"]) == list(reference.per_sample["score"])
    assert results(out) == results(tmp_path / "ref")
    for rel in reference.per_sample["image"]:
        assert (out / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes()


def test_scoring_images_dir_with_a_missing_image_names_its_path(tmp_path):
    made = tmp_path / "made"
    evaluate(ToyBenchmark(), made, generator=NoiseGenerator(), limit=2)
    (made / "images/p1/0001.png").unlink()
    res = evaluate(ToyBenchmark(), tmp_path / "scored", images_dir=made, limit=2)
    err = res.per_sample.set_index("id").loc["p1/1", "error"]
    assert "'p1/1'" in err and str(made / "images/p1/0001.png") in err


# -- 7a. one process per output folder -----------------------------------------------------------
def _lock(out: Path, pid: int, host: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = lock_path(out, 0)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))
    return path


def test_a_folder_held_by_a_live_process_is_refused(tmp_path):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _lock(tmp_path, holder.pid)
        with pytest.raises(ConfigError, match=rf"{tmp_path} is in use by another run \(pid {holder.pid} on "):
            evaluate(ToyBenchmark(), tmp_path, generator=NoiseGenerator(), limit=1)
        assert not (tmp_path / "generated.rank0.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(ConfigError, match="pid 1 on elsewhere"):  # another host's pid cannot be checked
        _lock(tmp_path / "other", 1, host="elsewhere")
        evaluate(ToyBenchmark(), tmp_path / "other", generator=NoiseGenerator(), limit=1)


def test_a_stale_lock_is_taken_over_and_every_lock_is_released(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    path = _lock(tmp_path, int(dead.stdout))
    with caplog.at_level(logging.WARNING, logger="evalsuite"):
        evaluate(ToyBenchmark(), tmp_path, generator=NoiseGenerator(), limit=1)
    assert "taking over a stale lock" in caplog.text and not path.exists()
    assert (tmp_path / "results.json").is_file()

    class Broken(NoiseGenerator):
        def generate(self, requests):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        evaluate(ToyBenchmark(), tmp_path / "b", generator=Broken(), limit=1)
    assert not lock_path(tmp_path / "b", 0).exists()


def test_ranks_of_one_run_do_not_block_each_other(tmp_path):
    locks = [acquire(tmp_path, 0), acquire(tmp_path, 1)]
    with pytest.raises(ConfigError, match="in use"):
        acquire(tmp_path, 1)
    for lock in locks:
        release(lock)
    assert not list(tmp_path.glob("*.lock"))


# -- 7b. outputs follow the umask ----------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "x.bin", b"x")
        atomic_save_image(tmp_path / "x.png", Image.new("RGB", (2, 2)))
        evaluate(ToyBenchmark(), tmp_path / "run", generator=NoiseGenerator(), limit=1)
    finally:
        os.umask(old)
    paths = [tmp_path / "x.bin", tmp_path / "x.png", *(tmp_path / "run" / n for n in (
        "results.json", "report.html", "manifest.json", "images/p0/0000.png"))]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths} == {p.name: mode for p in paths}
