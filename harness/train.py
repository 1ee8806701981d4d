"""GRPO training of a RePrompt-style prompt rewriter. One file, read top to bottom.

    python -m evalsuite.harness.train --config harness/recipes/geneval.yaml [--set grpo.beta=0.01 ...]
    accelerate launch -m evalsuite.harness.train --config ... # DDP, DeepSpeed ZeRO-1/2 (FSDP/ZeRO-3 refused)

One step:
  1. take the step's prompts (a pure function of the step: resume needs no data-loader state); each rank
     takes a contiguous share, so every group of G completions lives on one rank;
  2. sample G completions per prompt from the LoRA policy, keeping each token's log-prob from the logits
     it was drawn from (grpo.logprobs_from: or record them with the exact forward the loss will use),
     and the reference's (the same model with the adapter off) when beta != 0;
  3. parse them (malformed → the original prompt), render the rendered prompts with the frozen generator
     (one batched call for all the rank's groups), score each image against the ORIGINAL prompt and its
     metadata, add the format and length rewards;
  4. gather the components from all ranks, normalize and combine them (evalsuite.harness.rewards), compute
     group-relative advantages (evalsuite.harness.grpo);
  5. for each inner epoch and minibatch: recompute log-probs (first minibatch: the on-policy self-test
     against the recorded ones, ratio == 1), clipped surrogate + k3 KL, accumulate over micro-batches,
     clip, step;
  6. log (CSV, TensorBoard, wandb, sample completions as JSONL), checkpoint every N steps atomically.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
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
from evalsuite.harness.completion_format import ParsedCompletion, count_words, format_completion
from evalsuite.harness.config import DataConfig, SFTConfig, TrainConfig, load_config, save_config
from evalsuite.harness.model_source import loading
from evalsuite.harness.resume import apply_optim_settings, check_resume
from evalsuite.harness.rewards import RewardSet, finite_stats
from evalsuite.harness.rewriter import (
    RewriterPolicy,
    Rollout,
    build_policy,
    completion_logprobs,
    save_rewriter,
)
from evalsuite.harness.rollout import set_training as _set_training

from evalsuite.errors import ConfigError, EvalsuiteError
from evalsuite.generator import GenerationRequest
from evalsuite.reward import resolve_dtype
from evalsuite.sample import Sample
from evalsuite.seeding import derive_seed
from evalsuite.store import JsonlLog, atomic_write_json, atomic_write_text, jsonable

# ----------------------------------------------------------------------------------------------- data


def load_prompts(cfg: DataConfig) -> list[dict[str, Any]]:
    """Rows {"id", "prompt", "metadata"} from inline prompts, a .jsonl/.txt file or an evalsuite data key."""
    if sum(x is not None for x in (cfg.prompts, cfg.path, cfg.key)) != 1:
        raise ConfigError("data: give exactly one of prompts, path or key")
    if cfg.prompts is not None:
        raw: list[Any] = list(cfg.prompts)
    else:
        if cfg.key is not None:
            from evalsuite.data import resolve

            path = resolve(cfg.key, cfg.data_dir)
        else:
            path = Path(cfg.path)  # type: ignore[arg-type]
            if not path.is_file():
                raise ConfigError(f"data.path {path} is not a file")
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        raw = [json.loads(ln) for ln in lines] if path.suffix == ".jsonl" else [ln.strip() for ln in lines]
    rows = []
    for i, item in enumerate(raw[: cfg.limit] if cfg.limit else raw):
        item = {"prompt": item} if isinstance(item, str) else dict(item)
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise ConfigError(f"data row {i}: needs a non-empty 'prompt' string, got {item!r}")
        prompt, row_id = item.pop("prompt"), str(item.pop("id", i))
        rows.append({"id": row_id, "prompt": prompt, "metadata": item})
    if not rows:
        raise ConfigError("data: no prompts")
    return rows


def step_prompts(rows: list[dict], step: int, per_step: int, seed: int, shuffle: bool) -> list[dict]:
    """The global batch of ``step``: positions step·per_step … in an endless stream of seeded epochs."""
    out, perms = [], {}
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, k = divmod(pos, len(rows))
        if epoch not in perms:
            rng = np.random.default_rng(derive_seed(seed, "data", epoch))
            perms[epoch] = rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
        out.append({**rows[int(perms[epoch][k])], "position": pos})
    return out


def load_sft_pairs(cfg: SFTConfig) -> list[dict[str, str]]:
    """(prompt, rewrite[, think]) pairs, inline or from a .jsonl file."""
    if cfg.pairs is not None and cfg.path is None:
        pairs = list(cfg.pairs)
    elif cfg.path is not None and cfg.pairs is None:
        lines = Path(cfg.path).read_text(encoding="utf-8").splitlines()
        pairs = [json.loads(ln) for ln in lines if ln.strip()]
    else:
        raise ConfigError("sft: give exactly one of pairs or path when sft.steps > 0")
    for i, p in enumerate(pairs):
        if not (isinstance(p.get("prompt"), str) and isinstance(p.get("rewrite"), str)):
            raise ConfigError(f"sft pair {i}: needs 'prompt' and 'rewrite' strings")
    return pairs


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


def logprobs_source(config: TrainConfig) -> str:
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
) -> StepBatch:
    """Sample G rewrites per prompt, parse them, render, score. Malformed rewrites render the original."""
    G = config.grpo.group_size
    seed = derive_seed(config.seed, f"rollout/{step}", rank)
    out = policy.sample([r["prompt"] for r in rows], G, seed)  # fills the sampler's own log-probs
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
    if generator is not None:
        images = generator.generate(
            [GenerationRequest(prompt=s.rendered_prompt, seed=s.seed) for s in samples]
        )
        samples = [s.with_image(im) for s, im in zip(samples, images)]
    raw, details = reward_set.raw(samples, parsed)
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
    _set_training(model, config.policy.train_mode or config.policy.gradient_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    passes = g.num_inner_epochs * g.minibatches
    totals: dict[str, torch.Tensor] = {}
    ratio_min: list[torch.Tensor] = []
    ratio_max: list[torch.Tensor] = []
    diffs: list[torch.Tensor] = []
    for epoch in range(g.num_inner_epochs):
        for m in range(g.minibatches):
            chunks = [slice(s, s + micro) for s in range(m * mb, (m + 1) * mb, micro)]
            tokens = float(ro.completion_mask[m * mb : (m + 1) * mb].sum())
            first = epoch == 0 and m == 0
            for c_i, sl in enumerate(chunks):
                part = ro.rows(sl)
                last = c_i == len(chunks) - 1
                with accelerator.no_sync(model) if not last else nullcontext():
                    logp = policy.logprobs(part, model)
                    if first and g.ratio_check:
                        try:
                            grpo.ratio_self_test(logp, part.logp, part.completion_mask, g.ratio_tol)
                        except grpo.OnPolicyError as e:
                            raise grpo.OnPolicyError(
                                f"step {step}, rank {accelerator.process_index}: {e}"
                            ) from e
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
                norm = accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
                norm = torch.as_tensor(norm).detach().double()
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + norm / passes
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    _set_training(model, False)
    if ratio_min:
        totals["ratio_min"] = torch.stack(ratio_min).min()
        totals["ratio_max"] = torch.stack(ratio_max).max()
    if diffs:
        totals["selftest/max_abs_logp_diff"] = torch.stack(diffs).max()
    keys = list(totals)
    values = torch.stack([totals[k].to(ro.input_ids.device) for k in keys]).cpu().tolist() if keys else []
    return dict(zip(keys, values))


# ---------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    out_dir: Path,
    step: int,
    *,
    policy: RewriterPolicy,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    state: dict[str, Any],
    sft_adapter: Path | None,
    keep: int | None,
) -> Path:
    """Adapter (+ the SFT adapter it sits on), optimizer, scheduler and trainer state, atomically
    (evalsuite.harness.checkpoint: a kill at any moment leaves the previous checkpoint as ``latest``)."""

    def write(tmp: Path) -> None:
        save_rewriter(tmp, policy, accelerator.unwrap_model(model), step=step, sft_adapter=sft_adapter)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_json(tmp / TRAINER_STATE, {**state, "step": step})

    return write_checkpoint(out_dir, step, accelerator, write, keep)


def load_checkpoint(
    path: Path, *, model: Any, optimizer: Any, scheduler: Any, accelerator: Any
) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and this rank's RNG; return the trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(accelerator.unwrap_model(model), weights)
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(
            f"{path}: adapter does not match the configured LoRA ({result.unexpected_keys[:3]}…)"
        )
    optimizer.load_state_dict(load_state(path / "optimizer.pt"))
    scheduler.load_state_dict(load_state(path / "scheduler.pt"))
    restore_rng(path, accelerator.process_index)
    return json.loads((path / TRAINER_STATE).read_text())


def param_hash(model: Any) -> str:
    """SHA-256 of the trainable parameters, in name order (equal on every rank iff the ranks agree)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


