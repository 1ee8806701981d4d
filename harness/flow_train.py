"""GRPO on flow policies: Flow-GRPO (FLUX.1-dev / Kontext LoRA), PromptRL and PromptLoop. Read top to bottom.

    evalsuite train --config harness/recipes/flow_pickscore.yaml [--set grpo.beta=0.01 ...]
    accelerate launch -m evalsuite.harness.flow_train --config ...          # one process per GPU

One step:
  1. the step's prompts (a pure function of the step, so resume needs no loader state); each rank takes a
     contiguous share of whole groups;
  2. what renders each group member:
       flow       the prompt itself;
       promptrl   the rewriter's rewrite (G − num_skip_refinement members) or the prompt itself (the rest);
       promptloop the prompt, replaced mid-trajectory by the refiner's rewrites at ``refine_steps``;
  3. roll out the flow policy: SDE steps (window or first ``num_sde``) record latents and log-probs, the
     others are Euler steps; decode; score each image against the ORIGINAL prompt (and source image);
  4. gather rewards from all ranks, combine, group-relative advantages (evalsuite.harness.grpo);
  5. updates: the flow LoRA on (sample, SDE step) pairs — clipped surrogate on the step log-prob ratio plus
     β·closed-form KL to the adapter-disabled transformer, with the ratio == 1 self-test on the first
     minibatch; the LM (rewriter/refiner) with the token-level GRPO loss, every action of an episode
     carrying the episode's advantage;
  6. log (CSV, TensorBoard, wandb; image grids), checkpoint atomically, optionally evaluate held-out
     prompts with ODE sampling at ``eval_num_steps``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from evalsuite.harness import grpo
from evalsuite.harness.checkpoint import (
    CHECKPOINTS,
    LATEST,
    TRAINER_STATE,
    latest_checkpoint,
    load_state,
    restore_rng,
    write_checkpoint,
)
from evalsuite.harness.completion_format import ParsedCompletion
from evalsuite.harness.config import RewardsConfig, save_config
from evalsuite.harness.flow_config import FlowTrainConfig, load_flow_config, validate_flow_config
from evalsuite.harness.flow_policy import FlowPolicy, choose_sde_steps, choose_train_steps
from evalsuite.harness.flow_trajectory import RefineRequest, Trajectory
from evalsuite.harness.resume import apply_optim_settings, check_resume
from evalsuite.harness.rewards import BUILTIN_COMPONENTS, RewardSet, finite_stats
from evalsuite.harness.rewriter import RewriterPolicy, save_rewriter
from evalsuite.harness.train import (
    MetricsLog,
    _Warmup,
    check_engine,
    check_logprobs_source,
    load_prompts,
    param_hash,
    record_rollout_logprobs,
    step_prompts,
)
from PIL import Image

from evalsuite.errors import ConfigError, EvalsuiteError
from evalsuite.sample import Sample
from evalsuite.seeding import derive_seed
from evalsuite.store import JsonlLog, atomic_write_json

# ----------------------------------------------------------------------------------------------- data


def load_source(row: dict[str, Any], base: Path | None) -> Image.Image:
    """An editing prompt's source image: metadata ``source_image``, a path (relative: to the data file)."""
    ref = row["metadata"].get("source_image")
    if not isinstance(ref, str):
        raise ConfigError(f"data row {row['id']}: an editing model needs a 'source_image' path")
    path = Path(ref)
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ConfigError(f"data row {row['id']}: cannot read source image {path}: {e}") from None


