"""One flow GRPO step's rollout: what renders each group member (the prompt, PromptRL's rewrite, PromptLoop's
mid-trajectory refinement), the flow policy's SDE/ODE trajectories, and the scores; plus the held-out
evaluation (ODE renders). The loop is flow_train.py."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalsuite.harness.completion_format import ParsedCompletion
from evalsuite.harness.ema import EMA
from evalsuite.harness.flow_config import FlowTrainConfig
from evalsuite.harness.flow_policy import FlowPolicy, choose_sde_steps, choose_train_steps
from evalsuite.harness.flow_trajectory import RefineHook, RefineRequest, Trajectory
from evalsuite.harness.prompts_data import load_source
from evalsuite.harness.reward_calls import chunk_rows
from evalsuite.harness.rewards import RewardSet, finite_stats
from evalsuite.harness.rewriter_step import record_rollout_logprobs
from evalsuite.sample import Sample
from evalsuite.seeding import derive_seed


@dataclass
class LMActions:
    """The LM's sampled completions in one step: one rollout per sampling call, each row mapped to the
    trajectory row (image) whose advantage it gets."""

    rollouts: list[Any] = field(default_factory=list)
    rows: list[list[int]] = field(default_factory=list)
    parsed: list[ParsedCompletion] = field(default_factory=list)


@dataclass
class FlowBatch:
    """One rank's step: trajectories, what they rendered, rewards, and the LM actions behind them."""

    rows: list[dict]
    traj: Trajectory
    samples: list[Sample]
    rendered: list[str]
    refined: list[bool]
    raw: dict[str, torch.Tensor]
    details: list[dict[str, Any]]
    actions: LMActions
    train_steps: list[list[int]]


