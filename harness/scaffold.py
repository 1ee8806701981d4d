"""The run scaffold both trainers stand on, so each trainer file holds only its own loop.

Setup (threads, accelerator, engine and log-prob checks, output folder, config, seeds), optimizer and
warm-up schedule, finding and validating the checkpoint to resume, the trainer state a checkpoint keeps,
the manifest, logs, progress bar and the atomic final export. What goes into a checkpoint stays with each
trainer (evalsuite.harness.checkpoint writes it atomically).
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalsuite.errors import ConfigError, EvalsuiteError
from evalsuite.harness.checkpoint import CHECKPOINTS, LATEST, latest_checkpoint
from evalsuite.harness.config import OptimConfig, save_config
from evalsuite.harness.metrics import MetricsLog
from evalsuite.harness.resume import check_resume
from evalsuite.reward import resolve_dtype
from evalsuite.store import atomic_write_json

# ------------------------------------------------------------------------------------------- checks


def check_engine(accelerator: Any) -> bool:
    """Whether this run shards its policies (FSDP2, harness/sharding.py); refuse what cannot work.

    FSDP must be version 2: its per-block all-gather lets the samplers run the sharded module. DeepSpeed
    ZeRO-3 stays refused: its parameters are gathered only inside DeepSpeed's engine forward, and our
    samplers call the module many times per step outside it (and HF ``generate`` would need its hooks)."""
    from accelerate.utils import DistributedType

    from evalsuite.harness.sharding import check_fsdp_version, fsdp_requested

    kind = accelerator.distributed_type
    stage = None
    if kind == DistributedType.DEEPSPEED:
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        stage = getattr(plugin, "zero_stage", None)
    if stage == 3:
        raise ConfigError(
            "DeepSpeed ZeRO-3 shards the parameters, but gathers them only inside its engine's forward while "
            "the samplers run the module directly: launch with FSDP (fsdp_version: 2), which shards and "
            "samples, or with DDP / DeepSpeed ZeRO stage 1/2"
        )
    if not fsdp_requested(accelerator):
        return False
    check_fsdp_version()
    return True


def logprobs_source(config: Any) -> str:
    """``grpo.logprobs_from`` resolved: "auto" is the sampler in float32 and a recompute otherwise."""
    source = config.grpo.logprobs_from
    if source == "auto":
        return "sampler" if resolve_dtype(config.policy.dtype) == torch.float32 else "recompute"
    return source


def check_logprobs_source(config: Any) -> None:
    """``grpo.logprobs_from`` is valid and the self-test can pass with it (any config with ``grpo`` and
    ``policy`` sections: the rewriter's and the flow trainer's PromptRL mode)."""
    g = config.grpo
    if g.logprobs_from not in ("auto", "sampler", "recompute"):
        raise ConfigError(f"grpo.logprobs_from must be auto, sampler or recompute, got {g.logprobs_from!r}")
    low_precision = resolve_dtype(config.policy.dtype) != torch.float32
    if logprobs_source(config) == "sampler" and low_precision and g.ratio_check and g.ratio_tol < 1e-3:
        raise ConfigError(
            f"grpo.logprobs_from=sampler with policy.dtype={config.policy.dtype}: the KV-cache sampler's "
            "log-probs differ from the train-time forward by ~1e-2 in low precision, so the on-policy "
            f"self-test would fail at tol {g.ratio_tol:g}; use logprobs_from=recompute (exact) or raise "
            "grpo.ratio_tol to ~0.05"
        )


# -------------------------------------------------------------------------------------------- setup


@dataclass
class TrainResult:
    """What a finished (or resumed and finished) run leaves: its folder, final weights, per-step metrics."""

    out_dir: Path
    steps: int
    final_dir: Path | None
    last_checkpoint: Path | None
    metrics: list[dict[str, Any]]


@dataclass
class Run:
    """A started run: its processes, its folder and the config changes earlier resumes recorded."""

    accelerator: Any
    out_dir: Path
    config_history: list[dict[str, Any]] = field(default_factory=list)
    sharded: bool = False  # FSDP2: the trained policies are sharded over the processes (sharding.py)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> Any:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def start_run(config: Any, check_world: Callable[[int], None]) -> Run:
    """Threads, accelerator, engine check, ``check_world(number of processes)``, the resume check (before
    config.yaml is overwritten), the output folder with the config, and the global seeds."""
    from accelerate import Accelerator

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    # Without CUDA, ranked processes (accelerate launch --multi_gpu on a CPU machine) need cpu=True to
    # form a gloo process group; otherwise each process would silently train alone.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=multi_cpu)
    sharded = check_engine(accelerator)
    check_world(accelerator.num_processes)
    out_dir = Path(config.out_dir)
    history = check_resume(config, out_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    accelerator.wait_for_everyone()
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)
    return Run(accelerator, out_dir, history, sharded)


class Warmup:
    """Linear warmup then constant: the schedule does not depend on the total number of steps, so a run
    can be extended by resuming with a larger ``steps``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0


