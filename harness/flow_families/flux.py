"""FLUX.1-dev and FLUX.1-Kontext on the flow seam (FluxPipeline, FluxKontextPipeline).

- Latents are packed 2x2 into tokens (B, S, 64); text and image positions go in as ids.
- Guidance-distilled models (``transformer.config.guidance_embeds``): the guidance value is an embedding, one
  forward per step. Others: classifier-free guidance with the negative prompt, both branches in one forward.
- Kontext: the source image's VAE latents (its mode: deterministic) are appended as extra tokens with image
  ids whose first coordinate is 1; the velocity is read from the target tokens only.
- The schedule is FLUX's resolution-dependent shift (mu from the image's token count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from evalsuite.harness.flow_config import FlowPolicyConfig
from evalsuite.harness.flow_families import PipelineFamily
from evalsuite.harness.flow_families._masked_text import shifted_sigmas
from evalsuite.harness.flow_trajectory import Conditioning
from evalsuite.images import to_rgb

# Flow-GRPO's FLUX LoRA targets: attention and MLP projections of the double and single blocks.
FLUX_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
)


class FluxFamily(PipelineFamily):
    """FLUX.1-dev / FLUX.1-Kontext: see the module docstring."""

    name: ClassVar[str] = "flux"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("FluxPipeline", "FluxKontextPipeline")
    default_lora_targets: ClassVar[tuple[str, ...]] = FLUX_LORA_TARGETS

    def __init__(self, pipeline: Any, config: FlowPolicyConfig) -> None:
        super().__init__(pipeline, config)
        self.is_edit = "Kontext" in type(pipeline).__name__
        distilled = bool(getattr(pipeline.transformer.config, "guidance_embeds", False))
        self.guidance = "embedding" if distilled else "cfg"
        self.size_multiple = pipeline.vae_scale_factor * 2

    # ---------------------------------------------------------------------------------- conditioning

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.config.max_sequence_length,
        )
        return embeds, pooled

    def conditioning(
        self, prompts: list[str], sources: Sequence[Image.Image] | None, height: int, width: int
    ) -> Conditioning:
        pipe, c = self.pipeline, self.config
        embeds, pooled = self.encode_text(prompts)
        img_ids = pipe._prepare_latent_image_ids(
            len(prompts), height // self.size_multiple, width // self.size_multiple, self.device, self.dtype
        )
        source_latents = None
        if sources is not None:
            source_latents, source_ids = self._encode_sources(sources, height, width)
            img_ids = torch.cat([img_ids, source_ids], dim=0)
        text_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        cond = Conditioning(embeds, pooled, text_ids, img_ids, source_latents=source_latents)
        if self.guidance == "embedding":
            cond.guidance = torch.full(
                (len(prompts),), c.guidance_scale, device=self.device, dtype=torch.float32
            )
        elif c.guidance_scale > 1.0:
            neg, neg_pooled = self.encode_text([c.negative_prompt] * len(prompts))
            cond.negative_embeds, cond.negative_pooled, cond.cfg_scale = neg, neg_pooled, c.guidance_scale
        return cond

    def _encode_sources(
        self, sources: Sequence[Image.Image], height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipeline
        rgb = [to_rgb(s, f"source image {i}") for i, s in enumerate(sources)]
        pixels = pipe.image_processor.preprocess(
            pipe.image_processor.resize(rgb, height, width), height, width
        )
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        latents = pipe._encode_vae_image(image=pixels, generator=None)  # the mode: deterministic
        b, ch, lh, lw = latents.shape
        packed = pipe._pack_latents(latents, b, ch, lh, lw)
        ids = pipe._prepare_latent_image_ids(b, lh // 2, lw // 2, self.device, self.dtype)
        ids[..., 0] = 1
        return packed, ids

    # ------------------------------------------------------------------------------------- schedule

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """FLUX's shifted schedule (resolution-dependent mu), num_steps + 1 values ending at 0."""
        seq_len = (height // self.size_multiple) * (width // self.size_multiple)
        return shifted_sigmas(self.pipeline.scheduler, np.linspace(1.0, 1 / num_steps, num_steps), seq_len)

    # ---------------------------------------------------------------------------------- the forward

    def velocity(
        self, model: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        dtype = self.dtype
        n = latents.shape[1]
        hidden = latents.to(dtype)
        if cond.source_latents is not None:
            hidden = torch.cat([hidden, cond.source_latents.to(dtype)], dim=1)
        # As the pipelines do: timestep = (σ·1000 in the model dtype) / 1000.
        timestep = (sigma.to(self.device) * 1000).to(dtype) / 1000
        embeds, pooled = cond.prompt_embeds, cond.pooled
        cfg = cond.negative_embeds is not None
        if cfg:
            hidden = torch.cat([hidden, hidden])
            timestep = torch.cat([timestep, timestep])
            embeds = torch.cat([embeds, cond.negative_embeds])
            pooled = torch.cat([pooled, cond.negative_pooled])
        out = model(
            hidden_states=hidden,
            timestep=timestep,
            guidance=cond.guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=cond.text_ids,
            img_ids=cond.img_ids,
            return_dict=False,
        )[0][:, :n]
        if cfg:
            pos, neg = out.chunk(2)
            out = neg + cond.cfg_scale * (pos - neg)
        return out

    # ------------------------------------------------------------------------------ noise, decoding

    def initial_noise(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """Packed fp32 noise; row i depends only on seeds[i] (drawn like FluxPipeline with that seed)."""
        channels = self.pipeline.transformer.config.in_channels // 4
        lh, lw = 2 * (height // self.size_multiple), 2 * (width // self.size_multiple)
        noise = self.seeded_noise(seeds, (channels, lh, lw))
        return self.pipeline._pack_latents(noise, len(seeds), channels, lh, lw).float()

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        pipe = self.pipeline
        return self.vae_decode(pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor))
