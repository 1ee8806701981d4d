"""The generator contract: render prompts (optionally with source images) with explicit seeds."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from evalsuite.images import to_rgb
from evalsuite.reward import resolve_dtype


@dataclass
class GenerationRequest:
    """One image to render. The seed alone fixes the initial noise, whatever else is in the batch."""

    prompt: str
    seed: int
    source_image: Image.Image | None = None
    height: int | None = None
    width: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Generator(ABC):
    name: ClassVar[str] = ""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        """One RGB image per request, in order."""

    def describe(self) -> dict[str, Any]:
        """Model ids, revisions and sampler settings, for the run manifest."""
        return {"name": self.name}


def dtype_kwarg(dtype: str | torch.dtype) -> dict[str, torch.dtype]:
    """The dtype argument of ``DiffusionPipeline.from_pretrained``: ``dtype`` from diffusers 0.40 on (which
    warns that ``torch_dtype`` is deprecated), ``torch_dtype`` before (which ignores ``dtype``)."""
    import diffusers
    from packaging.version import Version

    name = "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"
    return {name: resolve_dtype(dtype)}


def resolve_lora(path: str) -> str:
    """A LoRA folder as given, or a flow-training run (``RUN/final/flow_lora``) or its ``final/`` folder;
    anything else (a Hub id, a file) is passed to diffusers unchanged."""
    from pathlib import Path

    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        for candidate in (folder / "flow_lora", folder / "final" / "flow_lora"):
            if any(candidate.glob("*.safetensors")):
                return str(candidate)
    return path


# Pipelines whose classifier-free guidance is ``true_cfg_scale`` (``--guidance`` maps to it).
TRUE_CFG_PIPELINES = ("QwenImage",)


class DiffusersGenerator(Generator):
    """Any diffusers text-to-image or image-editing pipeline (FLUX.1-dev, FLUX.1-Kontext, SD3…).

    Each request gets its own ``torch.Generator`` seeded with its seed, so an image depends only
    on (model, settings, prompt, seed) and not on batch size or position.
    """

    name = "diffusers"

    def __init__(
        self,
        pipeline: Any,
        *,
        model_id: str | None = None,
        revision: str | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float | None = 3.5,
        height: int = 1024,
        width: int = 1024,
        batch_size: int = 4,
        negative_prompt: str | None = None,
        call_kwargs: dict[str, Any] | None = None,
        noise_device: str | None = None,
        progress: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.model_id = model_id
        self.revision = revision
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.height = height
        self.width = width
        self.batch_size = batch_size
        self.negative_prompt = negative_prompt
        self.call_kwargs = dict(call_kwargs or {})
        # Where each request's torch.Generator lives (None: the pipeline's device). The same seed gives other
        # noise on a CPU and a CUDA generator, so a protocol that pins "cpu" (GenEval 2) matches its source.
        self.noise_device = noise_device
        self.lora: str | None = None
        self._params = set(inspect.signature(pipeline.__call__).parameters)
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=not progress)

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "bfloat16",
        revision: str | None = None,
        lora: str | None = None,
        **settings: Any,
    ) -> DiffusersGenerator:
        """Load a pipeline by Hub id or local folder (``model_index.json`` picks the pipeline class)."""
        from diffusers import DiffusionPipeline

        from evalsuite.hub_errors import loading
        from evalsuite.progress import enabled as progress_enabled
        from evalsuite.quiet import silence_progress_bars

        if not progress_enabled():  # -q / EVALSUITE_PROGRESS=0 cover "Loading pipeline components" too
            silence_progress_bars()

        with loading(model, "pipeline", "--model DIR"):
            pipe = DiffusionPipeline.from_pretrained(model, **dtype_kwarg(dtype), revision=revision)
        if lora is not None:
            lora = resolve_lora(lora)
            pipe.load_lora_weights(lora)
        pipe.to(torch.device(device))
        generator = cls(pipe, model_id=model, revision=revision, **settings)
        generator.lora = lora
        return generator

    @property
    def device(self) -> torch.device:
        return getattr(self.pipeline, "device", torch.device("cpu"))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pipeline": type(self.pipeline).__name__,
            "model": self.model_id,
            "revision": self.revision,
            "lora": self.lora,
            "dtype": str(getattr(self.pipeline, "dtype", "")).removeprefix("torch."),
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "negative_prompt": self.negative_prompt,
            "call_kwargs": self.call_kwargs,
            # only when pinned: older run folders' fingerprints have no such key
            **({"noise_device": self.noise_device} if self.noise_device is not None else {}),
        }

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        out: list[Image.Image | None] = [None] * len(requests)
        # Requests of one size (and with or without source) can share a pipeline call.
        buckets: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = (r.height or self.height, r.width or self.width, r.source_image is not None)
            buckets.setdefault(key, []).append(i)
        for (h, w, edit), idx in buckets.items():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start : start + self.batch_size]
                images = self._call([requests[i] for i in part], h, w, edit)
                for i, img in zip(part, images):
                    out[i] = img
        return out  # type: ignore[return-value]

    def _call(self, reqs: list[GenerationRequest], height: int, width: int, edit: bool) -> list[Image.Image]:
        gen_device = self.noise_device or ("cpu" if self.device.type == "mps" else self.device)
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r in reqs],
            "height": height,
            "width": width,
            "num_inference_steps": self.num_inference_steps,
            "generator": [torch.Generator(device=gen_device).manual_seed(r.seed) for r in reqs],
            "output_type": "pil",
        }
        negative = self.negative_prompt
        if self.guidance_scale is not None:
            if type(self.pipeline).__name__.startswith(TRUE_CFG_PIPELINES):
                # Qwen-Image's CFG is true_cfg_scale (guidance_scale is for distilled checkpoints), and it
                # only runs with a negative prompt: the model card's " " when none is given.
                kwargs["true_cfg_scale"] = self.guidance_scale
                negative = " " if negative is None and self.guidance_scale > 1 else negative
            elif "guidance_scale" in self._params:
                kwargs["guidance_scale"] = self.guidance_scale
        if negative is not None and "negative_prompt" in self._params:
            kwargs["negative_prompt"] = [negative] * len(reqs)
        if edit:
            kwargs["image"] = [to_rgb(r.source_image, f"source of {r.prompt[:40]!r}") for r in reqs]
            if "max_area" in self._params:
                # FluxKontextPipeline otherwise silently resizes to ~1 MP regardless of the request.
                kwargs["max_area"] = height * width
            if "_auto_resize" in self._params:
                kwargs["_auto_resize"] = False
        kwargs.update(self.call_kwargs)
        for r in reqs:
            if r.extra:
                raise ValueError("per-request extra kwargs are not supported by DiffusersGenerator")
        with torch.inference_mode():
            result = self.pipeline(**kwargs)
        return [img.convert("RGB") for img in result.images]
