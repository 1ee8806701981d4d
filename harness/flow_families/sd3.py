"""Stable Diffusion 3 / 3.5 (Medium, Large) on the flow seam (StableDiffusion3Pipeline).

- Three text encoders through the pipeline's own ``encode_prompt``: CLIP-L and CLIP-G penultimate states
  (concatenated, zero-padded to T5's width) followed by T5's tokens; pooled = CLIP-L ⊕ CLIP-G projections.
- Real classifier-free guidance with the negative prompt: [uncond, cond] in one batched forward, in the
  pipeline's order, v = v_uncond + s·(v_cond − v_uncond); no CFG when the scale is ≤ 1 (as the pipeline).
- Latents are (C, h, w) at 1/8 of the image side; the transformer patchifies them itself (patch 2).
- The timestep is σ·1000 in fp32 (the scheduler's ``timesteps``), not divided by 1000 as FLUX's.
- The schedule is the scheduler's own: its static ``shift`` (3.0 for SD3.5), or a resolution-dependent mu
  when its config turns on dynamic shifting.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.harness.flow_config import FlowPolicyConfig
from evalsuite.harness.flow_families import PipelineFamily
from evalsuite.harness.flow_trajectory import Conditioning

# Flow-GRPO's SD3.5 LoRA targets (scripts/train_sd3.py in yifan123/flow_grpo): the joint attention's
# image and text projections.
SD3_LORA_TARGETS = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)


class SD3Family(PipelineFamily):
    """SD3 / SD3.5: see the module docstring."""

    name: ClassVar[str] = "sd3"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    default_lora_targets: ClassVar[tuple[str, ...]] = SD3_LORA_TARGETS

    def __init__(self, pipeline: Any, config: FlowPolicyConfig) -> None:
        super().__init__(pipeline, config)
        self.is_edit = False
        self.guidance = "cfg" if config.guidance_scale > 1.0 else "none"
        self.size_multiple = pipeline.vae_scale_factor * pipeline.transformer.config.patch_size

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.config.max_sequence_length,
        )
        return embeds, pooled

    def conditioning(
        self, prompts: list[str], sources: Sequence[Image.Image] | None, height: int, width: int
    ) -> Conditioning:
        if sources is not None:
            raise ConfigError("Stable Diffusion 3 is not an editing model; source images are not accepted")
        embeds, pooled = self.encode_text(prompts)
        cond = Conditioning(embeds, pooled)
        if self.guidance == "cfg":
            neg, neg_pooled = self.encode_text([self.config.negative_prompt] * len(prompts))
            cond.negative_embeds, cond.negative_pooled = neg, neg_pooled
            cond.cfg_scale = self.config.guidance_scale
        return cond

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The scheduler's schedule (its shift applied): num_steps + 1 values ending at 0."""
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        scheduler = copy.deepcopy(self.pipeline.scheduler)
        cfg = scheduler.config
        kwargs: dict[str, Any] = {}
        if cfg.get("use_dynamic_shifting", False):  # as the pipeline: mu from the latent token count
            seq_len = (height // self.size_multiple) * (width // self.size_multiple)
            kwargs["mu"] = calculate_shift(
                seq_len,
                cfg.get("base_image_seq_len", 256),
                cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5),
                cfg.get("max_shift", 1.16),
            )
        scheduler.set_timesteps(num_steps, device="cpu", **kwargs)
        return scheduler.sigmas.float().cpu()

    def velocity(
        self, model: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        hidden = latents.to(self.dtype)
        timestep = sigma.to(self.device, torch.float32) * 1000  # the scheduler's timesteps, fp32
        embeds, pooled = cond.prompt_embeds, cond.pooled
        cfg = cond.negative_embeds is not None
        if cfg:  # the pipeline's order: [uncond, cond]
            hidden = torch.cat([hidden, hidden])
            timestep = torch.cat([timestep, timestep])
            embeds = torch.cat([cond.negative_embeds, embeds])
            pooled = torch.cat([cond.negative_pooled, pooled])
        out = model(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if cfg:
            uncond, text = out.chunk(2)
            out = uncond + cond.cfg_scale * (text - uncond)
        return out

    def initial_noise(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """(B, C, H/8, W/8) fp32 noise, drawn like StableDiffusion3Pipeline with each row's seed."""
        pipe = self.pipeline
        channels, factor = pipe.transformer.config.in_channels, pipe.vae_scale_factor
        return self.seeded_noise(seeds, (channels, height // factor, width // factor)).float()

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        return self.vae_decode(latents)
