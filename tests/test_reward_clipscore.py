"""CLIPScore on a tiny open_clip model: shared tester, raw-cosine rule by hand, truncation, the loader.

Parity reference: the model built by open_clip's own ``create_model_and_transforms("local-dir:...")`` and
``get_tokenizer``, one image and one prompt per forward, cosine written out by hand (T2I-CompBench's
``CLIP_similarity.py`` computation). dtype: bf16 (open_clip's OpenAI-style mixed precision) within 0.01 of
fp32 on the cosine (measured ≈0.004 on the tiny model).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample, get_reward
from evalsuite.errors import ConfigError
from evalsuite.rewards import clip_models
from evalsuite.rewards.clip_models import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    encode_texts,
    load_open_clip,
    tokenize,
    zero_shot_classifier,
)
from evalsuite.rewards.clipscore import VARIANTS, CLIPScore, clipscore
from evalsuite.tiny.open_clip import write_tiny_open_clip
from tests.reward_tester import CHECKS, RewardSpec

LONG = "a red cube " * 30  # 90 BPE tokens + <|startoftext|> + <|endoftext|> = 92 > 77
CUT = "a red cube " * 25  # 75 + 2 = 77: what truncation keeps of LONG


def _samples() -> list[Sample]:
    rng = np.random.default_rng(2)
    sizes = [(64, 64), (48, 32), (40, 64), (32, 32), (57, 33), (64, 40)]
    prompts = ["a red cube", "a photo of two red apples on a wooden table", "", "a red cube", LONG, "x " * 40]
    return [
        Sample(f"c{i}", p, Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), p) in enumerate(zip(sizes, prompts))
    ]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_open_clip(tmp_path_factory.mktemp("open_clip") / "b32", "ViT-B-32", seed=0)


def _reference_for(folder):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")

    @torch.no_grad()
    def reference(reward, samples: list[Sample]) -> list[float]:
        out = []
        for s in samples:
            image = model.encode_image(preprocess(s.image).unsqueeze(0))
            text = model.encode_text(tokenizer(s.prompt))
            image = image / image.norm(dim=-1, keepdim=True)
            text = text / text.norm(dim=-1, keepdim=True)
            out.append((image @ text.T).squeeze().item())
        return out

    return reference


@pytest.fixture(scope="module")
def spec(tiny_clip) -> RewardSpec:
    return RewardSpec(
        name="clipscore",
        make=lambda **kw: get_reward("clipscore", model=str(tiny_clip), batch_size=4, **kw),
        samples=_samples,
        reference=_reference_for(tiny_clip),
        atol=1e-5,
        rtol=1e-4,
        bf16_atol=0.01,
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check: str, spec: RewardSpec) -> None:
    CHECKS[check](spec)


# -- the pure rule, by hand ---------------------------------------------------------------------------
def test_rule_is_raw_cosine() -> None:
    t = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[4.0, 3.0], [-7.0, 0.0], [0.0, 0.5]])
    # 24/25; -1 (no clamp at 0, unlike Hessel's CLIP-S); 1 (no x100, no x2.5)
    assert clipscore(t, v).tolist() == pytest.approx([0.96, -1.0, 1.0], abs=1e-6)


# -- the reward ----------------------------------------------------------------------------------------
def test_truncation_is_reported_and_matches_cut_prompt(tiny_clip) -> None:
    img = _samples()[0].image
    out = CLIPScore(str(tiny_clip)).score(
        [Sample("long", LONG, img), Sample("cut", CUT, img), Sample("short", "a red cube", img)]
    )
    assert [d["token_count"] for d in out.details] == [92, 77, 5]
    assert [d["truncated"] for d in out.details] == [True, False, False]
    assert out.scores[0] == pytest.approx(out.scores[1], abs=1e-6)


def test_variants_and_options() -> None:
    default = CLIPScore()
    assert (default.model_id, default.pretrained) == ("ViT-B-32", "openai")
    large = CLIPScore(variant="ViT-L-14")
    assert (large.model_id, large.pretrained) == ("ViT-L-14", "openai")
    assert large.settings()["variant"] == "ViT-L-14"
    assert set(VARIANTS) == {"ViT-B-32", "ViT-L-14"}
    with pytest.raises(ConfigError, match="unknown variant"):
        CLIPScore(variant="ViT-H-14")
    with pytest.raises(ConfigError, match="not both"):
        CLIPScore("ViT-B-32", variant="ViT-L-14")
    with pytest.raises(ConfigError, match="revision"):
        CLIPScore(revision="main")
    assert CLIPScore().describe()["value"] == "raw cosine"


def test_shared_prompt_is_encoded_once(tiny_clip) -> None:
    reward = CLIPScore(str(tiny_clip), batch_size=8).load()
    seen: list[int] = []
    inner = reward.model.encode_text

    def counting(ids, *a, **kw):
        seen.append(ids.shape[0])
        return inner(ids, *a, **kw)

    reward.model.encode_text = counting
    img = _samples()[0].image
    group = [Sample(f"g{i}", "a red cube", img.rotate(90 * i)) for i in range(4)]
    reward.score([*group, Sample("other", "a blue ball", img)])
    assert seen == [2]


# -- the shared loader ---------------------------------------------------------------------------------
def test_tiny_writer_is_deterministic(tmp_path) -> None:
    def digest(folder) -> list[str]:
        return [hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in (CONFIG_FILE, WEIGHTS_FILE)]

    a = write_tiny_open_clip(tmp_path / "a", "ViT-L-14", seed=0)
    b = write_tiny_open_clip(tmp_path / "b", "ViT-L-14", seed=0)
    c = write_tiny_open_clip(tmp_path / "c", "ViT-L-14", seed=1)
    assert digest(a) == digest(b)
    assert digest(a)[1] != digest(c)[1]
    assert (a / "tiny-ViT-L-14.json").is_file()
    with pytest.raises(ConfigError, match="unknown arch"):
        write_tiny_open_clip(tmp_path / "d", "ViT-bigG-14")


def test_checkpoint_file_with_sidecar_config_and_quick_gelu(tiny_clip, tmp_path) -> None:
    """name + file path loads the folder's network; a GELU config needs quick_gelu=True to match it."""
    import json
    import shutil

    pixels = torch.rand(1, 3, 32, 32)
    folder_model, _, _ = load_open_clip(str(tiny_clip))
    file_model, _, tok = load_open_clip("tiny-ViT-B-32", tiny_clip / WEIGHTS_FILE)
    # the same weights under an architecture config without QuickGELU (like open_clip 3.x's built-in ViT-B-32)
    cfg = json.loads((tiny_clip / "tiny-ViT-B-32.json").read_text())
    del cfg["quick_gelu"]
    (tmp_path / "tiny-gelu-B-32.json").write_text(json.dumps(cfg))
    shutil.copy(tiny_clip / WEIGHTS_FILE, tmp_path / WEIGHTS_FILE)
    gelu_model, _, _ = load_open_clip("tiny-gelu-B-32", tmp_path / WEIGHTS_FILE)
    forced_model, _, _ = load_open_clip("tiny-gelu-B-32", tmp_path / WEIGHTS_FILE, quick_gelu=True)
    with torch.no_grad():
        ref = folder_model.encode_image(pixels)
        assert torch.equal(file_model.encode_image(pixels), ref)
        assert torch.equal(forced_model.encode_image(pixels), ref)
        assert not torch.allclose(gelu_model.encode_image(pixels), ref, atol=1e-4)
    assert tokenize(tok, ["a red cube"]).token_counts == [5]


