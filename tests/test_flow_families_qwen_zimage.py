"""Z-Image and Qwen-Image on the flow seam: what the shared conformance tester (run on every family by
test_flow_families.py) does not cover: learning, the recipes, and ``evalsuite run`` on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .flow_family_tester import check_learns_a_simple_reward
from .test_flow_families import family_case

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_zimage_learns_a_simple_reward_and_lr_zero_stays_flat(tiny_dir, tmp_path):
    """On random tiny weights the 2x2-token image at 32 px barely moves in brightness; at 64 px, with the
    final projection in the LoRA too, it rises beyond 5x step 1's spread within 30 steps."""
    from evalsuite.harness.flow_families.zimage import ZIMAGE_LORA_TARGETS

    case = family_case("zimage", tiny_dir)
    case.settings.update(height=64, width=64)
    check_learns_a_simple_reward(case, tmp_path, [*ZIMAGE_LORA_TARGETS, "linear"], lr=0.1)


def test_the_promptecho_zimage_recipe_loads_with_the_papers_settings():
    from evalsuite.harness.flow_config import load_flow_config

    config = load_flow_config(REPO / "harness" / "recipes" / "flow_promptecho_zimage.yaml")
    f = config.flow
    assert (f.model, f.guidance_scale, f.negative_prompt) == ("Tongyi-MAI/Z-Image", 4.0, "")
    assert f.eval_num_steps == 30
    assert (f.lora.r, f.lora.alpha, f.max_sequence_length, f.height) == (64, 128, 512, 1024)
    assert config.grpo.advantage_mode == "none"  # PromptEcho: R - mean(R), no std division
    assert [c.name for c in config.rewards.components] == ["promptecho"]


def test_the_promptecho_qwenimage2512_recipe_loads_with_the_papers_settings():
    from evalsuite.harness.flow_config import load_flow_config

    config = load_flow_config(REPO / "harness" / "recipes" / "flow_promptecho_qwenimage2512.yaml")
    f = config.flow
    assert (f.model, f.guidance_scale, f.negative_prompt) == ("Qwen/Qwen-Image-2512", 4.0, " ")
    assert (f.lora.r, f.lora.alpha, f.max_sequence_length, f.eval_num_steps) == (64, 128, 512, 30)
    assert config.grpo.advantage_mode == "none"


def test_qwenimage_2512_is_the_same_family_with_other_weights(tiny_dir):
    a, b = family_case("qwenimage", tiny_dir).policy(), family_case("qwenimage-2512", tiny_dir).policy()
    assert a.family.name == b.family.name == "qwenimage"
    wa, wb = a.transformer.state_dict(), b.transformer.state_dict()
    assert wa.keys() == wb.keys() and not torch.equal(wa["proj_out.weight"], wb["proj_out.weight"])


