"""What a flow run's checkpoint holds: the live adapters (flow LoRA, the LM's), optimizers, the EMA shadow
and the trainer state, written atomically by evalsuite.harness.checkpoint; and the final weights' layout.

Under FSDP2 (``sharded``) every rank writes its shards of the trained weights and optimizer state instead
(harness/sharding.py, torch.distributed.checkpoint in safetensors), and the final export gathers them whole
first (``gather_trained``, on every rank), so it is the same folder a single-process run writes."""

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
from evalsuite.harness.sharding import (
    SHARDED,
    full_model_state,
    full_trainable,
    load_sharded,
    save_sharded,
)
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
    sharded: bool = False,
) -> Path:
    """Live adapters (not EMA), optimizers, EMA shadow and trainer state, atomically (checkpoint.py); under
    FSDP2 each rank's shards of the trained weights and optimizers (DCP) instead of whole files."""

    def write(tmp: Path) -> None:
        if not sharded:
            save_models(tmp, flow=flow, lm=lm, lm_model=lm_model, accelerator=accelerator, ema=None)
            for key, opt in optimizers.items():
                torch.save(opt.state_dict(), tmp / f"{key}.pt")
        if ema is not None:
            torch.save(ema.state_dict(), tmp / "ema.pt")
        atomic_write_json(tmp / TRAINER_STATE, {**state, "step": step})

    def write_shards(tmp: Path) -> None:
        save_sharded(tmp, _sharded_parts(flow, lm_model, optimizers))

    return write_checkpoint(out_dir, step, accelerator, write, keep, write_shards if sharded else None)


def _sharded_parts(flow: FlowPolicy, lm_model: Any, optimizers: dict[str, Any]) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    if "flow_optimizer" in optimizers:
        parts["flow"] = (flow.transformer, {"flow_optimizer": optimizers["flow_optimizer"]})
    if lm_model is not None:
        parts["lm"] = (lm_model, {"lm_optimizer": optimizers["lm_optimizer"]})
    return parts


def gather_trained(flow: FlowPolicy, lm_model: Any, sharded: bool) -> dict[str, Any]:
    """The trained weights whole for the final export (collective under FSDP2: every rank calls it);
    ``{}`` when nothing is sharded (``save_models`` then reads the live modules)."""
    if not sharded:
        return {}
    gathered: dict[str, Any] = {}
    if flow.trainable_parameters():
        if flow.full_finetune:
            gathered["flow"] = full_model_state(flow.transformer)
        else:
            from peft import get_peft_model_state_dict

            gathered["flow"] = get_peft_model_state_dict(flow.transformer, full_trainable(flow.transformer))
    if lm_model is not None:  # PeftModel.save_pretrained picks the adapter's keys out of it
        gathered["lm"] = full_trainable(lm_model)
    return gathered


def save_models(
    folder: Path,
    *,
    flow: FlowPolicy,
    lm: Any,
    lm_model: Any,
    accelerator: Any,
    ema: EMA | None,
    gathered: dict[str, Any] | None = None,
) -> None:
    """flow_lora/ (diffusers LoRA format: ``evalsuite run --model BASE --lora DIR/flow_lora``) or, after
    full fine-tuning, pipeline/ (``evalsuite run --model DIR/pipeline``); PromptRL's rewriter/
    (``evalsuite run --rewriter DIR/rewriter``); PromptLoop's refiner adapter lm_adapter/. ``gathered``:
    ``gather_trained``'s whole weights of sharded modules."""
    gathered = gathered or {}
    if flow.trainable_parameters():
        ctx = ema.swapped() if ema is not None else nullcontext()
        with ctx:
            if flow.full_finetune:
                flow.save_pipeline(str(folder / "pipeline"), gathered.get("flow"))
            else:
                flow.save_lora(str(folder / "flow_lora"), gathered.get("flow"))
    if lm is None:
        return
    model = accelerator.unwrap_model(lm_model)
    if isinstance(lm, RewriterPolicy):
        save_rewriter(folder / "rewriter", lm, model, state_dict=gathered.get("lm"))
    else:
        lm_state = gathered.get("lm")
        model.save_pretrained(str(folder / "lm_adapter"), safe_serialization=True, state_dict=lm_state)


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
    sharded: bool = False,
) -> dict[str, Any]:
    """Restore the adapters (or sharded weights), optimizers, EMA shadow and this rank's RNG; return the
    trainer state."""
    if sharded:
        load_sharded(path, _sharded_parts(flow, lm_model, optimizers))
        optimizers = {}
    elif (path / SHARDED).is_dir():
        raise ConfigError(f"{path} holds FSDP-sharded state: resume it under the same FSDP launch")
    elif flow.full_finetune and flow.trainable_parameters():
        flow.load_transformer_weights(str(path / "pipeline"))
    elif (path / "flow_lora").is_dir():
        flow.load_lora(str(path / "flow_lora"))
    if lm_model is not None and not sharded:
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
