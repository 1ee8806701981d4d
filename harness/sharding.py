"""FSDP2 for the trainers: shard a policy per block, gather it for export, save and resume its shards.

``accelerate launch --config_file fsdp.yaml`` (``distributed_type: FSDP``, ``fsdp_version: 2``) asks for it;
we apply ``torch.distributed.fsdp.fully_shard`` ourselves rather than through ``accelerator.prepare``:
accelerate's FSDP plugin only engages on GPUs (on a CPU machine it falls back to plain MULTI_CPU), and one
code path on both is what the CPU tests check. Each block listed in ``fsdp_transformer_layer_cls_to_wrap``
(default: the model's ``_no_split_modules``, e.g. FLUX's two block types, Qwen2's decoder layer) becomes its
own unit, the root takes the rest; every forward (sampling, log-prob recompute, the KL reference)
all-gathers one block at a time, so no rank ever holds an unsharded copy of the model.

Checkpoints are ``torch.distributed.checkpoint`` with its safetensors storage (every rank writes its own
shards; the index is in the safetensors headers), so resuming unpickles nothing; the optimizer's
non-tensor settings go to JSON next to them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError
from evalsuite.store import atomic_write_json

SHARDED = "sharded"  # a checkpoint's folder of DCP shards
OPTIM_GROUPS = "optimizer_groups.json"


def fsdp_requested(accelerator: Any) -> bool:
    """True when the launch asked for FSDP (accelerate's plugin, or its env vars on a CPU machine)."""
    from accelerate.utils import DistributedType

    env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return accelerator.distributed_type == DistributedType.FSDP or env


def check_fsdp_version() -> None:
    """FSDP1's flat parameters cannot run the unsharded sampler forward we need; FSDP2 can."""
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(
            f"FSDP version {version}: the trainers shard with FSDP2 (per-block all-gather in every forward, "
            "sampling included); set fsdp_version: 2 in the accelerate config"
        )


def block_classes(model: torch.nn.Module) -> set[str]:
    """Class names that become FSDP units: accelerate's ``fsdp_transformer_layer_cls_to_wrap`` when set,
    else the model's ``_no_split_modules`` (its repeated blocks)."""
    configured = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    names = {n.strip() for n in configured.split(",") if n.strip()}
    if not names:
        inner = getattr(model, "base_model", model)  # a PeftModel wraps the transformers model
        inner = getattr(inner, "model", inner)
        own = getattr(model, "_no_split_modules", None)
        names = set(own or getattr(inner, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(
            f"{type(model).__name__}: no block classes to shard by; set fsdp_transformer_layer_cls_to_wrap"
        )
    return names


def shard(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """``fully_shard`` every block then the root, in place, over one mesh of all processes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    names = block_classes(model)
    mesh = init_device_mesh(device.type, (world,))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "no_shard")
    blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if not blocks:
        raise ConfigError(f"{type(model).__name__}: no module of classes {sorted(names)} to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unsharded_class(model: torch.nn.Module) -> type:
    """The model's own class (FSDP2 swaps in a subclass named FSDP<Class>)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the CPU (a collective for a sharded DTensor: every rank must call it)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu().contiguous()


def full_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of ``state`` whole, on the CPU (collective under FSDP, in key order on all ranks)."""
    return {k: full_tensor(v) for k, v in state.items()}


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float, accelerator: Any) -> float:
    """The global gradient norm clipped to ``max_norm`` — over all shards when the parameters are sharded."""
    params = list(params)
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in params):
        return float(accelerator.clip_grad_norm_(params, max_norm))
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


# ----------------------------------------------------------------------------------- checkpoints


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _flat(model: torch.nn.Module, optimizers: dict[str, Any], key: str) -> dict[str, torch.Tensor]:
    """One model's trainable weights and its optimizer's tensors under flat names (``model.*``, ``optim.*``);
    DCP stores tensors only, so the optimizer's settings are returned apart by ``_groups``."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    flat = {f"{key}.model.{n}": p.detach() for n, p in _trainable_state(model).items()}
    for okey, opt in optimizers.items():
        osd = get_optimizer_state_dict(model, opt)
        for fqn, slots in osd["state"].items():
            for slot, value in slots.items():
                value = value if torch.is_tensor(value) else torch.tensor(value)
                flat[f"{key}.{okey}.{fqn}.{slot}"] = value
    return flat


def save_sharded(folder: Path, models: dict[str, tuple[torch.nn.Module, dict[str, Any]]]) -> None:
    """Every rank writes its shards of each model's trainable weights and optimizer state (DCP, safetensors);
    the main process writes the optimizer settings. ``models``: key → (module, {name: optimizer})."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    flat: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for key, (model, optimizers) in models.items():
        flat.update(_flat(model, optimizers, key))
        for okey, opt in optimizers.items():
            groups[f"{key}.{okey}"] = get_optimizer_state_dict(model, opt)["param_groups"]
    dcp.save(flat, storage_writer=HuggingFaceStorageWriter(str(folder / SHARDED), save_distributed=True))
    if torch.distributed.get_rank() == 0:
        atomic_write_json(folder / SHARDED / OPTIM_GROUPS, groups)


def load_sharded(folder: Path, models: dict[str, tuple[torch.nn.Module, dict[str, Any]]]) -> None:
    """Restore what ``save_sharded`` wrote into the live (sharded) models and optimizers, any world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    path = folder / SHARDED
    if not (path / OPTIM_GROUPS).is_file():
        raise ConfigError(f"{folder}: no sharded state ({SHARDED}/); was it written by an FSDP run?")
    groups = json.loads((path / OPTIM_GROUPS).read_text())
    flat: dict[str, torch.Tensor] = {}
    for key, (model, optimizers) in models.items():
        flat.update(_flat(model, optimizers, key))
    dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(path)))
    for key, (model, optimizers) in models.items():
        with torch.no_grad():
            for n, p in _trainable_state(model).items():
                p.copy_(flat[f"{key}.model.{n}"])
        for okey, opt in optimizers.items():
            osd = get_optimizer_state_dict(model, opt)
            prefix = f"{key}.{okey}."
            state = {
                fqn: {slot: flat[f"{prefix}{fqn}.{slot}"] for slot in slots}
                for fqn, slots in osd["state"].items()
            }
            osd = {"state": state, "param_groups": groups[f"{key}.{okey}"]}
            set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(strict=True))


# ------------------------------------------------------------------------------------ whole weights


def full_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters whole on every rank (collective): small for LoRA, for hashes and export."""
    return {n: full_tensor(p) for n, p in model.named_parameters() if p.requires_grad}


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the main process's CPU, one block at a time (collective; other ranks get
    ``{}``): a full fine-tune's export never holds more than one unsharded copy, and only on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


# ------------------------------------------------------------------------------------- decoding


class FinishTogether:
    """Keeps FSDP-sharded ranks in step while they decode: every forward all-gathers each block from all
    ranks, so a rank whose completions all ended early keeps running (discarded) forwards until every rank
    has finished. Before each forward a rank votes 1 (one more forward), a finished rank 0; a no-op when
    the model is not sharded."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.active = is_sharded(model)

    def _vote(self, more: bool) -> bool:
        flag = torch.tensor([1 if more else 0], device=next(self.model.parameters()).device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item())

    def forward_coming(self) -> None:
        if self.active:
            self._vote(True)

    def until_all_finish(self, probe_ids: torch.Tensor) -> None:
        while self.active and self._vote(False):
            self.model(input_ids=probe_ids, use_cache=False)
