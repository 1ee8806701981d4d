"""EditReward on a tiny checkpoint in the official layout: parity with a per-pair hand computation."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample
from evalsuite.errors import ConfigError
from evalsuite.rewards.editreward import (
    EDITREWARD_PIXELS,
    RATING_SUFFIX,
    REWARD_TOKEN,
    TEMPLATES,
    EditReward,
    fuse_heads,
)
from evalsuite.tiny.editreward import write_tiny_editreward
from tests.reward_tester import CHECKS, RewardSpec, close

SMALL = 16 * 28 * 28  # 16 tokens per image: keeps the tiny tests fast; one test uses the official budget


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on shared CPUs: one thread avoids thread-sync overhead that dominates such small ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_er(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_editreward(tmp_path_factory.mktemp("editreward"), seed=0)


def _img(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def samples() -> list[Sample]:
    return [
        Sample("e0", "add a red hat to the person", image=_img(32, 32, 0), source_image=_img(32, 32, 10)),
        Sample("e1", "make it night time and turn the street lights on", image=_img(64, 40, 1),
               source_image=_img(64, 40, 11)),
        Sample("e2", "remove the dog", image=_img(48, 64, 2), source_image=_img(40, 56, 12)),
    ]


@cache
def _hf(base: str, ckpt: str):
    """The tiny checkpoint loaded by hand: HF backbone + the raw head weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(base)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    state = load_file(str(Path(ckpt) / "model.safetensors"))
    config = AutoConfig.from_pretrained(base)
    config.text_config.vocab_size = state["model.language_model.embed_tokens.weight"].shape[0]
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("rm_heads.")}, strict=True)
    heads = {k.removeprefix("rm_heads."): v for k, v in state.items() if k.startswith("rm_heads.")}
    return processor, model, heads


def hand_reward(base: str, ckpt: str, s: Sample, pixels: tuple[int, int]) -> tuple[float, list[list[float]]]:
    """Independent per-pair reference, following the official inferencer step by step."""
    from qwen_vl_utils import process_vision_info

    processor, model, w = _hf(base, ckpt)
    reward_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    lo, hi = pixels
    per_head = []
    for head, template in enumerate(TEMPLATES):  # dim1 -> head_0, dim2 -> head_1
        messages = [{"role": "user", "content": [
            {"type": "image", "image": s.source_image, "min_pixels": lo, "max_pixels": hi},
            {"type": "image", "image": s.image, "min_pixels": lo, "max_pixels": hi},
            {"type": "text", "text": template.format(text_prompt=s.prompt) + RATING_SUFFIX},
        ]}]
        images, _ = process_vision_info(messages)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        batch = processor(text=[text], images=images, return_tensors="pt")
        ids = batch["input_ids"]
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)
            vision = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
            mask = (ids == model.config.image_token_id)[..., None].expand_as(embeds)
            embeds = embeds.masked_scatter(mask, vision)
            positions = torch.arange(ids.shape[1])[None]  # official: cumsum(mask) - 1, no M-RoPE
            hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                                position_ids=positions).last_hidden_state[0]
        h = hidden[(ids[0] == reward_id).nonzero().item()].double()

        def lin(x, j, head=head):
            return x @ w[f"head_{head}.{j}.weight"].double().T + w[f"head_{head}.{j}.bias"].double()

        out = lin(torch.relu(lin(torch.relu(lin(h, 0)), 3)), 5)  # Linear-ReLU-(Dropout)-Linear-ReLU-Linear
        per_head.append(out.tolist())
    return (per_head[0][0] + per_head[1][0]) / 2, per_head


@pytest.fixture(scope="module")
def spec(tiny_er) -> RewardSpec:
    base, ckpt = str(tiny_er["base"]), str(tiny_er["checkpoint"])
    good = samples()[0]
    return RewardSpec(
        name="editreward",
        make=lambda dtype="float32": EditReward(ckpt, base_model=base, dtype=dtype, min_pixels=SMALL,
                                                max_pixels=SMALL),
        samples=samples,
        reference=lambda reward, ss: [hand_reward(base, ckpt, s, (SMALL, SMALL))[0] for s in ss],
        atol=1e-5,
        bf16_atol=0.01,  # tiny model: measured <= 3e-4
        extra_bad=(
            ("reward-token", replace(good, id="bad-reward-token", prompt=f"add a {REWARD_TOKEN} sign")),
            ("no-source", replace(good, id="bad-no-source", source_image=None)),
            ("corrupt-source", replace(good, id="bad-corrupt-source", source_image=b"not an image")),
        ),
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check, spec):
    CHECKS[check](spec)


def test_bad_source_images_are_errors_for_those_samples_only(spec):
    ss = samples()
    bad = [
        replace(ss[1], id="no-source", source_image=None),
        replace(ss[1], id="bytes-source", source_image=b"not an image"),
        replace(ss[1], id="zero-source", source_image=Image.new("RGB", (0, 0))),
    ]
    reward = spec.make()
    out = reward.score([ss[0], *bad, ss[2]])
    assert out.applicable == [True, False, False, False, True]
    for s, err in zip(bad, out.errors[1:4]):
        assert f"sample {s.id!r}: source image:" in err, err
    assert all(math.isnan(x) for x in out.scores[1:4])
    alone = reward.score([ss[0], ss[2]]).scores
    assert close(out.scores[0], alone[0], 1e-5, 1e-4) and close(out.scores[4], alone[1], 1e-5, 1e-4)


def test_missing_source_image_error_quotes_the_sample_id(spec):
    out = spec.make().score([replace(samples()[0], id="no-source", source_image=None)])
    assert repr("no-source") in out.errors[0]


