"""Stable Diffusion 3.5 specifics beyond the family tester: CFG arithmetic, no-CFG parity, the recipe, and
``evalsuite run --bench geneval`` on the tiny SD3 (with a LoRA trained by the flow policy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evalsuite.cli import main
from evalsuite.harness.flow_config import load_flow_config
from evalsuite.harness.flow_families.sd3 import SD3_LORA_TARGETS

from .flow_family_tester import FamilyCase, check_noise0_parity

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_cfg_is_the_uncond_plus_scaled_difference_of_two_separate_forwards(tiny_dir):
    case = FamilyCase("sd3", tiny_dir / "sd3", {"guidance_scale": 4.5, "negative_prompt": "blurry"})
    policy = case.policy()
    assert policy.family.guidance == "cfg" and not policy.distilled
    cond, h, w = policy.encode(["a cat"])
    assert cond.negative_embeds is not None and cond.cfg_scale == 4.5
    x = policy.initial_noise([1], h, w)
    assert x.shape == (1, 16, h // 8, w // 8)  # SD3 latents are not packed
    sigma = torch.tensor([0.7])
    v = policy.velocity(policy.transformer, x, sigma, cond)
    pos = cond.rows([0])
    pos.negative_embeds = None
    neg = cond.rows([0])
    neg.prompt_embeds, neg.pooled, neg.negative_embeds = cond.negative_embeds, cond.negative_pooled, None
    v_pos = policy.velocity(policy.transformer, x, sigma, pos)
    v_neg = policy.velocity(policy.transformer, x, sigma, neg)
    torch.testing.assert_close(v, v_neg + 4.5 * (v_pos - v_neg), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(v_pos, v_neg)  # the negative prompt really is a different condition


def test_guidance_one_means_no_cfg_and_still_equals_the_pipeline(tiny_dir):
    case = FamilyCase("sd3", tiny_dir / "sd3", {"guidance_scale": 1.0})
    policy = case.policy()
    cond, _, _ = policy.encode(["a cat"])
    assert policy.family.guidance == "none" and cond.negative_embeds is None
    check_noise0_parity(case, policy)


def test_the_schedule_is_the_schedulers_static_shift(tiny_dir):
    policy = FamilyCase("sd3", tiny_dir / "sd3").policy()
    sigmas = policy.sigmas(4, 32, 32)
    # diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps(4): linspace from sigma_max = 1 to its
    # sigma_min, which is the training schedule's last sigma 1/1000 already shifted (3·0.001 / 1.002), then
    # every value is shifted again: σ' = 3σ / (1 + 2σ)
    shift = 3.0
    sigma_min = shift * 0.001 / (1 + (shift - 1) * 0.001)
    plain = torch.linspace(1.0, sigma_min, 4)
    torch.testing.assert_close(sigmas[:-1], shift * plain / (1 + (shift - 1) * plain), rtol=0, atol=1e-6)
    assert sigmas[-1] == 0.0


def test_the_lora_defaults_to_flow_grpos_sd3_targets(tiny_dir):
    case = FamilyCase("sd3", tiny_dir / "sd3")
    policy = case.policy()
    assert policy.describe()["lora"]["target_modules"] == list(SD3_LORA_TARGETS)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in policy.transformer.named_parameters() if ".lora_A" in n}
    assert wrapped and all(any(n.endswith(t) for t in SD3_LORA_TARGETS) for n in wrapped)


def test_the_sd3_recipe_loads_with_flow_grpos_settings():
    config = load_flow_config(REPO / "harness" / "recipes" / "flow_sd3_geneval.yaml")
    f = config.flow
    assert (f.model, f.guidance_scale, f.num_steps, f.eval_num_steps) == (
        "stabilityai/stable-diffusion-3.5-medium", 4.5, 10, 28 + 12)
    assert (f.height, f.timestep_fraction, config.grpo.group_size, config.grpo.beta) == (512, 0.99, 24, 0.04)
    assert config.eval_data is not None and "test" in config.eval_data.key


def test_evalsuite_run_geneval_on_tiny_sd3_with_a_policy_lora(tiny_dir, data_dir, tmp_path):
    policy = FamilyCase("sd3", tiny_dir / "sd3").policy()
    policy.save_lora(str(tmp_path / "lora"))
    run = tmp_path / "run"
    assert main(["run", "--bench", "geneval", "--model", str(tiny_dir / "sd3"),
                 "--lora", str(tmp_path / "lora"), "--steps", "2", "--height", "32", "--width", "32",
                 "--guidance", "4.5",
                 "--data-dir", str(data_dir), "--no-leaderboard", "--device", "cpu",
                 "--limit", "2", "--images-per-prompt", "2", "--output-dir", str(run),
                 "--option", f"detector_model={tiny_dir / 'mask2former'}",
                 "--option", f"clip_model={tiny_dir / 'open-clip-vit-l-14'}",
                 "--option", "threshold=0.0", "--option", "counting_threshold=0.0"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["n_images"] == 4
    generator = json.loads((run / "manifest.json").read_text())["fingerprint"]["generator"]
    assert generator["pipeline"] == "StableDiffusion3Pipeline" and generator["lora"] == str(tmp_path / "lora")
    assert (run / "00001" / "samples" / "0001.png").is_file()