# -------------------------------------------------------------------------------------------- logging


class MetricsLog:
    """metrics.csv (+ TensorBoard, wandb when available) and samples.jsonl; on resume both are cut back
    to the resumed step so a resumed run's logs equal an uninterrupted run's."""

    def __init__(self, out_dir: Path, config: TrainConfig, start_step: int) -> None:
        self.csv_path = out_dir / "metrics.csv"
        self.samples = JsonlLog(out_dir / "samples.jsonl")
        self.fields: list[str] | None = None
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or []) or None
                kept = [r for r in reader if int(r["step"]) <= start_step]
            self._rewrite(kept)
        kept_samples = [r for r in self.samples.read() if r["step"] <= start_step]
        if self.samples.path.exists():
            text = "".join(json.dumps(jsonable(r), ensure_ascii=False) + "\n" for r in kept_samples)
            atomic_write_text(self.samples.path, text)
        self.tb = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                self.tb = None
        self.wandb = None
        if config.wandb:
            try:
                import wandb

                self.wandb = wandb.init(
                    project=config.wandb_project,
                    dir=str(out_dir),
                    config=config.to_dict(),
                    id=_wandb_id(out_dir),
                    resume="allow",
                )
            except ImportError:
                warnings.warn(
                    "wandb=true but wandb is not installed: logging to CSV/TensorBoard only", stacklevel=2
                )
                self.wandb = None

    def _rewrite(self, rows: list[dict]) -> None:
        if self.fields is None:
            return
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, buf.getvalue())

    def log(self, metrics: dict[str, Any]) -> None:
        new = not self.csv_path.exists() or self.fields is None
        if self.fields is None:
            self.fields = list(metrics)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in metrics.items()})
            f.flush()
            os.fsync(f.fileno())
        step = int(metrics["step"])
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _fmt(v: Any) -> Any:
    return repr(v) if isinstance(v, float) else v  # repr: shortest exact round trip


