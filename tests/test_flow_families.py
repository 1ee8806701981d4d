"""Every flow-model family through the conformance tester (tests/flow_family_tester.py), plus the seam's
family lookup."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.harness.flow_families import FlowFamily
from evalsuite.harness.flow_policy import FlowPolicy

from .flow_family_tester import (
    PROMPTS,
    FamilyCase,
    _perturb_lora,
    check_batch_invariance,
    check_learns_a_simple_reward,
    check_lora_renders_in_the_generator,
    check_noise0_parity,
    check_recompute_equals_record,
    check_reference_is_adapter_disabled,
)

FAMILIES = ["flux", "flux-kontext", "sd3", "zimage", "qwenimage", "qwenimage-edit"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _sources(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def family_case(name: str, tiny_dir) -> FamilyCase:
    if name == "flux-kontext":
        return FamilyCase(
            name,
            tiny_dir / name,
            {"guidance_scale": 2.5},
            sources=_sources,
            pipeline_kwargs={"max_area": 32 * 32, "_auto_resize": False},
        )
    if name == "sd3":  # real CFG with the negative prompt, Flow-GRPO's SD3.5 scale
        return FamilyCase(name, tiny_dir / name, {"guidance_scale": 4.5, "negative_prompt": "blurry"})
    if name == "zimage":  # Z-Image's own CFG (pos + s·(pos − neg)) at PromptEcho's scale
        return FamilyCase(name, tiny_dir / name, {"guidance_scale": 4.0, "negative_prompt": "blurry"})
    if name == "qwenimage-edit":  # true CFG; the text encoder and the transformer both see the source
        settings = {"guidance_scale": 4.0, "negative_prompt": "blurry", "max_area": 32 * 32}
        return FamilyCase(name, tiny_dir / name, settings, sources=_sources,
                          pipeline_kwargs={"true_cfg_scale": 4.0})
    if name.startswith("qwenimage"):  # true CFG (true_cfg_scale); 128 tokens keep prompt lengths unequal
        settings = {"guidance_scale": 4.0, "negative_prompt": "blurry", "max_sequence_length": 128}
        return FamilyCase(name, tiny_dir / name, settings, pipeline_kwargs={"true_cfg_scale": 4.0})
    return FamilyCase(name, tiny_dir / name, {"guidance_scale": 3.5})


@pytest.fixture(scope="module", params=FAMILIES)
def case_and_policy(request, tiny_dir):
    case = family_case(request.param, tiny_dir)
    return case, case.policy()


def test_noise0_sampling_equals_the_diffusers_pipeline(case_and_policy):
    check_noise0_parity(*case_and_policy)


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_recompute_equals_the_recorded_log_probs(case_and_policy, sde_type):
    check_recompute_equals_record(*case_and_policy, sde_type)


def test_rows_do_not_depend_on_the_batch(case_and_policy):
    check_batch_invariance(*case_and_policy)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_reference_is_the_adapter_disabled_transformer(name, tiny_dir):
    check_reference_is_adapter_disabled(family_case(name, tiny_dir))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_saved_lora_renders_the_same_in_the_generator(name, tiny_dir, tmp_path):
    check_lora_renders_in_the_generator(family_case(name, tiny_dir), tmp_path / "lora")


def test_the_family_is_picked_from_model_index_and_describes_itself(case_and_policy):
    case, policy = case_and_policy
    assert isinstance(policy.family, FlowFamily)
    expected = {"flux": "flux", "flux-kontext": "flux", "sd3": "sd3", "zimage": "zimage",
                "qwenimage": "qwenimage", "qwenimage-edit": "qwenimage-edit"}[case.name]
    assert policy.family.name == expected
    assert policy.describe()["family"] == expected
    assert type(policy.pipeline).__name__ in policy.family.pipeline_classes


def test_a_pipeline_no_family_drives_is_refused_by_name(tmp_path, tiny_dir):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(ConfigError, match=r"no flow family drives 'StableDiffusionPipeline'.*flux.*sd3"):
        FlowPolicy.from_pretrained(family_case("sd3", tiny_dir).config(model=str(tmp_path)))
    with pytest.raises(ConfigError, match="flow.family.*nope"):
        FlowPolicy.from_pretrained(family_case("sd3", tiny_dir).config(family="nope"))


def test_sd3_learns_a_simple_reward_and_lr_zero_stays_flat(tiny_dir, tmp_path):
    """FLUX and Kontext pass the same check in test_flow_train.py (their runs are shared with other tests)."""
    from evalsuite.harness.flow_families.sd3 import SD3_LORA_TARGETS

    # the MLPs and output projection too, and a larger step: on random tiny weights with CFG 4.5 the
    # attention projections alone move the image's brightness too slowly for a 30-step test
    targets = [*SD3_LORA_TARGETS, "ff.net.0.proj", "ff.net.2", "proj_out"]
    check_learns_a_simple_reward(family_case("sd3", tiny_dir), tmp_path, targets, lr=0.3)


def test_sde_type_cps_gaussian_trains_with_the_exact_gaussian_log_ratio(tiny_dir):
    """``flow.sde_type: cps_gaussian``: the cps step (last step Euler), recorded and recomputed as the exact
    Gaussian log-density, so the trainer's log-ratio log p_new(x') − log p_old(x') (flow_update: recompute
    minus record) is [(x' − μ_old)² − (x' − μ_new)²] / (2·std²) averaged, not cps's un-normalised one."""
    import math

    case = family_case("sd3", tiny_dir)
    policy = case.policy(sde_type="cps_gaussian")
    (cond, h, w), _ = case.encode(policy, PROMPTS[:2])
    traj = policy.sample(cond, [1, 2], height=h, width=w, decode=False)
    assert traj.sde_type == "cps_gaussian" and traj.sde_steps == [0, 1, 2]  # last step deterministic
    rows, steps = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2])
    x_next = traj.latents[rows, steps + 1].double()
    old = policy.step_log_prob(policy.transformer, traj, rows, steps)
    mean_old, std = old.mean.detach().double(), old.std.double().expand_as(old.mean)

    def mean_over_elements(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1).mean(dim=1)

    log_density = -((x_next - mean_old) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    density = mean_over_elements(log_density)
    torch.testing.assert_close(traj.log_probs[rows, steps].double(), density, rtol=1e-5, atol=1e-5)

    _perturb_lora(policy, seed=0, scale=0.2)
    with torch.no_grad():
        new = policy.step_log_prob(policy.transformer, traj, rows, steps)
    log_ratio = (new.log_prob - traj.log_probs[rows, steps]).double()
    sq_old, sq_new = (x_next - mean_old) ** 2, (x_next - new.mean.double()) ** 2
    gaussian = mean_over_elements((sq_old - sq_new) / (2 * std**2))
    torch.testing.assert_close(log_ratio, gaussian, rtol=1e-4, atol=1e-5)
    assert float(gaussian.abs().min()) > 100 * 1e-5  # the LoRA moved the mean: the check is not 0 == 0
    cps = mean_over_elements(sq_old - sq_new)
    assert not torch.allclose(log_ratio, cps, rtol=0.1, atol=0)


@pytest.mark.parametrize("where", ["config", "policy"])
def test_an_unknown_sde_type_is_refused_with_the_allowed_list(where, tiny_dir):
    from evalsuite.harness.flow_config import FlowTrainConfig, validate_flow_config

    config = family_case("sd3", tiny_dir).config(sde_type="gaussian")
    allowed = r"flow.sde_type must be one of \('sde', 'cps', 'cps_gaussian'\), got 'gaussian'"
    with pytest.raises(ConfigError, match=allowed):
        if where == "config":
            validate_flow_config(FlowTrainConfig(flow=config))
        else:
            FlowPolicy.from_pretrained(config)
