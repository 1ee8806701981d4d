"""The flow-model adapter seam: everything model-specific about a flow-matching pipeline, behind one protocol.

``FlowPolicy`` (flow_policy.py) owns what every family shares: the sampling loop, the SDE step and its
log-prob, the train-time recompute, the adapter-disabled reference, LoRA save/load and the trainer. A family
owns the rest: prompt encoding (and the negative prompt), latent layout and the initial noise, the
transformer call that returns the velocity (with its guidance style: distilled embedding or CFG), the sigma
schedule and its shift, source-image conditioning for editing models, the default LoRA targets, decoding.

Families are registered by name (registry kind ``flow_families``, entry-point group
``evalsuite.flow_families``) and claim the diffusers pipeline classes they drive; ``FlowPolicy`` picks the one
whose ``pipeline_classes`` holds model_index.json's ``_class_name`` (or the one ``flow.family`` names). A new
family is done when it passes tests/flow_family_tester.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from PIL import Image

from evalsuite.errors import ConfigError, PluginError, UnknownNameError
from evalsuite.harness.flow_config import FlowPolicyConfig
from evalsuite.harness.flow_trajectory import Conditioning

__all__ = ["FlowFamily", "PipelineFamily", "family_class", "pipeline_class_name"]


@runtime_checkable
class FlowFamily(Protocol):
    """One model family's operations, built per loaded pipeline as ``Family(pipeline, config)``.

    Latents are fp32 in the family's own layout (packed tokens for FLUX, (C, h, w) for SD3); the policy only
    stacks, indexes and steps them. ``velocity`` is the only place the transformer runs, so sampling and the
    train-time recompute see the same inputs in the same dtype.
    """

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]  # diffusers pipeline class names this family drives
    default_lora_targets: ClassVar[tuple[str, ...]]  # Flow-GRPO's LoRA targets for this transformer

    pipeline: Any
    is_edit: bool  # every prompt needs a source image
    guidance: str  # "embedding" (guidance-distilled), "cfg" (negative prompt, batched), or "none"
    size_multiple: int  # output sides are multiples of this (VAE factor x patch size)

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token embeddings, pooled embeddings) of ``prompts``."""
        ...

    def conditioning(
        self, prompts: list[str], sources: Sequence[Image.Image] | None, height: int, width: int
    ) -> Conditioning:
        """Everything the transformer needs besides latents and σ: text, negative prompt, guidance, source."""
        ...

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The pipeline's schedule (shift included): num_steps + 1 fp32 values on the CPU ending at 0."""
        ...

    def initial_noise(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """fp32 noise drawn as the pipeline draws it; row i depends only on seeds[i]."""
        ...

    def velocity(
        self, model: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """v(x, σ) for a batch (σ: (B,)), guidance applied, in the model's dtype."""
        ...

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        """RGB images of one batch of final latents."""
        ...


class PipelineFamily:
    """What the built-in families share (a convenience base, not part of the protocol): the pipeline and
    config, the transformer's device and dtype, per-row seeded noise and the VAE's affine latent scaling.
    ``flow.cfg_normalization``/``cfg_truncation`` (``cfg_options``) and ``flow.source_area``
    (``source_area_option``) are refused unless the family honours them: a silently ignored setting would
    train and render another model than the config says."""

    cfg_options: ClassVar[bool] = False
    source_area_option: ClassVar[bool] = False

    def __init__(self, pipeline: Any, config: FlowPolicyConfig) -> None:
        self.pipeline = pipeline
        self.config = config
        if not self.cfg_options and (config.cfg_normalization, config.cfg_truncation) != (0.0, 1.0):
            raise ConfigError(
                f"flow.cfg_normalization / flow.cfg_truncation are Z-Image pipeline options; the "
                f"{getattr(self, 'name', type(self).__name__)} family does not use them (leave 0 and 1)"
            )
        if not self.source_area_option and config.source_area is not None:
            raise ConfigError(
                f"flow.source_area is a Qwen-Image-Edit option; the "
                f"{getattr(self, 'name', type(self).__name__)} family does not use it (leave it null)"
            )

    @property
    def device(self) -> torch.device:
        return next(self.pipeline.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.transformer.dtype

    def seeded_noise(self, seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
        """(len(seeds), *shape) noise in the model dtype, row i from a generator seeded with seeds[i]: what
        the pipelines draw with one generator per image, whatever else is in the batch."""
        from diffusers.utils.torch_utils import randn_tensor

        gens = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        return randn_tensor((len(seeds), *shape), generator=gens, device=self.device, dtype=self.dtype)

    def vae_decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """(B, C, h, w) latents → RGB images, undoing the VAE's scaling and shift as the pipelines do."""
        vae = self.pipeline.vae
        latents = latents.to(self.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        pixels = vae.decode(latents, return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(pixels, output_type="pil")


def pipeline_class_name(model: str, revision: str | None = None) -> str:
    """model_index.json's ``_class_name`` of a hub id or folder (read without loading any weights)."""
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(model, revision=revision)
    return str(config.get("_class_name", ""))


def family_class(config: FlowPolicyConfig, class_name: str) -> type[FlowFamily]:
    """The registered family named by ``flow.family``, else the one whose pipelines include ``class_name``."""
    from evalsuite.registry import registry

    if config.family is not None:
        try:
            return registry.get("flow_families", config.family)
        except (PluginError, UnknownNameError) as e:
            raise ConfigError(f"flow.family: {e}") from None
    names = []
    for entry in registry.entries("flow_families"):
        with contextlib.suppress(PluginError):  # one broken plugin does not hide the others
            family = entry.load()
            names.append(f"{entry.name} ({', '.join(family.pipeline_classes)})")
            if class_name in family.pipeline_classes:
                return family
    raise ConfigError(
        f"{config.model}: no flow family drives {class_name or 'this pipeline'!r}; registered: "
        f"{'; '.join(names) or 'none'} (flow.family picks one by name)"
    )