def _wandb_id(out_dir: Path) -> str:
    path = out_dir / "wandb_id.txt"
    if not path.exists():
        atomic_write_text(path, hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:12])
    return path.read_text().strip()


# --------------------------------------------------------------------------------------------- SFT


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


# ----------------------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_dir: Path | None
    last_checkpoint: Path | None
    metrics: list[dict[str, Any]]


def check_engine(accelerator: Any) -> None:
    """Refuse engines that shard parameters: our samplers run the unwrapped module, which under FSDP or
    DeepSpeed ZeRO-3 holds only this rank's shard. DDP and ZeRO-1/2 keep whole parameters on every rank."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    stage = None
    if kind == DistributedType.DEEPSPEED:
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        stage = getattr(plugin, "zero_stage", None)
    if kind == DistributedType.FSDP or stage == 3:
        raise ConfigError(
            f"{'FSDP' if kind == DistributedType.FSDP else 'DeepSpeed ZeRO-3'} shards the parameters, but "
            "sampling runs the unsharded module: launch with DDP (--multi_gpu) or DeepSpeed ZeRO stage 1/2; "
            "LoRA keeps the trainable state small, so DDP is usually enough"
        )


def validate(config: TrainConfig, world: int) -> None:
    g = config.grpo
    if g.group_size < 2:
        raise ConfigError(
            f"grpo.group_size must be >= 2 (advantages are relative to the group), got {g.group_size}"
        )
    if g.prompts_per_step % world:
        raise ConfigError(
            f"grpo.prompts_per_step ({g.prompts_per_step}) must be divisible by the number of "
            f"processes ({world}) so that every group stays on one rank"
        )
    n = g.prompts_per_step // world * g.group_size
    if n % g.minibatches:
        raise ConfigError(
            f"completions per rank ({n}) must be divisible by grpo.minibatches ({g.minibatches})"
        )
    mb = n // g.minibatches
    if mb % min(g.micro_batch_size, mb):
        raise ConfigError(
            f"minibatch size {mb} must be divisible by grpo.micro_batch_size ({g.micro_batch_size})"
        )
    if g.aggregation not in grpo.AGGREGATIONS:
        raise ConfigError(f"grpo.aggregation {g.aggregation!r} is not one of {grpo.AGGREGATIONS}")
    check_logprobs_source(config)
    if g.advantage_mode not in grpo.ADVANTAGE_MODES:
        raise ConfigError(f"grpo.advantage_mode {g.advantage_mode!r} is not one of {grpo.ADVANTAGE_MODES}")
    if config.steps < 0 or config.save_every < 1:
        raise ConfigError("steps must be >= 0 and save_every >= 1")


def train(
    config: TrainConfig, *, generator: Any = None, rewards: dict[str, Any] | None = None
) -> TrainResult:
    """Run (or resume) a rewriter GRPO run. ``generator``/``rewards`` inject ready-made objects (tests,
    notebooks) instead of building them from the config."""
    from accelerate import Accelerator

    # ---- setup: processes, threads, seeds, output folder
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    # Without CUDA, ranked processes (accelerate launch --multi_gpu on a CPU machine) need cpu=True to
    # form a gloo process group; otherwise each process would silently train alone.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=multi_cpu)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    check_engine(accelerator)
    validate(config, world)
    out_dir = Path(config.out_dir)
    history = check_resume(config, out_dir)  # before config.yaml is overwritten
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    accelerator.wait_for_everyone()
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)

    # ---- data, rewards, generator
    rows = load_prompts(config.data)
    reward_set = RewardSet(config.rewards, rewards, device=str(device))
    if generator is None and reward_set.needs_image:
        if not config.generator.model:
            raise ConfigError("a reward needs images but generator.model is null")
        from evalsuite.generator import DiffusersGenerator

        gc = config.generator
        with loading("generator.model", gc.model):
            generator = DiffusersGenerator.from_pretrained(
                gc.model,
                device=gc.device or device,
                dtype=gc.dtype,
                revision=gc.revision,
                num_inference_steps=gc.num_inference_steps,
                guidance_scale=gc.guidance_scale,
                height=gc.height,
                width=gc.width,
                batch_size=gc.batch_size,
                call_kwargs=gc.call_kwargs,
            )
    if not reward_set.needs_image:
        generator = None  # nothing looks at images: do not spend time rendering them

    # ---- policy: optional SFT warm start (merged), LoRA, optimizer, schedule
    sft_adapter = sft_warm_start(config, accelerator, out_dir)
    policy = build_policy(
        config.policy,
        device=device,
        seed=derive_seed(config.seed, "lora", 0),
        sft_adapter=None if sft_adapter is None else str(sft_adapter),
    )
    params = [p for p in policy.model.parameters() if p.requires_grad]
    o = config.optim
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Warmup(o.warmup_steps))
    model, optimizer = accelerator.prepare(policy.model, optimizer)
    tracker = None
    if config.grpo.per_prompt_tracker:  # Flow-GRPO's per-prompt statistics (biased std), cleared every step
        tracker = grpo.PerPromptStatTracker(
            global_std=config.grpo.advantage_mode == "global_std", eps=config.grpo.advantage_eps
        )

    # ---- resume
    start = 0
    if not config.resume and accelerator.is_main_process:
        # Starting over: forget the old pointer so a crash before our first save cannot resume the old run.
        (out_dir / CHECKPOINTS / LATEST).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    ckpt = latest_checkpoint(out_dir) if config.resume else None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator
        )
        apply_optim_settings(optimizer, scheduler, config.optim)
        start = int(state["step"])
        if state["data_position"] != start * config.grpo.prompts_per_step:
            raise ConfigError(
                f"{ckpt}: data position {state['data_position']} does not match "
                f"grpo.prompts_per_step={config.grpo.prompts_per_step}; keep it unchanged to resume"
            )
        if tracker is not None and state.get("tracker"):
            tracker.load_state_dict(state["tracker"])
    logger = MetricsLog(out_dir, config, start) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        manifest = _manifest(config, reward_set, generator, world)
        atomic_write_json(out_dir / "manifest.json", {**manifest, "history": history})

    # ---- the loop
    per_rank = config.grpo.prompts_per_step // world
    G = config.grpo.group_size
    micro = min(config.grpo.micro_batch_size, per_rank * G // config.grpo.minibatches)
    history: list[dict[str, Any]] = []
    last_ckpt = ckpt
    from tqdm.auto import tqdm

    from evalsuite.progress import enabled as progress_enabled

    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc="rewriter GRPO",
        disable=not (accelerator.is_main_process and config.progress and progress_enabled()),
        dynamic_ncols=True,
    )
    for step in bar:
        t0 = time.perf_counter()
        # 1-3. prompts for this rank, sample, parse, render, score
        global_rows = step_prompts(rows, step, config.grpo.prompts_per_step, config.seed, config.data.shuffle)
        my_rows = global_rows[rank * per_rank : (rank + 1) * per_rank]
        batch = rollout(
            policy,
            my_rows,
            config=config,
            reward_set=reward_set,
            generator=generator,
            step=step,
            rank=rank,
            micro_batch_size=micro,
        )

        # 4. all ranks' components → normalized total → advantages (identical on every rank)
        names = list(batch.raw)
        local = torch.stack([batch.raw[k] for k in names], dim=1).to(device)
        gathered = accelerator.gather(local).cpu()
        raw_all = {k: gathered[:, i] for i, k in enumerate(names)}
        total, _ = reward_set.combine(raw_all)
        group_ids = [r["position"] for r in global_rows for _ in range(G)]
        if tracker is not None:
            adv_all = tracker.update([r["prompt"] for r in global_rows for _ in range(G)], total)
            tracker.clear()
        else:
            adv_all = grpo.group_advantages(
                total, group_ids, config.grpo.advantage_mode, config.grpo.advantage_eps
            )
        if config.grpo.adv_clip is not None:
            adv_all = grpo.clip_advantages(adv_all, config.grpo.adv_clip)
        mine = slice(rank * per_rank * G, (rank + 1) * per_rank * G)
        advantages = adv_all[mine].float()

        # 5. the policy update (with the on-policy self-test on the first minibatch)
        stats = policy_update(
            batch,
            advantages,
            model=model,
            policy=policy,
            optimizer=optimizer,
            accelerator=accelerator,
            config=config,
            step=step,
        )
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        if config.log_param_hash:
            JsonlLog(out_dir / f"param_hash.rank{rank}.jsonl").append(
                [{"step": step + 1, "sha256": param_hash(accelerator.unwrap_model(model))}]
            )

        # 6. metrics (global), samples, checkpoint
        metrics = _step_metrics(step + 1, lr, stats, total, raw_all, group_ids, adv_all, batch, accelerator)
        metrics["time/step_s"] = time.perf_counter() - t0
        history.append(metrics)
        if logger is not None:
            logger.log(metrics)
            if config.log_samples_every and (step + 1) % config.log_samples_every == 0:
                logger.samples.append(
                    _sample_records(step + 1, batch, total[mine], advantages, config.logged_samples)
                )
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.3g}")
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            state = {
                "data_position": (step + 1) * config.grpo.prompts_per_step,
                "world_size": world,
                "config": config.to_dict(),
                "tracker": tracker.state_dict() if tracker is not None else None,
            }
            last_ckpt = save_checkpoint(
                out_dir,
                step + 1,
                policy=policy,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                accelerator=accelerator,
                state=state,
                sft_adapter=sft_adapter,
                keep=config.keep_checkpoints,
            )

    # ---- the trained rewriter, ready for load_rewriter
    final_dir = out_dir / "final"
    if accelerator.is_main_process:
        tmp = out_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_rewriter(
            tmp,
            policy,
            accelerator.unwrap_model(model),
            step=max(config.steps, start),
            sft_adapter=sft_adapter,
        )
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)
        if logger is not None:
            logger.close()
    accelerator.wait_for_everyone()
    return TrainResult(out_dir, config.steps, final_dir, last_ckpt, history)


class _Warmup:
    """Linear warmup then constant: the schedule does not depend on the total number of steps, so a run
    can be extended by resuming with a larger ``steps``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0