def adamw(params: Any, o: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def prepare_trained(run: Run, model: Any, o: OptimConfig, frozen: Any = None) -> tuple[Any, Any]:
    """The trained module and its AdamW over its trainable parameters, ready for the engine: sharded per
    block under FSDP2 (the optimizer then holds the shards; a ``frozen`` companion such as the KL
    reference is sharded alike), else through ``accelerator.prepare`` (DDP)."""
    if run.sharded:
        from evalsuite.harness.sharding import shard

        shard(model, run.device, run.world)
        if frozen is not None:
            shard(frozen, run.device, run.world)
        return model, adamw([p for p in model.parameters() if p.requires_grad], o)
    return run.accelerator.prepare(model, adamw([p for p in model.parameters() if p.requires_grad], o))


def warmup_schedule(optimizer: Any, o: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Warmup(o.warmup_steps))


# ------------------------------------------------------------------------------------------- resume


def checkpoint_to_resume(run: Run, config: Any) -> Path | None:
    """The latest checkpoint when ``resume`` is on. Starting over forgets the old pointer first, so a
    crash before the first save cannot resume the old run."""
    if not config.resume and run.is_main:
        (run.out_dir / CHECKPOINTS / LATEST).unlink(missing_ok=True)
    run.accelerator.wait_for_everyone()
    return latest_checkpoint(run.out_dir) if config.resume else None


def resumed_step(ckpt: Path, state: dict[str, Any], prompts_per_step: int, tracker: Any) -> int:
    """The step a loaded checkpoint resumes at (its data position must match) and the tracker restored."""
    start = int(state["step"])
    if state["data_position"] != start * prompts_per_step:
        raise ConfigError(
            f"{ckpt}: data position {state['data_position']} does not match "
            f"grpo.prompts_per_step={prompts_per_step}; keep it unchanged to resume"
        )
    if tracker is not None and state.get("tracker"):
        tracker.load_state_dict(state["tracker"])
    return start


def trainer_state(config: Any, step: int, world: int, tracker: Any, **extra: Any) -> dict[str, Any]:
    """What a checkpoint keeps besides weights and optimizers (JSON): the data position, the config."""
    return {
        "data_position": step * config.grpo.prompts_per_step,
        "world_size": world,
        "config": config.to_dict(),
        **extra,
        "tracker": tracker.state_dict() if tracker is not None else None,
    }


# ------------------------------------------------------------------------------ logs and final export


def manifest(kind: str, config: Any, world: int, parts: dict[str, Any], packages: tuple[str, ...]) -> dict:
    """manifest.json's content: what ran (config, models, rewards) and the library versions."""
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    versions.update({p: importlib.import_module(p).__version__ for p in packages})
    return {"kind": kind, "config": config.to_dict(), "world_size": world, **parts, "versions": versions}


def open_logs(run: Run, config: Any, start: int, describe: Callable[[], dict]) -> MetricsLog | None:
    """On the main process: the metrics log cut back to ``start`` and manifest.json (``describe()`` plus
    the history of config changes); other ranks log nothing."""
    if not run.is_main:
        return None
    logger = MetricsLog(run.out_dir, config, start)
    atomic_write_json(run.out_dir / "manifest.json", {**describe(), "history": run.config_history})
    return logger


def progress_bar(run: Run, config: Any, start: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    from evalsuite.progress import enabled as progress_enabled

    return tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc=desc,
        disable=not (run.is_main and config.progress and progress_enabled()),
        dynamic_ncols=True,
    )


def export_final(run: Run, write: Callable[[Path], None], logger: MetricsLog | None) -> Path:
    """``write(tmp)`` on the main process, then renamed to ``out_dir/final`` (never half written); the
    logs are closed."""
    final_dir = run.out_dir / "final"
    if run.is_main:
        tmp = run.out_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)
        if logger is not None:
            logger.close()
    run.accelerator.wait_for_everyone()
    return final_dir


# ---------------------------------------------------------------------------------------------- CLI


def run_cli(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    train: Callable[[str, list[str]], TrainResult],
    saved: str,
) -> int:
    """A trainer's command line: a recipe, ``--set KEY=VALUE`` overrides and shortcuts; ``train(recipe,
    overrides)`` runs it. Errors in the recipe or the run are one line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="YAML recipe (harness/recipes/*.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set grpo.beta=0.01 (repeatable)",
    )
    parser.add_argument("--out-dir", help="shortcut for --set out_dir=DIR")
    parser.add_argument("--steps", type=int, help="shortcut for --set steps=N")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"out_dir={args.out_dir}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.no_resume:
        overrides.append("resume=false")
    try:
        result = train(args.config, overrides)
    except EvalsuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {result.steps} steps; {saved} saved to {result.final_dir}")
    return 0
