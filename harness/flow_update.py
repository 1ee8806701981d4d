"""One flow GRPO step's updates: the flow LoRA on (sample, SDE step) pairs and the LM (rewriter/refiner)
on its completions, both with the ratio == 1 self-test first."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from evalsuite.harness import grpo
from evalsuite.harness.flow_config import FlowTrainConfig
from evalsuite.harness.flow_policy import FlowPolicy
from evalsuite.harness.flow_rollout import FlowBatch
from evalsuite.harness.sharding import clip_grad_norm


def flow_update(
    batch: FlowBatch,
    advantages: torch.Tensor,
    *,
    flow: FlowPolicy,
    model: Any,
    optimizer: Any,
    accelerator: Any,
    config: FlowTrainConfig,
    step: int,
) -> dict[str, float]:
    """Inner epochs × minibatches over (sample, SDE step) pairs; one optimizer step per minibatch."""
    g, traj = config.grpo, batch.traj
    n = len(traj)
    per_mb = n // g.minibatches
    params = flow.trainable_parameters()
    totals: dict[str, float] = {}
    n_updates = g.num_inner_epochs * g.minibatches
    for epoch in range(g.num_inner_epochs):
        for m in range(g.minibatches):
            pairs = [(i, j) for i in range(m * per_mb, (m + 1) * per_mb) for j in batch.train_steps[i]]
            chunks = [
                pairs[s : s + config.flow.train_batch_size]
                for s in range(0, len(pairs), config.flow.train_batch_size)
            ]
            for c_i, chunk in enumerate(chunks):
                rows = torch.tensor([p[0] for p in chunk])
                steps = torch.tensor([p[1] for p in chunk])
                old = traj.log_probs[rows, steps].to(flow.device)
                weight = len(chunk) / len(pairs)
                sync = nullcontext() if c_i == len(chunks) - 1 else accelerator.no_sync(model)
                with sync:
                    out = flow.step_log_prob(model, traj, rows, steps)
                    if epoch == 0 and m == 0:
                        diff = float((out.log_prob.detach() - old).abs().max())
                        totals["selftest/max_abs_logp_diff"] = max(
                            totals.get("selftest/max_abs_logp_diff", 0.0), diff
                        )
                        if g.ratio_check:
                            grpo.ratio_self_test(
                                out.log_prob,
                                old,
                                tol=g.ratio_tol,
                                context=f"step {step}, rank {accelerator.process_index}",
                            )
                    adv = advantages[rows].to(out.log_prob.device)
                    per_pair, clip_mask = grpo.clipped_surrogate(
                        out.log_prob, old, adv, g.clip_eps, g.clip_eps_high
                    )
                    policy_loss = per_pair.mean()
                    kl = torch.zeros((), device=flow.device)
                    if g.beta != 0.0:
                        with torch.no_grad(), flow.adapter_disabled():
                            ref = flow.step_log_prob(flow.transformer, traj, rows, steps)
                        kl = grpo.kl_gaussian(out.mean, ref.mean, out.kl_std).mean()  # Flow-GRPO's scale
                    loss = policy_loss + g.beta * kl
                    accelerator.backward(loss * weight)
                ratio = torch.exp(out.log_prob.detach() - old)
                for k, v in {
                    "flow/loss": float(loss.detach()),
                    "flow/policy_loss": float(policy_loss.detach()),
                    "flow/kl": float(kl.detach()),
                    "flow/clip_fraction": float(clip_mask.float().mean()),
                    "flow/ratio_mean": float(ratio.mean()),
                }.items():
                    totals[k] = totals.get(k, 0.0) + v * weight / n_updates
                totals["flow/ratio_min"] = min(totals.get("flow/ratio_min", math.inf), float(ratio.min()))
                totals["flow/ratio_max"] = max(totals.get("flow/ratio_max", -math.inf), float(ratio.max()))
            if not chunks:
                continue
            if config.optim.max_grad_norm is not None:
                norm = clip_grad_norm(params, config.optim.max_grad_norm, accelerator)
                totals["flow/grad_norm"] = totals.get("flow/grad_norm", 0.0) + norm / n_updates
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return totals


def lm_update(
    batch: FlowBatch,
    advantages: torch.Tensor,
    *,
    lm: Any,
    model: Any,
    optimizer: Any,
    accelerator: Any,
    config: FlowTrainConfig,
    step: int,
) -> dict[str, float]:
    """GRPO on the LM's actions: each completion row takes the advantage of the image it led to."""
    g = config.grpo
    params = [p for p in model.parameters() if p.requires_grad]
    pieces = [
        (ro.rows(slice(s, s + g.micro_batch_size)), rows[s : s + g.micro_batch_size])
        for ro, rows in zip(batch.actions.rollouts, batch.actions.rows)
        for s in range(0, len(ro), g.micro_batch_size)
    ]
    if not pieces:
        return {}
    n_rows = sum(len(r) for _, r in pieces)
    totals: dict[str, float] = {}
    for epoch in range(g.num_inner_epochs):
        for c_i, (part, rows) in enumerate(pieces):
            weight = len(rows) / n_rows
            sync = nullcontext() if c_i == len(pieces) - 1 else accelerator.no_sync(model)
            with sync:
                logp = lm.logprobs(part, model)
                if epoch == 0 and g.ratio_check:
                    grpo.ratio_self_test(
                        logp, part.logp, part.completion_mask, g.ratio_tol, context=f"step {step} (LM policy)"
                    )
                loss, stats = grpo.grpo_loss(
                    logp,
                    part.logp,
                    part.ref_logp,
                    advantages[torch.tensor(rows)].to(logp.device),
                    part.completion_mask,
                    config.lm_clip_eps,
                    g.beta,
                    g.aggregation,
                    clip_eps_high=g.clip_eps_high,
                    max_len=config.policy.max_new_tokens,
                )
                accelerator.backward(loss * weight)
            for k in ("policy_loss", "kl_mean", "clip_fraction", "ratio_mean"):
                if k in stats:
                    totals[f"lm/{k}"] = (
                        totals.get(f"lm/{k}", 0.0) + float(stats[k]) * weight / g.num_inner_epochs
                    )
        if config.policy_optim.max_grad_norm is not None:
            norm = clip_grad_norm(params, config.policy_optim.max_grad_norm, accelerator)
            totals["lm/grad_norm"] = totals.get("lm/grad_norm", 0.0) + norm / g.num_inner_epochs
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return totals
