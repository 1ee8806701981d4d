"""The run machinery: end to end on tiny FLUX, resume after SIGKILL, layout, manifest, outputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from evalsuite import ConfigError, DiffusersGenerator
from evalsuite.evaluate import evaluate
from evalsuite.report import cards_in
from evalsuite.store import JsonlLog
from tests.toy_benchmark import ToyBenchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen(tiny_dir):
    return DiffusersGenerator.from_pretrained(str(tiny_dir / "flux"), dtype="float32", num_inference_steps=2,
                                              height=32, width=32)


def journal_ids(out: Path, stem: str) -> list[str]:
    return [r["id"] for p in sorted(out.glob(f"{stem}.rank*.jsonl")) for r in JsonlLog(p)]


def test_end_to_end_outputs(gen, tmp_path):
    res = evaluate(ToyBenchmark(), tmp_path, generator=gen, gen_batch_size=3, score_batch_size=4)
    assert len(res.per_sample) == 12 and set(res.table.index) == {f"p{i}" for i in range(6)}
    for name in ("manifest.json", "results.json", "samples.jsonl", "summary.md", "report.html"):
        assert (tmp_path / name).is_file(), name
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    fp = manifest["fingerprint"]
    assert fp["generator"]["num_inference_steps"] == 2 and fp["seed"] == 0 and fp["images_per_prompt"] == 2
    assert "torch" in manifest["packages"] and "python" in manifest["environment"]
    assert (tmp_path / "images" / "p0" / "0001.png").is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n_images"] == 12 and "brightness" in results["summary"]
    html = (tmp_path / "report.html").read_text()
    cards = cards_in(html)
    assert len(cards) == 12 and cards[6]["img"] == "images/p3/0000.png" and "<svg" in html


def test_same_dir_other_settings_is_refused(gen, tmp_path):
    evaluate(ToyBenchmark(), tmp_path, generator=gen, limit=1)
    with pytest.raises(ConfigError, match="different run"):
        evaluate(ToyBenchmark(), tmp_path, generator=gen, limit=2)


def test_score_existing_images_and_sharding(gen, tmp_path):
    made = tmp_path / "made"
    ref = evaluate(ToyBenchmark(), made, generator=gen, gen_batch_size=2, score_batch_size=2)
    scored = evaluate(ToyBenchmark(), tmp_path / "scored", images_dir=made, score_batch_size=2)
    pd.testing.assert_series_equal(ref.per_sample["score"], scored.per_sample["score"])
    # two "ranks" sharing one output dir: each does its own chunks, rank 0 aggregates
    shard = tmp_path / "sharded"
    assert evaluate(ToyBenchmark(), shard, generator=gen, gen_batch_size=2, score_batch_size=2,
                    rank=1, world_size=2) is None
    res = evaluate(ToyBenchmark(), shard, generator=gen, gen_batch_size=2, score_batch_size=2,
                   rank=0, world_size=2)
    assert sorted(journal_ids(shard, "generated")) == sorted(ref.per_sample["id"])
    assert list(res.per_sample["score"]) == list(ref.per_sample["score"])


def test_missing_image_is_a_named_error_not_a_crash(gen, tmp_path):
    made = tmp_path / "made"
    evaluate(ToyBenchmark(), made, generator=gen)
    (made / "images" / "p2" / "0001.png").write_bytes(b"truncated")
    res = evaluate(ToyBenchmark(), tmp_path / "scored", images_dir=made)
    row = res.per_sample.set_index("id").loc["p2/1"]
    assert "p2/1" in row["error"] and "corrupt or truncated" in row["error"] and pd.isna(row["score"])
    assert res.per_sample["error"].isna().sum() == 11


def _run_until(flux: Path, out: Path, stem: str, chunks: int, delay: float) -> None:
    """Start a run subprocess and SIGKILL it once ``chunks`` chunks of ``stem`` are journaled."""
    cmd = [sys.executable, "-m", "tests.toy_benchmark", str(flux), str(out), str(delay)]
    proc = subprocess.Popen(cmd,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(journal_ids(out, stem)) >= 2 * chunks:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"run finished before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


def test_resume_after_kill_mid_generation_and_mid_scoring(tiny_dir, gen, tmp_path):
    flux = tiny_dir / "flux"
    reference = evaluate(ToyBenchmark(), tmp_path / "ref", generator=gen, gen_batch_size=2,
                         score_batch_size=2)

    out = tmp_path / "killed"
    _run_until(flux, out, "generated", chunks=2, delay=0.4)  # killed mid-generation
    n_generated = len(journal_ids(out, "generated"))
    assert 4 <= n_generated < 12 and not journal_ids(out, "scores")
    _run_until(flux, out, "scores", chunks=2, delay=0.4)  # resumed, then killed mid-scoring
    assert 4 <= len(journal_ids(out, "scores")) < 12
    resumed = evaluate(ToyBenchmark(), out, generator=gen, gen_batch_size=2, score_batch_size=2)

    generated, scored = journal_ids(out, "generated"), journal_ids(out, "scores")
    assert sorted(generated) == sorted(set(generated)) and len(generated) == 12  # nothing generated twice
    assert sorted(scored) == sorted(set(scored)) and len(scored) == 12  # nothing scored twice
    assert list(resumed.per_sample["score"]) == list(reference.per_sample["score"])  # bit-identical
    for rel in reference.per_sample["image"]:
        assert (out / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes()


class SunnyRewriter:
    """Stands in for a trained RePrompt policy: deterministic per (prompt, seed)."""

    def __init__(self):
        self.calls = []

    def rewrite(self, prompts, seed):
        self.calls.append((list(prompts), seed))
        return [f"{p}, in bright sunlight, seed {seed % 7}" for p in prompts]

    def describe(self):
        return {"name": "sunny", "model": "fake"}


def test_rewriter_renders_rewrites_but_scores_originals(gen, tmp_path):
    base = evaluate(ToyBenchmark(), tmp_path / "base", generator=gen, limit=2)
    rw = SunnyRewriter()
    res = evaluate(ToyBenchmark(), tmp_path / "rw", generator=gen, limit=2, rewriter=rw)
    ps = res.per_sample
    assert list(ps["prompt"]) == list(base.per_sample["prompt"])  # scored against the originals
    assert all(r.startswith(p + ", in bright sunlight") for p, r in zip(ps["prompt"], ps["rendered_prompt"]))
    assert list(ps["image"]) == list(base.per_sample["image"])
    assert list(ps["score"]) != list(base.per_sample["score"])  # other prompts rendered -> other images
    fp = json.loads((tmp_path / "rw" / "manifest.json").read_text())["fingerprint"]
    assert fp["rewriter"] == {"name": "sunny", "model": "fake"}
    cards = cards_in((tmp_path / "rw" / "report.html").read_text())
    assert cards[0]["rendered"].startswith("a red apple, in bright sunlight")
    n_calls = len(rw.calls)
    evaluate(ToyBenchmark(), tmp_path / "rw", generator=gen, limit=2, rewriter=rw)  # resume: nothing redone
    assert len(rw.calls) == n_calls
