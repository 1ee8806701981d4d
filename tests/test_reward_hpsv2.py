"""HPSv2.1 on a tiny official-format checkpoint: shared tester, the official scorer, the rule and the
preprocessing quirks worked out by hand, the strict state-dict overlay.

Parity references, both on the same tiny weights (open_clip ViT-H-14 stand-in + ``HPS_v2.1_compressed.pt``):

* always: ``official_reference`` below, written from ``hpsv2/img_score.py`` ``score`` and HPSv2's
  ``image_transform(..., resize_longest_max=True)``: open_clip's own model from the ``local-dir`` folder,
  ``torch.load(cp)['state_dict']`` loaded over it by hand, torchvision transform objects, one image and one
  prompt per forward, ``diag(image_features @ text_features.T)``.
* when the official package imports (``pip install --no-deps --target DIR hpsv2 clint``, see
  docs/rewards.md): ``hpsv2.img_score.score`` itself, its vendored open_clip building the model.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample, get_reward
from evalsuite.errors import ConfigError
from evalsuite.rewards.clip_models import WEIGHTS_FILE, load_open_clip
from evalsuite.rewards.hpsv2 import CHECKPOINTS, HPSv2, hps_preprocess, hpsv2_score
from evalsuite.tiny import write_tiny
from evalsuite.tiny.open_clip import write_tiny_open_clip
from tests.reward_tester import CHECKS, RewardSpec, close

CKPT = CHECKPOINTS["v2.1"]
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, which laion's ViT-H-14 (and HPSv2) use
STD = (0.26862954, 0.26130258, 0.27577711)
LONG = "a red cube " * 30  # 92 tokens with <|startoftext|> and <|endoftext|>
CUT = "a red cube " * 25  # 77: what truncation keeps of LONG


def _samples() -> list[Sample]:
    """Sizes below, above and at the tiny model's 28 px: wide, tall, square (square 28 px: no resize)."""
    rng = np.random.default_rng(5)
    sizes = [(64, 64), (48, 30), (30, 71), (28, 28), (57, 33), (13, 9)]
    prompts = ["a red cube", "a photo of two red apples on a wooden table", "", "a red cube", LONG, "x " * 40]
    return [
        Sample(f"h{i}", p, Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), p) in enumerate(zip(sizes, prompts))
    ]


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), names=["hpsv2"])["hpsv2"]


