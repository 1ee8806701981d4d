"""Pinned generation protocols: values reach the pipeline call, the GenEval 2 seed rule by hand, conflicting
flags and mixed protocols in one folder refused, the manifest records the protocol, the docs list them."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

from evalsuite import ConfigError
from evalsuite.benchmark import PromptRecord
from evalsuite.cli import main
from evalsuite.generator import DiffusersGenerator, GenerationRequest
from evalsuite.protocols import GENEVAL2, PROTOCOLS, get_protocol
from evalsuite.registry import registry
from evalsuite.runner import _check_follows, run
from evalsuite.seeding import derive_seed, prompt_sha256_seed, sample_seed
from tests.toy_benchmark import ToyBenchmark

ROOT = Path(__file__).resolve().parents[1]
# sha256("a red apple") starts c0c74b7a = 3234286458 and sha256("two cats") b0b4cf68 = 2964639592 (sha256sum);
# UniRL: (42 + that + k) % 2**31, so 3234286458 + 42 - 2147483648 and 2964639592 + 42 - 2147483648.
APPLE_SEED, CATS_SEED = 1086802852, 817155986


@pytest.fixture(autouse=True)
def toy_registered():
    registry.register("benchmarks", "toy", ToyBenchmark)
    yield
    registry._entries["benchmarks"].pop("toy", None)


class RecordingSD3:
    """Stands in for StableDiffusion3Pipeline with its real call signature; records each call."""

    device = None

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        inspect.signature(StableDiffusion3Pipeline.__call__).bind(None, **kwargs)  # a wrong kwarg raises
        self.calls.append(kwargs)
        return SimpleNamespace(images=[Image.new("RGB", (kwargs["width"], kwargs["height"]))
                                       for _ in kwargs["prompt"]])


RecordingSD3.__call__.__signature__ = inspect.signature(StableDiffusion3Pipeline.__call__)


def sd3_call(protocol_name: str, device: str = "cpu") -> dict:
    import torch

    pipe = RecordingSD3()
    pipe.device = torch.device(device)
    gen = DiffusersGenerator(pipe, **get_protocol(protocol_name).generator_settings())
    gen.generate([GenerationRequest("a red apple", 7), GenerationRequest("two cats", 8)])
    assert len(pipe.calls) == 1
    return pipe.calls[0]


def test_geneval2_values_reach_the_sd3_call():
    call = sd3_call("geneval2", device="meta")  # a pipeline elsewhere (a GPU): the noise stays on the CPU
    assert (call["height"], call["width"], call["num_inference_steps"]) == (512, 512, 40)
    assert call["guidance_scale"] == 1.0 and call["max_sequence_length"] == 256
    assert "negative_prompt" not in call  # UniRL passes none (and CFG is off at 1.0)
    sigmas = call["sigmas"]  # np.linspace(1.0, 1/40, 40), written out: 1 - i * (1 - 0.025) / 39
    assert len(sigmas) == 40 and sigmas[0] == 1.0 and sigmas[-1] == pytest.approx(0.025, abs=1e-15)
    assert all(s == pytest.approx(1 - i * 0.975 / 39, abs=1e-12) for i, s in enumerate(sigmas))
    assert [g.initial_seed() for g in call["generator"]] == [7, 8]
    assert all(g.device.type == "cpu" for g in call["generator"])


def test_flowgrpo_eval_values_reach_the_sd3_call():
    call = sd3_call("flowgrpo-sd3.5m-eval")
    assert (call["height"], call["width"], call["num_inference_steps"]) == (512, 512, 40)
    assert call["guidance_scale"] == 4.5 and call["max_sequence_length"] == 128
    assert call["negative_prompt"] == ["", ""]  # Flow-GRPO encodes [""] as the negative
    assert "sigmas" not in call  # the scheduler's own schedule


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_preset_is_a_valid_sd3_call_and_is_recorded_whole(name):
    protocol = PROTOCOLS[name]
    call = sd3_call(name)  # binds against the real signature
    assert {k: call[k] for k in protocol.call_kwargs()} == protocol.call_kwargs()
    rec = protocol.record()
    assert json.loads(json.dumps(rec)) == rec and rec["name"] == name and rec["sources"]
    assert set(rec) == {f.name for f in dataclasses.fields(protocol)}


def test_prompt_sha256_seed_by_hand():
    assert prompt_sha256_seed(42, "a red apple", 0) == APPLE_SEED
    assert prompt_sha256_seed(42, "a red apple", 1) == APPLE_SEED + 1
    assert prompt_sha256_seed(42, "two cats", 0) == CATS_SEED
    # f9da8d91 = 4191849873: "four white bicycles in front of three plastic cows" (GenEval 2's README example)
    assert prompt_sha256_seed(42, "four white bicycles in front of three plastic cows", 0) == 2044366267
    assert prompt_sha256_seed(0, "a red apple", 0) == 3234286458 % 2**31
    assert sample_seed("derived", 5, "p0", "a red apple", 2) == derive_seed(5, "p0", 2)
    with pytest.raises(ValueError, match="unknown seed rule"):
        sample_seed("random", 0, "p0", "x", 0)


def test_benchmark_samples_follow_the_seed_rule_by_prompt_text():
    toy = ToyBenchmark()
    records = [PromptRecord("p0", "a red apple"), PromptRecord("zz", "a red apple"),
               PromptRecord("p1", "two cats")]
    samples = toy.samples(records, base_seed=42, images_per_prompt=2, seed_rule="prompt_sha256")
    assert [s.seed for s in samples] == [APPLE_SEED, APPLE_SEED + 1, APPLE_SEED, APPLE_SEED + 1,
                                         CATS_SEED, CATS_SEED + 1]
    assert toy.samples(records, base_seed=42)[0].seed == derive_seed(42, "p0", 0)  # default rule unchanged


def _record_flux_calls(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    original = FluxPipeline.__call__

    @functools.wraps(original)
    def recording(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FluxPipeline, "__call__", recording)
    return calls


def run_argv(tiny_dir, out, *extra):
    return ["run", "--bench", "toy", "--model", str(tiny_dir / "flux"), "--limit", "2",
            "--output-dir", str(out), "--no-leaderboard", "--option", "delay=0", "--batch-size", "2", *extra]


def test_run_with_a_protocol_records_it_and_refuses_to_mix(tiny_dir, tmp_path, capsys, monkeypatch, caplog):
    calls = _record_flux_calls(monkeypatch)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="evalsuite"):
        assert main(run_argv(tiny_dir, out, "--protocol", "geneval2")) == 0
    assert "meant for geneval2, not toy" in caplog.text and "this model loads FluxPipeline" in caplog.text
    assert len(calls) == 1 and calls[0]["max_sequence_length"] == 256 and len(calls[0]["sigmas"]) == 40
    assert (calls[0]["height"], calls[0]["num_inference_steps"], calls[0]["guidance_scale"]) == (512, 40, 1.0)
    assert [g.initial_seed() for g in calls[0]["generator"]] == [APPLE_SEED, CATS_SEED]

    manifest = json.loads((out / "manifest.json").read_text())
    fp = manifest["fingerprint"]
    assert fp["protocol"] == GENEVAL2.record() and manifest["command"]["protocol"] == "geneval2"
    assert fp["seed"] == 42 and fp["images_per_prompt"] == 1 and fp["generator"]["noise_device"] == "cpu"
    assert fp["generator"]["call_kwargs"]["max_sequence_length"] == 256 and fp["generator"]["height"] == 512
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [APPLE_SEED, CATS_SEED]

    assert main(run_argv(tiny_dir, out, "--protocol", "geneval2")) == 0  # same protocol: resumes
    assert len(calls) == 1
    capsys.readouterr()
    assert main(run_argv(tiny_dir, out, "--protocol", "flowgrpo-sd3.5m-eval", "--images-per-prompt", "1",
                         "--seed", "42")) == 1
    err = capsys.readouterr().err
    assert 'protocol.name: "geneval2" → "flowgrpo-sd3.5m-eval"' in err and "protocol.guidance_scale" in err
    # the same values given as flags, no protocol: still another run (no protocol, other seed rule)
    assert main(run_argv(tiny_dir, out, "--height", "512", "--width", "512", "--steps", "40", "--guidance",
                         "1.0", "--seed", "42", "--images-per-prompt", "1")) == 1
    assert "protocol: {" in (err := capsys.readouterr().err) and "→ (absent)" in err
    assert len(calls) == 1  # nothing was generated by a refused run


def test_a_run_without_protocol_keeps_its_old_fingerprint(tiny_dir, tmp_path):
    out = tmp_path / "plain"
    assert main(run_argv(tiny_dir, out, "--steps", "1", "--height", "32", "--width", "32")) == 0
    fp = json.loads((out / "manifest.json").read_text())["fingerprint"]
    assert "protocol" not in fp and "noise_device" not in fp["generator"] and fp["seed"] == 0


def test_flags_that_contradict_the_protocol_are_errors_naming_both(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")  # refused before anything loads
    assert main(["run", "--bench", "toy", "--model", missing, "--protocol", "geneval2", "--steps", "28",
                 "--guidance", "1.0", "--height", "1024"]) == 1
    err = capsys.readouterr().err
    assert "--steps 28 (protocol: 40)" in err and "--height 1024 (protocol: 512)" in err
    assert "guidance" not in err  # equal to the protocol's: accepted
    for flags, message in [({"seed": 0}, "--seed 0 (protocol: 42)"),
                           ({"images_per_prompt": 4}, "--images-per-prompt 4 (protocol: 1)"),
                           ({"negative_prompt": ""}, "--negative-prompt '' (protocol: none)")]:
        with pytest.raises(ConfigError, match="protocol geneval2 pins") as e:
            run("toy", missing, protocol="geneval2", **flags)
        assert message in str(e.value)
    flowgrpo = get_protocol("flowgrpo-sd3.5m-eval")
    flowgrpo.check_flags(seed=3, images_per_prompt=2, negative_prompt="", steps=40)  # free or equal: fine
    with pytest.raises(ConfigError, match=r"--negative-prompt 'blurry' \(protocol: ''\)"):
        flowgrpo.check_flags(negative_prompt="blurry")
    with pytest.raises(ConfigError, match="unknown protocol 'geneval3'.*geneval2"):
        run("toy", missing, protocol="geneval3")


def test_a_protocol_needs_a_pipeline_that_can_follow_it(tiny_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "0.png")
    with pytest.raises(ConfigError, match="--protocol and --pipeline-arg need a pipeline"):
        run("toy", str(images), protocol="flowgrpo-sd3.5m-eval", output_dir=str(tmp_path / "o"))

    def no_sigmas(prompt, height, width, num_inference_steps, generator, output_type, max_sequence_length):
        raise AssertionError("never called")

    gen = SimpleNamespace(pipeline=type("OldPipeline", (), {"__call__": staticmethod(no_sigmas)})())
    with pytest.raises(ConfigError, match="OldPipeline takes no sigmas argument"):
        _check_follows(GENEVAL2, "geneval2", gen, ToyBenchmark())

    class OwnSeeds(ToyBenchmark):
        def samples(self, records, *, base_seed=0, images_per_prompt=None):
            return super().samples(records, base_seed=base_seed, images_per_prompt=images_per_prompt)

    flux_like = SimpleNamespace(pipeline=FluxPipeline.__new__(FluxPipeline))
    with pytest.raises(ConfigError, match="overrides samples\\(\\) without a seed_rule"):
        _check_follows(GENEVAL2, "toy", flux_like, OwnSeeds())


def test_protocols_command_and_docs_list_every_preset(capsys):
    assert main(["protocols"]) == 0
    text = capsys.readouterr().out
    assert main(["protocols", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed] == list(PROTOCOLS)
    docs = (ROOT / "docs" / "protocols.md").read_text()
    assert "docs/protocols.md" in (ROOT / "README.md").read_text()
    for p in PROTOCOLS.values():
        assert f"{p.name}  [" in text and p.description in text
        assert f"`{p.name}`" in docs
        for value in (p.num_inference_steps, p.guidance_scale, p.max_sequence_length, p.height):
            assert str(value) in docs


def test_a_pipeline_arg_may_not_override_what_the_protocol_pins():
    from evalsuite.errors import ConfigError
    from evalsuite.protocols import get_protocol
    from evalsuite.runner import _pipeline_call_kwargs

    settings = get_protocol("geneval2").generator_settings()
    with pytest.raises(ConfigError, match="max_sequence_length: pinned by the protocol"):
        _pipeline_call_kwargs({"max_sequence_length": 512}, settings)
    _pipeline_call_kwargs({"clip_skip": 1}, settings)  # anything else joins the pinned ones
    assert settings["call_kwargs"]["clip_skip"] == 1 and settings["call_kwargs"]["max_sequence_length"] == 256
