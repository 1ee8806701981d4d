"""One loader for open_clip models (CLIPScore, GenEval's colour classifier).

Why a shared loader: the official benchmarks load OpenAI CLIP through ``clip.load`` / open_clip 2.x, which
build the OpenAI weights with QuickGELU. open_clip 3.x builds ``ViT-B-32`` / ``ViT-L-14`` with plain GELU
and only *warns* when the ``openai`` tag wants QuickGELU, which silently changes every score. This loader
turns QuickGELU on whenever the pretrained tag says so, so ``load_open_clip("ViT-L-14", "openai")``
gives the same network as the official code.

Three ways to name a model:

* built-in architecture + pretrained tag (downloads through the HF cache)::

      load_open_clip("ViT-B-32", "openai")

* built-in (or registered) architecture + a local checkpoint file (``.safetensors``/``.bin``/``.pt``
  state dict, loaded with ``weights_only=True``)::

      load_open_clip("ViT-L-14", "/ckpt/vit_l_14_openai.safetensors", quick_gelu=True)

* a folder holding ``open_clip_config.json`` + weights (open_clip's ``local-dir:`` layout); the tiny
  models written by ``evalsuite.tiny.open_clip.write_tiny_open_clip`` use it, and a reward gets one by
  ``model=<folder>``::

      folder = write_tiny_open_clip(tmp, "ViT-L-14", seed=0)
      load_open_clip(str(folder))                     # or CLIPScore(model=str(folder))

  The folder also holds ``tiny-ViT-L-14.json`` (a bare architecture config) next to
  ``open_clip_model.safetensors``, so
  ``load_open_clip("tiny-ViT-L-14", "<folder>/open_clip_model.safetensors")`` works too:
  a ``<model_name>.json`` next to a checkpoint file is registered with open_clip first.

``overlay=<checkpoint>`` loads a fine-tuned state dict over the architecture, strictly, the way HPSv2's
official code loads ``torch.load(cp)['state_dict']`` over open_clip ViT-H-14. Every weight is replaced, so
with an overlay a built-in architecture needs no pretrained tag (no download of base weights it would
overwrite)::

      load_open_clip("ViT-H-14", overlay="/ckpt/HPS_v2.1_compressed.pt")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "TokenizedText",
    "encode_images",
    "encode_texts",
    "load_open_clip",
    "load_overlay",
    "local_model_dir",
    "resolve_checkpoint",
    "tokenize",
    "zero_shot_classifier",
]

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
LOCAL_DIR = "local-dir:"

_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

def _open_clip():
    """open_clip is a core dependency, imported on first use only (it pulls in timm and torchvision)."""
    import open_clip

    return open_clip


def local_model_dir(model_name: str) -> Path | None:
    """The folder a ``local-dir:`` name or a plain folder path points at, else None."""
    if model_name.startswith(LOCAL_DIR):
        return Path(model_name[len(LOCAL_DIR):])
    path = Path(model_name)
    if path.is_dir():
        return path
    return None


def load_open_clip(
    model_name: str,
    pretrained: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
    overlay: str | os.PathLike[str] | None = None,
) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor], Callable[..., torch.Tensor]]:
    """Return ``(model, preprocess, tokenizer)``: an eval-mode open_clip model, eval transform, tokenizer.

    ``pretrained``: an open_clip tag (``"openai"``) or a checkpoint file; ignored for folders.
    ``quick_gelu``: None follows the pretrained tag (True for ``openai``); for a checkpoint file or a folder
    the architecture config decides (open_clip's built-in ``ViT-B-32``/``ViT-L-14`` configs say GELU, so a
    local copy of OpenAI's weights needs ``quick_gelu=True``). True forces QuickGELU on; False only stops a
    tag from turning it on.
    ``dtype``: float32, or bfloat16/float16 as open_clip's OpenAI-style mixed precision (matmul weights in
    low precision, LayerNorm in float32) — the way ``clip.load`` runs on a GPU.
    ``overlay``: a ``{'state_dict': ...}`` checkpoint loaded strictly over the built model (see
    :func:`load_overlay`); ``pretrained`` may then be None for a built-in architecture.
    """
    open_clip = _open_clip()
    if dtype not in _PRECISION:
        raise ConfigError(f"open_clip: unsupported dtype {dtype}; use one of {list(_PRECISION)}")
    kwargs: dict[str, Any] = {"precision": _PRECISION[dtype], "device": device, "cache_dir": cache_dir}
    folder = local_model_dir(model_name)
    if folder is not None:
        if not (folder / CONFIG_FILE).is_file():
            raise ConfigError(f"open_clip: {folder} has no {CONFIG_FILE} (not an open_clip model folder)")
        name = f"{LOCAL_DIR}{folder}"
        if quick_gelu:
            kwargs["force_quick_gelu"] = True
        model, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    else:
        arch = model_name.replace("/", "-")  # "ViT-B/32" (OpenAI's spelling) -> "ViT-B-32"
        if pretrained is None:
            if overlay is None:
                raise ConfigError(f"open_clip: {model_name!r} needs a pretrained tag or checkpoint file")
            tag_quick_gelu = False
        elif os.path.isfile(pretrained):
            pretrained = str(pretrained)
            sidecar = Path(pretrained).parent / f"{arch}.json"
            if arch not in open_clip.list_models() and sidecar.is_file():
                open_clip.add_model_config(sidecar)
            tag_quick_gelu = False
        else:
            pretrained = str(pretrained)
            tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
            if not tag_cfg:
                raise ConfigError(
                    f"open_clip: {pretrained!r} is neither a file nor a known tag of {arch!r} "
                    f"(tags: {open_clip.list_pretrained_tags_by_model(arch)})"
                )
            tag_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        if quick_gelu if quick_gelu is not None else tag_quick_gelu:
            kwargs["force_quick_gelu"] = True
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, **kwargs)
        tokenizer = open_clip.get_tokenizer(arch)
    if overlay is not None:
        load_overlay(model, overlay)
    model.eval().requires_grad_(False)
    return model, preprocess, tokenizer


def load_overlay(model: torch.nn.Module, checkpoint: str | os.PathLike[str]) -> None:
    """Load ``torch.load(checkpoint, weights_only=True)['state_dict']`` into ``model``, strictly.

    The official HPSv2 format: a plain dict of tensors under ``state_dict`` (no pickled code, so
    ``weights_only`` loads it). Strict, as the official ``model.load_state_dict(...)`` is: a checkpoint for
    another architecture fails here, naming the file and the mismatched keys, instead of scoring
    with half-random weights. Values are copied into the model's own dtypes (low precision stays so).
    """
    path = Path(checkpoint)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated or pickled-code file: say which
        raise ConfigError(f"open_clip overlay {path}: cannot load: {type(e).__name__}: {e}") from e
    if not isinstance(loaded, dict) or not isinstance(loaded.get("state_dict"), dict):
        raise ConfigError(f"open_clip overlay {path}: expected a dict with a 'state_dict' entry")
    try:
        model.load_state_dict(loaded["state_dict"], strict=True)
    except RuntimeError as e:  # missing/unexpected keys or wrong shapes: another architecture's weights
        raise ConfigError(f"open_clip overlay {path} does not fit the architecture: {e}") from e


def resolve_checkpoint(source: str, filename: str, revision: str | None = None) -> Path:
    """The checkpoint a reward names: ``source`` itself if it is a file, ``source/filename`` if it is a
    folder, else ``filename`` from the Hub repo ``source`` (HF cache; errors are classified by the
    reward's ``loading`` wrapper, so an offline miss reads as one line)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / filename).is_file():
            raise ConfigError(f"{path} has no {filename}")
        return path / filename
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, filename, revision=revision))