def _official_transform(image: Image.Image, size: int) -> torch.Tensor:
    """HPSv2's ``ToTensor -> ResizeMaxSize(size, fill=0) -> Normalize`` with torchvision's objects."""
    from torchvision import transforms as T

    x = T.ToTensor()(image)
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = T.Resize((nh, nw), interpolation=T.InterpolationMode.BICUBIC)(x)
        ph, pw = size - nh, size - nw
        x = T.Pad([pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)(x)
    return T.Normalize(MEAN, STD)(x)


def _official_reference(folder):
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.load_state_dict(torch.load(folder / CKPT, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    size = model.visual.image_size[0]

    @torch.no_grad()
    def reference(reward, samples: list[Sample]) -> list[float]:
        out = []
        for s in samples:
            image = _official_transform(s.image, size).unsqueeze(0)
            image_features = model.encode_image(image, normalize=True)
            text_features = model.encode_text(tokenizer([s.prompt]), normalize=True)
            out.append(torch.diagonal(image_features @ text_features.T).item())
        return out

    return reference


@pytest.fixture(scope="module")
def spec(tiny_hps) -> RewardSpec:
    return RewardSpec(
        name="hpsv2",
        make=lambda **kw: get_reward("hpsv2", model=str(tiny_hps), batch_size=4, **kw),
        samples=_samples,
        reference=_official_reference(tiny_hps),
        atol=1e-5,
        rtol=1e-4,
        bf16_atol=0.01,  # measured ≈0.004 on the tiny model (open_clip bf16 mixed precision)
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check: str, spec: RewardSpec) -> None:
    CHECKS[check](spec)


# -- the official package, when it imports ----------------------------------------------------------------
def _official_package():
    try:
        from hpsv2 import img_score
        from hpsv2.src import open_clip as hps_open_clip
    except Exception as e:  # not installed, or its wheel without the BPE vocabulary (see docs/rewards.md)
        pytest.skip(f"official hpsv2 not importable: {type(e).__name__}: {e}")
    return img_score, hps_open_clip


def test_official_hpsv2_score_on_tiny_weights(tiny_hps, tmp_path, monkeypatch) -> None:
    """``hpsv2.img_score.score`` itself: its model built as ``initialize_model`` builds it, tiny arch."""
    img_score, hps_open_clip = _official_package()
    hps_open_clip.add_model_config(tiny_hps / "tiny-ViT-H-14.json")
    model, _, preprocess_val = hps_open_clip.create_model_and_transforms(
        "tiny-ViT-H-14", None, precision="amp", device="cpu", jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False,
    )
    monkeypatch.setattr(img_score, "model_dict", {"model": model, "preprocess_val": preprocess_val})
    monkeypatch.setattr(img_score, "root_path", str(tmp_path))
    ours = HPSv2(str(tiny_hps), batch_size=3).score(_samples())
    for s, got in zip(_samples(), ours.scores):
        want = float(img_score.score(s.image, s.prompt, cp=str(tiny_hps / CKPT), hps_version="v2.1")[0])
        assert close(got, want, 1e-5, 1e-4), f"{s.id}: ours {got} != official {want}"


def test_vendored_open_clip_has_our_state_dict_keys(tiny_hps) -> None:
    """The official checkpoint is a state dict of HPSv2's vendored open_clip: it must fit open_clip 3."""
    _, hps_open_clip = _official_package()
    import open_clip

    hps_open_clip.add_model_config(tiny_hps / "tiny-ViT-H-14.json")
    theirs = hps_open_clip.create_model("tiny-ViT-H-14").state_dict()
    ours = open_clip.create_model(f"local-dir:{tiny_hps}").state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}


# -- the pure rule and the preprocessing, by hand ------------------------------------------------------
def test_rule_is_the_diagonal_cosine() -> None:
    t = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[4.0, 3.0], [-7.0, 0.0], [0.0, 0.5]])
    assert hpsv2_score(t, v).tolist() == pytest.approx([0.96, -1.0, 1.0], abs=1e-6)  # no logit scale


def test_longest_side_is_resized_and_the_rest_zero_padded() -> None:
    """8x5 (w x h) to 4 px: scale 0.5, h = round(2.5) = 2 (Python rounds half to even), so 2 pad rows
    split 1 top / 1 bottom; the pad is 0 before Normalize, i.e. -mean/std after."""
    image = Image.new("RGB", (8, 5), (255, 255, 255))
    x = hps_preprocess(image, 4, MEAN, STD)
    assert x.shape == (3, 4, 4)
    pad = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None]
    for row in (0, 3):
        assert torch.allclose(x[:, row, :], pad.expand(3, 4), atol=1e-6)
    white = ((1 - torch.tensor(MEAN)) / torch.tensor(STD))[:, None]
    for row in (1, 2):  # white stays white: (1 - mean) / std
        assert torch.allclose(x[:, row, :], white.expand(3, 4))


def test_odd_padding_puts_the_extra_column_right() -> None:
    """10x16 (w x h) to 8 px: scale 0.5, w = 5, 3 pad columns: 1 left (3 // 2), 2 right."""
    x = hps_preprocess(Image.new("RGB", (10, 16), (255, 255, 255)), 8, MEAN, STD)
    pad = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None]
    is_pad = [bool(torch.allclose(x[:, :, c], pad.expand(3, 8), atol=1e-6)) for c in range(8)]
    assert is_pad == [True, False, False, False, False, False, True, True]


