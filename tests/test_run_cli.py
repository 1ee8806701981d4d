"""``evalsuite run`` end to end through the CLI: pipeline folder, images folder, options, leaderboard."""

import json

import pytest

from evalsuite import ConfigError
from evalsuite.cli import main
from evalsuite.registry import registry
from evalsuite.runner import model_kind, parse_options
from tests.toy_benchmark import ToyBenchmark


@pytest.fixture(autouse=True)
def toy_registered():
    registry.register("benchmarks", "toy", ToyBenchmark)
    yield
    registry._entries["benchmarks"].pop("toy", None)


def test_run_pipeline_then_score_its_images(tiny_dir, tmp_path, capsys):
    run_dir, board = tmp_path / "run", tmp_path / "boards"
    argv = ["run", "--bench", "toy", "--model", str(tiny_dir / "flux"), "--steps", "2", "--height", "32",
            "--width", "32", "--limit", "2", "--images-per-prompt", "2", "--output-dir", str(run_dir),
            "--leaderboard", str(board), "--seed", "5", "--option", "delay=0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "outputs:" in out and (run_dir / "report.html").is_file()
    fp = json.loads((run_dir / "manifest.json").read_text())["fingerprint"]
    assert fp["seed"] == 5 and fp["generator"]["height"] == 32 and fp["prompts"] == 2
    rows = [json.loads(line) for line in (board / "toy.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["model"] == str(tiny_dir / "flux") and "brightness" in rows[0]
    assert main(argv) == 0  # rerun = resume: nothing to do, leaderboard row replaced, not duplicated
    assert len((board / "toy.jsonl").read_text().splitlines()) == 1
    assert "| model |" in (board / "toy.md").read_text()

    scored = tmp_path / "scored"
    assert main(["run", "--bench", "toy", "--model", str(run_dir), "--limit", "2", "--images-per-prompt", "2",
                 "--output-dir", str(scored), "--no-leaderboard"]) == 0
    a = [json.loads(x)["score"] for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    b = [json.loads(x)["score"] for x in (scored / "samples.jsonl").read_text().splitlines()]
    assert a == b


def test_bad_options_are_clear_errors(tiny_dir, tmp_path, capsys):
    assert main(["run", "--bench", "toy", "--model", str(tiny_dir / "flux"), "--option", "nope=1",
                 "--output-dir", str(tmp_path / "x")]) == 1
    assert "toy does not take option 'nope' (takes: delay)" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        parse_options(["novalue"])
    assert parse_options(["mode=strict", "threshold=0.4", "flag=true"]) == {
        "mode": "strict", "threshold": 0.4, "flag": True}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="neither"):
        model_kind(str(empty))
    assert model_kind("black-forest-labs/FLUX.1-dev") == "pipeline"


def test_score_command_on_a_run_and_a_listing(tiny_dir, tmp_path, capsys):
    from PIL import Image

    run_dir = tmp_path / "run"
    assert main(["run", "--bench", "toy", "--model", str(tiny_dir / "flux"), "--steps", "2", "--height", "32",
                 "--width", "32", "--limit", "2", "--images-per-prompt", "1", "--output-dir", str(run_dir),
                 "--no-leaderboard"]) == 0
    capsys.readouterr()
    out_file = tmp_path / "scores.jsonl"
    assert main(["score", str(run_dir), "--reward", "brightness", "--output", str(out_file)]) == 0
    run_scores = [json.loads(x)["score"] for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    rescored = [json.loads(x)["score"] for x in out_file.read_text().splitlines()]
    assert rescored == run_scores and "brightness: mean" in capsys.readouterr().out

    Image.new("RGB", (8, 8), "white").save(tmp_path / "w.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    listing = tmp_path / "list.jsonl"
    listing.write_text('{"image": "w.png", "prompt": "white", "metadata": {"k": 1}}\n'
                       '{"image": "bad.png", "prompt": "broken"}\n')
    assert main(["score", str(listing), "--reward", "brightness:1", "--output", str(out_file)]) == 3
    rows = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert rows[0]["score"] == 1.0 and rows[1]["error"] and "'1'" in rows[1]["error"]
    captured = capsys.readouterr()
    assert "1 errors" in captured.out and "error:" in captured.err


def test_compare_command_with_reward_and_http_judge(tiny_dir, tmp_path, capsys):
    import http.server
    import threading

    runs = []
    for seed in (1, 2):
        run = tmp_path / f"run{seed}"
        assert main(["run", "--bench", "toy", "--model", str(tiny_dir / "flux"), "--steps", "2", "--height",
                     "32", "--width", "32", "--limit", "3", "--images-per-prompt", "1", "--seed", str(seed),
                     "--output-dir", str(run), "--no-leaderboard"]) == 0
        runs.append(run)
    capsys.readouterr()
    assert main(["compare", str(runs[0]), str(runs[1]), "--reward", "brightness",
                 "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    a = [json.loads(x)["score"] for x in (runs[0] / "samples.jsonl").read_text().splitlines()]
    b = [json.loads(x)["score"] for x in (runs[1] / "samples.jsonl").read_text().splitlines()]
    assert res["compared"] == 3 and res["win"] == sum(x > y for x, y in zip(a, b)) / 3
    assert abs(res["mean_diff"] - (sum(a) - sum(b)) / 3) < 1e-12
    assert "A wins" in capsys.readouterr().out

    class Judge(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"role": "assistant",
                               "content": '{"reasoning": "first", "preference": "image_a"}'}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "judged"
        assert main(["compare", str(runs[0]), str(runs[1]), "--judge",
                     f"http://127.0.0.1:{server.server_address[1]}/v1", "--model", "fake", "--out", str(out),
                     "--max-retries", "0"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    judged = [json.loads(x) for x in (out / "judgements.jsonl").read_text().splitlines()]
    assert len(judged) == 3 and (out / "results.json").is_file()


def test_run_with_a_peft_lora_folder(tiny_dir, tmp_path):
    """``--lora``: a PEFT LoRA saved the diffusers way loads into the pipeline and changes the images."""
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = FluxPipeline.from_pretrained(tiny_dir / "flux")
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # make the adapter matter
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    lora_dir = tmp_path / "lora"
    layers = get_peft_model_state_dict(pipe.transformer)
    FluxPipeline.save_lora_weights(lora_dir, transformer_lora_layers=layers)

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    args = ["run", "--bench", "toy", "--model", str(tiny_dir / "flux"), "--steps", "2", "--height", "32",
            "--width", "32", "--limit", "2", "--images-per-prompt", "1", "--no-leaderboard"]
    assert main([*args, "--output-dir", str(base)]) == 0
    assert main([*args, "--output-dir", str(tuned), "--lora", str(lora_dir)]) == 0
    a = [json.loads(x)["score"] for x in (base / "samples.jsonl").read_text().splitlines()]
    b = [json.loads(x)["score"] for x in (tuned / "samples.jsonl").read_text().splitlines()]
    assert a != b
    manifest = json.loads((tuned / "manifest.json").read_text())
    assert manifest["command"]["lora"] == str(lora_dir)
    assert manifest["fingerprint"]["generator"]["lora"] == str(lora_dir)  # resume refuses another LoRA


def test_run_with_a_rewriter(tiny_dir, tmp_path):
    """``--rewriter``: an instruct LM (here the tiny Qwen2) rewrites prompts; scored against the originals."""
    out = tmp_path / "rw"
    assert main(["run", "--bench", "toy", "--model", str(tiny_dir / "flux"), "--steps", "2", "--height", "32",
                 "--width", "32", "--limit", "2", "--images-per-prompt", "1", "--output-dir", str(out),
                 "--rewriter", str(tiny_dir / "qwen2-lm"), "--no-leaderboard"]) == 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red apple", "two cats"]
    assert all(isinstance(r["rendered_prompt"], str) for r in rows)
    fp = json.loads((out / "manifest.json").read_text())["fingerprint"]
    assert fp["rewriter"] is not None


def test_train_command_runs_a_yaml_recipe(tiny_dir, tmp_path):
    from evalsuite.harness.config import save_config
    from evalsuite.harness.rewriter import load_rewriter
    from tests.test_train import make_config

    out = tmp_path / "train"
    recipe = tmp_path / "recipe.yaml"
    save_config(make_config(out, tiny_dir / "qwen2-lm", steps=5, sft__steps=2), recipe)
    assert main(["train", "--config", str(recipe), "--steps", "2", "--set", "grpo.beta=0.02"]) == 0
    written = {p.name for p in out.iterdir()}
    assert any("metrics" in name for name in written), written
    rewriter = load_rewriter(out)
    assert len(rewriter.rewrite(["a photo of a cat"], seed=0)) == 1
