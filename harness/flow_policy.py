"""A flow-matching transformer as a Gaussian policy over denoising steps (Flow-GRPO), for any model family.

The diffusers pipeline supplies the frozen parts (text encoders, VAE, scheduler config); the sampling loop is
ours, because it must record every step's latents and log-prob and let the trainer recompute exactly the same
step later. Everything model-specific (prompt encoding and negative prompt, latent layout, the transformer
call and its guidance, the shifted schedule, source-image conditioning, decoding, default LoRA targets) is
the family's (``flow_families``: FLUX.1-dev/Kontext, SD3.5, …), picked from model_index.json's
``_class_name``. The family's ``velocity`` is the only place the transformer runs, so sampling and the
train-time recompute see the same inputs in the same dtype: the first inner step's ratio is 1.

LoRA via diffusers' PEFT integration (``lora``); the reference policy is the same transformer with the
adapter disabled (``adapter_disabled``), so no second copy is held. ``flow.full_finetune`` trains every
transformer weight instead; its reference is then a frozen copy, made only when β ≠ 0. The rollout's
data types are in ``flow_trajectory``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.generator import dtype_kwarg
from evalsuite.harness.flow_config import FlowLoraSettings, FlowPolicyConfig
from evalsuite.harness.flow_families import FlowFamily, family_class, pipeline_class_name
from evalsuite.harness.flow_trajectory import Conditioning, RefineHook, RefineRequest, Trajectory
from evalsuite.harness.lora import (
    add_transformer_lora,
    load_transformer_lora,
    save_transformer_lora,
    transformer_adapter_disabled,
    transformer_lora_metadata,
    transformer_lora_state_dict,
)
from evalsuite.harness.model_source import loading
from evalsuite.harness.sde import SDE_TYPES, SDEStep, predicted_x0, sde_step_with_logprob


class FlowPolicy:
    """Sampling with per-step log-probs and their exact recompute for one flow pipeline (any family)."""

    def __init__(
        self,
        pipeline: Any,
        config: FlowPolicyConfig,
        model_id: str | None = None,
        family: FlowFamily | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.config = config
        self.model_id = model_id or config.model
        self.family = family or family_class(config, type(pipeline).__name__)(pipeline, config)
        self.transformer = pipeline.transformer
        self.full_finetune = config.full_finetune
        self.reference: Any = None  # full fine-tuning with β ≠ 0: the frozen starting transformer
        self.is_edit = self.family.is_edit
        self.distilled = self.family.guidance == "embedding"
        if config.sde_type not in SDE_TYPES:
            raise ConfigError(f"flow.sde_type must be one of {SDE_TYPES}, got {config.sde_type!r}")

    # ------------------------------------------------------------------------------------ building

    @classmethod
    def from_pretrained(
        cls,
        config: FlowPolicyConfig,
        device: str | torch.device = "cpu",
        *,
        lora: bool = True,
        seed: int = 0,
        reference: bool = False,
    ) -> FlowPolicy:
        """Load the pipeline by hub id or folder, freeze everything, make it trainable (``lora``): a LoRA, or
        every transformer weight with ``flow.full_finetune`` (plus a frozen copy when ``reference``)."""
        from diffusers import DiffusionPipeline

        with loading("flow.model", config.model):  # no such folder, not cached offline: one clear line
            class_name = pipeline_class_name(config.model, config.revision)
        family = family_class(config, class_name)  # before the weights: an unknown family fails fast
        with loading("flow.model", config.model):
            pipe = DiffusionPipeline.from_pretrained(
                config.model, revision=config.revision, **dtype_kwarg(config.dtype)
            )  # no deprecation warning
        pipe.to(torch.device(device))
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
                module.eval()
        policy = cls(pipe, config, family=family(pipe, config))
        if lora and config.full_finetune:
            if reference:
                policy.reference = copy.deepcopy(policy.transformer)
            policy.transformer.requires_grad_(True)
        elif lora:
            policy.add_lora(config.lora, seed=seed)
        if config.gradient_checkpointing:
            policy.transformer.enable_gradient_checkpointing()
        return policy

    def lora_targets(self, lora: FlowLoraSettings) -> list[str]:
        """The configured LoRA targets, or the family's (Flow-GRPO's) when none are configured."""
        return list(self.family.default_lora_targets if lora.target_modules is None else lora.target_modules)

    def add_lora(self, lora: FlowLoraSettings, *, seed: int = 0) -> None:
        add_transformer_lora(
            self.transformer, replace(lora, target_modules=self.lora_targets(lora)), seed=seed
        )

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.transformer.dtype

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "model": self.model_id,
            "revision": c.revision,
            "family": self.family.name,
            "pipeline": type(self.pipeline).__name__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "guidance": self.family.guidance,
            "guidance_scale": c.guidance_scale,
            "num_steps": c.num_steps,
            "eval_num_steps": c.eval_num_steps,
            "noise_level": c.noise_level,
            "sde_type": c.sde_type,
            "height": c.height,
            "width": c.width,
            "lora": None
            if c.full_finetune
            else {"r": c.lora.r, "alpha": c.lora.alpha, "target_modules": self.lora_targets(c.lora)},
            "full_finetune": c.full_finetune,
        }

    # ---------------------------------------------------------------------------------- conditioning

    @torch.no_grad()
    def encode(
        self, prompts: Sequence[str], sources: Sequence[Image.Image] | None = None
    ) -> tuple[Conditioning, int, int]:
        """Text (and source-image) conditioning for a batch; returns (cond, height, width)."""
        if self.is_edit and sources is None:
            raise ConfigError(f"{self.model_id} is an editing model: every prompt needs a source image")
        if sources is not None and not self.is_edit:
            raise ConfigError(f"{self.model_id} is not an editing model; source images are not accepted")
        height, width = self.output_size(sources[0] if sources else None)
        if sources and self.config.height is None:
            sizes = {i: self.output_size(src) for i, src in enumerate(sources)}
            other = [i for i, hw in sizes.items() if hw != (height, width)]
            if other:  # one batch has one size: a smaller source would otherwise be upsized silently
                raise ConfigError(
                    f"source images {other} map to sizes {[sizes[i] for i in other[:3]]}, not "
                    f"{(height, width)} like source 0: set flow.height/width (every source is then "
                    "resized to it) or batch sources of one size"
                )
        cond = self.family.conditioning(list(prompts), sources, height, width)
        return cond, height, width

    @torch.no_grad()
    def with_prompts(self, cond: Conditioning, prompts: Sequence[str]) -> Conditioning:
        """``cond`` with its text replaced by ``prompts`` (source image, guidance and ids kept)."""
        if len(prompts) != cond.prompt_embeds.shape[0]:
            raise ConfigError(f"{len(prompts)} prompts for {cond.prompt_embeds.shape[0]} rows")
        embeds, pooled = self.family.encode_text(list(prompts))
        return replace(cond, prompt_embeds=embeds, pooled=pooled)

    def output_size(self, source: Image.Image | None = None) -> tuple[int, int]:
        """(height, width), multiples of the family's size multiple. Editing without a configured size keeps
        the source's size, scaled down (never up) to ``max_area`` — Kontext's own auto-resize would go to
        ~1 MP."""
        mult = self.family.size_multiple
        c = self.config
        if c.height is not None and c.width is not None:
            h, w = c.height, c.width
        elif source is not None:
            w, h = source.size
            scale = min(1.0, math.sqrt(c.max_area / float(w * h)))
            h, w = int(h * scale), int(w * scale)
        else:
            raise ConfigError("flow.height/width are null and there is no source image to take them from")
        h, w = h // mult * mult, w // mult * mult
        if h < mult or w < mult:
            raise ConfigError(f"output size {h}x{w} is too small (need multiples of {mult})")
        return h, w

    # --------------------------------------------------------------------- the family's operations

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The family's shifted schedule: num_steps + 1 values ending at 0."""
        return self.family.sigmas(num_steps, height, width)

    def velocity(
        self, model: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """v(x, σ) for a batch, in the model's dtype. σ: (B,). The one place the transformer runs."""
        return self.family.velocity(model, latents, sigma, cond)

    def initial_noise(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """fp32 noise in the family's latent layout; row i depends only on seeds[i] (drawn as the pipeline
        draws it)."""
        return self.family.initial_noise(seeds, height, width)

    # ------------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample(
        self,
        cond: Conditioning,
        seeds: Sequence[int],
        noise_seeds: Sequence[int] | None = None,
        *,
        height: int,
        width: int,
        num_steps: int | None = None,
        sde_steps: Sequence[int] | None = None,
        noise_level: float | None = None,
        batch_size: int | None = None,
        refine: RefineHook | None = None,
        refine_steps: Sequence[int] = (),
        decode: bool = True,
        model: Any = None,
    ) -> Trajectory:
        """Roll out a batch: ``seeds`` fix the initial noise, ``noise_seeds`` the SDE noise of each row.

        ``sde_steps``: steps drawn from the SDE (with a log-prob); all others are Euler steps. Default: all.
        ``refine`` is called after the velocity of each step in ``refine_steps`` with the decoded x̂0
        previews, and may return new prompts (one per row) that condition the following steps (PromptLoop).
        """
        c = self.config
        model = self.transformer if model is None else model
        num_steps = num_steps or c.num_steps
        noise_level = c.noise_level if noise_level is None else noise_level
        sde = sorted(set(range(num_steps) if sde_steps is None else sde_steps))
        if sde and (sde[0] < 0 or sde[-1] >= num_steps):
            raise ConfigError(f"sde_steps {sde} outside the {num_steps} steps")
        sigmas = self.sigmas(num_steps, height, width)
        if c.sde_type != "sde":  # cps, cps_gaussian
            sde = [j for j in sde if float(sigmas[j + 1]) > 0]  # its last step is deterministic
        noise_seeds = list(seeds) if noise_seeds is None else list(noise_seeds)
        bs = batch_size or len(seeds)
        parts = []
        for start in range(0, len(seeds), bs):
            rows = list(range(start, min(start + bs, len(seeds))))
            parts.append(
                self._sample_rows(
                    model,
                    cond.rows(rows),
                    [seeds[i] for i in rows],
                    [noise_seeds[i] for i in rows],
                    sigmas,
                    set(sde),
                    noise_level,
                    height,
                    width,
                    refine,
                    set(refine_steps),
                    start,
                )
            )
        latents = torch.cat([p[0] for p in parts])
        log_probs = torch.cat([p[1] for p in parts])
        actions = [a for p in parts for a in p[2]]
        traj = Trajectory(latents, log_probs, sigmas, sde, cond, height, width, noise_level, c.sde_type)
        traj.actions = actions
        if decode:
            traj.images = self.decode(latents[:, -1], height, width)
        return traj

    def _sample_rows(
        self,
        model: Any,
        cond: Conditioning,
        seeds: Sequence[int],
        noise_seeds: Sequence[int],
        sigmas: torch.Tensor,
        sde: set[int],
        noise_level: float,
        height: int,
        width: int,
        refine: RefineHook | None,
        refine_steps: set[int],
        offset: int,
    ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """One batch of rows of ``sample``; ``offset`` is the first row's index in the whole batch."""
        x = self.initial_noise(seeds, height, width)
        gens = [torch.Generator(device=self.device).manual_seed(int(s) + 1) for s in noise_seeds]
        steps = [x]
        log_probs = torch.full((len(seeds), len(sigmas) - 1), math.nan)
        actions: list[dict[str, Any]] = []
        sigma_max = float(sigmas[1]) if len(sigmas) > 1 else 0.0
        for j in range(len(sigmas) - 1):
            s, s_next = float(sigmas[j]), float(sigmas[j + 1])
            v = self.velocity(model, x, torch.full((len(seeds),), s), cond)
            if refine is not None and j in refine_steps:
                previews = self.decode(predicted_x0(v, x, s), height, width)
                rows = list(range(offset, offset + len(seeds)))
                prompts = refine(RefineRequest(step=j, sigma=s, previews=previews, rows=rows))
                if prompts is not None:
                    cond = self.with_prompts(cond, prompts)
                    actions.append({"step": j, "rows": rows, "prompts": list(prompts)})
            out: SDEStep = sde_step_with_logprob(
                v,
                x,
                s,
                s_next,
                noise_level=noise_level if j in sde else 0.0,
                sde_type=self.config.sde_type,  # type: ignore[arg-type]
                generator=gens,
                sigma_max=sigma_max,
            )
            if j in sde:
                log_probs[:, j] = out.log_prob.cpu()
            x = out.prev_sample
            steps.append(x)
        return torch.stack(steps, dim=1), log_probs, actions

    def step_log_prob(
        self,
        model: Any,
        traj: Trajectory,
        rows: torch.Tensor,
        steps: torch.Tensor,
        cond: Conditioning | None = None,
    ) -> SDEStep:
        """Recompute log p(x_{j+1} | x_j) for pairs (rows[k], steps[k]) of a trajectory (grad if enabled)."""
        device = self.device
        rows, steps = rows.long().cpu(), steps.long().cpu()
        x = traj.latents[rows, steps].to(device)
        x_next = traj.latents[rows, steps + 1].to(device)
        sigma, sigma_next = traj.sigmas[steps], traj.sigmas[steps + 1]
        cond = (traj.cond if cond is None else cond).rows(rows.to(traj.cond.prompt_embeds.device))
        v = self.velocity(model, x, sigma, cond)
        return sde_step_with_logprob(
            v,
            x,
            sigma.to(device),
            sigma_next.to(device),
            noise_level=traj.noise_level,
            sde_type=traj.sde_type,  # type: ignore[arg-type]
            prev_sample=x_next,
            sigma_max=traj.sigma_max,
        )

    # ------------------------------------------------------------------------------------- decoding

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, height: int, width: int, batch_size: int = 8
    ) -> list[Image.Image]:
        images: list[Image.Image] = []
        for start in range(0, latents.shape[0], batch_size):
            images.extend(self.family.decode(latents[start : start + batch_size], height, width))
        return images

    # ------------------------------------------------------------------------------------------ LoRA

    def adapter_disabled(self) -> contextlib.AbstractContextManager[None]:
        """The reference policy: the base transformer (LoRA off), restored afterwards even on error; after
        full fine-tuning, ``self.transformer`` is the frozen copy while the context lasts."""
        if self.full_finetune:
            return self._reference_swapped()
        return transformer_adapter_disabled(self.transformer)

    @contextlib.contextmanager
    def _reference_swapped(self) -> Any:
        if self.reference is None:
            raise ConfigError("full fine-tuning keeps a reference copy only when grpo.beta != 0")
        live, self.transformer = self.transformer, self.reference
        try:
            yield
        finally:
            self.transformer = live

    def save_pipeline(self, folder: str, transformer_state: dict[str, torch.Tensor] | None = None) -> None:
        """A complete diffusers folder with the fine-tuned transformer (``evalsuite run --model DIR``):
        the frozen components as loaded, the transformer from ``transformer_state`` (gathered whole when
        sharded) or the live module."""
        from safetensors.torch import save_file

        from evalsuite.harness.sharding import unsharded_class

        state = transformer_state
        if state is None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.transformer.state_dict().items()}
        others = {k: v for k, v in self.pipeline.components.items() if k != "transformer"}
        type(self.pipeline)(**others, transformer=None).save_pretrained(folder, safe_serialization=True)
        cls = unsharded_class(self.transformer)
        target = Path(folder) / "transformer"
        target.mkdir(parents=True, exist_ok=True)
        config = {**dict(self.transformer.config), "_class_name": cls.__name__}
        (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file(state, str(target / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        index_file = Path(folder) / "model_index.json"
        index = json.loads(index_file.read_text())
        index["transformer"] = ["diffusers", cls.__name__]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True))

    def load_transformer_weights(self, folder: str) -> None:
        """Restore a full fine-tune's transformer from a ``save_pipeline`` folder (resume without FSDP)."""
        from safetensors.torch import load_file

        state = load_file(f"{folder}/transformer/diffusion_pytorch_model.safetensors")
        self.transformer.load_state_dict(state)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return transformer_lora_state_dict(self.transformer)

    def save_lora(self, folder: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """diffusers LoRA format: loaded by ``pipe.load_lora_weights`` and ``evalsuite run --lora``."""
        save_transformer_lora(
            type(self.pipeline),
            folder,
            state_dict or self.lora_state_dict(),
            transformer_lora_metadata(self.transformer),
        )

    def load_lora(self, folder: str) -> None:
        """Restore adapter weights written by ``save_lora`` into the existing adapter (resume)."""
        load_transformer_lora(self.transformer, folder)


def choose_sde_steps(config: FlowPolicyConfig, rng: np.random.Generator) -> list[int]:
    """The step's SDE window (Flow-GRPO "Fast"): ``sde_window_size`` consecutive steps from a start drawn
    in ``sde_window_range``; every step when no window is configured."""
    n = config.num_steps
    if config.sde_window_size is None:
        return list(range(n))
    lo, hi = config.sde_window_range or [0, n - config.sde_window_size]
    start = int(rng.integers(lo, hi + 1))
    return list(range(start, start + config.sde_window_size))


def choose_train_steps(
    sde_steps: Sequence[int], n_rows: int, fraction: float, rng: np.random.Generator
) -> list[list[int]]:
    """Per row, the SDE steps that enter the loss: a random ``fraction`` of them (at least one)."""
    k = max(1, round(len(sde_steps) * fraction))
    return [sorted(rng.permutation(list(sde_steps))[:k].tolist()) for _ in range(n_rows)]
