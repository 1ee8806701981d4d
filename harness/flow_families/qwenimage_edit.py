"""Qwen-Image-Edit on the flow seam (QwenImageEditPipeline), as diffusers' pipeline runs it.

Everything of Qwen-Image (qwenimage.py: true CFG with the per-token norm rescale, packed latents, the shifted
schedule, decoding) plus the source image, which conditions the model twice:

- the Qwen2.5-VL text encoder sees it: the edit template (system prompt, then ``<|vision_start|><|image_pad|>
  <|vision_end|>`` and the instruction) goes through the ``Qwen2VLProcessor`` with the image, and the first 64
  tokens of the hidden states are dropped. The negative prompt is encoded with the same image.
- its VAE latents (the mode, normalised by the per-channel mean/std) are packed 2x2 and appended after the
  target's tokens, with their own (1, h, w) grid in ``img_shapes``; the velocity is read from the target's.

The pipeline resizes the source to ~1 MP whatever the output size (``calculate_dimensions(1024², aspect)``,
sides rounded to 32): both encodings use that size, so this family does too. ``flow.source_area`` picks
another area for that rule (the pipeline has no argument for it; at 1 MP the source is 4096 tokens, which
makes small-scale runs and tests slow); null keeps the pipeline's. The output size is the policy's Kontext
rule (the source's size, only scaled down to ``flow.max_area``) or ``flow.height/width``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.harness.flow_config import FlowPolicyConfig
from evalsuite.harness.flow_families.qwenimage import QwenImageFamily
from evalsuite.harness.flow_trajectory import Conditioning
from evalsuite.images import to_rgb

# QwenImageEditPipeline.__call__'s source area: calculate_dimensions(1024 * 1024, width / height).
SOURCE_AREA = 1024 * 1024


class QwenImageEditFamily(QwenImageFamily):
    """Qwen-Image-Edit: see the module docstring."""

    name: ClassVar[str] = "qwenimage-edit"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("QwenImageEditPipeline",)
    source_area_option: ClassVar[bool] = True

    def __init__(self, pipeline: Any, config: FlowPolicyConfig) -> None:
        super().__init__(pipeline, config)
        self.is_edit = True

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise ConfigError(
            "Qwen-Image-Edit's text encoder sees the source image together with the prompt, so a prompt "
            "cannot be encoded from text alone: encode prompts with their sources (FlowPolicy.encode). "
            "PromptLoop's mid-trajectory re-prompting (FlowPolicy.with_prompts) is therefore not supported "
            "for this family (FLUX.1-Kontext's text encoder is text-only and supports it)"
        )

    def _encode_with_images(
        self, prompts: list[str], images: list[Image.Image]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) embeddings of the edit template with each row's source, and their (B, L) mask."""
        embeds, mask = self.pipeline.encode_prompt(prompt=list(prompts), image=images, device=self.device)
        if mask is None:  # every token real
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return embeds, mask

    def source_size(self, source: Image.Image) -> tuple[int, int]:
        """(height, width) the pipeline resizes a source to: ~1 MP (or ``flow.source_area``) at its aspect,
        sides multiples of 32."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

        area = self.config.source_area or SOURCE_AREA
        width, height, _ = calculate_dimensions(area, source.size[0] / source.size[1])
        return int(height), int(width)

    def conditioning(
        self, prompts: list[str], sources: Sequence[Image.Image] | None, height: int, width: int
    ) -> Conditioning:
        if sources is None or len(sources) != len(prompts):
            raise ConfigError(f"Qwen-Image-Edit needs one source image per prompt ({len(prompts)} prompts)")
        pipe = self.pipeline
        rgb = [to_rgb(s, f"source image {i}") for i, s in enumerate(sources)]
        sizes = [self.source_size(s) for s in rgb]
        other = [i for i, hw in enumerate(sizes) if hw != sizes[0]]
        if other:  # the pipeline would resize every source to source 0's aspect ratio
            raise ConfigError(
                f"source images {other} have another aspect ratio than source 0 ({sizes[other[0]]} vs "
                f"{sizes[0]}): batch sources of one aspect ratio"
            )
        src_h, src_w = sizes[0]
        resized = pipe.image_processor.resize(rgb, src_h, src_w)
        embeds, mask = self._encode_with_images(prompts, resized)
        pixels = pipe.image_processor.preprocess(resized, src_h, src_w).unsqueeze(2)  # one frame
        pixels = pixels.to(self.device, self.dtype)
        # one image at a time, as the pipeline with a generator per image (the mode: no randomness)
        latents = torch.cat([pipe._encode_vae_image(pixels[i : i + 1], None) for i in range(len(rgb))])
        b, channels, _, lh, lw = latents.shape
        packed = pipe._pack_latents(latents, b, channels, lh, lw)
        m = self.size_multiple
        grids = torch.tensor([[1, height // m, width // m], [1, src_h // m, src_w // m]])
        cond = Conditioning(embeds, mask, img_ids=grids, source_latents=packed)
        if self.guidance == "cfg":
            neg, neg_mask = self._encode_with_images([self.config.negative_prompt] * len(prompts), resized)
            cond.negative_embeds, cond.negative_pooled = neg, neg_mask
            cond.cfg_scale = self.config.guidance_scale
        return cond