# -------------------------------------------------------------------------------------------- rollout


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
    traj = flow.sample(
        cond,
        seeds,
        noise_seeds,
        height=height,
        width=width,
        sde_steps=sde_steps,
        batch_size=c.sample_batch_size,
        refine=hook,
        refine_steps=refine_steps,
    )
    if mode == "promptloop":
        for a in traj.actions:
            for r, p in zip(a["rows"], a["prompts"]):
                rendered[r], refined[r] = p, True
    rng = np.random.default_rng(derive_seed(config.seed, f"timesteps/{step}", rank))
    train_steps = (
        choose_train_steps(traj.sde_steps, n, c.timestep_fraction, rng) if traj.sde_steps else [[]] * n
    )

    # score against the original prompt (and source image)
    samples = []
    for i in range(n):
        row, k = rows[i // G], i % G
        samples.append(
            Sample(
                id=f"step{step}-p{row['position']}-{k}",
                prompt=row["prompt"],
                rendered_prompt=rendered[i],
                metadata=dict(row["metadata"]),
                image=traj.images[i],
                source_image=group_src[i] if group_src is not None else None,
                seed=seeds[i],
                group=str(row["position"]),
            )
        )
    parsed_all: list[Any] = [None] * n
    if mode == "promptrl":
        for t, p in zip(actions.rows[0], actions.parsed):
            parsed_all[t] = p
        for i in range(n):  # unrefined members: the original prompt, judged as a well-formed "rewrite"
            if parsed_all[i] is None:
                parsed_all[i] = ParsedCompletion(originals[i], "", True, originals[i], None, None)
    raw, details = reward_set.raw(samples, parsed_all)
    return FlowBatch(rows, traj, samples, rendered, refined, raw, details, actions, train_steps)


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


# --------------------------------------------------------------------------------------------- updates


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
                            try:
                                grpo.ratio_self_test(out.log_prob, old, tol=g.ratio_tol)
                            except grpo.OnPolicyError as e:
                                raise grpo.OnPolicyError(
                                    f"step {step}, rank {accelerator.process_index}: {e}"
                                ) from e
                    adv = advantages[rows].to(out.log_prob.device)
                    per_pair, clip_mask = grpo.clipped_surrogate(
                        out.log_prob, old, adv, g.clip_eps, g.clip_eps_high
                    )
                    policy_loss = per_pair.mean()
                    kl = torch.zeros((), device=flow.device)
                    if g.beta != 0.0:
                        with torch.no_grad(), flow.adapter_disabled():
                            ref = flow.step_log_prob(flow.transformer, traj, rows, steps)
                        kl = grpo.kl_gaussian(out.mean, ref.mean, out.std).mean()
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
                norm = accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
                totals["flow/grad_norm"] = totals.get("flow/grad_norm", 0.0) + float(norm) / n_updates
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
                    try:
                        grpo.ratio_self_test(logp, part.logp, part.completion_mask, g.ratio_tol)
                    except grpo.OnPolicyError as e:
                        raise grpo.OnPolicyError(f"step {step} (LM policy): {e}") from e
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
            norm = accelerator.clip_grad_norm_(params, config.policy_optim.max_grad_norm)
            totals["lm/grad_norm"] = totals.get("lm/grad_norm", 0.0) + float(norm) / g.num_inner_epochs
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return totals


class EMA:
    """Exponential moving average of the flow LoRA weights (Flow-GRPO evaluates with it)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The EMA weights in the model (for saving/evaluating); the live ones restored afterwards."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live):
                    p.copy_(v)


# ----------------------------------------------------------------------------------------- checkpoints


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
        _save_models(tmp, flow=flow, lm=lm, lm_model=lm_model, accelerator=accelerator, ema=None)
        for key, opt in optimizers.items():
            torch.save(opt.state_dict(), tmp / f"{key}.pt")
        if ema is not None:
            torch.save(ema.state_dict(), tmp / "ema.pt")
        atomic_write_json(tmp / TRAINER_STATE, {**state, "step": step})

    return write_checkpoint(out_dir, step, accelerator, write, keep)


def _save_models(
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
    import json

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


# ------------------------------------------------------------------------------------------------ train


@dataclass
class FlowTrainResult:
    out_dir: Path
    steps: int
    final_dir: Path | None
    last_checkpoint: Path | None
    metrics: list[dict[str, Any]]


def _check_rewards(config: FlowTrainConfig) -> None:
    builtins = [s.name for s in config.rewards.components if s.name in BUILTIN_COMPONENTS and not s.target]
    if builtins and config.mode != "promptrl":
        raise ConfigError(
            f"reward components {builtins} judge a rewriter's completions; mode {config.mode!r} has none"
        )


def build_lm(config: FlowTrainConfig, device: Any) -> Any:
    """PromptRL's rewriter (rewriter.py) or PromptLoop's multimodal refiner (vl_policy.py)."""
    seed = derive_seed(config.seed, "lm_lora", 0)
    if config.mode == "promptrl":
        from evalsuite.harness.rewriter import build_policy

        return build_policy(config.policy, device=device, seed=seed)
    if config.mode == "promptloop":
        from evalsuite.harness.vl_policy import build_vl_policy

        return build_vl_policy(
            config.policy, device=device, seed=seed, max_pixels=config.promptloop.max_pixels
        )
    return None


def train(
    config: FlowTrainConfig, *, rewards: dict[str, Any] | None = None, flow: FlowPolicy | None = None
) -> FlowTrainResult:
    """Run (or resume) a flow-policy GRPO run. ``rewards``/``flow`` inject ready-made objects (tests)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from evalsuite.progress import enabled as progress_enabled

    # ---- setup
    validate_flow_config(config)
    _check_rewards(config)
    if config.mode == "promptrl":
        check_logprobs_source(config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=multi_cpu)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    check_engine(accelerator)
    g = config.grpo
    if g.prompts_per_step % world:
        raise ConfigError(
            f"grpo.prompts_per_step ({g.prompts_per_step}) must be divisible by {world} processes"
        )
    per_rank = g.prompts_per_step // world
    if (per_rank * g.group_size) % g.minibatches:
        raise ConfigError(
            f"images per rank ({per_rank * g.group_size}) must be divisible by grpo.minibatches"
        )
    out_dir = Path(config.out_dir)
    history = check_resume(config, out_dir)  # before config.yaml is overwritten
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    accelerator.wait_for_everyone()
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)

    # ---- data, rewards, models
    rows = load_prompts(config.data)
    data_base = Path(config.data.path).parent if config.data.path else None
    eval_cfg = config.eval_data or config.data
    eval_rows = load_prompts(eval_cfg) if config.eval_rewards else []
    eval_base = Path(eval_cfg.path).parent if eval_cfg.path else None
    reward_set = RewardSet(config.rewards, rewards, device=str(device))
    if not reward_set.needs_image:
        raise ConfigError("a flow run needs at least one image reward")
    eval_set = (
        RewardSet(
            RewardsConfig(components=list(config.eval_rewards), normalize="none"),
            device=str(device),
            where="eval_rewards",
        )
        if config.eval_rewards
        else None
    )
    train_flow = config.mode == "flow" or (config.mode == "promptrl" and not config.promptrl.prompt_only)
    if flow is None:
        flow = FlowPolicy.from_pretrained(
            config.flow, device, lora=train_flow, seed=derive_seed(config.seed, "flow_lora", 0)
        )
    lm = build_lm(config, device)
    optimizers: dict[str, Any] = {}
    schedulers: dict[str, Any] = {}
    flow_model, lm_model, ema = flow.transformer, None, None
    if train_flow:
        o = config.optim
        opt = torch.optim.AdamW(
            flow.trainable_parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        flow_model, opt = accelerator.prepare(flow.transformer, opt)
        optimizers["flow_optimizer"] = opt
        schedulers["flow"] = torch.optim.lr_scheduler.LambdaLR(opt, _Warmup(o.warmup_steps))
        if config.flow.ema:
            ema = EMA(flow.trainable_parameters(), config.flow.ema_decay)
    if lm is not None:
        o = config.policy_optim
        params = [p for p in lm.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        lm_model, opt = accelerator.prepare(lm.model, opt)
        optimizers["lm_optimizer"] = opt
        schedulers["lm"] = torch.optim.lr_scheduler.LambdaLR(opt, _Warmup(o.warmup_steps))
    tracker = (
        grpo.PerPromptStatTracker(global_std=g.advantage_mode == "global_std", eps=g.advantage_eps)
        if g.per_prompt_tracker
        else None
    )

    # ---- resume
    start = 0
    if not config.resume and accelerator.is_main_process:
        (out_dir / CHECKPOINTS / LATEST).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    ckpt = latest_checkpoint(out_dir) if config.resume else None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt, flow=flow, lm_model=lm_model, optimizers=optimizers, ema=ema, accelerator=accelerator
        )
        start = int(state["step"])
        if state["data_position"] != start * g.prompts_per_step:
            raise ConfigError(
                f"{ckpt}: data position does not match grpo.prompts_per_step; keep it unchanged to resume"
            )
        for key, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
            o = config.optim if key == "flow" else config.policy_optim
            apply_optim_settings(optimizers[f"{key}_optimizer"], sched, o)
        if tracker is not None and state.get("tracker"):
            tracker.load_state_dict(state["tracker"])
    logger = MetricsLog(out_dir, config, start) if accelerator.is_main_process else None  # type: ignore[arg-type]
    if accelerator.is_main_process:
        manifest = _manifest(config, reward_set, flow, lm, world)
        atomic_write_json(out_dir / "manifest.json", {**manifest, "history": history})

    # ---- the loop
    history: list[dict[str, Any]] = []
    last_ckpt = ckpt
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc=f"{config.mode} GRPO",
        disable=not (accelerator.is_main_process and config.progress and progress_enabled()),
        dynamic_ncols=True,
    )
    G = g.group_size
    for step in bar:
        t0 = time.perf_counter()
        global_rows = step_prompts(rows, step, g.prompts_per_step, config.seed, config.data.shuffle)
        my_rows = global_rows[rank * per_rank : (rank + 1) * per_rank]
        sources = [load_source(r, data_base) for r in my_rows] if flow.is_edit else None
        batch = rollout(
            config, my_rows, flow=flow, lm=lm, reward_set=reward_set, step=step, rank=rank, sources=sources
        )

        # 4. rewards of all ranks → one advantage per image (identical on every rank)
        names = list(batch.raw)
        gathered = accelerator.gather(torch.stack([batch.raw[k] for k in names], dim=1).to(device)).cpu()
        raw_all = {k: gathered[:, i] for i, k in enumerate(names)}
        total, _ = reward_set.combine(raw_all)
        group_ids = [r["position"] for r in global_rows for _ in range(G)]
        if tracker is not None:
            adv_all = tracker.update([r["prompt"] for r in global_rows for _ in range(G)], total)
            tracker.clear()
        else:
            adv_all = grpo.group_advantages(total, group_ids, g.advantage_mode, g.advantage_eps)
        if g.adv_clip is not None:
            adv_all = grpo.clip_advantages(adv_all, g.adv_clip)
        mine = slice(rank * per_rank * G, (rank + 1) * per_rank * G)
        advantages = adv_all[mine].float()

        # 5. updates
        stats: dict[str, float] = {}
        if train_flow:
            stats.update(
                flow_update(
                    batch,
                    advantages,
                    flow=flow,
                    model=flow_model,
                    optimizer=optimizers["flow_optimizer"],
                    accelerator=accelerator,
                    config=config,
                    step=step,
                )
            )
            if ema is not None:
                ema.update()
        if lm is not None:
            stats.update(
                lm_update(
                    batch,
                    advantages,
                    lm=lm,
                    model=lm_model,
                    optimizer=optimizers["lm_optimizer"],
                    accelerator=accelerator,
                    config=config,
                    step=step,
                )
            )
        lrs = {f"lr/{k}": s.get_last_lr()[0] for k, s in schedulers.items()}
        for s in schedulers.values():
            s.step()
        if config.log_param_hash:
            hashes = {"flow": param_hash(flow.transformer) if train_flow else None}
            if lm is not None:
                hashes["lm"] = param_hash(accelerator.unwrap_model(lm_model))
            JsonlLog(out_dir / f"param_hash.rank{rank}.jsonl").append([{"step": step + 1, **hashes}])

        # 6. metrics, images, evaluation, checkpoint
        metrics = _step_metrics(step + 1, stats, lrs, total, raw_all, group_ids, adv_all, batch, accelerator)
        if eval_set is not None:  # every row has the eval columns (the CSV header is fixed by row 1)
            metrics.update({f"eval/{k}": math.nan for k in eval_set.weights})
        evaluating = config.eval_every and (step + 1) % config.eval_every == 0 and eval_set is not None
        if evaluating and accelerator.is_main_process:  # deterministic: one rank's renders are everyone's
            metrics.update(evaluate_heldout(config, eval_rows, flow, eval_set, ema, eval_base))
        metrics["time/step_s"] = time.perf_counter() - t0
        history.append(metrics)
        if logger is not None:
            logger.log(metrics)
            if config.log_images_every and (step + 1) % config.log_images_every == 0:
                _log_images(out_dir, step + 1, batch, total[mine], config.logged_images, logger)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}")
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            state = {
                "data_position": (step + 1) * g.prompts_per_step,
                "world_size": world,
                "config": config.to_dict(),
                "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                "tracker": tracker.state_dict() if tracker is not None else None,
            }
            last_ckpt = save_checkpoint(
                out_dir,
                step + 1,
                flow=flow,
                lm=lm,
                lm_model=lm_model,
                optimizers=optimizers,
                ema=ema,
                accelerator=accelerator,
                state=state,
                keep=config.keep_checkpoints,
            )

    # ---- the trained weights, ready for evalsuite run --lora / load_rewriter
    final_dir = out_dir / "final"
    if accelerator.is_main_process:
        tmp = out_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _save_models(tmp, flow=flow, lm=lm, lm_model=lm_model, accelerator=accelerator, ema=ema)
        atomic_write_json(
            tmp / "model_info.json",
            {
                "base_model": config.flow.model,
                "revision": config.flow.revision,
                "mode": config.mode,
                "steps": max(config.steps, start),
                "ema": ema is not None,
            },
        )
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)
        if logger is not None:
            logger.close()
    accelerator.wait_for_everyone()
    return FlowTrainResult(out_dir, config.steps, final_dir, last_ckpt, history)


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


