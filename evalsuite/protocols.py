"""Pinned generation protocols: the settings a paper's numbers were generated with, by name.

"My GenEval is lower than the paper's" is almost always a generation-setting gap (steps, guidance, resolution,
negative prompt, sigma schedule, seeds). ``evalsuite run --protocol NAME`` applies one of these presets,
refuses a flag that contradicts it, and records every value in the run's manifest and fingerprint, so a folder
never mixes protocols. Every value below names its source; docs/protocols.md lists them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from evalsuite.errors import ConfigError
from evalsuite.seeding import SEED_RULES

log = logging.getLogger(__name__)

# Sigma schedules a protocol can pin: the scheduler's own (from its config: SD3.5-M shifts by 3.0), or the
# explicit ``sigmas=np.linspace(1.0, 1/steps, steps)`` UniRL passes (the scheduler still applies its shift).
SIGMA_SCHEDULES = ("scheduler", "linspace")


@dataclass(frozen=True)
class Protocol:
    """One named generation preset. ``None`` in images_per_prompt / base_seed leaves that to the run
    (the benchmark's official number / ``--seed``); ``None`` in negative_prompt / max_sequence_length
    means "not passed to the pipeline" (its own default), which is itself pinned."""

    name: str
    description: str
    sources: tuple[str, ...]
    model_family: str  # what the numbers were made with (a warning, not an error, for another model)
    pipeline: str  # its diffusers pipeline class
    benchmarks: tuple[str, ...]  # the benchmarks it is meant for (a warning for another)
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str | None
    max_sequence_length: int | None
    sigmas: str  # one of SIGMA_SCHEDULES
    images_per_prompt: int | None
    seed_rule: str  # one of evalsuite.seeding.SEED_RULES
    base_seed: int | None
    noise_device: str | None  # device of each image's torch.Generator; None: the pipeline's device

    def __post_init__(self) -> None:
        if self.seed_rule not in SEED_RULES or self.sigmas not in SIGMA_SCHEDULES:
            raise ValueError(f"protocol {self.name}: unknown seed rule {self.seed_rule!r} or sigma schedule "
                             f"{self.sigmas!r}")

    def call_kwargs(self) -> dict[str, Any]:
        """Pipeline-call arguments beyond DiffusersGenerator's own settings."""
        out: dict[str, Any] = {}
        if self.max_sequence_length is not None:
            out["max_sequence_length"] = self.max_sequence_length
        if self.sigmas == "linspace":
            import numpy as np

            steps = self.num_inference_steps
            out["sigmas"] = np.linspace(1.0, 1 / steps, steps).tolist()
        return out

    def generator_settings(self) -> dict[str, Any]:
        """Keyword arguments of ``DiffusersGenerator`` (and its ``from_pretrained``)."""
        settings: dict[str, Any] = {
            "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
            "height": self.height, "width": self.width, "negative_prompt": self.negative_prompt,
            "call_kwargs": self.call_kwargs(),
        }
        if self.noise_device is not None:
            settings["noise_device"] = self.noise_device
        return settings

    def record(self) -> dict[str, Any]:
        """Every value, JSON-ready, for the manifest and the run fingerprint."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def check_flags(self, **given: Any) -> None:
        """Refuse explicit settings that contradict the protocol (``None`` = not given), naming both."""
        pinned = {"height": self.height, "width": self.width, "steps": self.num_inference_steps,
                  "guidance": self.guidance_scale, "negative_prompt": self.negative_prompt,
                  "images_per_prompt": self.images_per_prompt, "seed": self.base_seed}
        clashes = [f"--{flag.replace('_', '-')} {given[flag]!r} (protocol: {pinned[flag]!r})"
                   for flag in given if given[flag] is not None and pinned[flag] is not None
                   and given[flag] != pinned[flag]]
        if given.get("negative_prompt") is not None and self.negative_prompt is None:
            clashes.append(f"--negative-prompt {given['negative_prompt']!r} (protocol: none)")
        if clashes:
            raise ConfigError(f"--protocol {self.name} pins these settings; the flags contradict it: "
                              f"{'; '.join(clashes)}. Drop the flags, or run without --protocol.")

    def warn_if_not_meant_for(self, bench: str, pipeline: str | None) -> None:
        """A protocol applied to another benchmark or model family is allowed, but not the paper's setting."""
        if bench not in self.benchmarks:
            log.warning("protocol %s is meant for %s, not %s", self.name, ", ".join(self.benchmarks), bench)
        if pipeline is not None and pipeline != self.pipeline:
            log.warning("protocol %s is meant for %s (%s); this model loads %s", self.name, self.model_family,
                        self.pipeline, pipeline)


FLOWGRPO_SD35M_EVAL = Protocol(
    name="flowgrpo-sd3.5m-eval",
    description="Flow-GRPO's evaluation of SD3.5-Medium (GenEval 0.63 -> 0.95): 512^2, 40 steps, CFG 4.5, "
    "empty negative prompt, T5 max_sequence_length 128, the scheduler's own sigmas (ODE, noise_level 0).",
    sources=(
        "yifan123/flow_grpo config/grpo.py geneval_sd3 / general_ocr_sd3 / pickscore_sd3",
        "yifan123/flow_grpo scripts/train_sd3.py eval()",
    ),
    model_family="SD3.5-Medium (stabilityai/stable-diffusion-3.5-medium)",  # config.pretrained.model
    pipeline="StableDiffusion3Pipeline",  # train_sd3.py loads StableDiffusion3Pipeline
    benchmarks=("geneval",),  # its test set dataset/geneval/test_metadata.jsonl = GenEval's 553 prompts x 4
    height=512, width=512,  # config.resolution = 512, passed as height and width
    num_inference_steps=40,  # config.sample.eval_num_steps = 40 (10 in training)
    guidance_scale=4.5,  # config.sample.guidance_scale = 4.5 (eval() passes the same value)
    negative_prompt="",  # eval(): negative embeddings of [""]
    max_sequence_length=128,  # eval(): compute_text_embeddings(..., max_sequence_length=128), both prompts
    sigmas="scheduler",  # pipeline_with_logprob: retrieve_timesteps(..., sigmas=None) for SD3
    images_per_prompt=None,  # the benchmark's: GenEval 4 (test_metadata.jsonl holds each prompt 4 times)
    seed_rule="derived",  # eval() passes no generator (unseeded upstream): ours, reproducible
    base_seed=None,  # --seed
    noise_device=None,
)

GENEVAL2 = Protocol(
    name="geneval2",
    description="GenEval 2 as pinned by UniRL for the DPPO reproduction (SD3.5-M baseline 12.4): 512^2, "
    "40 steps, guidance 1.0 (no CFG), max_sequence_length 256, sigmas linspace(1, 1/40, 40), one image per "
    "prompt, seed = (42 + sha256(prompt)[:4] + k) % 2^31 on a CPU generator.",
    sources=(
        "Tencent-Hunyuan/UniRL PR #236 benchmarks/core/registry.py (image/geneval2)",
        "Tencent-Hunyuan/UniRL benchmarks/core/generate.py, benchmarks/run.py",
    ),
    model_family="SD3.5-Medium (stabilityai/stable-diffusion-3.5-medium)",  # PR title "(SD3.5)"
    pipeline="StableDiffusion3Pipeline",  # AutoPipelineForText2Image resolves SD3.5-M to it
    benchmarks=("geneval2",),
    height=512, width=512,  # generation kwargs height/width 512
    num_inference_steps=40,  # generation kwargs num_inference_steps 40
    guidance_scale=1.0,  # generation kwargs guidance_scale 1.0: SD3 runs CFG only above 1
    negative_prompt=None,  # no negative prompt in the generation kwargs
    max_sequence_length=256,  # generation kwargs max_sequence_length 256
    sigmas="linspace",  # t2i_linspace_sigmas=True: sigmas = np.linspace(1.0, 1/steps, steps)
    images_per_prompt=1,  # samples_per_prompt=1
    seed_rule="prompt_sha256",  # t2i_prompt_seed=True
    base_seed=42,  # benchmarks/run.py --seed default 42
    noise_device="cpu",  # torch.Generator("cpu").manual_seed(seed), one per image
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (FLOWGRPO_SD35M_EVAL, GENEVAL2)}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)}; "
                          "see `evalsuite protocols`)") from None


def describe_protocols() -> str:
    """The ``evalsuite protocols`` listing: name, what it is for, its values and sources."""
    lines = []
    for p in PROTOCOLS.values():
        rec = p.record()
        values = ", ".join(f"{k}={rec[k]!r}" for k in (
            "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt",
            "max_sequence_length", "sigmas", "images_per_prompt", "seed_rule", "base_seed", "noise_device"))
        lines += [f"{p.name}  [{p.model_family}; for {', '.join(p.benchmarks)}]", f"  {p.description}",
                  f"  {values}", *(f"  source: {s}" for s in p.sources), ""]
    return "\n".join(lines).rstrip()