def test_openai_tag_turns_quick_gelu_on(monkeypatch) -> None:
    """open_clip 3.x builds ViT-L-14 with GELU; OpenAI's weights need QuickGELU (no download here)."""
    import open_clip

    calls = []

    def fake_create(name, **kw):
        calls.append((name, kw))
        return torch.nn.Linear(1, 1), None, None

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name: None)
    load_open_clip("ViT-L-14", "openai")
    load_open_clip("ViT-B/32", "openai", dtype=torch.bfloat16)
    load_open_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert calls[0][0] == "ViT-L-14" and calls[0][1]["force_quick_gelu"] is True
    assert calls[1][0] == "ViT-B-32" and calls[1][1]["force_quick_gelu"] is True
    assert calls[1][1]["precision"] == "bf16"
    assert "force_quick_gelu" not in calls[2][1]
    with pytest.raises(ConfigError, match="neither a file nor a known tag"):
        load_open_clip("ViT-B-32", "no-such-tag")
    with pytest.raises(ConfigError, match="needs a pretrained"):
        load_open_clip("ViT-B-32")


def test_zero_shot_classifier_averages_normalized_templates(tiny_clip) -> None:
    model, _, tok = load_open_clip(str(tiny_clip))
    templates = ["a photo of a {} object", "a {c} thing", "{}"]
    weights = zero_shot_classifier(model, tok, ["red", "blue"], templates)
    assert weights.shape == (16, 2)
    for k, name in enumerate(["red", "blue"]):
        prompts = [f"a photo of a {name} object", f"a {name} thing", name]
        with torch.no_grad():
            emb = model.encode_text(tok(prompts))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        assert torch.allclose(weights[:, k], mean / mean.norm(), atol=1e-6)
    assert torch.allclose(encode_texts(model, tok(["red"])).norm(dim=-1), torch.ones(1))
    with pytest.raises(ConfigError):
        zero_shot_classifier(model, tok, [], templates)


def test_local_dir_prefix_and_bad_folder(tiny_clip, tmp_path) -> None:
    assert clip_models.local_model_dir(f"local-dir:{tiny_clip}") == tiny_clip
    assert clip_models.local_model_dir("ViT-B-32") is None
    with pytest.raises(ConfigError, match=CONFIG_FILE):
        load_open_clip(str(tmp_path))
