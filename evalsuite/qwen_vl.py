"""Qwen-VL plumbing shared by the VLM rewards (PromptEcho, EditReward, HPSv3, VQA, judges) and the VL policy.

Each builds its own token sequences around images, so what they share is: resizing an image the
way qwen-vl-utils does (the pixel budget decides how many image tokens a sample gets), running the image
processor once for the whole batch, expanding the ``<|image_pad|>`` placeholders exactly as the processor
would, and right-padding hand-built id lists into one tensor batch. Right padding keeps every real token
at the same position as when the sample is scored alone, which is what makes per-sample numbers
independent of batch composition.

The second half serves the Qwen-VL *reward models* (HPSv3 and EditReward, which builds on HPSv3's code): a
backbone whose vocabulary gained ``<|Reward|>``, MLP heads read at that token, and a forward with plain 1-D
positions, because their official forward hands ``inputs_embeds`` to the language model without the image
grid, so transformers falls back to ``arange`` positions (not M-RoPE): the checkpoints were trained that way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from evalsuite.errors import ConfigError, MissingBackendError

# qwen-vl-utils' own defaults (IMAGE_MIN_TOKEN_NUM / IMAGE_MAX_TOKEN_NUM merged 28 px patches).
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 16384 * 28 * 28
IMAGE_PAD = "<|image_pad|>"


def check_pixel_budget(min_pixels: int, max_pixels: int) -> None:
    """Reject a budget qwen-vl-utils would assert on, at construction time rather than mid-batch."""
    if min_pixels < 1 or max_pixels < min_pixels:
        raise ValueError(f"need 1 <= min_pixels <= max_pixels, got {min_pixels=}, {max_pixels=}")


def fit_image(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize like ``qwen_vl_utils.process_vision_info`` does for an in-memory image with this budget.

    The processor's own resize is then a no-op (both sides are multiples of 28 inside its budget).
    """
    try:
        import qwen_vl_utils
    except ImportError as e:  # a core dependency; on a CPU-only torch it fails through torchvision
        raise MissingBackendError(
            f"qwen_vl_utils is needed for Qwen2.5-VL image preparation but cannot be imported ({e}); "
            "install qwen-vl-utils (on a CPU-only torch see scripts/cpu_compat for torchvision)"
        ) from e
    return qwen_vl_utils.fetch_image({"image": image, "min_pixels": min_pixels, "max_pixels": max_pixels})


