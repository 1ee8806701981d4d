"""ImageReward: the converted, batched model against an independent plain-torch forward of the official one.

The reference below reads the *official* state dict (``ImageReward.pt`` key names) and re-implements the
official forward with torch functionals only -- the BLIP ViT (vit.py), the BLIP BERT with cross-attention
(med.py, -10000 additive padding mask), the MLP head and the normalization -- scoring one sample at a time
with the official transform (torchvision) and the official tokenizer call (35 tokens, max_length padding).
It never touches transformers' model classes or this reward's code, so agreement shows that the key
conversion onto transformers' BLIP modules reproduces the official architecture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evalsuite import Sample, get_reward
from evalsuite.errors import ConfigError
from evalsuite.rewards.imagereward import (
    SCORE_MEAN,
    SCORE_STD,
    ImageReward,
    ImageRewardModel,
    normalize_score,
    preprocess_images,
    tokenize_prompts,
)
from evalsuite.rewards.imagereward_checkpoint import convert_imagereward_state_dict, map_official_key
from evalsuite.tiny.imagereward import write_tiny_imagereward
from tests.reward_tester import CHECKS, RewardSpec

LONG_PROMPT = "a photo of a cat sitting on a red chair next to a dog, " * 4  # 56 word pieces: truncated
EXPECTED_IGNORED = {
    "blip.text_encoder.embeddings.position_ids",
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
}


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory) -> Path:
    return write_tiny_imagereward(tmp_path_factory.mktemp("imagereward"), seed=0)


def _samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (48, 80), (100, 36), (40, 40), (33, 57), (64, 48)]
    prompts = ["a cat", LONG_PROMPT, "", "A Futuristic City, 4K!", "zxq vortex", "a cat"]
    return [
        Sample(f"s{i}", p, Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), p) in enumerate(zip(sizes, prompts))
    ]


# ----------------------------------------------------------------------------- independent reference


def _ln(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=eps)


def _lin(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _ref_vit(sd, pixels):
    """BLIP vit.py VisionTransformer.forward, from the official keys (head dim 64, LayerNorm eps 1e-6)."""
    p = "blip.visual_encoder"
    w = sd[f"{p}.patch_embed.proj.weight"]
    x = F.conv2d(pixels, w, sd[f"{p}.patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd[f"{p}.cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + sd[f"{p}.pos_embed"][:, : x.shape[1], :]
    b, n, d = x.shape
    heads = d // 64
    i = 0
    while f"{p}.blocks.{i}.norm1.weight" in sd:
        blk = f"{p}.blocks.{i}"
        h = _ln(x, sd, f"{blk}.norm1", 1e-6)
        q, k, v = _lin(h, sd, f"{blk}.attn.qkv").reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
        x = x + _lin((attn @ v).transpose(1, 2).reshape(b, n, d), sd, f"{blk}.attn.proj")
        h = _ln(x, sd, f"{blk}.norm2", 1e-6)
        x = x + _lin(F.gelu(_lin(h, sd, f"{blk}.mlp.fc1")), sd, f"{blk}.mlp.fc2")
        i += 1
    return _ln(x, sd, f"{p}.norm", 1e-6)


def _ref_bert(sd, med, input_ids, attention_mask, image_embeds):
    """BLIP med.py BertModel.forward(mode='multimodal', is_decoder=False) from the official keys."""
    p = "blip.text_encoder"
    eps, heads = med["layer_norm_eps"], med["num_attention_heads"]
    seq = input_ids.shape[1]
    x = sd[f"{p}.embeddings.word_embeddings.weight"][input_ids]
    x = x + sd[f"{p}.embeddings.position_embeddings.weight"][:seq]
    x = _ln(x, sd, f"{p}.embeddings.LayerNorm", eps)
    self_mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
    image_mask = (1.0 - torch.ones(image_embeds.shape[:2])[:, None, None, :]) * -10000.0

    def attend(hq, hkv, name, mask):
        def split(t):
            return t.view(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3)

        q, k, v = (split(_lin(src, sd, f"{name}.self.{w}")) for src, w in
                   ((hq, "query"), (hkv, "key"), (hkv, "value")))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
        ctx = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(hq.shape)
        return _ln(_lin(ctx, sd, f"{name}.output.dense") + hq, sd, f"{name}.output.LayerNorm", eps)

    for i in range(med["num_hidden_layers"]):
        layer = f"{p}.encoder.layer.{i}"
        x = attend(x, x, f"{layer}.attention", self_mask)
        x = attend(x, image_embeds, f"{layer}.crossattention", image_mask)
        h = F.gelu(_lin(x, sd, f"{layer}.intermediate.dense"))
        x = _ln(_lin(h, sd, f"{layer}.output.dense") + x, sd, f"{layer}.output.LayerNorm", eps)
    return x


def _official_transform(size):
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([
        Resize(size, interpolation=InterpolationMode.BICUBIC),
        CenterCrop(size),
        lambda im: im.convert("RGB"),
        ToTensor(),
        Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])


def _reference_scores(ckpt: Path, samples, *, first_token=None, use_mask=True, max_length=35):
    """Official ImageReward.score(prompt, image), one sample at a time. The keyword arguments break one
    official detail on purpose (for the sensitivity test)."""
    from transformers import BertTokenizer

    sd = torch.load(ckpt / "ImageReward.pt", map_location="cpu", weights_only=True)
    med = json.loads((ckpt / "med_config.json").read_text())
    tokenizer = BertTokenizer.from_pretrained(str(ckpt))
    size = math.isqrt(sd["blip.visual_encoder.pos_embed"].shape[1] - 1) * sd[
        "blip.visual_encoder.patch_embed.proj.weight"].shape[-1]
    transform = _official_transform(size)
    out = []
    with torch.no_grad():
        for s in samples:
            text = tokenizer(s.prompt, padding="max_length", truncation=True, max_length=max_length,
                             return_tensors="pt")
            ids, mask = text["input_ids"], text["attention_mask"]
            if first_token is not None:
                ids = ids.clone()
                ids[:, 0] = tokenizer.convert_tokens_to_ids(first_token)
            if not use_mask:
                mask = torch.ones_like(mask)
            image_embeds = _ref_vit(sd, transform(s.image).unsqueeze(0))
            feats = _ref_bert(sd, med, ids, mask, image_embeds)[:, 0, :].float()
            for index in (0, 2, 4, 6, 7):
                feats = _lin(feats, sd, f"mlp.layers.{index}")
            out.append(((feats - 0.16717362830052426) / 1.0333394966054072).item())
    return out


# ---------------------------------------------------------------------------------------- shared tester


@pytest.fixture(scope="module")
def spec(ir_dir) -> RewardSpec:
    return RewardSpec(
        name="imagereward",
        make=lambda **kw: ImageReward(str(ir_dir), batch_size=8, **kw),
        samples=_samples,
        reference=lambda reward, samples: _reference_scores(ir_dir, samples),
        atol=2e-5,
        rtol=1e-4,
        bf16_atol=0.05,  # measured: <= 0.013 on scores spread over ~0.6
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check: str, spec: RewardSpec) -> None:
    CHECKS[check](spec)


def test_parity_is_not_trivial(ir_dir) -> None:
    """Scores spread widely and each official detail moves them, so parity at 2e-5 pins the architecture."""
    samples = _samples()
    got = ImageReward(str(ir_dir)).score(samples).scores
    assert np.ptp(got) > 0.2, got
    assert abs(got[0] - got[5]) > 1e-2  # same prompt, different image: the image reaches the score
    # [ENC] instead of [CLS] as first token (BLIP's ITM path, not ImageReward's scorer)
    enc = _reference_scores(ir_dir, samples[:1], first_token="[ENC]")[0]
    assert abs(enc - got[0]) > 1e-3
    # ignoring the padding mask
    unmasked = _reference_scores(ir_dir, samples[:1], use_mask=False)[0]
    assert abs(unmasked - got[0]) > 1e-3
    # not truncating at 35 tokens
    untruncated = _reference_scores(ir_dir, samples[1:2], max_length=64)[0]
    assert abs(untruncated - got[1]) > 1e-3


# -------------------------------------------------------------------------------------- key conversion


def test_map_official_key_by_hand() -> None:
    cases = {
        "blip.visual_encoder.cls_token": ("vision", "embeddings.class_embedding"),
        "blip.visual_encoder.pos_embed": ("vision", "embeddings.position_embedding"),
        "blip.visual_encoder.patch_embed.proj.weight": ("vision", "embeddings.patch_embedding.weight"),
        "blip.visual_encoder.blocks.23.attn.qkv.bias": ("vision", "encoder.layers.23.self_attn.qkv.bias"),
        "blip.visual_encoder.blocks.3.attn.proj.weight":
            ("vision", "encoder.layers.3.self_attn.projection.weight"),
        "blip.visual_encoder.blocks.0.norm2.bias": ("vision", "encoder.layers.0.layer_norm2.bias"),
        "blip.visual_encoder.blocks.7.mlp.fc2.weight": ("vision", "encoder.layers.7.mlp.fc2.weight"),
        "blip.visual_encoder.norm.weight": ("vision", "post_layernorm.weight"),
        "blip.text_encoder.embeddings.LayerNorm.bias": ("text", "embeddings.LayerNorm.bias"),
        "blip.text_encoder.encoder.layer.11.crossattention.self.key.weight":
            ("text", "encoder.layer.11.crossattention.self.key.weight"),
        "blip.text_encoder.encoder.layer.2.output.LayerNorm.weight":
            ("text", "encoder.layer.2.output.LayerNorm.weight"),
        "mlp.layers.0.weight": ("head", "linears.0.weight"),
        "mlp.layers.2.bias": ("head", "linears.1.bias"),
        "mlp.layers.4.weight": ("head", "linears.2.weight"),
        "mlp.layers.6.bias": ("head", "linears.3.bias"),
        "mlp.layers.7.weight": ("head", "linears.4.weight"),
    }
    for key, want in cases.items():
        assert map_official_key(key) == want, key
    for unused in [*EXPECTED_IGNORED, "blip.itm_head.weight", "something.else"]:
        assert map_official_key(unused) is None, unused
    for unknown in ["blip.visual_encoder.blocks.0.attn.rel_pos", "blip.text_encoder.pooler.dense.weight",
                    "mlp.layers.1.weight", "blip.text_encoder.embeddings.token_type_embeddings.weight"]:
        with pytest.raises(ConfigError, match="unknown key"):
            map_official_key(unknown)


def test_every_official_key_consumed_and_every_module_weight_loaded(ir_dir) -> None:
    sd = torch.load(ir_dir / "ImageReward.pt", map_location="cpu", weights_only=True)
    med = json.loads((ir_dir / "med_config.json").read_text())
    conv = convert_imagereward_state_dict(sd)
    assert set(conv.ignored) == EXPECTED_IGNORED
    assert len(conv.vision) + len(conv.text) + len(conv.head) + len(conv.ignored) == len(sd)
    model, _ = ImageRewardModel.from_official(sd, med)
    for part, module in (("vision", model.vision), ("text", model.text), ("head", model.head)):
        converted = getattr(conv, part)
        state = module.state_dict()
        assert set(state) == set(converted), part  # nothing left at its random init, nothing unused
        missing, unexpected = module.load_state_dict(converted, strict=False)
        assert not missing and not unexpected
        for key, tensor in state.items():
            assert torch.equal(tensor, converted[key]), f"{part}.{key}"
    assert model.vision.config.num_attention_heads == 2 and model.vision.config.image_size == 32
    assert model.text.config.encoder_hidden_size == 128  # the ViT width, not med_config's encoder_width
    assert [lin.out_features for lin in model.head.linears] == [1024, 128, 64, 16, 1]


def test_unknown_and_extra_keys(ir_dir) -> None:
    sd = torch.load(ir_dir / "ImageReward.pt", map_location="cpu", weights_only=True)
    extra = {**sd, "blip.itm_head.weight": torch.zeros(2, 32)}
    assert "blip.itm_head.weight" in convert_imagereward_state_dict(extra).ignored
    with pytest.raises(ConfigError, match="unknown key"):
        convert_imagereward_state_dict({**sd, "blip.text_encoder.pooler.dense.weight": torch.zeros(1)})
    no_head = {k: v for k, v in sd.items() if not k.startswith("mlp.")}
    with pytest.raises(ConfigError, match="no mlp"):
        convert_imagereward_state_dict(no_head)
    missing_one = {k: v for k, v in sd.items() if k != "blip.visual_encoder.blocks.1.mlp.fc1.bias"}
    med = json.loads((ir_dir / "med_config.json").read_text())
    with pytest.raises(ConfigError, match="Missing key"):
        ImageRewardModel.from_official(missing_one, med)


# ------------------------------------------------------------------------------------------ pure rules


def test_normalize_score_by_hand() -> None:
    assert normalize_score(0.16717362830052426) == 0.0
    assert normalize_score(0.16717362830052426 + 1.0333394966054072) == pytest.approx(1.0, abs=1e-15)
    assert normalize_score(0.0) == pytest.approx(-0.16178, abs=1e-5)  # -0.16717 / 1.03334
    assert normalize_score(1.2) == pytest.approx(0.99950, abs=1e-5)  # 1.03283 / 1.03334
    assert (SCORE_MEAN, SCORE_STD) == (0.16717362830052426, 1.0333394966054072)


def test_tokenize_prompts_pads_and_truncates_to_35(ir_dir) -> None:
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(ir_dir))
    ids, mask, n = tokenize_prompts(tok, ["a cat", "cat " * 40, ""])
    assert ids.shape == mask.shape == (3, 35)
    assert n == [4, 42, 2]
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == ["[CLS]", "a", "cat", "[SEP]"] + ["[PAD]"] * 31
    assert mask[0].tolist() == [1] * 4 + [0] * 31
    assert tok.convert_ids_to_tokens(ids[1].tolist()) == ["[CLS]"] + ["cat"] * 33 + ["[SEP]"]
    assert mask[1].tolist() == [1] * 35
    assert tok.convert_ids_to_tokens(ids[2].tolist()[:3]) == ["[CLS]", "[SEP]", "[PAD]"]


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("wh", [(64, 64), (300, 200), (31, 77), (10, 500), (224, 224), (32, 32)])
def test_preprocess_matches_official_torchvision_transform(size, wh) -> None:
    rng = np.random.default_rng(wh[0] * 1000 + wh[1])
    image = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    want = _official_transform(size)(image)
    other = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    got = preprocess_images([image, other], size)
    assert got.shape == (2, 3, size, size)
    assert torch.equal(got[0], want)
    assert torch.equal(got[1], _official_transform(size)(other))


# --------------------------------------------------------------------------------- reward behaviour


def test_details_report_truncation(ir_dir) -> None:
    out = ImageReward(str(ir_dir)).score(_samples()[:3])
    assert [d["truncated"] for d in out.details] == [False, True, False]
    assert out.details[1]["n_tokens"] > 35 and out.details[0]["n_tokens"] == 4
    for score, d in zip(out.scores, out.details):
        assert score == pytest.approx(normalize_score(d["raw_score"]), abs=1e-12)


def test_loads_from_weights_file_safetensors_and_registry(ir_dir, tmp_path) -> None:
    samples = _samples()[:3]
    want = ImageReward(str(ir_dir)).score(samples).scores
    by_file = ImageReward(str(ir_dir / "ImageReward.pt")).score(samples).scores
    assert by_file == want
    from safetensors.torch import save_file

    folder = tmp_path / "st"
    folder.mkdir()
    sd = torch.load(ir_dir / "ImageReward.pt", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "ImageReward.safetensors")
    for name in ("med_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((ir_dir / name).read_bytes())
    assert ImageReward(str(folder)).score(samples).scores == want
    reward = get_reward("imagereward", model=str(ir_dir))
    assert reward.score(samples).scores == want
    assert reward.describe()["max_text_tokens"] == 35


def test_clear_errors_for_missing_files(ir_dir, tmp_path) -> None:
    sample = _samples()[:1]
    with pytest.raises(ConfigError, match="neither"):
        ImageReward(str(tmp_path)).score(sample)
    (tmp_path / "ImageReward.pt").write_bytes((ir_dir / "ImageReward.pt").read_bytes())
    with pytest.raises(ConfigError, match="med_config.json"):
        ImageReward(str(tmp_path)).score(sample)
    with pytest.raises(ConfigError, match="cannot fetch"):  # tests run with HF_HUB_OFFLINE=1
        ImageReward("evalsuite-test/no-such-imagereward").score(sample)


def test_tiny_writer_is_deterministic(tmp_path) -> None:
    a = write_tiny_imagereward(tmp_path / "a", seed=0)
    b = write_tiny_imagereward(tmp_path / "b", seed=0)
    c = write_tiny_imagereward(tmp_path / "c", seed=1)
    names = sorted(p.name for p in a.iterdir())
    assert names == ["ImageReward.pt", "med_config.json", "tokenizer.json", "tokenizer_config.json"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "ImageReward.pt").read_bytes() != (c / "ImageReward.pt").read_bytes()



def test_tokenizer_without_blip_tokens_gets_them_like_init_tokenizer(ir_dir, tmp_path) -> None:
    """A plain bert-base-uncased-style tokenizer (as the official code loads) gains [DEC] (bos) and [ENC]
    after its vocabulary, and the ``tokenizer=`` option overrides the checkpoint folder's files."""
    from evalsuite.rewards.imagereward import _load_tokenizer
    from evalsuite.tiny.tokenizers import build_bert_tokenizer

    plain = build_bert_tokenizer()
    plain.save_pretrained(tmp_path)
    tok = _load_tokenizer(tmp_path)
    assert tok.bos_token == "[DEC]"
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(plain), len(plain) + 1]
    assert tok.tokenize("a [ENC] cat") == ["a", "[ENC]", "cat"]
    samples = _samples()[:2]
    reward = ImageReward(str(ir_dir), tokenizer=str(tmp_path))
    assert reward.score(samples).scores == ImageReward(str(ir_dir)).score(samples).scores
    assert reward.describe()["tokenizer"] == str(tmp_path)
