"""Seeded, deterministic, architecturally real *tiny* checkpoints for offline tests and CI.

Every model is written as a folder that loads with exactly the ``from_pretrained`` code used for the real
Hugging Face id it mimics, so code under test needs only a different path. Weights are random (seeded):
outputs are meaningless, but shapes, dtypes, tokenization, chat templates, processors and pipeline plumbing
are the real ones. Same seed -> byte-identical files, across processes.

    >>> from evalsuite.tiny import write_tiny
    >>> paths = write_tiny("/tmp/tiny", names=["clip", "qwen2-lm"])  # doctest: +SKIP
    >>> CLIPModel.from_pretrained(paths["clip"])  # doctest: +SKIP

Heavy libraries (torch, transformers, diffusers) are imported only when a model is written.
"""

from __future__ import annotations

import contextlib
import operator
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TINY_MODELS", "TinySpec", "write_tiny"]

Writer = Callable[[Path, int], None]


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: what it mimics, how to load it, and where its writer lives.

    ``writer_ref`` is a ``"module:function"`` path inside this package, resolved on first use so that
    listing the models (e.g. for CLI help) does not import torch.
    """

    name: str
    model_id: str
    description: str
    loaded_by: tuple[str, ...]
    writer_ref: str

    @property
    def writer(self) -> Writer:
        """``writer(folder, seed)``: writes the model's files into an existing, empty ``folder``."""
        from ._common import resolve  # imports torch: only when a model is written

        return resolve(f"{__name__}.{self.writer_ref}")


_SPECS = (
    TinySpec(
        name="flux",
        model_id="black-forest-labs/FLUX.1-dev",
        description="FluxPipeline: tiny guidance-distilled transformer, CLIP + T5 encoders, 16-ch 8x VAE",
        loaded_by=("diffusers.FluxPipeline",),
        writer_ref="flux:write_flux",
    ),
    TinySpec(
        name="flux-kontext",
        model_id="black-forest-labs/FLUX.1-Kontext-dev",
        description="FluxKontextPipeline (same components; call with max_area=H*W, _auto_resize=False)",
        loaded_by=("diffusers.FluxKontextPipeline",),
        writer_ref="flux:write_flux_kontext",
    ),
    TinySpec(
        name="sd3",
        model_id="stabilityai/stable-diffusion-3.5-medium",
        description="StableDiffusion3Pipeline: MMDiT-X, CLIP-L + CLIP-G + T5 encoders, 16-ch 8x VAE, shift 3",
        loaded_by=("diffusers.StableDiffusion3Pipeline",),
        writer_ref="sd3:write_sd3",
    ),
    TinySpec(
        name="zimage",
        model_id="Tongyi-MAI/Z-Image",
        description="ZImagePipeline: single-stream S3-DiT, Qwen3 text encoder, 16-ch 8x VAE, shift 6",
        loaded_by=("diffusers.ZImagePipeline",),
        writer_ref="zimage:write_zimage",
    ),
    TinySpec(
        name="qwenimage",
        model_id="Qwen/Qwen-Image",
        description="QwenImagePipeline: MMDiT, Qwen2.5-VL text encoder, AutoencoderKLQwenImage, true CFG",
        loaded_by=("diffusers.QwenImagePipeline",),
        writer_ref="qwenimage:write_qwenimage",
    ),
    TinySpec(
        name="qwenimage-2512",
        model_id="Qwen/Qwen-Image-2512",
        description="QwenImagePipeline (Qwen-Image's architecture, other weights)",
        loaded_by=("diffusers.QwenImagePipeline",),
        writer_ref="qwenimage:write_qwenimage_2512",
    ),
    TinySpec(
        name="qwenimage-edit",
        model_id="Qwen/Qwen-Image-Edit",
        description="QwenImageEditPipeline: Qwen-Image + Qwen2VLProcessor (the text encoder sees the source)",
        loaded_by=("diffusers.QwenImageEditPipeline",),
        writer_ref="qwenimage:write_qwenimage_edit",
    ),
    TinySpec(
        name="qwen2.5-vl",
        model_id="Qwen/Qwen2.5-VL-7B-Instruct",
        description="Qwen2.5-VL vision-language model + processor (Qwen special tokens, chat template)",
        loaded_by=("transformers.Qwen2_5_VLForConditionalGeneration", "transformers.AutoProcessor"),
        writer_ref="qwen_vl:write_qwen2_5_vl",
    ),
    TinySpec(
        name="qwen3-vl",
        model_id="Qwen/Qwen3-VL-8B-Instruct",
        description="Qwen3-VL (16 px patches, DeepStack, no default system turn) + processor: GenEval 2 VQA",
        loaded_by=("transformers.Qwen3VLForConditionalGeneration", "transformers.AutoProcessor"),
        writer_ref="qwen3_vl:write_qwen3_vl",
    ),
    TinySpec(
        name="qwen2-lm",
        model_id="Qwen/Qwen2.5-3B-Instruct",
        description="Qwen2 causal LM (prompt rewriter) + tokenizer with Qwen2.5 chat template",
        loaded_by=("transformers.AutoModelForCausalLM", "transformers.AutoTokenizer"),
        writer_ref="qwen_lm:write_qwen2_lm",
    ),
    TinySpec(
        name="clip",
        model_id="yuvalkirstain/PickScore_v1",
        description="CLIPModel + CLIPProcessor (real CLIP BPE, laion ViT-H-14 processor layout, 32 px crop)",
        loaded_by=("transformers.CLIPModel", "transformers.AutoProcessor"),
        writer_ref="clip:write_clip",
    ),
    TinySpec(
        name="blip",
        model_id="Salesforce/blip-vqa-base",
        description="BlipForQuestionAnswering + BlipProcessor (BERT WordPiece with [DEC]/[ENC], 32 px)",
        loaded_by=("transformers.BlipForQuestionAnswering", "transformers.BlipProcessor"),
        writer_ref="blip:write_blip",
    ),
    TinySpec(
        name="mask2former",
        model_id="facebook/mask2former-swin-small-coco-instance",
        description="Mask2FormerForUniversalSegmentation (Swin, 80 COCO classes) + Mask2FormerImageProcessor",
        loaded_by=("transformers.Mask2FormerForUniversalSegmentation", "transformers.AutoImageProcessor"),
        writer_ref="mask2former:write_mask2former",
    ),
)

