"""Exit codes and options that tell the truth (issue 16, item 5): what the CLI says when things go wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from evalsuite.cli import SCORE_ERRORS_EXIT, main
from evalsuite.registry import registry
from tests.conftest import REPO
from tests.toy_benchmark import ToyBenchmark


@pytest.fixture(autouse=True)
def toy_registered():
    registry.register("benchmarks", "toy", ToyBenchmark)
    yield
    registry._entries["benchmarks"].pop("toy", None)


def _toy_images(root, n_prompts: int = 2, per_prompt: int = 2):
    """A folder of existing images in the toy layout (score-only runs need no generator)."""
    for i in range(n_prompts):
        for k in range(per_prompt):
            path = root / "images" / f"p{i}" / f"{k:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * i + 20 * k, 90, 200)).save(path)
    return root


TOY = ("from evalsuite.registry import registry; from tests.toy_benchmark import ToyBenchmark; "
       "registry.register('benchmarks', 'toy', ToyBenchmark)")


def _cli(args: list[str], tmp_path, *, prelude: str = "", progress: str = "0") -> subprocess.CompletedProcess:
    """The real CLI in a fresh process (library handlers, warnings and bars as a user sees them)."""
    code = (f"import sys; {prelude}\nfrom evalsuite.cli import main\nsys.exit(main({args!r}))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "EVALSUITE_PROGRESS": progress, "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)


# -- 1. score exits non-zero when a sample errored ---------------------------------------------------------
def test_score_exit_status_says_samples_errored(tmp_path, capsys):
    Image.new("RGB", (8, 8), "white").save(tmp_path / "w.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    listing, out = tmp_path / "list.jsonl", tmp_path / "scores.jsonl"
    listing.write_text('{"image": "w.png", "prompt": "white"}\n{"image": "bad.png", "prompt": "broken"}\n')
    assert main(["score", str(listing), "--reward", "brightness", "--output", str(out)]) == SCORE_ERRORS_EXIT
    assert SCORE_ERRORS_EXIT not in (0, 1, 2)  # distinct from success, setup errors and usage errors
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["error"] is None for r in rows] == [True, False]  # the good row and the error row are kept
    assert main(["score", str(listing), "--reward", "brightness", "--allow-errors"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{SCORE_ERRORS_EXIT} when any sample errored" in text and "--allow-errors" in text


# -- 2. --option is checked against what each benchmark takes ----------------------------------------------
@pytest.mark.parametrize("bench", ["toy", *registry.names("benchmarks")])  # every built-in and plugin
def test_unknown_benchmark_option_lists_the_valid_ones(bench, tmp_path, capsys):
    images = _toy_images(tmp_path / "imgs")
    code = main(["run", "--bench", bench, "--model", str(images), "--option", "foo=1",
                 "--output-dir", str(tmp_path / "out"), "--no-leaderboard"])
    err = capsys.readouterr().err
    assert code == 1
    assert "does not take option 'foo' (takes: " in err and len(err.strip().splitlines()) == 1
    assert f"evalsuite run: error: {bench}" in err


def test_help_example_options_are_taken_by_geneval(tmp_path, capsys):
    """``--option mode=strict`` (the help's example) builds GenEval in that mode, not a TypeError."""
    images = _toy_images(tmp_path / "imgs")
    code = main(["run", "--bench", "geneval", "--model", str(images), "--option", "mode=strict",
                 "--option", "threshold=0.4", "--data-dir", str(tmp_path / "no-data"),
                 "--output-dir", str(tmp_path / "out"), "--no-leaderboard"])
    err = capsys.readouterr().err
    assert code == 1 and "benchmark file geneval/evaluation_metadata.jsonl not found" in err  # got that far
    bench = registry.get("benchmarks", "geneval")(mode="strict", threshold=0.4)
    assert bench.describe()["mode"] == "strict" and bench.reward.thresholds.as_dict()["threshold"] == 0.4
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "mode=strict" in capsys.readouterr().out


# -- 3. results report the images per prompt the run really has --------------------------------------------
def test_results_report_the_effective_images_per_prompt(tmp_path, capsys):
    images = _toy_images(tmp_path / "imgs", per_prompt=1)
    out = tmp_path / "out"
    assert ToyBenchmark.images_per_prompt != 1
    assert main(["run", "--bench", "toy", "--model", str(images), "--limit", "2", "--images-per-prompt", "1",
                 "--output-dir", str(out), "--no-leaderboard"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"]["images_per_prompt"] == 1 and results["n_images"] == 2
    summary = (out / "summary.md").read_text()
    assert "images_per_prompt=1" in summary and "images_per_prompt=2" not in summary


# -- 4. a bad JSONL listing names file and line -------------------------------------------------------------
@pytest.mark.parametrize(("bad_line", "why"), [
    (b'{"image": "w.png", "prompt": "caf\xe9"}', "not UTF-8"),
    (b'["w.png", "white"]', "a JSON object is needed, got an array"),
    (b'"w.png"', "a JSON object is needed, got a string"),
])
def test_bad_listing_line_is_named(bad_line, why, tmp_path, capsys):
    Image.new("RGB", (8, 8), "white").save(tmp_path / "w.png")
    listing = tmp_path / "list.jsonl"
    listing.write_bytes(b'{"image": "w.png", "prompt": "white"}\n\n' + bad_line + b"\n")
    assert main(["score", str(listing), "--reward", "brightness"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{listing}:3:" in err and why in err and len(err.splitlines()) == 1


# -- 5. a model that cannot be loaded is one line, not a traceback ------------------------------------------
@pytest.mark.parametrize(("model", "reason"), [
    ("black-forest-labs/FLUX.1-dev", "not in the local Hugging Face cache and the Hub is offline"),
    ("./no/such/pipeline", "no such folder"),
])
def test_run_with_an_unloadable_pipeline_says_why_in_one_line(model, reason, tmp_path):
    res = _cli(["run", "--bench", "toy", "--model", model, "--no-leaderboard"], tmp_path,
               prelude=TOY)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert f"cannot load pipeline '{model}': {reason}" in lines[0] and "--model DIR" in lines[0]


def test_score_with_an_unloadable_reward_model_says_why_in_one_line(tmp_path):
    Image.new("RGB", (8, 8), "white").save(tmp_path / "w.png")
    (tmp_path / "list.jsonl").write_text('{"image": "w.png", "prompt": "white"}\n')
    res = _cli(["score", "list.jsonl", "--reward", "pickscore"], tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert "cannot load pickscore reward model" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert "hf download yuvalkirstain/PickScore_v1" in lines[0] and "--option model=DIR" in lines[0]
    res = _cli(["score", "list.jsonl", "--reward", "pickscore", "--option", "model=/no/such/dir"], tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "'/no/such/dir': no such folder" in res.stderr


def test_hub_failures_are_classified(tmp_path):
    import httpx
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from evalsuite.hub_errors import classify

    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/a/b"))

    def wrapped(cause: Exception) -> OSError:  # how transformers/diffusers re-raise hub errors
        try:
            raise cause
        except Exception:
            try:
                raise OSError("a/b is not a local folder")
            except OSError as e:
                return e

    assert "gated" in classify(wrapped(GatedRepoError("x", response=response)), "a/b")
    assert "no such repository" in classify(wrapped(RepositoryNotFoundError("x", response=response)), "a/b")
    assert "revision" in classify(wrapped(RevisionNotFoundError("x", response=response)), "a/b")
    assert "no such repository" in classify(OSError("a/b is not a valid model identifier listed on"), "a/b")
    (tmp_path / "f.txt").write_text("x")
    assert "not a folder" in classify(OSError("boom"), str(tmp_path / "f.txt"))
    assert "not a model folder" in classify(OSError("no config.json"), str(tmp_path))
    assert classify(RuntimeError("CUDA out of memory"), "a/b") is None  # not a loading problem: re-raised


def test_library_log_lines_are_dropped_only_when_the_load_fails():
    """diffusers' "Couldn't connect to the Hub" before our one line would make two; a good load keeps them."""
    import logging

    from evalsuite.errors import ModelLoadError
    from evalsuite.hub_errors import loading

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logging.getLogger("diffusers").addHandler(handler)
    try:
        with loading("a/b", "pipeline", "--model DIR"):
            logging.getLogger("diffusers.loader").warning("loaded with a note")
        failing = loading("a/b", "pipeline", "--model DIR")
        with pytest.raises(ModelLoadError, match="no such repository"), failing:
            logging.getLogger("diffusers.loader").warning("Couldn't connect to the Hub")
            raise OSError("a/b is not a valid model identifier listed on the Hub")
        logging.getLogger("diffusers.loader").warning("after")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert seen == ["loaded with a note", "after"]


# -- 6. a refused resume says which settings differ ---------------------------------------------------------
def test_refused_resume_names_the_changed_settings(tmp_path, capsys):
    images = _toy_images(tmp_path / "imgs")
    args = ["run", "--bench", "toy", "--model", str(images), "--limit", "2", "--output-dir",
            str(tmp_path / "out"), "--no-leaderboard"]
    assert main([*args, "--seed", "0"]) == 0
    capsys.readouterr()
    assert main([*args, "--seed", "7", "--score-batch-size", "3"]) == 1
    err = capsys.readouterr().err
    assert "seed: 0 → 7" in err and "score_batch_size: 16 → 3" in err and "prompts" not in err


# -- 7. -q means no progress bars and no deprecation noise --------------------------------------------------
def test_quiet_run_prints_no_bars_or_dtype_deprecation(tiny_dir, tmp_path):
    res = _cli(["-q", "run", "--bench", "toy", "--model", str(tiny_dir / "flux"), "--steps", "2", "--height",
                "32", "--width", "32", "--limit", "1", "--images-per-prompt", "1", "--output-dir",
                str(tmp_path / "out"), "--no-leaderboard"], tmp_path, prelude=TOY, progress="1")
    assert res.returncode == 0, res.stderr
    for noise in ("Loading pipeline components", "Loading weights", "torch_dtype", "it/s]", "%|"):
        assert noise not in res.stderr, res.stderr
