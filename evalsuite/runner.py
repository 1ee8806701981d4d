"""What ``evalsuite run`` does, as a function: build generator and benchmark from options, evaluate."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

from evalsuite.errors import ConfigError
from evalsuite.evaluate import RunResult, distributed_rank, evaluate
from evalsuite.options import check_options

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    return "cpu"


def parse_options(items: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """``["mode=strict", "threshold=0.4"]`` → typed dict (YAML scalars: numbers, booleans, null)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def model_kind(model: str) -> str:
    """'pipeline' (a diffusers folder or hub id) or 'images' (a folder of images to score only)."""
    path = Path(model)
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "pipeline"
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file()):
            return "images"
        raise ConfigError(f"{model} is neither a diffusers pipeline folder (model_index.json) nor a folder "
                          "of images")
    return "pipeline"  # a hub id


def _accepted(factory: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


# what the generator sets itself (per request, or through its own flags)
_GENERATOR_OWNED = {"prompt": "", "generator": "", "output_type": "", "image": "", "latents": "",
                    "num_images_per_prompt": "--images-per-prompt", "height": "--height", "width": "--width",
                    "num_inference_steps": "--steps", "guidance_scale": "--guidance",
                    "true_cfg_scale": "--guidance", "negative_prompt": "--negative-prompt"}


def _pipeline_call_kwargs(pipeline_args: dict[str, Any], settings: dict[str, Any]) -> None:
    """Merge ``--pipeline-arg`` into the generator settings' ``call_kwargs``; refuse what the generator sets
    itself or the protocol pins (a run must not mix two sources for one setting)."""
    for key in pipeline_args:
        if key in _GENERATOR_OWNED:
            hint = f" (use {_GENERATOR_OWNED[key]})" if _GENERATOR_OWNED[key] else ""
            raise ConfigError(f"--pipeline-arg {key}: evalsuite sets it itself{hint}")
    pinned = settings.get("call_kwargs") or {}
    clash = sorted(set(pinned) & set(pipeline_args))
    if clash:
        raise ConfigError(f"--pipeline-arg {', '.join(clash)}: pinned by the protocol")
    settings["call_kwargs"] = {**pinned, **pipeline_args}


def _check_pipeline_args(pipeline_args: dict[str, Any], generator: Any) -> None:
    """Every ``--pipeline-arg`` is an argument of this pipeline's ``__call__`` (else the valid ones)."""
    takes = inspect.signature(generator.pipeline.__call__).parameters
    unknown = sorted(set(pipeline_args) - set(takes))
    if unknown:
        valid = sorted(k for k in takes if k not in _GENERATOR_OWNED and k not in ("self", "kwargs"))
        name = type(generator.pipeline).__name__
        raise ConfigError(f"--pipeline-arg {', '.join(unknown)}: {name} takes no such argument; it takes "
                          f"{', '.join(valid)}")


def _check_follows(protocol: Any, bench: str, generator: Any, benchmark: Any) -> None:
    """The pipeline and benchmark can follow ``protocol`` (an error if not); a warning if they are not
    what it was made for."""
    pipeline = type(generator.pipeline).__name__
    takes = inspect.signature(generator.pipeline.__call__).parameters
    missing = sorted(set(protocol.call_kwargs()) - set(takes))
    if missing:
        raise ConfigError(f"--protocol {protocol.name}: {pipeline} takes no {', '.join(missing)} argument, "
                          f"so it cannot follow the protocol (meant for {protocol.pipeline})")
    if protocol.seed_rule != "derived" and "seed_rule" not in inspect.signature(benchmark.samples).parameters:
        raise ConfigError(f"--protocol {protocol.name}: benchmark {bench} overrides samples() without a "
                          f"seed_rule parameter, so it cannot seed images by the rule {protocol.seed_rule!r}")
    protocol.warn_if_not_meant_for(bench, pipeline)


def run(
    bench: str,
    model: str,
    *,
    output_dir: str | None = None,
    lora: str | None = None,
    rewriter: str | None = None,
    revision: str | None = None,
    images_per_prompt: int | None = None,
    limit: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    negative_prompt: str | None = None,
    seed: int | None = None,
    batch_size: int = 4,
    score_batch_size: int = 16,
    data_dir: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    options: dict[str, Any] | None = None,
    leaderboard: str | None = "leaderboards",
    protocol: str | None = None,
    pipeline_args: dict[str, Any] | None = None,
) -> RunResult | None:
    """``evalsuite run``. A ``protocol`` (``evalsuite.protocols``) pins the generation settings; a setting
    given here that contradicts it is an error. ``seed`` defaults to the protocol's base seed, else 0."""
    from evalsuite.generator import DiffusersGenerator
    from evalsuite.registry import registry

    pinned = None
    if protocol is not None:
        from evalsuite.protocols import get_protocol

        pinned = get_protocol(protocol)
        pinned.check_flags(height=height, width=width, steps=steps, guidance=guidance,
                           negative_prompt=negative_prompt, images_per_prompt=images_per_prompt, seed=seed)
        images_per_prompt = images_per_prompt or pinned.images_per_prompt
        seed = pinned.base_seed if seed is None else seed
    seed = 0 if seed is None else seed
    device = device or default_device()
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    factory = registry.get("benchmarks", bench)
    check_options(bench, factory, options)  # before building anything (models load in constructors)
    bench_kwargs = {"device": device, "dtype": dtype, **(options or {})}
    if data_dir and "data_dir" in inspect.signature(factory).parameters:  # named, not swallowed by **kwargs
        bench_kwargs["data_dir"] = data_dir
    benchmark = factory(**_accepted(factory, bench_kwargs))

    kind = model_kind(model)
    model_name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name)
    tag = f"-{protocol}" if protocol else ""
    out = Path(output_dir or Path("runs") / f"{bench}-{model_name}{tag}-s{seed}")
    generator = None
    if kind == "pipeline":
        settings = {k: v for k, v in {
            "num_inference_steps": steps, "guidance_scale": guidance, "height": height, "width": width,
            "negative_prompt": negative_prompt}.items() if v is not None}
        if pinned is not None:
            settings = pinned.generator_settings()
        if pipeline_args:
            _pipeline_call_kwargs(pipeline_args, settings)
        generator = DiffusersGenerator.from_pretrained(
            model, device=device, dtype=dtype, revision=revision, lora=lora, batch_size=batch_size,
            progress=False, **settings)
        if pinned is not None:
            _check_follows(pinned, bench, generator, benchmark)
        if pipeline_args:
            _check_pipeline_args(pipeline_args, generator)
    elif lora is not None or rewriter is not None or pinned is not None or pipeline_args:
        raise ConfigError("--lora, --rewriter, --protocol and --pipeline-arg need a pipeline "
                          "(--model ID_OR_PIPELINE_DIR), not a folder of images")
    prompt_rewriter = None
    if rewriter is not None:
        from evalsuite.registry import load_rewriter

        prompt_rewriter = load_rewriter(rewriter, device=device, dtype=dtype)
    result = evaluate(
        benchmark, out, generator=generator, images_dir=model if kind == "images" else None,
        images_per_prompt=images_per_prompt, limit=limit, seed=seed, gen_batch_size=batch_size,
        score_batch_size=score_batch_size, data_dir=data_dir, rewriter=prompt_rewriter,
        run_info={"command": {"bench": bench, "model": model, "lora": lora, "rewriter": rewriter,
                              "options": options or {},
                              "device": device, "dtype": dtype, "protocol": protocol,
                              "pipeline_args": pipeline_args or {}}},
        protocol=pinned,
    )
    rank, _ = distributed_rank()
    if result is not None and leaderboard and rank == 0:
        from evalsuite.leaderboard import add_run

        label = model + (f" + {lora}" if lora else "") + (f" + rewriter {rewriter}" if rewriter else "")
        add_run(leaderboard, out, model=label)
    return result