def load_processor(path: str, revision: str | None) -> Any:
    """The Qwen2.5-VL processor, padding on the right (see the module docstring)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, revision=revision)
    processor.tokenizer.padding_side = "right"
    return processor


def image_inputs(
    processor: Any, images: Sequence[Image.Image]
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(pixel_values, image_grid_thw, tokens per image)`` for already-fitted images, in one call."""
    out = processor.image_processor(images=list(images), return_tensors="pt")
    grid = out["image_grid_thw"]
    merge = processor.image_processor.merge_size
    return out["pixel_values"], grid, (grid.prod(-1) // merge**2).tolist()


def expand_image_pads(text: str, counts: Iterator[int]) -> str:
    """Replace each ``<|image_pad|>`` with as many pads as its image has tokens (what the processor does)."""
    parts = text.split(IMAGE_PAD)
    out = [parts[0]]
    for part in parts[1:]:
        out.append(IMAGE_PAD * next(counts))
        out.append(part)
    return "".join(out)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack id lists into ``(input_ids, attention_mask)``, padding on the right with ``pad_id``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_token_id(processor: Any) -> int:
    tok = processor.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")


# -- Qwen-VL reward models (HPSv3, EditReward) -----------------------------------------------------------
REWARD_TOKEN = "<|Reward|>"
# The rating suffix with the reward token, verbatim from HPSv3's data_collator_qwen.py
# (prompt_with_special_token), which EditReward's collator repeats: both checkpoints read their score there.
RATING_SUFFIX = f"\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"


def read_state_dict(path_or_id: str, filenames: Sequence[str], revision: str | None,
                    who: str) -> dict[str, torch.Tensor]:
    """A reward checkpoint's flat state dict (``module.`` prefixes dropped, ``{"model": ...}`` opened).

    ``path_or_id`` is the file itself, a folder holding one of ``filenames`` (first found wins) or a hub repo.
    ``.safetensors`` files load with safetensors, anything else with ``torch.load(weights_only=True)``.
    """
    if os.path.isfile(path_or_id):
        file = Path(path_or_id)
    elif os.path.isdir(path_or_id):
        found = [Path(path_or_id) / f for f in filenames if (Path(path_or_id) / f).is_file()]
        if not found:
            raise ConfigError(f"{who}: no {' or '.join(filenames)} in {path_or_id}")
        file = found[0]
    else:
        from huggingface_hub import hf_hub_download

        hub_file, errors = None, []
        for name in filenames:
            try:
                hub_file = hf_hub_download(path_or_id, name, revision=revision)
                break
            except Exception as e:  # missing file in the repo, offline cache miss...
                errors.append(f"{name}: {type(e).__name__}: {e}")
        if hub_file is None:
            raise ConfigError(f"{who}: cannot fetch a checkpoint from {path_or_id!r}: {errors}")
        file = Path(hub_file)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state.get("model"), Mapping):
        state = state["model"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def backbone_key(key: str, who: str) -> str | None:
    """Map a ``*VLForConditionalGeneration`` key, new or transformers < 4.52 style, to ``Qwen*VLModel``'s
    (None: the LM head, which a reward model never uses)."""
    if key.startswith("lm_head."):
        return None
    for old, new in (("model.visual.", "visual."), ("model.language_model.", "language_model."),
                     ("visual.", "visual."), ("model.", "language_model.")):  # last two: transformers < 4.52
        if key.startswith(old):
            return new + key[len(old):]
    raise ConfigError(f"{who}: unexpected checkpoint key {key!r}")


class MLPHead(nn.Module):
    """A reward head: Linear layers with ReLU between them (the official dropouts are no-ops at inference)."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(linears)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, lin in enumerate(self.linears):
            x = lin(x)
            if k < len(self.linears) - 1:
                x = torch.relu(x)
        return x


def mlp_head(layers: Sequence[Mapping[str, torch.Tensor]]) -> MLPHead:
    """A float32 ``MLPHead`` from its layers' ``{"weight", "bias"?}`` tensors, in order (sizes read off)."""
    linears = []
    for params in layers:
        out_f, in_f = params["weight"].shape
        lin = nn.Linear(in_f, out_f, bias="bias" in params, dtype=torch.float32)
        lin.load_state_dict({k: v.float() for k, v in params.items()})
        linears.append(lin)
    return MLPHead(linears)


def reward_backbone(model_class: str, base_model: str, base_revision: str | None,
                    state: Mapping[str, torch.Tensor], dtype: torch.dtype, reward_id: int, who: str) -> Any:
    """``transformers.<model_class>`` (``Qwen2VLModel``, ``Qwen2_5_VLModel``) with the base model's config and
    the checkpoint's backbone weights (``state``: checkpoint keys, heads already removed), loaded strictly."""
    import transformers
    from accelerate import init_empty_weights

    weights = {}
    for key, value in state.items():
        new = backbone_key(key, who)
        if new is not None:
            weights[new] = value.to(dtype)
    config = transformers.AutoConfig.from_pretrained(base_model, revision=base_revision)
    vocab = weights["language_model.embed_tokens.weight"].shape[0]
    if reward_id >= vocab:
        raise ConfigError(f"{who}: checkpoint vocabulary ({vocab}) has no row for {REWARD_TOKEN}")
    config.text_config.vocab_size = vocab
    with init_empty_weights(include_buffers=False):  # weights come from the checkpoint; buffers are real
        backbone = getattr(transformers, model_class)(config)
    backbone.load_state_dict(weights, strict=True, assign=True)
    return backbone.eval()


@dataclass
class RewardModel:
    """What a Qwen-VL reward model loads to: its processor (with ``<|Reward|>``), the backbone, the head
    weights (keys without their prefix, for the reward to rebuild its own head layout) and limits."""

    processor: Any
    reward_id: int
    pad_id: int
    backbone: Any
    head_state: dict[str, torch.Tensor]
    max_positions: int


def load_reward_model(model_class: str, checkpoint: str, revision: str | None, filenames: Sequence[str],
                      base_model: str, base_revision: str | None, head_prefix: str, dtype: torch.dtype,
                      who: str) -> RewardModel:
    """Processor from the base model plus ``<|Reward|>``; backbone and head weights from the checkpoint."""
    processor = load_processor(base_model, base_revision)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    reward_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    state = read_state_dict(checkpoint, filenames, revision, who)
    head_state = {k.removeprefix(head_prefix): v for k, v in state.items() if k.startswith(head_prefix)}
    backbone = reward_backbone(model_class, base_model, base_revision,
                               {k: v for k, v in state.items() if not k.startswith(head_prefix)},
                               dtype, reward_id, who)
    return RewardModel(processor, reward_id, pad_token_id(processor), backbone, head_state,
                       int(backbone.config.text_config.max_position_embeddings))


def check_reward_sequences(seqs: Sequence[Sequence[int]], sample_ids: Sequence[str], reward_id: int,
                           max_positions: int, what: str) -> None:
    """Each sequence holds the reward token exactly once (else the head reads the wrong place) and fits."""
    for seq, sid in zip(seqs, sample_ids):
        if list(seq).count(reward_id) != 1:
            raise ValueError(f"sample {sid!r}: the {what} must not contain {REWARD_TOKEN}")
        if len(seq) > max_positions:
            raise ValueError(f"sample {sid!r}: {len(seq)} tokens exceed {max_positions} positions")


def hidden_at_token(backbone: Any, seqs: Sequence[Sequence[int]], pad_id: int, pixel_values: torch.Tensor,
                    grid: torch.Tensor, token_id: int, vision_repeats: int = 1) -> torch.Tensor:
    """Final hidden state ``[B, hidden]`` (float32) at ``token_id`` of each right-padded sequence.

    Image features are scattered in order into the ``<|image_pad|>`` runs; ``vision_repeats`` > 1 when the
    same images appear in several prompts (computed once, scattered that many times). Positions are 1-D (see
    the module docstring).
    """
    dev, dtype = backbone.device, backbone.dtype
    ids, mask = right_pad(seqs, pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    embeds = backbone.get_input_embeddings()(ids)
    vision = backbone.visual(pixel_values.to(dev, dtype), grid_thw=grid.to(dev)).pooler_output
    image_mask = (ids == backbone.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(image_mask, torch.cat([vision] * vision_repeats).to(embeds.dtype))
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    # No attention mask: with right padding, causal attention already keeps every real token away from the
    # pads after it (the pads' own outputs are never read), and mask-free SDPA takes the fast causal kernel
    # instead of materializing a [B, L, L] mask.
    hidden = backbone.language_model(
        inputs_embeds=embeds, attention_mask=None, position_ids=positions, use_cache=False
    ).last_hidden_state
    at = (ids == token_id).int().argmax(-1)
    return hidden[torch.arange(len(seqs), device=dev), at].float()
