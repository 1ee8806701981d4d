"""Flow-GRPO, PromptRL and PromptLoop runs on tiny FLUX / Kontext: learning, resume, ranks, outputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.harness import flow_train
from evalsuite.harness.config import (
    DataConfig,
    GRPOSettings,
    LoraSettings,
    OptimConfig,
    PolicyConfig,
    RewardsConfig,
    RewardSpec,
)
from evalsuite.harness.flow_config import (
    FlowLoraSettings,
    FlowPolicyConfig,
    FlowTrainConfig,
    load_flow_config,
)
from evalsuite.harness.grpo import OnPolicyError
from evalsuite.reward import Reward, Score

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "proj_mlp", "proj_out", "ff.net.2"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _luma(image: Image.Image) -> float:
    return float((np.asarray(image, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])).mean() / 255.0)


class EditBrightening(Reward):
    """Test edit reward on (instruction, source, edited): how much brighter the edit is than its source."""

    name = "edit_brightening"
    needs_source_image = True

    def _score_batch(self, samples):
        return [Score(_luma(s.image) - _luma(s.source_image)) for s in samples]


def make_config(out_dir: Path, tiny: Path, **changes) -> FlowTrainConfig:
    config = FlowTrainConfig(
        mode="flow",
        out_dir=str(out_dir),
        steps=30,
        seed=0,
        save_every=1000,
        tensorboard=False,
        progress=False,
        torch_threads=1,
        log_images_every=10,
        logged_images=8,
        flow=FlowPolicyConfig(
            model=str(tiny / "flux"),
            dtype="float32",
            height=32,
            width=32,
            num_steps=4,
            eval_num_steps=6,
            max_sequence_length=16,
            noise_level=0.9,
            sample_batch_size=16,
            train_batch_size=16,
            lora=FlowLoraSettings(r=8, alpha=8, target_modules=TARGETS),
        ),
        rewards=RewardsConfig(components=[RewardSpec("brightness")], normalize="none"),
        data=DataConfig(prompts=["a cat", "a dog", "a red car", "a tree"]),
        grpo=GRPOSettings(group_size=8, prompts_per_step=2, beta=0.0, clip_eps=0.2, micro_batch_size=8),
        optim=OptimConfig(lr=5e-2),
    )
    return replace(config, **changes)


def _rise(metrics: list[dict]) -> tuple[float, float]:
    """(last five steps' mean − step 1's mean, step 1's within-batch std)."""
    first = metrics[0]
    last = float(np.mean([m["reward/mean"] for m in metrics[-5:]]))
    return last - first["reward/mean"], first["reward/std"]


@pytest.fixture(scope="module")
def flux_runs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    learned = flow_train.train(
        make_config(
            root / "lr",
            tiny_dir,
            eval_every=15,
            eval_rewards=[RewardSpec("brightness")],
            eval_data=DataConfig(prompts=["a blue house", "a green frog"]),  # held out
        )
    )
    frozen = flow_train.train(make_config(root / "lr0", tiny_dir, optim=OptimConfig(lr=0.0)))
    return learned, frozen


def test_flux_learns_a_brightness_reward_and_lr_zero_does_not(flux_runs):
    learned, frozen = flux_runs
    rise, spread = _rise(learned.metrics)
    assert rise > 5 * spread, (rise, spread)  # well beyond the step-0 spread
    flat, spread0 = _rise(frozen.metrics)
    assert abs(flat) < 2 * spread0, (flat, spread0)
    assert all(m["selftest/max_abs_logp_diff"] < 1e-5 for m in learned.metrics)
    assert all(m["flow/ratio_mean"] == pytest.approx(1.0) for m in learned.metrics)  # one inner step


def test_run_writes_logs_images_manifest_and_a_loadable_lora(flux_runs, tiny_dir):
    from evalsuite.generator import DiffusersGenerator, GenerationRequest
    from evalsuite.harness.flow_policy import FlowPolicy

    learned, _ = flux_runs
    out = learned.out_dir
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 30 and "flow/kl" in rows[0]
    evals = [float(r["eval/brightness"]) for r in rows]
    assert np.isfinite(evals[14]) and np.isfinite(evals[29]) and np.isnan(evals[0])  # every 15 steps
    assert evals[29] != evals[14]  # the held-out renders follow the trained LoRA
    assert (out / "images" / "step_000010.png").is_file()
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert records and {"prompt", "rendered", "reward"} <= set(records[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["flow"]["model"].endswith("flux") and manifest["versions"]["diffusers"]
    assert json.loads((out / "final" / "model_info.json").read_text())["base_model"].endswith("flux")
    # evalsuite run --model BASE --lora DIR: the pipeline with the trained LoRA renders what the policy does
    lora = out / "final" / "flow_lora"
    gen = DiffusersGenerator.from_pretrained(
        str(tiny_dir / "flux"),
        dtype="float32",
        lora=str(lora),
        num_inference_steps=4,
        height=32,
        width=32,
        call_kwargs={"max_sequence_length": 16},
    )
    image = gen.generate([GenerationRequest("a cat", seed=11)])[0]
    from evalsuite.generator import resolve_lora

    assert resolve_lora(str(out)) == resolve_lora(str(out / "final")) == str(lora)  # the run folder works too
    assert resolve_lora("black-forest-labs/some-lora") == "black-forest-labs/some-lora"
    policy = FlowPolicy.from_pretrained(make_config(out, tiny_dir).flow, seed=0)
    policy.load_lora(str(lora))
    cond, h, w = policy.encode(["a cat"])
    ours = policy.sample(cond, [11], height=h, width=w, sde_steps=[]).images[0]
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(ours, dtype=int))
    assert diff.max() <= 1
    base = DiffusersGenerator.from_pretrained(
        str(tiny_dir / "flux"),
        dtype="float32",
        num_inference_steps=4,
        height=32,
        width=32,
        call_kwargs={"max_sequence_length": 16},
    ).generate([GenerationRequest("a cat", seed=11)])[0]
    assert np.abs(np.asarray(base, dtype=int) - np.asarray(image, dtype=int)).max() > 1  # the LoRA matters


def test_kontext_learns_an_edit_reward(tiny_dir, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "edits.jsonl"
    with open(data, "w") as f:
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"src{i}.png")
            f.write(
                json.dumps({"prompt": f"make picture {i} brighter", "source_image": f"src{i}.png"}) + "\n"
            )
    base = make_config(tmp_path / "k", tiny_dir)
    config = replace(
        base,
        flow=replace(base.flow, model=str(tiny_dir / "flux-kontext"), guidance_scale=2.5),
        rewards=RewardsConfig(
            components=[RewardSpec("edit", target="tests.test_flow_train:EditBrightening")], normalize="none"
        ),
        data=DataConfig(path=str(data)),
    )
    result = flow_train.train(config)
    rise, spread = _rise(result.metrics)
    assert rise > 5 * spread, (rise, spread)
    frozen = flow_train.train(
        replace(config, out_dir=str(tmp_path / "k0"), steps=10, optim=OptimConfig(lr=0.0))
    )
    flat, spread0 = _rise(frozen.metrics)
    assert abs(flat) < 2 * spread0


def _lm_config(tiny_dir) -> PolicyConfig:
    return PolicyConfig(
        model=str(tiny_dir / "qwen2-lm"),
        dtype="float32",
        system_prompt="rewrite",
        max_new_tokens=12,
        temperature=1.0,
        lora=LoraSettings(r=4, alpha=8),
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_promptrl_updates_both_models_and_prompt_only_freezes_the_flow(tiny_dir, tmp_path):
    from evalsuite.harness.rewriter import build_policy, load_rewriter

    config = make_config(
        tmp_path / "joint",
        tiny_dir,
        mode="promptrl",
        steps=2,
        policy=_lm_config(tiny_dir),
        log_images_every=1,
        grpo=GRPOSettings(group_size=4, prompts_per_step=2, beta=0.01, clip_eps=0.2, micro_batch_size=4),
        policy_optim=OptimConfig(lr=1e-2),
    )
    config.promptrl.num_skip_refinement, config.promptrl.num_sde = 1, 2
    result = flow_train.train(config)
    m = result.metrics[-1]
    assert m["refined_fraction"] == 0.75 and m["sde_steps"] == 2
    assert "lm/policy_loss" in m and "flow/policy_loss" in m
    flow_lora = _weights(result.final_dir / "flow_lora" / "pytorch_lora_weights.safetensors")
    assert any(float(v.abs().max()) > 0 for k, v in flow_lora.items() if "lora_B" in k)  # the flow moved
    lm_lora = _weights(result.final_dir / "rewriter" / "adapter" / "adapter_model.safetensors")
    start = build_policy(config.policy, seed=flow_train.derive_seed(0, "lm_lora", 0)).model
    from peft import get_peft_model_state_dict

    start_sd = get_peft_model_state_dict(start)
    assert any(not torch.equal(lm_lora[k], start_sd[k]) for k in lm_lora)  # the rewriter moved
    samples = [json.loads(x) for x in (result.out_dir / "samples.jsonl").read_text().splitlines()]
    assert any(not s["refined"] and s["rendered"] == s["prompt"] for s in samples)

    only = replace(config, out_dir=str(tmp_path / "prompt_only"))
    only.promptrl = replace(config.promptrl, prompt_only=True)
    result = flow_train.train(only)
    assert result.metrics[-1]["sde_steps"] == 0 and "flow/policy_loss" not in result.metrics[-1]
    assert not (result.final_dir / "flow_lora").exists()
    rewriter = load_rewriter(result.final_dir / "rewriter")  # what `evalsuite run --rewriter` loads
    assert rewriter.describe()["base_model"] == config.policy.model
    assert len(rewriter.rewrite(["a cat", "a dog"])) == 2


def promptloop_settings(tiny_dir: Path) -> dict:
    """The tiny PromptLoop run's refiner, groups and LM optimizer (config fields)."""
    from evalsuite.harness.vl_policy import vl_policy_config

    return {
        "policy": vl_policy_config(
            str(tiny_dir / "qwen2.5-vl"),
            dtype="float32",
            max_new_tokens=8,
            temperature=1.0,
            lora=LoraSettings(r=4, alpha=8),
        ),
        "grpo": GRPOSettings(group_size=4, prompts_per_step=2, beta=0.01, clip_eps=0.2, micro_batch_size=4),
        "policy_optim": OptimConfig(lr=1e-2),
    }


def test_promptloop_refines_mid_trajectory_and_trains_the_refiner(tiny_dir, tmp_path):
    config = make_config(
        tmp_path / "loop",
        tiny_dir,
        mode="promptloop",
        steps=2,
        **promptloop_settings(tiny_dir),
    )
    config.promptloop.refine_steps, config.promptloop.preview_size, config.promptloop.max_pixels = (
        [1],
        56,
        56 * 56,
    )
    seen: list[int] = []
    original = flow_train.lm_update

    def spy(batch, advantages, **kw):
        seen.append(sum(len(r) for r in batch.actions.rows))
        stats = original(batch, advantages, **kw)
        assert stats["lm/policy_loss"] == stats["lm/policy_loss"]  # the refiner's log-probs enter the loss
        return stats

    flow_train.lm_update = spy
    try:
        result = flow_train.train(config)
    finally:
        flow_train.lm_update = original
    assert seen == [8, 8]  # every image's trajectory got one refinement action
    m = result.metrics[-1]
    assert m["refined_fraction"] == 1.0 and m["sde_steps"] == 0 and "flow/policy_loss" not in m
    lm_lora = _weights(result.final_dir / "lm_adapter" / "adapter_model.safetensors")
    assert any(float(v.abs().max()) > 0 for k, v in lm_lora.items() if "lora_B" in k)


def test_crash_and_resume_equals_an_uninterrupted_run(tiny_dir, tmp_path, monkeypatch):
    straight = flow_train.train(
        make_config(
            tmp_path / "a",
            tiny_dir,
            steps=4,
            save_every=2,
            flow=replace(make_config(tmp_path, tiny_dir).flow, ema=True),
        )
    )
    cfg = make_config(
        tmp_path / "b",
        tiny_dir,
        steps=4,
        save_every=2,
        flow=replace(make_config(tmp_path, tiny_dir).flow, ema=True),
    )
    original = flow_train.flow_update

    def crash_at_step_3(batch, advantages, **kw):
        if kw["step"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(batch, advantages, **kw)

    monkeypatch.setattr(flow_train, "flow_update", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        flow_train.train(cfg)
    monkeypatch.setattr(flow_train, "flow_update", original)
    resumed = flow_train.train(cfg)
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    for a, b in zip(straight.metrics[2:], resumed.metrics):
        assert a["reward/mean"] == b["reward/mean"] and a["flow/loss"] == b["flow/loss"]
    wa = _weights(straight.final_dir / "flow_lora" / "pytorch_lora_weights.safetensors")
    wb = _weights(resumed.final_dir / "flow_lora" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ca = (straight.out_dir / "metrics.csv").read_text()
    cb = (resumed.out_dir / "metrics.csv").read_text()
    strip = lambda text: [",".join(r[:-1]) for r in csv.reader(text.splitlines())]  # noqa: E731 (drop time)
    assert strip(ca) == strip(cb) and len(strip(ca)) == 5


def test_a_broken_sampler_fails_the_on_policy_self_test(tiny_dir, tmp_path, monkeypatch):
    from evalsuite.harness.flow_policy import FlowPolicy

    real = FlowPolicy.step_log_prob

    def drifted(self, model, traj, rows, steps, cond=None):
        traj.noise_level = traj.noise_level * 1.01  # e.g. a different noise level at train time
        return real(self, model, traj, rows, steps, cond)

    monkeypatch.setattr(FlowPolicy, "step_log_prob", drifted)
    with pytest.raises(OnPolicyError, match="self-test"):
        flow_train.train(make_config(tmp_path / "broken", tiny_dir, steps=1))


def test_flow_config_is_strict_and_recipes_load(tmp_path):
    for recipe in sorted((REPO / "harness" / "recipes").glob("flow_*.yaml")):
        config = load_flow_config(recipe)
        assert config.mode in ("flow", "promptrl", "promptloop")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: flow\nflow: {num_step: 3}\n")
    with pytest.raises(ConfigError, match="num_step"):
        load_flow_config(bad)
    bad.write_text("mode: promptloop\npromptloop: {refine_steps: [9]}\nflow: {num_steps: 4}\n")
    with pytest.raises(ConfigError, match="refine_steps"):
        load_flow_config(bad)


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI not installed")
def test_two_ranks_under_accelerate_stay_in_sync(tiny_dir, tmp_path):
    config = make_config(tmp_path / "ddp", tiny_dir, steps=2, log_param_hash=True)
    config.grpo.prompts_per_step = 2
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "evalsuite.cli",
        "train",
        "--config",
        str(path),
    ]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [
        [json.loads(x) for x in (tmp_path / "ddp" / f"param_hash.rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    ]
    assert [x["step"] for x in ranks[0]] == [1, 2]
    assert ranks[0] == ranks[1]
    assert ranks[0][0]["flow"] != ranks[0][1]["flow"]  # the LoRA moved between steps


def test_engines_that_cannot_sample_sharded_are_refused_with_a_clear_message(monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from evalsuite.harness.scaffold import check_engine

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert check_engine(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, state=None)) is False
    zero2 = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2))
    check_engine(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=zero2))
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        check_engine(SimpleNamespace(distributed_type=DistributedType.FSDP, state=None))
    monkeypatch.setenv("FSDP_VERSION", "2")  # FSDP2 shards and samples (tests/test_fsdp.py)
    assert check_engine(SimpleNamespace(distributed_type=DistributedType.FSDP, state=None)) is True
    zero3 = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3))
    with pytest.raises(ConfigError, match="ZeRO-3"):
        check_engine(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=zero3))


@pytest.mark.parametrize("same", [True, False])
def test_same_initial_noise_in_a_group_is_an_option(tiny_dir, tmp_path, same):
    from evalsuite.harness.flow_policy import FlowPolicy
    from evalsuite.harness.rewards import RewardSet

    base = make_config(tmp_path, tiny_dir)
    config = replace(base, flow=replace(base.flow, same_noise_in_group=same))
    flow = FlowPolicy.from_pretrained(config.flow, seed=0)
    rows = [{"id": "0", "prompt": "a cat", "metadata": {}, "position": 0}]
    batch = flow_train.rollout(
        config, rows, flow=flow, lm=None, reward_set=RewardSet(config.rewards), step=0, rank=0, sources=None
    )
    start = batch.traj.latents[:, 0]
    assert all(torch.equal(start[0], start[k]) for k in range(1, 8)) == same
    assert not torch.equal(batch.traj.latents[0, -1], batch.traj.latents[1, -1])  # SDE noise differs anyway


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tiny_dir, tmp_path):
    """A real kill (SIGKILL, no clean-up) between checkpoints; the rerun redoes only the lost steps."""
    import signal
    import time

    straight = flow_train.train(make_config(tmp_path / "a", tiny_dir, steps=6, save_every=2))
    config = make_config(tmp_path / "b", tiny_dir, steps=6, save_every=2)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalsuite.harness.flow_train", "--config", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    metrics = tmp_path / "b" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:  # header + steps 1..3
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "final").exists()
    resumed = flow_train.train(config)
    assert resumed.metrics[0]["step"] in (3, 5)  # from the last complete checkpoint, not from scratch
    done = {m["step"]: m for m in straight.metrics}
    for m in resumed.metrics:
        assert (
            m["reward/mean"] == done[m["step"]]["reward/mean"]
            and m["flow/loss"] == done[m["step"]]["flow/loss"]
        )
    wa = _weights(straight.final_dir / "flow_lora" / "pytorch_lora_weights.safetensors")
    wb = _weights(resumed.final_dir / "flow_lora" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = list(csv.DictReader(metrics.read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # the killed run's extra rows were cut back


def test_recipes_evaluate_on_held_out_prompts():
    for name in ("geneval", "ocr", "pickscore", "promptecho"):
        config = load_flow_config(REPO / "harness" / "recipes" / f"flow_{name}.yaml")
        assert config.eval_every and config.eval_data is not None
        assert "test" in config.eval_data.key and "train" in config.data.key
