"""What a flow run's checkpoint holds: the live adapters (flow LoRA, the LM's), optimizers, the EMA shadow
and the trainer state, written atomically by evalsuite.harness.checkpoint; and the final weights' layout."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError
from evalsuite.harness.checkpoint import TRAINER_STATE, load_state, restore_rng, write_checkpoint
from evalsuite.harness.ema import EMA
from evalsuite.harness.flow_policy import FlowPolicy
from evalsuite.harness.rewriter import RewriterPolicy, save_rewriter
from evalsuite.store import atomic_write_json


def save_checkpoint(
    out_dir: Path,
    step: int,
    *,
    flow: FlowPolicy,
    lm: Any,
    lm_model: Any,
    optimizers: dict[str, Any],
    ema: EMA | None,
    accelerator: Any,
    state: dict[str, Any],
    keep: int | None,
) -> Path:
    """Live adapters (not EMA), optimizers, EMA shadow and trainer state, atomically (checkpoint.py)."""

    def write(tmp: Path) -> None:
        save_models(tmp, flow=flow, lm=lm, lm_model=lm_model, accelerator=accelerator, ema=None)
        for key, opt in optimizers.items():
            torch.save(opt.state_dict(), tmp / f"{key}.pt")
        if ema is not None:
            torch.save(ema.state_dict(), tmp / "ema.pt")
        atomic_write_json(tmp / TRAINER_STATE, {**state, "step": step})

    return write_checkpoint(out_dir, step, accelerator, write, keep)


def save_models(
    folder: Path, *, flow: FlowPolicy, lm: Any, lm_model: Any, accelerator: Any, ema: EMA | None
) -> None:
    """flow_lora/ (diffusers LoRA format: ``evalsuite run --model BASE --lora DIR/flow_lora``); PromptRL's
    rewriter/ (``evalsuite run --rewriter DIR/rewriter``); PromptLoop's refiner adapter lm_adapter/."""
    if flow.trainable_parameters():
        ctx = ema.swapped() if ema is not None else nullcontext()
        with ctx:
            flow.save_lora(str(folder / "flow_lora"))
    if lm is None:
        return
    model = accelerator.unwrap_model(lm_model)
    if isinstance(lm, RewriterPolicy):
        save_rewriter(folder / "rewriter", lm, model)
    else:
        model.save_pretrained(str(folder / "lm_adapter"), safe_serialization=True)


def _lm_weights_file(path: Path) -> Path:
    for candidate in (path / "rewriter" / "adapter", path / "lm_adapter"):
        if (candidate / "adapter_model.safetensors").is_file():
            return candidate / "adapter_model.safetensors"
    raise ConfigError(f"{path}: no LM adapter (rewriter/adapter or lm_adapter) in this checkpoint")


def load_checkpoint(
    path: Path,
    *,
    flow: FlowPolicy,
    lm_model: Any,
    optimizers: dict[str, Any],
    ema: EMA | None,
    accelerator: Any,
) -> dict[str, Any]:
    """Restore the adapters, optimizers, EMA shadow and this rank's RNG; return the trainer state."""
    if (path / "flow_lora").is_dir():
        flow.load_lora(str(path / "flow_lora"))
    if lm_model is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(_lm_weights_file(path)))
        set_peft_model_state_dict(accelerator.unwrap_model(lm_model), weights)
    for key, opt in optimizers.items():
        opt.load_state_dict(load_state(path / f"{key}.pt"))
    if ema is not None and (path / "ema.pt").is_file():
        ema.load_state_dict(load_state(path / "ema.pt"))
    restore_rng(path, accelerator.process_index)
    return json.loads((path / TRAINER_STATE).read_text())
