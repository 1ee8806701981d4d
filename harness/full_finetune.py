"""Full fine-tuning of the rewriter LM (RePrompt's setting): its export as a plain ``from_pretrained``
folder and the weights a single-process checkpoint restores from it. (The flow transformer's are in
flow_policy.py; sharded checkpoints are sharding.py's, for LoRA and full fine-tuning alike.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError


def save_lm(
    path: Path, model: Any, tokenizer: Any, *, full: bool, state_dict: dict[str, torch.Tensor] | None
) -> None:
    """A rewriter's weights: ``adapter/`` (PEFT) or, fully fine-tuned, ``model/``, the whole LM and its
    tokenizer (``AutoModelForCausalLM.from_pretrained``). ``state_dict``: the weights gathered whole when
    the live model is sharded (FSDP2)."""
    from evalsuite.harness.sharding import unsharded_class

    if not full:
        model.save_pretrained(path / "adapter", safe_serialization=True, state_dict=state_dict)
        return
    folder = path / "model"
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    config_file = folder / "config.json"  # a sharded model saves under its FSDP subclass's name
    config = json.loads(config_file.read_text())
    config["architectures"] = [unsharded_class(model).__name__]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def load_full_lm_weights(model: Any, folder: Path) -> None:
    """Restore a ``save_lm`` ``model/`` folder's weights into the live model (resume without FSDP)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder}: no safetensors weights to resume the full fine-tune from")
    missing = set(model.state_dict())
    for file in files:
        weights = load_file(str(file))
        model.load_state_dict(weights, strict=False)
        missing -= set(weights)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if missing - tied:
        raise ConfigError(f"{folder}: weights missing for {sorted(missing - tied)[:3]}…")


@torch.no_grad()
def frozen_reference_logprobs(policy: Any, rollout: Any, micro_batch_size: int) -> torch.Tensor:
    """The KL reference's per-token log-probs from the frozen copy a full fine-tune keeps
    (``policy.reference``), in the trainer's micro-batches."""
    from evalsuite.harness.rollout import eval_mode, micro_batches

    with eval_mode(policy.reference):
        chunks = micro_batches(rollout, micro_batch_size)
        return torch.cat([policy.logprobs(c, policy.reference) for c in chunks])