@pytest.mark.parametrize("name", ["zimage", "qwenimage"])
def test_evalsuite_run_geneval_on_the_tiny_checkpoint_with_a_policy_lora(name, tiny_dir, data_dir, tmp_path):
    """``evalsuite run --model <tiny folder>``: the pipeline class from model_index.json renders GenEval, with
    a LoRA the flow policy saved."""
    import json

    from evalsuite.cli import main

    policy = family_case(name, tiny_dir).policy()
    policy.save_lora(str(tmp_path / "lora"))
    run = tmp_path / "run"
    assert main(["run", "--bench", "geneval", "--model", str(tiny_dir / name),
                 "--lora", str(tmp_path / "lora"), "--steps", "2", "--height", "32", "--width", "32",
                 "--guidance", "4.0",  # QwenImagePipeline ignores it: its true_cfg_scale defaults to 4
                 "--data-dir", str(data_dir), "--no-leaderboard", "--device", "cpu",
                 "--limit", "2", "--images-per-prompt", "2", "--output-dir", str(run),
                 "--option", f"detector_model={tiny_dir / 'mask2former'}",
                 "--option", f"clip_model={tiny_dir / 'open-clip-vit-l-14'}",
                 "--option", "threshold=0.0", "--option", "counting_threshold=0.0"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["n_images"] == 4
    assert (run / "00001" / "samples" / "0001.png").is_file()


def test_qwenimage_learns_a_simple_reward_and_lr_zero_stays_flat(tiny_dir, tmp_path):
    """As for SD3 and Z-Image: with true CFG 4 on random tiny weights the default targets move the image's
    brightness too slowly for a 30-step test; the output projection in the LoRA and a larger step do it."""
    from evalsuite.harness.flow_families.qwenimage import QWENIMAGE_LORA_TARGETS

    targets = [*QWENIMAGE_LORA_TARGETS, "proj_out"]
    check_learns_a_simple_reward(family_case("qwenimage", tiny_dir), tmp_path, targets, lr=0.3)


def test_the_editreward_qwenimage_edit_recipe_loads_with_the_model_cards_settings():
    from evalsuite.harness.flow_config import load_flow_config

    config = load_flow_config(REPO / "harness" / "recipes" / "flow_editreward_qwenimage_edit.yaml")
    f = config.flow
    assert (f.model, f.guidance_scale, f.negative_prompt) == ("Qwen/Qwen-Image-Edit", 4.0, " ")
    assert f.eval_num_steps == 50
    assert (f.height, f.width, f.max_area) == (None, None, 512 * 512)
    assert [c.name for c in config.rewards.components] == ["editreward"]


def test_qwenimage_edit_conditions_text_and_tokens_on_the_source(tiny_dir):
    """The VL text encoder and the transformer both see the source (the parity test alone would pass if
    neither did, since the pipeline and the family share the encoders)."""
    from PIL import Image

    from evalsuite.errors import ConfigError

    policy = family_case("qwenimage-edit", tiny_dir).policy()
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    a, _, _ = policy.encode(["make it green"], [red])
    b, _, _ = policy.encode(["make it green"], [blue])
    assert a.prompt_embeds.shape == b.prompt_embeds.shape
    assert not torch.allclose(a.prompt_embeds, b.prompt_embeds)
    assert not torch.allclose(a.negative_embeds, b.negative_embeds)  # the negative prompt sees it too
    assert a.source_latents.shape == (1, 64 * 64, 64)  # 32 px resized to 1024² as the pipeline: 64x64 tokens
    assert not torch.allclose(a.source_latents, b.source_latents)
    assert a.img_ids.tolist() == [[1, 2, 2], [1, 64, 64]]  # target grid, then the source's
    with pytest.raises(ConfigError, match=r"source images \[1\] have another aspect ratio"):
        policy.encode(["a", "b"], [red, Image.new("RGB", (64, 32))])
    with pytest.raises(ConfigError, match="sees the source image"):
        policy.family.encode_text(["a"])
    with pytest.raises(ConfigError, match="PromptLoop's mid-trajectory re-prompting .* not supported"):
        policy.with_prompts(a, ["make it blue"])  # what PromptLoop's refine hook calls


def _small_source_case(tiny_dir, area: int = 64 * 64):
    case = family_case("qwenimage-edit", tiny_dir)
    case.settings.update(source_area=area)
    return case


def test_qwenimage_edit_source_area_is_the_pipelines_rule_at_another_area(tiny_dir, monkeypatch):
    """``flow.source_area`` changes only the area in the pipeline's ``calculate_dimensions(1024², aspect)``:
    with that one number changed in the pipeline too, noise-0 sampling equals it latent for latent."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

    from .flow_family_tester import check_noise0_parity

    case = _small_source_case(tiny_dir)
    policy = case.policy()
    (cond, _, _), _ = case.encode(policy, ["a cat"])
    assert cond.source_latents.shape == (1, 4 * 4, 64)  # 64x64 px: 4x4 tokens, not 64x64
    assert cond.img_ids.tolist() == [[1, 2, 2], [1, 4, 4]]
    pipeline_rule = module.calculate_dimensions
    monkeypatch.setattr(module, "calculate_dimensions", lambda _area, ratio: pipeline_rule(64 * 64, ratio))
    check_noise0_parity(case, policy)
    monkeypatch.undo()
    with pytest.raises(AssertionError):  # the pipeline's own 1 MP source gives other latents
        check_noise0_parity(case, policy)


def test_qwenimage_edit_learns_a_simple_reward_and_lr_zero_stays_flat(tiny_dir, tmp_path):
    """As for Qwen-Image, with the source at 64x64 px (``flow.source_area``): at the pipeline's 1 MP it is
    4096 tokens per row on the tiny model, too slow for a test; the training loop is the same."""
    from evalsuite.harness.flow_families.qwenimage import QWENIMAGE_LORA_TARGETS

    targets = [*QWENIMAGE_LORA_TARGETS, "proj_out"]
    check_learns_a_simple_reward(_small_source_case(tiny_dir), tmp_path, targets, lr=0.3)


def test_zimage_cfg_normalization_and_truncation_equal_the_pipelines(tiny_dir):
    """ZImagePipeline's ``cfg_normalization`` (True = 1) and ``cfg_truncation``: noise-0 sampling equals the
    pipeline called with them; each changes the latents (so the parity is not the default's), and the
    train-time recompute, which mixes steps in one batch, applies each row's step rule."""
    from .flow_family_tester import check_noise0_parity, check_recompute_equals_record

    case = family_case("zimage", tiny_dir)
    policy = case.policy(cfg_normalization=1.0)
    t = 1 - policy.sigmas(4, 32, 32)[:4].double()  # the pipeline's t per step, rising
    cut = float(t[1] + t[2]) / 2  # CFG on steps 0 and 1 only
    policy.config.cfg_truncation = cut
    case.pipeline_kwargs.update(cfg_normalization=True, cfg_truncation=cut)
    check_noise0_parity(case, policy)
    check_recompute_equals_record(case, policy, "sde")

    (cond, h, w), _ = case.encode(policy, ["a red cube"])

    def final(normalization: float, truncation: float) -> torch.Tensor:
        policy.config.cfg_normalization, policy.config.cfg_truncation = normalization, truncation
        return policy.sample(cond, [3], height=h, width=w, noise_level=0.0, decode=False).latents[0, -1]

    both, plain = final(1.0, cut), final(0.0, 1.0)
    assert not torch.allclose(both, final(0.0, cut), atol=1e-4)  # the normalisation acted
    assert not torch.allclose(both, final(1.0, 1.0), atol=1e-4)  # the truncation acted
    assert not torch.allclose(both, plain, atol=1e-4)


def test_family_options_are_refused_by_families_that_ignore_them(tiny_dir):
    from evalsuite.errors import ConfigError

    with pytest.raises(ConfigError, match="Z-Image pipeline options; the sd3 family does not use them"):
        family_case("sd3", tiny_dir).policy(cfg_truncation=0.5)
    with pytest.raises(ConfigError, match="Qwen-Image-Edit option; the flux family does not use it"):
        family_case("flux-kontext", tiny_dir).policy(source_area=64 * 64)


def test_pipeline_args_reach_the_zimage_pipeline_and_the_manifest(tiny_dir, data_dir, tmp_path, capsys):
    """``--pipeline-arg`` passes Z-Image's cfg_normalization / cfg_truncation to the pipeline (the image
    changes, the manifest records them); an argument the pipeline lacks, or one evalsuite sets itself, is a
    one-line error naming the alternatives."""
    from evalsuite.cli import main

    def run(out, *extra):
        return main(["run", "--bench", "geneval", "--model", str(tiny_dir / "zimage"), "--steps", "2",
                     "--height", "32", "--width", "32", "--guidance", "4.0", "--data-dir", str(data_dir),
                     "--no-leaderboard", "--device", "cpu", "--limit", "1", "--images-per-prompt", "1",
                     "--output-dir", str(tmp_path / out),
                     "--option", f"detector_model={tiny_dir / 'mask2former'}",
                     "--option", f"clip_model={tiny_dir / 'open-clip-vit-l-14'}", *extra])

    assert run("plain") == 0
    assert run("normalized", "--pipeline-arg", "cfg_normalization=true",
               "--pipeline-arg", "cfg_truncation=0.5") == 0
    manifest = (tmp_path / "normalized" / "manifest.json").read_text()
    assert '"cfg_normalization": true' in manifest and '"cfg_truncation": 0.5' in manifest
    images = [Image.open(tmp_path / d / "00000" / "samples" / "0000.png") for d in ("plain", "normalized")]
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))
    capsys.readouterr()
    assert run("bad", "--pipeline-arg", "cfg_normalisation=true") == 1
    err = capsys.readouterr().err
    assert "ZImagePipeline takes no such argument" in err and "cfg_normalization" in err
    assert run("owned", "--pipeline-arg", "num_inference_steps=3") == 1
    assert "use --steps" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "results.json").exists()