def rollout(
    config: FlowTrainConfig,
    rows: list[dict],
    *,
    flow: FlowPolicy,
    lm: Any,
    reward_set: RewardSet,
    step: int,
    rank: int,
    sources: list[Image.Image] | None,
) -> FlowBatch:
    """This rank's groups: render (with the LM's rewrites or refinements), roll out the flow policy, score."""
    G, c, mode = config.grpo.group_size, config.flow, config.mode
    n = len(rows) * G
    originals = [r["prompt"] for r in rows for _ in range(G)]
    rendered, refined = list(originals), [False] * n
    actions = LMActions()
    micro = config.grpo.micro_batch_size

    # 2. PromptRL: the rewriter writes G − skip members of every group; the rest keep the original
    if mode == "promptrl":
        k_ref = G - config.promptrl.num_skip_refinement
        ro = lm.sample([r["prompt"] for r in rows], k_ref, derive_seed(config.seed, f"rewrite/{step}", rank))
        record_rollout_logprobs(lm, ro, config, micro)  # the sampler's own log-probs, or the recompute
        parsed = lm.parse(ro)
        targets = [i * G + k for i in range(len(rows)) for k in range(k_ref)]
        for t, p in zip(targets, parsed):
            rendered[t], refined[t] = p.rendered, True
        actions.rollouts.append(ro)
        actions.rows.append(targets)
        actions.parsed.extend(parsed)

    # 3. roll out the flow policy
    group_src = [sources[i] for i in range(len(rows)) for _ in range(G)] if sources is not None else None
    cond, height, width = flow.encode(rendered, group_src)
    seeds, noise_seeds = [], []
    for r in rows:
        for k in range(G):
            seeds.append(
                derive_seed(config.seed, f"noise/{step}/{r['position']}", 0 if c.same_noise_in_group else k)
            )
            noise_seeds.append(derive_seed(config.seed, f"sde/{step}/{r['position']}", k))
    window_rng = np.random.default_rng(derive_seed(config.seed, "window", step))  # same on every rank
    if mode == "flow":
        sde_steps = choose_sde_steps(c, window_rng)
    elif mode == "promptrl" and not config.promptrl.prompt_only:
        sde_steps = list(range(min(config.promptrl.num_sde or c.num_steps, c.num_steps)))
    else:
        sde_steps = []  # the flow model is frozen: ODE rollouts
    hook, refine_steps = None, ()
    if mode == "promptloop":
        hook = _refine_hook(config, lm, originals, actions, step, rank)
        refine_steps = tuple(config.promptloop.refine_steps)
    parsed_all: list[Any] = [None] * n
    if mode == "promptrl":
        for t, p in zip(actions.rows[0], actions.parsed):
            parsed_all[t] = p
        for i in range(n):  # unrefined members: the original prompt, judged as a well-formed "rewrite"
            if parsed_all[i] is None:
                parsed_all[i] = ParsedCompletion(originals[i], "", True, originals[i], None, None)

    # chunks of whole groups: with rewards.overlap, chunk k is scored (against the ORIGINAL prompt and
    # source image) on a worker while chunk k+1 samples; the noise comes from per-row seeds either way
    parts: list[Trajectory] = []
    samples: list[Sample] = []
    with reward_set.scorer() as scorer:
        for idx in chunk_rows(len(rows), G, config.rewards.chunk_groups):
            part = flow.sample(
                cond.rows(idx),
                [seeds[i] for i in idx],
                [noise_seeds[i] for i in idx],
                height=height,
                width=width,
                sde_steps=sde_steps,
                batch_size=c.sample_batch_size,
                refine=_shifted(hook, idx[0]),
                refine_steps=refine_steps,
            )
            for a in part.actions:  # PromptLoop: what was refined, in rows of the whole step
                a["rows"] = [r + idx[0] for r in a["rows"]]
                for r, p in zip(a["rows"], a["prompts"]):
                    rendered[r], refined[r] = p, True
            parts.append(part)
            chunk = [
                Sample(
                    id=f"step{step}-p{rows[i // G]['position']}-{i % G}",
                    prompt=rows[i // G]["prompt"],
                    rendered_prompt=rendered[i],
                    metadata=dict(rows[i // G]["metadata"]),
                    image=part.images[j],
                    source_image=group_src[i] if group_src is not None else None,
                    seed=seeds[i],
                    group=str(rows[i // G]["position"]),
                )
                for j, i in enumerate(idx)
            ]
            samples.extend(chunk)
            scorer.submit(chunk, [parsed_all[i] for i in idx])
        raw, details = scorer.collect()
    traj = replace(
        parts[0],
        latents=torch.cat([p.latents for p in parts]),
        log_probs=torch.cat([p.log_probs for p in parts]),
        cond=cond,
        images=[im for p in parts for im in p.images],
        actions=[a for p in parts for a in p.actions],
    )
    rng = np.random.default_rng(derive_seed(config.seed, f"timesteps/{step}", rank))
    train_steps = (
        choose_train_steps(traj.sde_steps, n, c.timestep_fraction, rng) if traj.sde_steps else [[]] * n
    )
    return FlowBatch(rows, traj, samples, rendered, refined, raw, details, actions, train_steps)


def _shifted(hook: RefineHook | None, offset: int) -> RefineHook | None:
    """``hook`` for a chunk starting at row ``offset``: it sees rows of the whole step."""
    if hook is None or offset == 0:
        return hook
    return lambda req: hook(replace(req, rows=[r + offset for r in req.rows]))


def _refine_hook(
    config: FlowTrainConfig, lm: Any, originals: list[str], actions: LMActions, step: int, rank: int
):
    """PromptLoop's action: the refiner sees each row's x̂0 preview and original prompt, writes a prompt."""
    size = config.promptloop.preview_size

    def hook(req: RefineRequest) -> list[str]:
        previews = [im.resize((size, size), Image.BICUBIC) for im in req.previews]
        prompts = [originals[r] for r in req.rows]
        seed = derive_seed(config.seed, f"refine/{step}/{req.step}/{req.rows[0]}", rank)
        ro = lm.sample(prompts, previews, seed)
        lm.record_logprobs(ro, config.grpo.micro_batch_size, reference=config.grpo.beta != 0.0)
        parsed = lm.parse(ro)
        actions.rollouts.append(ro)
        actions.rows.append(list(req.rows))
        actions.parsed.extend(parsed)
        return [p.rendered for p in parsed]

    return hook


def evaluate_heldout(
    config: FlowTrainConfig,
    rows: list[dict],
    flow: FlowPolicy,
    eval_set: RewardSet,
    ema: EMA | None,
    data_base: Path | None,
) -> dict[str, float]:
    """Deterministic ODE renders at ``eval_num_steps`` of the first ``eval_prompts`` rows of ``eval_data``
    (EMA weights if enabled), scored by ``eval_rewards``: held-out prompts and rewards not trained on
    reveal overfitting and reward hacking."""
    picked = rows[: config.eval_prompts]
    prompts = [r["prompt"] for r in picked]
    sources = [load_source(r, data_base) for r in picked] if flow.is_edit else None
    cond, h, w = flow.encode(prompts, sources)
    seeds = [derive_seed(config.seed, "eval", i) for i in range(len(picked))]
    with ema.swapped() if ema is not None else nullcontext():
        traj = flow.sample(
            cond,
            seeds,
            height=h,
            width=w,
            num_steps=config.flow.eval_num_steps,
            sde_steps=[],
            batch_size=config.flow.sample_batch_size,
        )
    samples = [
        Sample(
            id=f"eval-{r['id']}",
            prompt=r["prompt"],
            metadata=dict(r["metadata"]),
            image=im,
            source_image=sources[i] if sources else None,
        )
        for i, (r, im) in enumerate(zip(picked, traj.images))
    ]
    raw, _ = eval_set.raw(samples, [None] * len(samples))
    return {f"eval/{k}": finite_stats(v)[0] for k, v in raw.items()}
