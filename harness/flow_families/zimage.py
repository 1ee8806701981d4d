"""Z-Image (Tongyi-MAI/Z-Image, -Turbo) on the flow seam (ZImagePipeline), as diffusers' pipeline runs it.

- Text: the Qwen3 text encoder's second-to-last hidden states of the chat-templated prompt, one
  variable-length sequence per prompt (padding dropped); carried padded with the mask in ``pooled``
  (see ``_masked_text``).
- Guidance: Z-Image's own CFG convention, on whenever the scale is > 0 (the Turbo model runs with 0):
  v = -(pos + s·(pos − neg)), both branches in one forward, combined in fp32. The pipeline's options, per
  image and per step exactly as ``ZImagePipeline.__call__``: ``flow.cfg_truncation`` c ≤ 1 drops CFG (scale 0:
  the positive branch alone, no negative forward) on steps whose t = 1 − σ is > c; ``flow.cfg_normalization``
  r > 0 rescales a guided prediction whose L2 norm exceeds r·‖pos‖ down to that norm (the pipeline's
  ``True`` is r = 1). Both are per row, so a train-time batch mixing steps gets each step's rule.
- The transformer predicts −v at time t = 1 − σ (timestep (1000 − σ·1000) / 1000); its input is a list of
  (C, 1, h, w) latents, one per image.
- Latents (B, 16, H/8, W/8), noise drawn in fp32 whatever the model dtype (as ``prepare_latents``).
- Schedule: linspace(1, 1/n, n) through the scheduler with its static shift (6.0 for Z-Image, 3.0 for
  Turbo); mu from the token count only matters if a config turns dynamic shifting on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.harness.flow_config import FlowPolicyConfig
from evalsuite.harness.flow_families import PipelineFamily
from evalsuite.harness.flow_families._masked_text import pad_sequences, shifted_sigmas, unpad
from evalsuite.harness.flow_trajectory import Conditioning

# The attention projections and the SwiGLU MLP of every block (refiners included). PromptEcho's released
# Z-Image LoRA (r 64, alpha 128) does not publish its targets; these cover the same layers as Flow-GRPO's
# choice for the other DiTs plus the MLP.
ZIMAGE_LORA_TARGETS = (
    "attention.to_q",
    "attention.to_k",
    "attention.to_v",
    "attention.to_out.0",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
)


class ZImageFamily(PipelineFamily):
    """Z-Image / Z-Image-Turbo: see the module docstring."""

    name: ClassVar[str] = "zimage"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("ZImagePipeline",)
    default_lora_targets: ClassVar[tuple[str, ...]] = ZIMAGE_LORA_TARGETS
    cfg_options: ClassVar[bool] = True

    def __init__(self, pipeline: Any, config: FlowPolicyConfig) -> None:
        super().__init__(pipeline, config)
        self.is_edit = False
        self.guidance = "cfg" if config.guidance_scale > 0 else "none"  # the pipeline's rule, not > 1
        self.size_multiple = pipeline.vae_scale_factor * 2

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_sequence_length, D) padded hidden states and their (B, max_sequence_length) token mask."""
        sequences, _ = self.pipeline.encode_prompt(
            prompt=list(prompts),  # the pipeline templates the list in place
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.config.max_sequence_length,
        )
        return pad_sequences(sequences, self.config.max_sequence_length)

    def conditioning(
        self, prompts: list[str], sources: Sequence[Image.Image] | None, height: int, width: int
    ) -> Conditioning:
        if sources is not None:
            raise ConfigError("Z-Image is not an editing model; source images are not accepted")
        embeds, mask = self.encode_text(prompts)
        cond = Conditioning(embeds, mask)
        if self.guidance == "cfg":
            cond.negative_embeds, cond.negative_pooled = self.encode_text(
                [self.config.negative_prompt] * len(prompts)
            )
            cond.cfg_scale = self.config.guidance_scale
        return cond

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        seq_len = (height // self.size_multiple) * (width // self.size_multiple)
        return shifted_sigmas(self.pipeline.scheduler, get_default_z_image_sigmas(num_steps), seq_len)

    def velocity(
        self, model: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        n = latents.shape[0]
        images = list(latents.to(self.device, self.dtype).unsqueeze(2).unbind(0))  # (C, 1, h, w) each
        timestep = (1000 - sigma.to(self.device, torch.float32) * 1000) / 1000  # the pipeline's arithmetic
        texts = unpad(cond.prompt_embeds, cond.pooled)
        guided = self._guided_rows(timestep) if cond.negative_embeds is not None else []
        if guided:  # the pipeline's order: [positive, negative]
            negatives = unpad(cond.negative_embeds, cond.negative_pooled)
            images = images + [images[i] for i in guided]
            timestep = torch.cat([timestep, timestep[guided]])
            texts = texts + [negatives[i] for i in guided]
        out = [o.float() for o in model(images, timestep, texts, return_dict=False)[0]]
        preds = out[:n]
        for k, i in enumerate(guided):
            preds[i] = self._guide(out[i], out[n + k], cond.cfg_scale)
        return -torch.stack(preds).squeeze(2)

    def _guided_rows(self, timestep: torch.Tensor) -> list[int]:
        """Rows whose step runs CFG: all, unless ``cfg_truncation`` ≤ 1 and the row's t exceeds it (compared
        in float64, as the pipeline compares its Python floats)."""
        cut = self.config.cfg_truncation
        t = timestep.double().tolist()
        return [i for i, ti in enumerate(t) if not (cut <= 1 and ti > cut)]

    def _guide(self, pos: torch.Tensor, neg: torch.Tensor, scale: float) -> torch.Tensor:
        """One image's guided prediction (fp32), renormalised as the pipeline does when asked."""
        pred = pos + scale * (pos - neg)
        ratio = self.config.cfg_normalization
        if ratio > 0.0:
            max_norm = torch.linalg.vector_norm(pos) * float(ratio)
            norm = torch.linalg.vector_norm(pred)
            if norm > max_norm:
                pred = pred * (max_norm / norm)
        return pred

    def initial_noise(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """(B, 16, H/8, W/8) fp32 noise, row i drawn like ZImagePipeline with generator seeds[i]."""
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.pipeline
        side = 2 * (height // self.size_multiple), 2 * (width // self.size_multiple)
        gens = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        shape = (len(seeds), pipe.transformer.in_channels, *side)
        return randn_tensor(shape, generator=gens, device=self.device, dtype=torch.float32)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        return self.vae_decode(latents)