def _step_metrics(
    step, stats, lrs, total, raw, group_ids, adv, batch: FlowBatch, accelerator
) -> dict[str, Any]:
    keys = sorted(stats)
    local = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    reduced = (
        accelerator.reduce(local, reduction="mean").cpu().tolist()
        if accelerator.num_processes > 1
        else local.cpu().tolist()
    )
    s = dict(zip(keys, reduced))
    if accelerator.num_processes > 1:  # extremes over ranks, not their mean
        for k in [k for k in keys if k.endswith(("ratio_min", "ratio_max", "max_abs_logp_diff"))]:
            every = accelerator.gather(
                torch.tensor([stats[k]], dtype=torch.float64, device=accelerator.device)
            )
            s[k] = float(every.min() if k.endswith("ratio_min") else every.max())
    diag = grpo.reward_diagnostics(total, group_ids, raw)
    metrics: dict[str, Any] = {
        "step": step,
        **lrs,
        **s,
        "reward/mean": diag["reward/mean"],
        "reward/std": diag["reward/std"],
        "groups/zero_std_fraction": diag["groups/zero_std_fraction"],
        "adv/abs_mean": float(adv.abs().mean()),
        "refined_fraction": float(np.mean(batch.refined)),
        "sde_steps": len(batch.traj.sde_steps),
    }
    if batch.actions.parsed:
        metrics["lm/well_formed"] = float(np.mean([p.well_formed for p in batch.actions.parsed]))
    for name, values in raw.items():
        mean, std, bad = finite_stats(values)
        metrics[f"reward/{name}/mean"] = mean
        metrics[f"reward/{name}/std"] = std
        metrics[f"reward/{name}/not_scored"] = bad
    return metrics


