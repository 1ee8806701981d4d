"""Qwen-Image and Qwen-Image-2512 on the flow seam (QwenImagePipeline), as diffusers' pipeline runs them.

- Text: the Qwen2.5-VL text encoder's last hidden states of the system-templated prompt (the template's
  first 34 tokens dropped), padded to the batch's longest prompt; the token mask rides in ``pooled``
  (see ``_masked_text``) and goes to the transformer as ``encoder_hidden_states_mask`` (none when every
  token is real, as the pipeline).
- "True CFG": ``flow.guidance_scale`` is the pipeline's ``true_cfg_scale`` (on when > 1; the model has no
  guidance embedding). The positive and negative branches are two forwards (their text lengths differ),
  combined as v = neg + s·(pos − neg) and rescaled per token to the positive branch's norm.
- Latents are packed 2x2 into tokens (B, S, 64); the timestep is (σ·1000 in the model dtype) / 1000;
  ``Conditioning.img_ids`` holds the (frames, h, w) token grids the transformer's RoPE needs (one row per
  image in the sequence: the target's, then an editing model's source; see qwenimage_edit.py).
- Schedule: linspace(1, 1/n, n) with a dynamic exponential shift (mu from the token count, max_shift 0.9
  at 8192 tokens) stretched to a terminal sigma of 0.02: the scheduler config's own.
- Decoding: the causal-3D VAE with per-channel latents mean/std, one frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.harness.flow_config import FlowPolicyConfig
from evalsuite.harness.flow_families import PipelineFamily
from evalsuite.harness.flow_families._masked_text import shifted_sigmas
from evalsuite.harness.flow_trajectory import Conditioning

# The joint attention's projections that reach the image (image q/k/v/out, text q/k/v) and the image MLP.
# The common 12-module Qwen-Image LoRA also adapts the text stream's outputs (attn.to_add_out, txt_mlp);
# in the last block those feed nothing, so they would hold adapters without a gradient. Add them with
# flow.lora.target_modules when wanted.
QWENIMAGE_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
)


class QwenImageFamily(PipelineFamily):
    """Qwen-Image / Qwen-Image-2512: see the module docstring."""

    name: ClassVar[str] = "qwenimage"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("QwenImagePipeline",)
    default_lora_targets: ClassVar[tuple[str, ...]] = QWENIMAGE_LORA_TARGETS

    def __init__(self, pipeline: Any, config: FlowPolicyConfig) -> None:
        super().__init__(pipeline, config)
        self.is_edit = False
        self.guidance = "cfg" if config.guidance_scale > 1.0 else "none"
        self.size_multiple = pipeline.vae_scale_factor * 2

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) embeddings padded to the longest prompt and their (B, L) token mask (int64)."""
        embeds, mask = self.pipeline.encode_prompt(
            prompt=list(prompts), device=self.device, max_sequence_length=self.config.max_sequence_length
        )
        if mask is None:  # every token real
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return embeds, mask

    def conditioning(
        self, prompts: list[str], sources: Sequence[Image.Image] | None, height: int, width: int
    ) -> Conditioning:
        if sources is not None:
            raise ConfigError("Qwen-Image is not an editing model; source images are not accepted")
        embeds, mask = self.encode_text(prompts)
        grid = (1, height // self.size_multiple, width // self.size_multiple)  # the pipeline's img_shapes
        cond = Conditioning(embeds, mask, img_ids=torch.tensor([grid]))
        if self.guidance == "cfg":
            neg, neg_mask = self.encode_text([self.config.negative_prompt] * len(prompts))
            cond.negative_embeds, cond.negative_pooled = neg, neg_mask
            cond.cfg_scale = self.config.guidance_scale
        return cond

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        seq_len = (height // self.size_multiple) * (width // self.size_multiple)
        return shifted_sigmas(self.pipeline.scheduler, np.linspace(1.0, 1 / num_steps, num_steps), seq_len)

    def _forward(
        self,
        model: Any,
        hidden: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        img_shapes: list,
    ) -> torch.Tensor:
        mask = mask.to(self.device)
        return model(
            hidden_states=hidden,
            timestep=timestep,
            guidance=None,
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,  # as encode_prompt returns it
            encoder_hidden_states=embeds.to(self.device, self.dtype),
            img_shapes=img_shapes,
            return_dict=False,
        )[0]

    def velocity(
        self, model: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        n = latents.shape[1]
        hidden = latents.to(self.device, self.dtype)
        if cond.source_latents is not None:  # Qwen-Image-Edit: the source's tokens after the target's
            hidden = torch.cat([hidden, cond.source_latents.to(self.device, self.dtype)], dim=1)
        timestep = (sigma.to(self.device, torch.float32) * 1000).to(self.dtype) / 1000  # as the pipeline
        img_shapes = [[tuple(int(v) for v in grid) for grid in cond.img_ids]] * latents.shape[0]
        out = self._forward(model, hidden, timestep, cond.prompt_embeds, cond.pooled, img_shapes)[:, :n]
        if cond.negative_embeds is None:
            return out
        neg = self._forward(
            model, hidden, timestep, cond.negative_embeds, cond.negative_pooled, img_shapes
        )[:, :n]
        combined = neg + cond.cfg_scale * (out - neg)
        return combined * (torch.norm(out, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))

    def initial_noise(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """Packed fp32 noise; row i drawn like QwenImagePipeline with generator seeds[i]."""
        channels = self.pipeline.transformer.config.in_channels // 4
        lh, lw = 2 * (height // self.size_multiple), 2 * (width // self.size_multiple)
        noise = self.seeded_noise(seeds, (1, channels, lh, lw))
        return self.pipeline._pack_latents(noise, len(seeds), channels, lh, lw).float()

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        pipe, vae = self.pipeline, self.pipeline.vae
        latents = pipe._unpack_latents(latents.to(self.device), height, width, pipe.vae_scale_factor)
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        pixels = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0]  # the pipeline's order
        return pipe.image_processor.postprocess(pixels, output_type="pil")
