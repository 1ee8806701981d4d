"""ImageReward's official checkpoint (``ImageReward.pt`` + ``med_config.json``) mapped onto our modules.

The official package does not import under transformers 5, so the reward reads the official files itself:
this module finds them (hub repo, folder or weights file), reads the flat state dict, renames every
official key onto ``transformers.BlipVisionModel`` / ``BlipTextModel`` / the MLP head (refusing unknown keys
in the modules the scorer uses) and derives the transformers configs from the weights and
``med_config.json``. :mod:`.imagereward` builds and runs the model from what this returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError

__all__ = [
    "HEAD_LINEAR_INDICES",
    "MED_CONFIG",
    "VIT_HEAD_DIM",
    "WEIGHTS_PT",
    "WEIGHTS_SAFETENSORS",
    "ConvertedCheckpoint",
    "convert_imagereward_state_dict",
    "map_official_key",
    "read_state_dict",
    "resolve_files",
    "text_config",
    "vision_config",
]

WEIGHTS_PT = "ImageReward.pt"
WEIGHTS_SAFETENSORS = "ImageReward.safetensors"
MED_CONFIG = "med_config.json"

VIT_HEAD_DIM = 64  # the official BLIP ViTs: base 768/12 heads, large 1024/16 heads
_VIT_LAYER_NORM_EPS = 1e-6  # vit.py: partial(nn.LayerNorm, eps=1e-6)
HEAD_LINEAR_INDICES = (0, 2, 4, 6, 7)  # nn.Sequential positions of the Linear layers in the official MLP


# Official key -> (component, transformers key). Order does not matter: patterns are disjoint.
_VISION_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"cls_token", "embeddings.class_embedding"),
        (r"pos_embed", "embeddings.position_embedding"),
        (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
        (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
        (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
        (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
        (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
        (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
        (r"norm\.(weight|bias)", r"post_layernorm.\1"),
    )
)
# BLIP's med.py BERT and transformers' BlipTextModel share their module names (BlipText was ported from it).
_TEXT_RULES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"embeddings\.(word_embeddings|position_embeddings)\.weight",
        r"embeddings\.LayerNorm\.(weight|bias)",
        r"encoder\.layer\.\d+\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
        r"encoder\.layer\.\d+\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
        r"encoder\.layer\.\d+\.intermediate\.dense\.(weight|bias)",
        r"encoder\.layer\.\d+\.output\.(dense|LayerNorm)\.(weight|bias)",
    )
)
_PREFIXES = {"vision": "blip.visual_encoder.", "text": "blip.text_encoder.", "head": "mlp."}
# Keys the official module holds but its scorer never uses (ITC projections; a position-id buffer that
# older transformers versions saved), so dropping them cannot change a score.
_UNUSED_OFFICIAL = re.compile(
    r"blip\.(vision_proj|text_proj)\.(weight|bias)|blip\.text_encoder\.embeddings\.position_ids"
)


def map_official_key(key: str) -> tuple[str, str] | None:
    """Where one official ``ImageReward.pt`` key goes: ``(component, key)`` with component in
    ``vision``/``text``/``head``, or ``None`` for a key the official scorer does not use.

    Raises ``ConfigError`` for an unknown key inside a module the scorer does use (dropping it silently
    could change the numbers).
    """
    if _UNUSED_OFFICIAL.fullmatch(key):
        return None
    if key.startswith(_PREFIXES["vision"]):
        rest = key.removeprefix(_PREFIXES["vision"])
        for pattern, repl in _VISION_RULES:
            if pattern.fullmatch(rest):
                return "vision", pattern.sub(repl, rest)
    elif key.startswith(_PREFIXES["text"]):
        rest = key.removeprefix(_PREFIXES["text"])
        if any(pattern.fullmatch(rest) for pattern in _TEXT_RULES):
            return "text", rest
    elif key.startswith(_PREFIXES["head"]):
        m = re.fullmatch(r"mlp\.layers\.(\d+)\.(weight|bias)", key)
        if m and int(m.group(1)) in HEAD_LINEAR_INDICES:
            return "head", f"linears.{HEAD_LINEAR_INDICES.index(int(m.group(1)))}.{m.group(2)}"
    else:
        # Outside the modules the scorer runs; the official loader (strict=False) ignores these too.
        return None
    raise ConfigError(f"ImageReward checkpoint: unknown key {key!r} in a module the scorer uses")


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """An official state dict split into transformers-named state dicts, plus what was left out and why."""

    vision: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    ignored: tuple[str, ...]


def convert_imagereward_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ConvertedCheckpoint:
    """Rename every official key (see :func:`map_official_key`); tensors are shared, not copied."""
    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "text": {}, "head": {}}
    ignored: list[str] = []
    for key, tensor in state_dict.items():
        target = map_official_key(key)
        if target is None:
            ignored.append(key)
        else:
            parts[target[0]][target[1]] = tensor
    for name, part in parts.items():
        if not part:
            raise ConfigError(f"checkpoint has no {_PREFIXES[name]}* weights: not an ImageReward.pt")
    return ConvertedCheckpoint(parts["vision"], parts["text"], parts["head"], tuple(ignored))


def vision_config(vision: Mapping[str, torch.Tensor]):
    """BLIP ViT hyper-parameters read off the weights (the official code hard-codes ViT-L/16 at 224)."""
    from transformers import BlipVisionConfig

    hidden = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    n_patches = vision["embeddings.position_embedding"].shape[1] - 1
    grid = math.isqrt(n_patches)
    if grid * grid != n_patches or hidden % VIT_HEAD_DIM:
        raise ConfigError(f"ImageReward checkpoint: unexpected ViT (width {hidden}, {n_patches} patches)")
    layers = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    return BlipVisionConfig(
        hidden_size=hidden,
        intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=hidden // VIT_HEAD_DIM,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=_VIT_LAYER_NORM_EPS,
        attention_dropout=0.0,
    )


def text_config(med: Mapping[str, Any], vision_width: int):
    """BlipTextConfig from the official med_config.json (``encoder_width`` is overridden by the ViT width,
    as ``BLIP_Pretrain`` does)."""
    from transformers import BlipTextConfig

    if not med.get("add_cross_attention", False):
        raise ConfigError("ImageReward med_config.json: add_cross_attention must be true")
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError("ImageReward med_config.json: only absolute position embeddings are supported")
    return BlipTextConfig(
        vocab_size=int(med["vocab_size"]),
        hidden_size=int(med["hidden_size"]),
        encoder_hidden_size=int(vision_width),
        intermediate_size=int(med["intermediate_size"]),
        num_hidden_layers=int(med["num_hidden_layers"]),
        num_attention_heads=int(med["num_attention_heads"]),
        max_position_embeddings=int(med["max_position_embeddings"]),
        hidden_act=str(med.get("hidden_act", "gelu")),
        layer_norm_eps=float(med.get("layer_norm_eps", 1e-12)),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=int(med.get("pad_token_id", 0)),
        bos_token_id=None,  # generation ids: unused by an encoder, and the defaults assume BERT's vocabulary
        eos_token_id=None,
        sep_token_id=None,
        is_decoder=True,  # builds the cross-attention layers; forward still runs bidirectionally
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The official flat state dict from ``.safetensors`` or ``.pt`` (``weights_only``: no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def resolve_files(model_id: str, revision: str | None) -> tuple[Path, Path, Path | None]:
    """(weights, med_config, local folder or None) for a hub repo, a local folder or a weights file."""
    path = Path(model_id).expanduser()
    if path.is_file():
        folder = path.parent
        weights = path
    elif path.is_dir():
        folder = path
        found = [folder / n for n in (WEIGHTS_SAFETENSORS, WEIGHTS_PT) if (folder / n).is_file()]
        weights = found[0] if found else None
        if weights is None:
            raise ConfigError(f"ImageReward: {folder} has neither {WEIGHTS_SAFETENSORS} nor {WEIGHTS_PT}")
    else:
        from huggingface_hub import hf_hub_download

        try:
            weights = Path(hf_hub_download(model_id, WEIGHTS_PT, revision=revision))
            med = Path(hf_hub_download(model_id, MED_CONFIG, revision=revision))
        except Exception as e:  # offline, unknown repo, missing file: say what was looked for
            raise ConfigError(
                f"ImageReward: cannot fetch {WEIGHTS_PT} and {MED_CONFIG} from hub repo {model_id!r} "
                f"(revision {revision!r}): {e}"
            ) from e
        return weights, med, None
    med = folder / MED_CONFIG
    if not med.is_file():
        raise ConfigError(f"ImageReward: {MED_CONFIG} not found next to the weights in {folder}")
    return weights, med, folder