@dataclass(frozen=True)
class TokenizedText:
    """Token ids (padded/truncated to the context length) plus what truncation cut, per text."""

    ids: torch.Tensor  # [batch, context_length] long
    token_counts: list[int]  # tokens before truncation, <|startoftext|> and <|endoftext|> included
    truncated: list[bool]


def tokenize(tokenizer: Callable[..., torch.Tensor], texts: Sequence[str]) -> TokenizedText:
    """Tokenize like open_clip (truncate to the context length, keep ``<|endoftext|>`` last) and count.

    CLIP text towers see at most 77 tokens: a longer prompt is cut, which the official code either does
    silently (open_clip) or refuses (``clip.tokenize(truncate=False)``); we score the cut prompt and say so.
    """
    texts = list(texts)
    ids = tokenizer(texts)
    context = ids.shape[-1]
    if hasattr(tokenizer, "encode"):  # open_clip's SimpleTokenizer: BPE ids without <sot>/<eot>
        counts = [len(tokenizer.encode(t)) + 2 for t in texts]
    elif hasattr(tokenizer, "tokenizer"):  # open_clip's HFTokenizer wraps a transformers tokenizer
        counts = [len(tokenizer.tokenizer(t)["input_ids"]) for t in texts]
    else:
        raise ConfigError(f"cannot count tokens with {type(tokenizer).__name__}")
    return TokenizedText(ids, counts, [c > context for c in counts])


def _input_dtype(model: torch.nn.Module) -> torch.dtype:
    """dtype the vision tower's first layer expects (low-precision open_clip models do not cast inputs)."""
    conv = getattr(getattr(model, "visual", None), "conv1", None)
    if conv is not None:
        return conv.weight.dtype
    return next(model.parameters()).dtype


@torch.inference_mode()
def encode_images(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Unit-norm float32 image embeddings for a preprocessed batch ``[B, 3, H, W]``."""
    param = next(model.parameters())
    feats = model.encode_image(pixels.to(device=param.device, dtype=_input_dtype(model)))
    return torch.nn.functional.normalize(feats.float(), dim=-1)


@torch.inference_mode()
def encode_texts(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Unit-norm float32 text embeddings for token ids ``[B, context_length]``."""
    feats = model.encode_text(ids.to(next(model.parameters()).device))
    return torch.nn.functional.normalize(feats.float(), dim=-1)


@torch.inference_mode()
def zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
) -> torch.Tensor:
    """``[embed_dim, n_classes]`` float32 zero-shot weights, the CLIP recipe GenEval's colour test uses.

    Per class: format every template (``"a photo of a {c} object"`` style, ``{}``/``{c}`` placeholders),
    encode, L2-normalise each, average, L2-normalise the mean. Image logits are then
    ``encode_images(model, x) @ weights``.
    """
    if not classnames or not templates:
        raise ConfigError("zero_shot_classifier needs at least one class name and one template")
    columns = []
    for name in classnames:
        prompts = [t.format(name, c=name) for t in templates]
        emb = encode_texts(model, tokenizer(prompts))
        columns.append(torch.nn.functional.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(columns, dim=1)