def test_longest_side_already_at_size_is_padded(tiny_hps) -> None:
    """Official: no resize and no pad at scale 1 (a 28x20 image would crash the ViT); ours pads, which
    scores exactly like the image padded with black by hand."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
    by_hand = Image.new("RGB", (28, 28), (0, 0, 0))
    by_hand.paste(image, (0, 4))
    out = HPSv2(str(tiny_hps)).score([Sample("a", "a cat", image), Sample("b", "a cat", by_hand)])
    assert out.scores[0] == pytest.approx(out.scores[1], abs=1e-6)


# -- the reward ----------------------------------------------------------------------------------------
def test_truncation_is_reported_and_matches_cut_prompt(tiny_hps) -> None:
    img = _samples()[0].image
    out = HPSv2(str(tiny_hps)).score(
        [Sample("long", LONG, img), Sample("cut", CUT, img), Sample("short", "a red cube", img)]
    )
    assert [d["token_count"] for d in out.details] == [92, 77, 5]
    assert [d["truncated"] for d in out.details] == [True, False, False]
    assert out.scores[0] == pytest.approx(out.scores[1], abs=1e-6)


def test_checkpoint_file_as_model_and_describe(tiny_hps) -> None:
    by_folder, by_file = HPSv2(str(tiny_hps)), HPSv2(str(tiny_hps / CKPT))
    samples = _samples()[:2]
    assert by_folder.score(samples).scores == by_file.score(samples).scores
    d = HPSv2().describe()
    assert (d["model"], d["revision"], d["backend"]) == ("xswu/HPSv2", None, "open_clip")
    assert (d["checkpoint"], d["architecture"], d["version"]) == (CKPT, "ViT-H-14", "v2.1")
    assert "cosine" in d["scale"]
    assert HPSv2(version="v2.0").describe()["checkpoint"] == "HPS_v2_compressed.pt"
    with pytest.raises(ConfigError, match="unknown version"):
        HPSv2(version="v3")


def test_overlay_replaces_the_base_weights(tiny_hps) -> None:
    from safetensors.torch import load_file

    model, _, _ = load_open_clip(str(tiny_hps), overlay=tiny_hps / CKPT)
    tuned = torch.load(tiny_hps / CKPT, weights_only=True)["state_dict"]
    base = load_file(str(tiny_hps / WEIGHTS_FILE))
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in tuned.items())
    assert not torch.equal(got["visual.proj"], base["visual.proj"])


def test_overlay_errors_name_the_file(tiny_hps, tmp_path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(tiny_hps / CKPT, weights_only=True)["state_dict"], bare)  # no 'state_dict' key
    with pytest.raises(ConfigError, match="bare.pt.*'state_dict'"):
        load_open_clip(str(tiny_hps), overlay=bare)
    other = write_tiny_open_clip(tmp_path / "b32", "ViT-B-32", seed=0)
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": load_open_clip(str(other))[0].state_dict()}, wrong)
    with pytest.raises(ConfigError, match="wrong.pt does not fit"):
        load_open_clip(str(tiny_hps), overlay=wrong)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="broken.pt: cannot load"):
        load_open_clip(str(tiny_hps), overlay=tmp_path / "broken.pt")


def test_missing_checkpoint_in_folder_is_named(tmp_path) -> None:
    folder = write_tiny_open_clip(tmp_path / "h14", "ViT-H-14", seed=0)
    out = HPSv2(str(folder))
    with pytest.raises(ConfigError, match="has no HPS_v2.1_compressed.pt"):
        out.load()


def test_tiny_checkpoint_is_deterministic(tmp_path) -> None:
    a, b = (write_tiny(tmp_path / n, names=["hpsv2"], seed=0)["hpsv2"] for n in "ab")
    c = write_tiny(tmp_path / "c", names=["hpsv2"], seed=1)["hpsv2"]

    def digest(folder):
        return hashlib.sha256((folder / CKPT).read_bytes()).hexdigest()

    assert digest(a) == digest(b) != digest(c)


def test_architecture_name_needs_no_base_weights(tiny_hps, tmp_path) -> None:
    """The hub path: a built-in architecture name, no pretrained tag, the checkpoint over random init —
    scores equal the folder's (base weights loaded, then overwritten): the base never matters."""
    import shutil

    import open_clip

    open_clip.add_model_config(tiny_hps / "tiny-ViT-H-14.json")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_hps / CKPT, bare / CKPT)
    by_name = HPSv2(str(bare), architecture="tiny-ViT-H-14")
    assert by_name.describe()["architecture"] == "tiny-ViT-H-14"
    samples = _samples()[:3]
    assert by_name.score(samples).scores == HPSv2(str(tiny_hps)).score(samples).scores
    with pytest.raises(ConfigError, match="needs a pretrained tag"):
        load_open_clip("tiny-ViT-H-14")