# Reward-specific formats (open_clip folders, the official ImageReward .pt layout, EditReward's and HPSv3's
# backbone + heads); each writer looks up the reward's format constants by string when it runs.
_SPECS += (
    TinySpec(
        name="open-clip-vit-l-14",
        model_id="open_clip ViT-L-14 (openai)",
        description="open_clip model folder (GenEval colour classifier, CLIPScore ViT-L/14)",
        loaded_by=("evalsuite.rewards.clip_models.load_open_clip",),
        writer_ref="open_clip:write_open_clip_vit_l_14",
    ),
    TinySpec(
        name="open-clip-vit-b-32",
        model_id="open_clip ViT-B-32 (openai)",
        description="open_clip model folder (CLIPScore ViT-B/32, T2I-CompBench non-spatial)",
        loaded_by=("evalsuite.rewards.clip_models.load_open_clip",),
        writer_ref="open_clip:write_open_clip_vit_b_32",
    ),
    TinySpec(
        name="hpsv2",
        model_id="xswu/HPSv2 (HPS_v2.1_compressed.pt over open_clip ViT-H-14)",
        description="open_clip local-dir folder (ViT-H-14 stand-in, GELU) + official HPS_v2.1_compressed.pt",
        loaded_by=("evalsuite.rewards.hpsv2.HPSv2",),
        writer_ref="hpsv2:write_hpsv2",
    ),
    TinySpec(
        name="aesthetic",
        model_id="LAION improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth)",
        description="official-format aesthetic MLP .pth + clip/ (open_clip ViT-L-14 stand-in, 768-d)",
        loaded_by=("evalsuite.rewards.aesthetic.LAIONAesthetic",),
        writer_ref="aesthetic:write_aesthetic",
    ),
    TinySpec(
        name="imagereward",
        model_id="THUDM/ImageReward",
        description="official ImageReward.pt + med_config.json layout (BLIP ViT + BERT + MLP head)",
        loaded_by=("evalsuite.rewards.imagereward.ImageReward",),
        writer_ref="imagereward:write_imagereward",
    ),
    TinySpec(
        name="editreward",
        model_id="TIGER-Lab/EditReward-Qwen2.5-VL-7B",
        description="EditReward checkpoint/ (backbone + <|Reward|> heads) and base/ (Qwen2.5-VL config)",
        loaded_by=("evalsuite.rewards.editreward.EditReward",),
        writer_ref="editreward:write_editreward",
    ),
    TinySpec(
        name="hpsv3",
        model_id="MizzenAI/HPSv3 (HPSv3.safetensors over Qwen/Qwen2-VL-7B-Instruct)",
        description="HPSv3 checkpoint/ (4.45-named backbone + <|Reward|> + rm_head) and base/ (Qwen2-VL)",
        loaded_by=("evalsuite.rewards.hpsv3.HPSv3",),
        writer_ref="hpsv3:write_hpsv3",
    ),
)

