"""RePrompt's SFT stage before the rewriter's RL: a LoRA trained on (prompt, rewrite) pairs, then merged."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalsuite.errors import ConfigError
from evalsuite.harness.completion_format import format_completion
from evalsuite.harness.config import TrainConfig
from evalsuite.harness.prompts_data import load_sft_pairs
from evalsuite.harness.rewriter import build_policy, completion_logprobs
from evalsuite.seeding import derive_seed


def sft_warm_start(config: TrainConfig, accelerator: Any, out_dir: Path) -> Path | None:
    """RePrompt's SFT stage: a few supervised steps on (prompt, rewrite) pairs in the answer format.

    The LoRA trained here is saved to ``out_dir/sft_adapter`` and later merged into the base weights; a
    resumed run finds it there and does not train it again."""
    if config.sft.steps <= 0:
        return None
    target = out_dir / "sft_adapter"
    if (target / "adapter_config.json").is_file():
        return target
    pairs = load_sft_pairs(config.sft)
    policy_cfg = config.policy
    if config.sft.target_modules is not None:
        policy_cfg = replace(
            policy_cfg, lora=replace(policy_cfg.lora, target_modules=config.sft.target_modules)
        )
    policy = build_policy(policy_cfg, device=accelerator.device, seed=derive_seed(config.seed, "sft-lora", 0))
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.sft.lr, weight_decay=0.0)
    model, optimizer = accelerator.prepare(policy.model, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    bs = config.sft.batch_size
    order = np.random.default_rng(derive_seed(config.seed, "sft-data", 0)).permutation(len(pairs))
    model.eval()  # no dropout: the same forward as RL
    for step in range(config.sft.steps):
        idx = [int(order[(step * bs * world + j) % len(pairs)]) for j in range(bs * world)][rank::world]
        chosen = [pairs[i] for i in idx]
        targets = [format_completion(p["rewrite"], p.get("think", "")) for p in chosen]
        if config.policy.response_prefix and not all(
            t.startswith(config.policy.response_prefix) for t in targets
        ):
            raise ConfigError("sft targets must start with policy.response_prefix")
        targets = [t[len(config.policy.response_prefix) :] for t in targets]
        batch = policy.teacher_forced([p["prompt"] for p in chosen], targets)
        logp = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_len, 1.0)
        mask = batch.completion_mask.float()
        loss = -(logp * mask).sum() / mask.sum()
        accelerator.backward(loss)
        if config.optim.max_grad_norm is not None:
            accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if accelerator.is_main_process:
        tmp = out_dir / ".sft_adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(
            tmp, safe_serialization=True, save_embedding_layers=False
        )
        os.replace(tmp, target)
    accelerator.wait_for_everyone()
    del model, optimizer, policy
    accelerator.free_memory()
    return target