# -- the rule, by hand ----------------------------------------------------------------------------
def test_fuse_heads_by_hand():
    per_head = torch.tensor([[[1.0, 0.0], [2.0, 0.5]],
                             [[3.0, math.log(2.0)], [0.0, 0.5]]], dtype=torch.float64)
    assert torch.allclose(fuse_heads(per_head, "mean"),
                          torch.tensor([[2.0, math.log(2.0) / 2], [1.0, 0.5]], dtype=torch.float64))
    assert torch.allclose(fuse_heads(per_head, "min"),
                          torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=torch.float64))
    # sum: means add; sigma = sqrt(sigma_1^2 + sigma_2^2): sqrt(1 + 4) and sqrt(e + e)
    assert torch.allclose(fuse_heads(per_head, "sum"),
                          torch.tensor([[4.0, 0.5 * math.log(5.0)], [2.0, 0.5 * (math.log(2.0) + 1.0)]],
                                       dtype=torch.float64))
    with pytest.raises(ValueError, match="pooling"):
        fuse_heads(per_head, "max")


def test_heads_and_pooling_in_details(spec, tiny_er):
    base, ckpt = str(tiny_er["base"]), str(tiny_er["checkpoint"])
    ss = samples()
    out = spec.make().score(ss)
    for s, score, d in zip(ss, out.scores, out.details):
        _, per_head = hand_reward(base, ckpt, s, (SMALL, SMALL))
        assert close(d["following_mean"], per_head[0][0], 1e-5, 1e-4)
        assert close(d["quality_mean"], per_head[1][0], 1e-5, 1e-4)
        assert close(d["log_sigma"], (per_head[0][1] + per_head[1][1]) / 2, 1e-5, 1e-4)
        assert math.isclose(score, (d["following_mean"] + d["quality_mean"]) / 2, rel_tol=1e-6, abs_tol=1e-9)
    mins = EditReward(ckpt, base_model=base, pooling="min", min_pixels=SMALL, max_pixels=SMALL).score(ss)
    for score, d in zip(mins.scores, out.details):
        assert math.isclose(score, min(d["following_mean"], d["quality_mean"]), rel_tol=1e-6, abs_tol=1e-9)


def test_official_pixel_budget_parity(tiny_er):
    """Default budget (256*28*28 for both images, small inputs upscaled): same numbers as the reference."""
    from qwen_vl_utils import smart_resize

    base, ckpt = str(tiny_er["base"]), str(tiny_er["checkpoint"])
    s = samples()[1]
    reward = EditReward(ckpt, base_model=base).load()
    _, _, grid = reward._sequences([s])
    h, w = smart_resize(40, 64, 28, EDITREWARD_PIXELS, EDITREWARD_PIXELS)
    assert grid.tolist() == [[1, h // 14, w // 14]] * 2
    got = reward.score([s]).scores[0]
    assert close(got, hand_reward(base, ckpt, s, (EDITREWARD_PIXELS, EDITREWARD_PIXELS))[0], 1e-5, 1e-4)


# -- checkpoint formats ---------------------------------------------------------------------------
def test_pth_and_legacy_key_checkpoints_load_the_same(tiny_er, tmp_path):
    from safetensors.torch import load_file

    base, ckpt = str(tiny_er["base"]), str(tiny_er["checkpoint"])
    state = load_file(str(Path(ckpt) / "model.safetensors"))
    pth = tmp_path / "pth"
    pth.mkdir()
    torch.save({"model": state}, pth / "model.pth")
    legacy = tmp_path / "legacy"  # transformers < 4.52 names: visual.*, model.layers.*
    legacy.mkdir()
    renamed = {}
    for k, v in state.items():
        k = k.replace("model.visual.", "visual.", 1).replace("model.language_model.", "model.", 1)
        renamed[k] = v
    torch.save(renamed, legacy / "model.pth")
    ss = samples()[:2]
    want = EditReward(ckpt, base_model=base, min_pixels=SMALL, max_pixels=SMALL).score(ss).scores
    for folder in (pth, legacy):
        got = EditReward(str(folder), base_model=base, min_pixels=SMALL, max_pixels=SMALL).score(ss).scores
        assert got == want, folder.name


def test_bad_checkpoints_fail_loudly(tiny_er, tmp_path):
    from safetensors.torch import load_file

    base = str(tiny_er["base"])
    with pytest.raises(ConfigError, match="no model.safetensors or model.pth"):
        EditReward(str(tmp_path), base_model=base).load()
    state = load_file(str(Path(tiny_er["checkpoint"]) / "model.safetensors"))
    small = {k: (v[:-1] if "embed_tokens" in k or k == "lm_head.weight" else v) for k, v in state.items()}
    (tmp_path / "novocab").mkdir()
    torch.save(small, tmp_path / "novocab" / "model.pth")
    with pytest.raises(ConfigError, match="no row for"):
        EditReward(str(tmp_path / "novocab"), base_model=base).load()
    with pytest.raises(ConfigError, match="pooling"):
        EditReward(str(tmp_path), base_model=base, pooling="max")


def test_tiny_writer_is_deterministic(tiny_er, tmp_path):
    again = write_tiny_editreward(tmp_path, seed=0)
    a = (Path(tiny_er["checkpoint"]) / "model.safetensors").read_bytes()
    assert (again["checkpoint"] / "model.safetensors").read_bytes() == a


def test_registry_and_settings(tiny_er):
    from evalsuite.registry import get_reward

    reward = get_reward("editreward", model=str(tiny_er["checkpoint"]), base_model=str(tiny_er["base"]))
    assert isinstance(reward, EditReward) and reward.needs_source_image
    assert EditReward.default_model == "TIGER-Lab/EditReward-Qwen2.5-VL-7B"
    desc = reward.describe()
    assert desc["pooling"] == "mean" and desc["min_pixels"] == desc["max_pixels"] == EDITREWARD_PIXELS
