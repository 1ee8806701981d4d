"""One step of the rewriter's GRPO: the rollout (sample, parse, render, score), the clipped-surrogate
update with the on-policy self-test, and the step's metrics and logged samples. The loop is train.py."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from evalsuite.generator import GenerationRequest
from evalsuite.harness import grpo
from evalsuite.harness.completion_format import ParsedCompletion, count_words
from evalsuite.harness.config import TrainConfig
from evalsuite.harness.metrics import reduce_over_ranks, reward_component_metrics
from evalsuite.harness.reward_calls import chunk_rows
from evalsuite.harness.rewards import RewardSet, finite_stats
from evalsuite.harness.rewriter import RewriterPolicy, Rollout
from evalsuite.harness.rollout import set_training
from evalsuite.harness.scaffold import logprobs_source
from evalsuite.harness.sharding import clip_grad_norm
from evalsuite.sample import Sample
from evalsuite.seeding import derive_seed

# -------------------------------------------------------------------------------------------- rollout

@dataclass
class StepBatch:
    """One rank's rollout of one step, with everything scored."""

    rows: list[dict]
    rollout: Rollout
    parsed: list[ParsedCompletion]
    samples: list[Sample]
    raw: dict[str, torch.Tensor]  # component → (N,) float64 raw values
    details: list[dict[str, Any]]



def record_rollout_logprobs(
    policy: RewriterPolicy, rollout: Rollout, config: Any, micro_batch_size: int
) -> None:
    """After ``sample`` (which keeps the sampler's own log-probs): the exact train-time recompute when
    ``grpo.logprobs_from`` resolves to "recompute", and the reference's log-probs when β ≠ 0."""
    if logprobs_source(config) == "recompute":
        policy.record_logprobs(rollout, micro_batch_size, reference=config.grpo.beta != 0.0)
    elif config.grpo.beta != 0.0:
        policy.record_reference_logprobs(rollout, micro_batch_size)


