"""LAION aesthetic predictor v2 on a tiny official-format checkpoint: shared tester, the rule by hand.

Parity reference (``official_reference``), written from the official ``simple_inference.py``: the image
through open_clip's own model and eval transform (``clip.load``'s, see test_reward_clipscore.py), the
embedding normalised with the official numpy ``normalized`` (zero norm -> 1), then the MLP applied by hand
as torch matmuls on the tensors of ``torch.load(sac+logos+ava1-l14-linearMSE.pth)``: no activations,
dropout inert at inference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample, get_reward
from evalsuite.errors import ConfigError
from evalsuite.rewards.aesthetic import (
    BACKBONE_DIR,
    CHECKPOINT,
    MLP_WIDTHS,
    AestheticMLP,
    LAIONAesthetic,
    aesthetic_score,
)
from evalsuite.tiny import write_tiny
from evalsuite.tiny.open_clip import write_tiny_open_clip
from tests.reward_tester import CHECKS, RewardSpec


def _samples() -> list[Sample]:
    rng = np.random.default_rng(7)
    sizes = [(64, 64), (48, 30), (30, 71), (32, 32), (57, 33), (13, 9)]
    out = []
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] //= i + 1  # darker top halves: images differ by more than their noise
        out.append(Sample(f"a{i}", ["a cat", "", "x " * 90][i % 3], Image.fromarray(pixels)))
    return out


@pytest.fixture(scope="module")
def tiny_aesthetic(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), names=["aesthetic"])["aesthetic"]


def _normalized(a: np.ndarray, axis: int = -1, order: int = 2) -> np.ndarray:
    """The official ``normalized`` from simple_inference.py."""
    l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, axis)


def _official_reference(folder):
    import open_clip

    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder / BACKBONE_DIR}")
    clip.eval()
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)

    @torch.no_grad()
    def reference(reward, samples: list[Sample]) -> list[float]:
        out = []
        for s in samples:
            features = clip.encode_image(preprocess(s.image).unsqueeze(0))
            x = torch.from_numpy(_normalized(features.numpy())).float()
            for i in (0, 2, 4, 6, 7):
                x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
            out.append(x.item())
        return out

    return reference


@pytest.fixture(scope="module")
def spec(tiny_aesthetic) -> RewardSpec:
    return RewardSpec(
        name="aesthetic",
        make=lambda **kw: get_reward("aesthetic", model=str(tiny_aesthetic), batch_size=4, **kw),
        samples=_samples,
        reference=_official_reference(tiny_aesthetic),
        atol=1e-5,
        rtol=1e-4,
        bf16_atol=0.02,  # measured ≈0.006 on the tiny model (open_clip bf16 backbone, float32 MLP)
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check: str, spec: RewardSpec) -> None:
    CHECKS[check](spec)


# -- the pure rule, by hand --------------------------------------------------------------------------------
def _hand_mlp() -> AestheticMLP:
    """Hidden layers pass the first two units through; the head reads 10·u0 - 2·u1 + 1."""
    mlp = AestheticMLP(2).eval()
    with torch.no_grad():
        for i in (0, 2, 4, 6):
            layer = mlp.layers[i]
            layer.weight.zero_()
            layer.bias.zero_()
            layer.weight[0, 0] = layer.weight[1, 1] = 1.0
        mlp.layers[7].weight.zero_()
        mlp.layers[7].weight[0, :2] = torch.tensor([10.0, -2.0])
        mlp.layers[7].bias.fill_(1.0)
    return mlp


def test_rule_normalizes_then_applies_the_linear_mlp() -> None:
    embeds = torch.tensor([[3.0, 4.0], [0.0, -2.0], [-5.0, 0.0], [0.0, 0.0]])
    # units (0.6, 0.8), (0, -1), (-1, 0), zero stays zero: 10*0.6 - 1.6 + 1, 0 + 2 + 1, -10 + 1, 1
    assert aesthetic_score(embeds, _hand_mlp()).tolist() == pytest.approx([5.4, 3.0, -9.0, 1.0], abs=1e-6)


def test_mlp_has_the_official_keys_and_no_activations() -> None:
    mlp = AestheticMLP()
    assert list(mlp.state_dict()) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]
    widths = [mlp.layers[i].in_features for i in (0, 2, 4, 6, 7)] + [1]
    assert tuple(widths) == MLP_WIDTHS
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == ["Linear", "Dropout", "Linear", "Dropout", "Linear", "Dropout", "Linear", "Linear"]


# -- the reward ----------------------------------------------------------------------------------------
def test_prompt_is_ignored(tiny_aesthetic) -> None:
    img = _samples()[0].image
    pair = [Sample("a", "a cat", img), Sample("b", "a dog " * 50, img)]
    out = LAIONAesthetic(str(tiny_aesthetic)).score(pair)
    assert out.scores[0] == out.scores[1]


def test_checkpoint_file_and_backbone_options(tiny_aesthetic) -> None:
    by_folder = LAIONAesthetic(str(tiny_aesthetic))
    by_file = LAIONAesthetic(str(tiny_aesthetic / CHECKPOINT), clip=str(tiny_aesthetic / BACKBONE_DIR))
    samples = _samples()[:2]
    assert by_folder.score(samples).scores == by_file.score(samples).scores
    d = LAIONAesthetic().describe()
    assert (d["model"], d["revision"], d["backend"]) == (LAIONAesthetic.default_model, None, "open_clip")
    assert d["model"] == "camenduru/improved-aesthetic-predictor"
    assert (d["checkpoint"], d["clip"], d["clip_pretrained"]) == (CHECKPOINT, "ViT-L-14", "openai")
    assert "1-10" in d["scale"]
    assert by_folder.describe()["clip"] == str(tiny_aesthetic / BACKBONE_DIR)
    with pytest.raises(ConfigError, match="clip_pretrained"):
        LAIONAesthetic(str(tiny_aesthetic), clip_pretrained="openai")


def test_backbone_of_the_wrong_width_is_refused(tiny_aesthetic, tmp_path) -> None:
    narrow = write_tiny_open_clip(tmp_path / "l14", "ViT-L-14", seed=0)  # embeds to 16, not 768
    with pytest.raises(ConfigError, match="embeds to 16 dims.*takes 768"):
        LAIONAesthetic(str(tiny_aesthetic), clip=str(narrow)).load()


def test_bad_checkpoints_are_named(tiny_aesthetic, tmp_path) -> None:
    (tmp_path / "broken.pth").write_bytes(b"nope")
    with pytest.raises(ConfigError, match="cannot load .*broken.pth"):
        LAIONAesthetic(str(tmp_path / "broken.pth"), clip=str(tiny_aesthetic / BACKBONE_DIR)).load()
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="other.pth is not the official MLP"):
        LAIONAesthetic(str(tmp_path / "other.pth"), clip=str(tiny_aesthetic / BACKBONE_DIR)).load()
    with pytest.raises(ConfigError, match="has no sac"):
        LAIONAesthetic(str(tmp_path), clip=str(tiny_aesthetic / BACKBONE_DIR)).load()