def _log_images(
    out_dir: Path, step: int, batch: FlowBatch, total: torch.Tensor, limit: int, logger: MetricsLog
) -> None:
    """A grid PNG per logged step (a row per group) and a JSONL record per image (prompts, reward)."""
    from evalsuite.store import atomic_write_bytes

    images = batch.traj.images[:limit]
    if not images:
        return
    G = max(1, min(len(images), len(batch.traj) // max(len(batch.rows), 1)))
    w, h = images[0].size
    n_rows = math.ceil(len(images) / G)
    grid = Image.new("RGB", (w * G, h * n_rows))
    for i, im in enumerate(images):
        grid.paste(im.resize((w, h)), ((i % G) * w, (i // G) * h))
    import io

    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(out_dir / "images" / f"step_{step:06d}.png", buf.getvalue())
    if logger.tb is not None:
        logger.tb.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    logger.samples.append(
        [
            {
                "step": step,
                "id": s.id,
                "prompt": s.prompt,
                "rendered": batch.rendered[i],
                "refined": batch.refined[i],
                "reward": float(total[i]),
                "rewards": {k: float(v[i]) for k, v in batch.raw.items()},
                **batch.details[i],
            }
            for i, s in enumerate(batch.samples[:limit])
        ]
    )


def _manifest(
    config: FlowTrainConfig, reward_set: RewardSet, flow: FlowPolicy, lm: Any, world: int
) -> dict[str, Any]:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {
        "kind": f"{config.mode}-grpo",
        "config": config.to_dict(),
        "world_size": world,
        "flow": flow.describe(),
        "lm": None if lm is None else {"model": config.policy.model, "revision": config.policy.revision},
        "rewards": reward_set.describe(),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
        },
    }


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evalsuite.harness.flow_train", description="Flow-GRPO / PromptRL / PromptLoop"
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out-dir")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"out_dir={args.out_dir}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.no_resume:
        overrides.append("resume=false")
    try:
        result = train(load_flow_config(args.config, overrides))
    except EvalsuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {result.steps} steps; weights saved to {result.final_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