def rollout(
    policy: RewriterPolicy,
    rows: list[dict],
    *,
    config: TrainConfig,
    reward_set: RewardSet,
    generator: Any,
    step: int,
    rank: int,
    micro_batch_size: int,
    world: int = 1,
) -> StepBatch:
    """Sample G rewrites per prompt, parse them, render, score. Malformed rewrites render the original.
    Each of the ``world`` ranks draws its share of the step's one seeded stream (token_draw.py), so the
    completions do not depend on the number of processes."""
    G = config.grpo.group_size
    seed = derive_seed(config.seed, f"rollout/{step}", 0)
    share = (rank * len(rows) * G, world * len(rows) * G)
    out = policy.sample([r["prompt"] for r in rows], G, seed, rows_of=share)  # with the sampler's log-probs
    record_rollout_logprobs(policy, out, config, micro_batch_size)
    parsed = policy.parse(out)
    samples = []
    for i, p in enumerate(parsed):
        row, k = rows[i // G], i % G
        image_seed = derive_seed(
            config.seed, f"image/{step}/{row['position']}", 0 if config.generator.same_noise_in_group else k
        )
        samples.append(
            Sample(
                id=f"step{step}-p{row['position']}-{k}",
                prompt=row["prompt"],
                rendered_prompt=p.rendered,
                metadata=dict(row["metadata"]),
                seed=image_seed,
                group=str(row["position"]),
            )
        )
    # render and score in chunks of whole groups; with rewards.overlap chunk k is scored on a worker
    # while chunk k+1 renders (each image has its own seed, so timing changes nothing)
    with reward_set.scorer() as scorer:
        for idx in chunk_rows(len(rows), G, config.rewards.chunk_groups):
            chunk = [samples[i] for i in idx]
            if generator is not None:
                images = generator.generate(
                    [GenerationRequest(prompt=s.rendered_prompt, seed=s.seed) for s in chunk]
                )
                chunk = [s.with_image(im) for s, im in zip(chunk, images)]
                samples[idx[0] : idx[-1] + 1] = chunk
            scorer.submit(chunk, [parsed[i] for i in idx])
        raw, details = scorer.collect()
    return StepBatch(rows, out, parsed, samples, raw, details)


# --------------------------------------------------------------------------------------------- update


def policy_update(
    batch: StepBatch,
    advantages: torch.Tensor,
    *,
    model: Any,
    policy: RewriterPolicy,
    optimizer: Any,
    accelerator: Any,
    config: TrainConfig,
    step: int,
) -> dict[str, float]:
    """Inner epochs × minibatches of clipped-surrogate steps on one rollout; returns averaged stats.

    The first minibatch of the first epoch runs before any update, so its old log-probs ARE the current
    ones: it uses them detached (ratio exactly 1, as TRL does with one inner epoch) and checks them against
    the rollout's log-probs (the on-policy self-test). Later minibatches and epochs use the rollout's.
    Statistics stay tensors until the end: one device sync per update, not one per micro-batch."""
    g = config.grpo
    ro, n = batch.rollout, len(batch.rollout)
    mb = n // g.minibatches
    micro = min(g.micro_batch_size, mb)
    set_training(model, config.policy.train_mode or config.policy.gradient_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    passes = g.num_inner_epochs * g.minibatches
    totals: dict[str, torch.Tensor] = {}
    ratio_min: list[torch.Tensor] = []
    ratio_max: list[torch.Tensor] = []
    diffs: list[torch.Tensor] = []
    for epoch in range(g.num_inner_epochs):
        for m in range(g.minibatches):
            chunks = [slice(s, s + micro) for s in range(m * mb, (m + 1) * mb, micro)]
            tokens = ro.completion_mask[m * mb : (m + 1) * mb].sum().double()
            if g.aggregation == "token_mean":  # ranks average gradients: weigh by the ranks' mean count,
                tokens = accelerator.reduce(tokens, "mean")  # so the update is one process's token mean
            tokens = float(tokens)
            first = epoch == 0 and m == 0
            for c_i, sl in enumerate(chunks):
                part = ro.rows(sl)
                last = c_i == len(chunks) - 1
                with accelerator.no_sync(model) if not last else nullcontext():
                    logp = policy.logprobs(part, model)
                    if first and g.ratio_check:
                        grpo.ratio_self_test(
                            logp,
                            part.logp,
                            part.completion_mask,
                            g.ratio_tol,
                            context=f"step {step}, rank {accelerator.process_index}",
                        )
                    loss, stats = grpo.grpo_loss(
                        logp,
                        logp.detach() if first else part.logp,
                        part.ref_logp,
                        advantages[sl].to(logp.device),
                        part.completion_mask,
                        g.clip_eps,
                        g.beta,
                        g.aggregation,
                        clip_eps_high=g.clip_eps_high,
                        max_len=config.policy.max_new_tokens,
                    )
                    weight = (
                        float(part.completion_mask.sum()) / max(tokens, 1.0)
                        if g.aggregation == "token_mean"
                        else (sl.stop - sl.start) / mb
                    )
                    accelerator.backward(loss * weight)
                for k, v in {"loss": loss, **stats}.items():
                    v = torch.as_tensor(v).detach().double()
                    if k == "ratio_min":
                        ratio_min.append(v)
                    elif k == "ratio_max":
                        ratio_max.append(v)
                    else:
                        totals[k] = totals.get(k, 0.0) + v * (weight / passes)
                if first:
                    diff = (logp.detach() - part.logp).abs().double()
                    diffs.append(torch.where(part.completion_mask.bool(), diff, 0.0).max())
            if config.optim.max_grad_norm is not None:
                norm = clip_grad_norm(params, config.optim.max_grad_norm, accelerator)
                norm = torch.as_tensor(norm).detach().double()
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + norm / passes
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    set_training(model, False)
    if ratio_min:
        totals["ratio_min"] = torch.stack(ratio_min).min()
        totals["ratio_max"] = torch.stack(ratio_max).max()
    if diffs:
        totals["selftest/max_abs_logp_diff"] = torch.stack(diffs).max()
    keys = list(totals)
    values = torch.stack([totals[k].to(ro.input_ids.device) for k in keys]).cpu().tolist() if keys else []
    return dict(zip(keys, values))


# -------------------------------------------------------------------------------------------- metrics


def step_metrics(
    step: int,
    lr: float,
    stats: dict[str, float],
    adv: grpo.StepAdvantages,
    batch: StepBatch,
    accelerator: Any,
) -> dict[str, Any]:
    """Per-step numbers over all ranks: update stats averaged, reward stats on the gathered batch."""
    s = reduce_over_ranks(stats, accelerator, extremes=("ratio_min", "ratio_max"))
    ro = batch.rollout
    shape = torch.tensor(
        [
            [
                float(p.well_formed),
                float(t),
                float(m.sum()),
                float(count_words(p.rewrite)) if p.rewrite else math.nan,
            ]
            for p, t, m in zip(batch.parsed, ro.truncated.tolist(), ro.completion_mask.cpu())
        ],
        dtype=torch.float64,
        device=accelerator.device,
    )
    shape = accelerator.gather(shape).cpu()
    metrics: dict[str, Any] = {
        "step": step,
        "lr": lr,
        "loss": s["loss"],
        "policy_loss": s["policy_loss"],
        "kl": s["kl_mean"],
        "clip_fraction": s["clip_fraction"],
        "ratio_mean": s["ratio_mean"],
        "ratio_min": s["ratio_min"],
        "ratio_max": s["ratio_max"],
        "grad_norm": s.get("grad_norm", math.nan),
        "selftest/max_abs_logp_diff": s.get("selftest/max_abs_logp_diff", math.nan),
        **adv.metrics(),
        "completions/well_formed": float(shape[:, 0].mean()),
        "completions/truncated": float(shape[:, 1].mean()),
        "completions/tokens": float(shape[:, 2].mean()),
        "completions/rewrite_words": finite_stats(shape[:, 3])[0],
    }
    return {**metrics, **reward_component_metrics(adv.raw)}


def sample_records(
    step: int, batch: StepBatch, total: torch.Tensor, adv: torch.Tensor, limit: int
) -> list[dict]:
    """The first ``limit`` completions of this rank as samples.jsonl records: what was written, how it
    was parsed and rendered, its rewards and advantage."""
    out = []
    for i, (p, s) in enumerate(zip(batch.parsed[:limit], batch.samples)):
        out.append(
            {
                "step": step,
                "id": s.id,
                "prompt": p.original,
                "completion": p.text,
                "rewrite": p.rewrite,
                "rendered": p.rendered,
                "well_formed": p.well_formed,
                "format_error": p.error,
                "rewards": {k: float(v[i]) for k, v in batch.raw.items()},
                "reward": float(total[i]),
                "advantage": float(adv[i]),
                **batch.details[i],
            }
        )
    return out