def _step_metrics(
    step: int,
    lr: float,
    stats: dict[str, float],
    total: torch.Tensor,
    raw: dict[str, torch.Tensor],
    group_ids: list[int],
    adv: torch.Tensor,
    batch: StepBatch,
    accelerator: Any,
) -> dict[str, Any]:
    """Per-step numbers over all ranks: update stats averaged, reward stats on the gathered batch."""
    keys = sorted(stats)
    local = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    reduced = (
        accelerator.reduce(local, reduction="mean").cpu().tolist()
        if accelerator.num_processes > 1
        else local.cpu().tolist()
    )
    s = dict(zip(keys, reduced))
    if accelerator.num_processes > 1:  # min/max must not be averaged
        for k, op in (("ratio_min", "min"), ("ratio_max", "max")):
            t = torch.tensor([stats[k]], dtype=torch.float64, device=accelerator.device)
            all_v = accelerator.gather(t).cpu()
            s[k] = float(all_v.min() if op == "min" else all_v.max())
    diag = grpo.reward_diagnostics(total, group_ids, raw)
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
        "reward/mean": diag["reward/mean"],
        "reward/std": diag["reward/std"],
        "groups/zero_std_fraction": diag["groups/zero_std_fraction"],
        "adv/abs_mean": float(adv.abs().mean()),
        "completions/well_formed": float(shape[:, 0].mean()),
        "completions/truncated": float(shape[:, 1].mean()),
        "completions/tokens": float(shape[:, 2].mean()),
        "completions/rewrite_words": finite_stats(shape[:, 3])[0],
    }
    for name, values in raw.items():
        mean, std, bad = finite_stats(values)
        metrics[f"reward/{name}/mean"] = mean
        metrics[f"reward/{name}/std"] = std
        metrics[f"reward/{name}/not_scored"] = bad
    return metrics


def _sample_records(
    step: int, batch: StepBatch, total: torch.Tensor, adv: torch.Tensor, limit: int
) -> list[dict]:
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


def _manifest(config: TrainConfig, reward_set: RewardSet, generator: Any, world: int) -> dict[str, Any]:
    import accelerate
    import peft
    import transformers

    return {
        "kind": "rewriter-grpo",
        "config": config.to_dict(),
        "world_size": world,
        "rewards": reward_set.describe(),
        "generator": generator.describe() if generator is not None else None,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
        },
    }


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evalsuite.harness.train",
                                     description="GRPO training of a prompt rewriter")
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
        config = load_config(args.config, overrides)
        result = train(config)
    except EvalsuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {result.steps} steps; rewriter saved to {result.final_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
