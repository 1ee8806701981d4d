"""Tiny open_clip models in open_clip's ``local-dir:`` folder layout (CLIPScore, GenEval's colour classifier).

The file names come from the reward's loader (``evalsuite.rewards.clip_models``), looked up by string when a
model is written, so importing the tiny kit imports no reward.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evalsuite.errors import ConfigError

from ._common import resolve, seeded

__all__ = [
    "TINY_ARCHES",
    "tiny_model_cfg",
    "write_open_clip_vit_b_32",
    "write_open_clip_vit_l_14",
    "write_tiny_open_clip",
]

_LOADER = "evalsuite.rewards.clip_models"

# Tiny stand-ins: same block types and pooling as the real towers (QuickGELU like OpenAI's weights, GELU
# like laion's ViT-H-14, argmax/EOT text pooling, 77-token context, the real 49408-token BPE vocabulary),
# far smaller.
TINY_ARCHES: dict[str, dict[str, Any]] = {
    "ViT-B-32": {"image_size": 32, "patch_size": 16, "quick_gelu": True},
    "ViT-L-14": {"image_size": 32, "patch_size": 8, "quick_gelu": True},
    "ViT-H-14": {"image_size": 28, "patch_size": 7, "quick_gelu": False},  # HPSv2's laion2B architecture
}


def tiny_model_cfg(arch: str, embed_dim: int = 16) -> dict[str, Any]:
    """The open_clip ``CLIP(**cfg)`` config of the tiny ``arch`` (``embed_dim``: the joint space's width)."""
    vision = TINY_ARCHES[arch]
    return {
        "embed_dim": embed_dim,
        "quick_gelu": vision["quick_gelu"],
        "vision_cfg": {
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "layers": 1,
            "width": 32,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def write_tiny_open_clip(
    out_dir: str | os.PathLike[str], arch: str = "ViT-L-14", seed: int = 0, *, embed_dim: int = 16
) -> Path:
    """Write a seeded tiny open_clip model mimicking ``<arch>`` into ``out_dir`` and return it.

    The folder is open_clip's ``local-dir:`` layout (``open_clip_config.json`` with OpenAI preprocessing +
    ``open_clip_model.safetensors``) plus ``tiny-<arch>.json`` (the bare architecture config, registerable
    with ``open_clip.add_model_config``). The tokenizer is open_clip's real CLIP BPE, so token counts and
    truncation are the real ones. Same seed -> byte-identical files. Pass ``str(folder)`` as the model.
    """
    if arch not in TINY_ARCHES:
        raise ConfigError(f"write_tiny_open_clip: unknown arch {arch!r}; choose from {sorted(TINY_ARCHES)}")
    import open_clip
    from safetensors.torch import save_file

    cfg = tiny_model_cfg(arch, embed_dim)
    with seeded(seed, "open_clip", arch):
        model = open_clip.CLIP(**cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / resolve(f"{_LOADER}:WEIGHTS_FILE")))
    pre = open_clip.get_pretrained_cfg("ViT-B-32", "openai")  # OpenAI mean/std, bicubic, shortest-side resize
    preprocess_cfg = {k: pre[k] for k in ("mean", "std", "interpolation", "resize_mode")}
    full = {"model_cfg": cfg, "preprocess_cfg": preprocess_cfg}
    (out / resolve(f"{_LOADER}:CONFIG_FILE")).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    (out / f"tiny-{arch}.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def write_open_clip_vit_l_14(folder: Path, seed: int) -> None:
    """``write_tiny``'s ``open-clip-vit-l-14`` (GenEval colour classifier, CLIPScore ViT-L/14)."""
    write_tiny_open_clip(folder, "ViT-L-14", seed=seed)


def write_open_clip_vit_b_32(folder: Path, seed: int) -> None:
    """``write_tiny``'s ``open-clip-vit-b-32`` (CLIPScore ViT-B/32, T2I-CompBench non-spatial)."""
    write_tiny_open_clip(folder, "ViT-B-32", seed=seed)