TINY_MODELS: dict[str, TinySpec] = {spec.name: spec for spec in _SPECS}


def write_tiny(
    out_dir: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    seed: int = 0,
    overwrite: bool = True,
) -> dict[str, Path]:
    """Write tiny models into ``out_dir/<name>/`` and return ``{name: folder}``.

    ``names=None`` writes all of :data:`TINY_MODELS`. Each folder is written into a temporary sibling and
    then renamed into place, so an interrupted run never leaves a half-written model behind. With
    ``overwrite=False`` an existing folder is kept as is (a cache for CI). Same ``seed`` -> identical bytes.
    """
    selected = _select(names)
    seed = operator.index(seed)
    _require_transformers_5()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with _quiet_transformers():
        for name in selected:
            target = out / name
            if target.exists() and not overwrite:
                written[name] = target
                continue
            _write_atomically(TINY_MODELS[name].writer, target, seed)
            written[name] = target
    return written


def _select(names: Iterable[str] | None) -> list[str]:
    """Validate and de-duplicate requested names (order kept); unknown names raise ``ValueError``."""
    if names is None:
        return list(TINY_MODELS)
    requested = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in requested if n not in TINY_MODELS]
    if unknown:
        raise ValueError(f"unknown tiny model(s) {unknown}; valid names: {', '.join(TINY_MODELS)}")
    return list(dict.fromkeys(requested))


def _require_transformers_5() -> None:
    """The writers use transformers 5 APIs (tokenizers built from vocab/merges, PIL image processors)."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise ImportError(
            f"evalsuite.tiny needs transformers>=5 (tested with 5.23); found {transformers.__version__}"
        )


def _write_atomically(writer: Writer, target: Path, seed: int) -> None:
    """Run ``writer`` into a hidden sibling folder, then swap it in with renames (same filesystem)."""
    token = uuid.uuid4().hex[:12]
    tmp = target.with_name(f".{target.name}.tmp-{token}")
    tmp.mkdir()  # default mode: honours the umask, unlike tempfile.mkdtemp's 0o700
    try:
        writer(tmp, seed)
        _normalize_permissions(tmp)
        if target.exists() or target.is_symlink():
            old = target.with_name(f".{target.name}.old-{token}")
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            with contextlib.suppress(OSError):  # the new model is in place; a stale hidden folder is harmless
                _remove(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _normalize_permissions(folder: Path) -> None:
    """Give every file the folder's read/write bits (some savers write 0o600 files via temp files)."""
    file_mode = folder.stat().st_mode & 0o666
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(file_mode)


def _remove(path: Path) -> None:
    """Delete a previous model folder (or a stray file/symlink in its place)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-save "Writing model shards" progress bars while writing."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
