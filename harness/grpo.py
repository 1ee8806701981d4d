"""GRPO core as small pure functions: advantages, clipped surrogate, KL estimators, loss aggregation.

Shapes used throughout: B = samples in the batch, T = completion tokens (LM) or 1 (one flow step per sample).
Nothing here syncs with the device (no ``.item()``) except the self-test and the diagnostics, which exist to
produce Python values.

Conventions chosen against the peers (read from their code):

- Advantage: A_i = (r_i − mean(group)) / (std + eps), eps = 1e-4 (TRL and Flow-GRPO both add 1e-4 to the std).
- Std: TRL uses the unbiased (Bessel-corrected) std (``trl.trainer.utils.nanstd``); Flow-GRPO uses ``np.std``,
  the biased (population) std. ``group_advantages`` defaults to unbiased (the LM rewriter is compared against
  TRL), ``PerPromptStatTracker`` to biased (it reproduces Flow-GRPO). Both take an ``unbiased`` flag.
- NaN rewards mean "not applicable" (``RewardOutput.applicable`` is False). They are excluded from every
  statistic and get advantage exactly 0: the sample contributes no policy gradient (its KL term still
  applies). They are never treated as a reward of 0, which would bias the group baseline (TRL does the same).
- Zero-std groups (all valid rewards equal, or fewer than two valid rewards) carry no signal; their
  advantages are exactly 0 and they are reported in ``zero_std_mask``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from evalsuite.errors import ConfigError, EvalsuiteError
from evalsuite.harness.stat_tracker import PerPromptStatTracker

__all__ = [
    "ADVANTAGE_MODES",
    "AGGREGATIONS",
    "GroupAdvantages",
    "OnPolicyError",
    "PerPromptStatTracker",
    "aggregate_loss",
    "clip_advantages",
    "clipped_surrogate",
    "compute_group_advantages",
    "gather_advantages",
    "group_advantages",
    "grpo_loss",
    "kl_gaussian",
    "kl_k3",
    "ratio_self_test",
    "reward_diagnostics",
    "stat_tracker",
]

AdvantageMode = Literal["group_std", "global_std", "none"]
Aggregation = Literal["token_mean", "sequence_mean", "sequence_sum_norm"]
ADVANTAGE_MODES: tuple[str, ...] = ("group_std", "global_std", "none")
AGGREGATIONS: tuple[str, ...] = ("token_mean", "sequence_mean", "sequence_sum_norm")


class OnPolicyError(EvalsuiteError, RuntimeError):
    """The log-probs recomputed at train time differ from those recorded at sampling (ratio != 1)."""


# --------------------------------------------------------------------------------------------- advantages


@dataclass(frozen=True)
class GroupAdvantages:
    """Advantages plus the group statistics they came from (for logging and debugging).

    advantages: (B,) float, 0 for NaN rewards and for zero-std groups.
    group_index: (B,) long, row of each sample's group in the per-group tensors below.
    groups: the group keys, one per row (sorted unique ids for a tensor, first appearance for a sequence).
    group_mean, group_std: (G,) float64 over valid rewards (NaN for a group without valid rewards; the std is
        the per-group one even in "global_std" mode).
    group_count: (G,) long, valid rewards per group.
    zero_std_mask: (G,) bool, groups whose rewards carry no signal.
    valid: (B,) bool, samples with a finite reward.
    scale: the divisor actually used: (B,) std + eps, or ones in mode "none".
    """

    advantages: torch.Tensor
    group_index: torch.Tensor
    groups: list[Any]
    group_mean: torch.Tensor
    group_std: torch.Tensor
    group_count: torch.Tensor
    zero_std_mask: torch.Tensor
    valid: torch.Tensor
    scale: torch.Tensor

    @property
    def zero_std_fraction(self) -> torch.Tensor:
        """Fraction of groups with no signal (0-d tensor; no device sync)."""
        return self.zero_std_mask.float().mean()


def _group_index(group_ids: torch.Tensor | Sequence[Hashable], n: int) -> tuple[torch.Tensor, list[Any]]:
    """Map group ids to rows 0..G-1; a tensor by sorted unique value, a sequence by first appearance."""
    if isinstance(group_ids, torch.Tensor):
        if group_ids.dim() != 1 or group_ids.numel() != n:
            raise ConfigError(f"group_ids must have shape ({n},), got {tuple(group_ids.shape)}")
        keys, index = torch.unique(group_ids, return_inverse=True)
        return index.long(), keys.tolist()
    ids = list(group_ids)
    if len(ids) != n:
        raise ConfigError(f"group_ids has {len(ids)} entries for {n} rewards")
    rows: dict[Hashable, int] = {}
    index = [rows.setdefault(g, len(rows)) for g in ids]
    return torch.tensor(index, dtype=torch.long), list(rows)


def compute_group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable],
    mode: AdvantageMode = "group_std",
    eps: float = 1e-4,
    *,
    unbiased: bool = True,
) -> GroupAdvantages:
    """Group-relative advantages with their diagnostics.

    rewards: (B,) float, NaN = not applicable. group_ids: (B,) ints or B hashable keys (e.g. prompts).
    mode: "group_std" divides by each group's std (GRPO, TRL scale_rewards="group"), "global_std" by the std
    of all valid rewards in the batch (Flow-GRPO global_std, TRL scale_rewards="batch"), "none" does not
    divide (Dr. GRPO / PromptEcho). The mean is always the group mean.
    """
    if mode not in ADVANTAGE_MODES:
        raise ConfigError(f"advantage mode {mode!r} is not one of {ADVANTAGE_MODES}")
    if rewards.dim() != 1:
        raise ConfigError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    device = rewards.device
    r = rewards.detach().to(torch.float64)
    n = r.numel()
    index, keys = _group_index(group_ids, n)
    index = index.to(device)
    n_groups = len(keys)

    valid = torch.isfinite(r)
    r0 = torch.where(valid, r, torch.zeros_like(r))
    count = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(0, index, valid.double())
    total = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(0, index, r0)
    mean = total / count  # NaN for groups without valid rewards (0/0)
    dev = torch.where(valid, r - mean[index], torch.zeros_like(r))
    sq = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(0, index, dev * dev)
    denom = (count - 1.0) if unbiased else count
    std = torch.where(count >= 2, (sq / denom.clamp(min=1.0)).sqrt(), torch.zeros_like(count))
    # "All equal" is decided on the raw values (max == min), not on a rounded std.
    inf = torch.full((n_groups,), float("inf"), dtype=torch.float64, device=device)
    gmax = (-inf).scatter_reduce(0, index, torch.where(valid, r, -inf[index]), "amax")
    gmin = inf.clone().scatter_reduce(0, index, torch.where(valid, r, inf[index]), "amin")
    zero_std = (count < 2) | (gmax == gmin)

    if mode == "group_std":
        scale = std[index] + eps
    elif mode == "global_std":
        n_valid = valid.sum()
        g_mean = r0.sum() / n_valid
        g_sq = torch.where(valid, (r - g_mean) ** 2, torch.zeros_like(r)).sum()
        g_den = (n_valid - 1) if unbiased else n_valid
        g_std = torch.where(n_valid >= 2, (g_sq / g_den.clamp(min=1)).sqrt(), torch.zeros_like(g_sq))
        scale = (g_std + eps).expand(n)
    else:
        scale = torch.ones_like(r)
    adv = dev / scale
    adv = torch.where(valid & ~zero_std[index], adv, torch.zeros_like(adv))
    return GroupAdvantages(
        advantages=adv.to(out_dtype),
        group_index=index,
        groups=keys,
        group_mean=mean,
        group_std=std,
        group_count=count.long(),
        zero_std_mask=zero_std,
        valid=valid,
        scale=scale,
    )


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable],
    mode: AdvantageMode = "group_std",
    eps: float = 1e-4,
    *,
    unbiased: bool = True,
) -> torch.Tensor:
    """(B,) advantages; see ``compute_group_advantages`` for the modes and the diagnostics."""
    return compute_group_advantages(rewards, group_ids, mode, eps, unbiased=unbiased).advantages


def clip_advantages(adv: torch.Tensor, max_abs: float) -> torch.Tensor:
    """Clamp advantages to [−max_abs, max_abs] (Flow-GRPO adv_clip_max = 5): bounds one outlier's step."""
    if not max_abs > 0:
        raise ConfigError(f"max_abs must be > 0, got {max_abs}")
    return adv.clamp(-max_abs, max_abs)


# ---------------------------------------------------------------------------------------- policy loss


def _expand_like(adv: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B,) advantages → (B, 1, ...) so they broadcast against per-token (B, T) tensors."""
    return adv.reshape(adv.shape + (1,) * (ref.dim() - adv.dim())) if adv.dim() < ref.dim() else adv


def clipped_surrogate(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per element: −min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A), ρ = exp(logp_new − logp_old).

    logp_new, logp_old: (B, T) (or (B,)); advantages: (B,) or broadcastable. ``clip_eps_high`` (DAPO's
    clip-higher) defaults to ``clip_eps``. Returns (loss (B, T), clip_mask (B, T) bool) where clip_mask marks
    elements whose clipped branch is active, so their gradient is 0 (TRL's clip_ratio/region definition:
    ρ < 1−ε with A < 0, or ρ > 1+ε_high with A > 0).
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    adv = _expand_like(advantages, logp_new)
    ratio = torch.exp(logp_new - logp_old)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + high)
    loss = -torch.minimum(ratio * adv, clipped * adv)
    clip_mask = ((ratio < 1.0 - clip_eps) & (adv < 0)) | ((ratio > 1.0 + high) & (adv > 0))
    return loss, clip_mask


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π‖π_ref): exp(d) − d − 1 with d = ref − logp; ≥ 0 and 0 at equality.

    Written as expm1(d) − d, which is the same value without the cancellation of exp(d) − 1 near d = 0.
    """
    d = ref_logp - logp
    return (torch.expm1(d) - d).clamp(min=0.0)


def kl_gaussian(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Closed-form KL between N(mean, σ²) and N(ref_mean, σ²), averaged over non-batch dims → (B,).

    KL per element = (μθ − μref)² / (2σ²); Flow-GRPO averages it over all non-batch dims (not a sum, like its
    per-step log-prob) and then over the batch. std: float or broadcastable to ``mean`` (e.g. (B, 1, 1, 1)).
    Note Flow-GRPO passes ``std_dev_t`` (the SDE noise scale), not the step std ``std_dev_t·sqrt(−dt)``: pass
    the same to reproduce its numbers, or the step std for the exact KL of the step distributions.
    """
    diff = mean.float() - ref_mean.float()
    std_t = torch.as_tensor(std, dtype=torch.float32, device=diff.device)
    kl = diff * diff / (2.0 * std_t * std_t)
    return kl.reshape(kl.shape[0], -1).mean(dim=1) if kl.dim() > 1 else kl


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: Aggregation = "token_mean",
    *,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the tokens where ``mask`` is true.

    - "token_mean": Σ mask·l / Σ mask over the whole batch: every token weighs the same (TRL "bnpo"; DAPO's
      token-level loss; TRL "dapo" up to normalizing over the whole generation batch across accumulation).
    - "sequence_mean": mean over each sequence's tokens, then over sequences: every sequence weighs the same
      (original GRPO / DeepSeekMath, TRL "grpo"); short sequences get more weight per token.
    - "sequence_sum_norm": Σ mask·l / (B · max_len), a constant normalizer with no length bias (Dr. GRPO, TRL
      "dr_grpo"; max_len = max_completion_length, default T).
    A (B,) input (one log-prob per sample, as in Flow-GRPO) is treated as T = 1: every mode is the batch mean.
    """
    if mode not in AGGREGATIONS:
        raise ConfigError(f"aggregation {mode!r} is not one of {AGGREGATIONS}")
    x = per_token if per_token.dim() > 1 else per_token.unsqueeze(-1)
    m = torch.ones_like(x) if mask is None else (mask if mask.dim() > 1 else mask.unsqueeze(-1)).to(x.dtype)
    masked = x * m
    if mode == "token_mean":
        return masked.sum() / m.sum().clamp(min=1.0)
    if mode == "sequence_mean":
        return (masked.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    length = x.shape[-1] if max_len is None else max_len
    return masked.sum() / (x.shape[0] * length)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp(min=1.0)


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    beta: float = 0.0,
    aggregation: Aggregation = "token_mean",
    *,
    clip_eps_high: float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss: aggregate(clipped_surrogate + beta·k3 KL) over masked tokens (TRL's composition).

    logp_new (with grad), logp_old, ref_logp: (B, T) per-token log-probs; advantages (B,); mask (B, T) bool or
    0/1 (None = all tokens). ref_logp may be None when beta == 0. Returns (scalar loss, stats) where stats
    are detached 0-d tensors (no device sync): policy_loss, kl_mean, clip_fraction, ratio_mean, ratio_min,
    ratio_max (all over masked tokens; kl_mean is 0 without a reference).
    """
    if beta != 0.0 and ref_logp is None:
        raise ConfigError("beta != 0 needs ref_logp (the reference policy's per-token log-probs)")
    m = torch.ones_like(logp_new) if mask is None else mask.to(logp_new.dtype)
    surrogate, clip_mask = clipped_surrogate(logp_new, logp_old, advantages, clip_eps, clip_eps_high)
    per_token = surrogate
    if ref_logp is not None:
        kl = kl_k3(logp_new, ref_logp)
        if beta != 0.0:
            per_token = surrogate + beta * kl
        kl_mean = _masked_mean(kl.detach(), m)
    else:
        kl_mean = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    loss = aggregate_loss(per_token, m, aggregation, max_len=max_len)
    with torch.no_grad():
        ratio = torch.exp(logp_new.detach() - logp_old)
        keep = m > 0
        stats = {
            "policy_loss": aggregate_loss(surrogate.detach(), m, aggregation, max_len=max_len),
            "kl_mean": kl_mean,
            "clip_fraction": _masked_mean(clip_mask.to(m.dtype), m),
            "ratio_mean": _masked_mean(ratio, m),
            "ratio_min": torch.where(keep, ratio, torch.full_like(ratio, float("inf"))).amin(),
            "ratio_max": torch.where(keep, ratio, torch.full_like(ratio, float("-inf"))).amax(),
        }
    return loss, stats


def ratio_self_test(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    mask: torch.Tensor | None = None,
    tol: float = 1e-5,
    *,
    context: str = "",
) -> None:
    """Raise ``OnPolicyError`` unless |logp_new − logp_old| ≤ tol on every masked token.

    Call it on the first inner step right after sampling, when the policy has not moved: ρ must be exactly 1.
    Any deviation means the train-time forward differs from the sampling-time one. ``context`` (e.g. "step
    3, rank 0") starts the message, so a trainer's failure says where it happened.
    """
    diff = (logp_new.detach().double() - logp_old.detach().double()).abs()
    keep = torch.ones_like(diff, dtype=torch.bool) if mask is None else mask.to(diff.device) > 0
    diff = torch.where(keep, torch.nan_to_num(diff, nan=float("inf")), torch.zeros_like(diff))
    worst = float(diff.max()) if diff.numel() else 0.0
    if worst <= tol:
        return
    flat = int(diff.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    n_bad = int((diff > tol).sum())
    raise OnPolicyError(
        f"{context + ': ' if context else ''}on-policy ratio self-test failed: "
        f"max |logp_new - logp_old| = {worst:.3g} > tol {tol:g} "
        f"(at index {where}; {n_bad} of {int(keep.sum())} masked tokens off). The train-time log-probs must "
        "equal those recorded at sampling on the first inner step. Likely causes: a different dtype or "
        "autocast between sampling and training; padding side or attention mask/position ids differing; "
        "dropout left on (call model.eval() or set dropout to 0); sampling settings not applied to the "
        "log-probs (temperature, top-k/top-p); a different batch composition or size (batched kernels are "
        "not bitwise batch-invariant: raise tol a little if that is the only cause)."
    )


def reward_diagnostics(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable],
    components: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Python floats for logging: NaN-aware mean/std (unbiased, as TRL) of the reward and each component,
    the fraction of NaN rewards and the fraction of groups with zero std (no learning signal)."""
    ga = compute_group_advantages(rewards, group_ids, "none")
    out = {"reward/mean": _nan_mean(rewards), "reward/std": _nan_std(rewards)}
    out["reward/nan_fraction"] = float((~ga.valid).double().mean()) if rewards.numel() else 0.0
    out["groups/count"] = float(len(ga.groups))
    out["groups/zero_std_fraction"] = float(ga.zero_std_fraction) if ga.groups else 0.0
    for name, values in (components or {}).items():
        out[f"reward/{name}/mean"] = _nan_mean(values)
        out[f"reward/{name}/std"] = _nan_std(values)
    return out


def _nan_mean(x: torch.Tensor) -> float:
    v = x.detach().double().reshape(-1)
    v = v[torch.isfinite(v)]
    return float(v.mean()) if v.numel() else float("nan")


def _nan_std(x: torch.Tensor) -> float:
    v = x.detach().double().reshape(-1)
    v = v[torch.isfinite(v)]
    return float(v.std()) if v.numel() > 1 else float("nan")


# ---------------------------------------------------------------------------------- one training step


@dataclass
class StepAdvantages:
    """A step's rewards and advantages over all ranks (identical on every rank), and this rank's share."""

    raw: dict[str, torch.Tensor]  # component → (B,) raw values, all ranks
    total: torch.Tensor  # (B,) combined reward
    group_ids: list[int]
    all: torch.Tensor  # (B,) advantages, clipped
    mine: slice  # this rank's rows of the above
    advantages: torch.Tensor  # (B / world,) float32, this rank's

    def metrics(self) -> dict[str, float]:
        diag = reward_diagnostics(self.total, self.group_ids)
        return {
            "reward/mean": diag["reward/mean"],
            "reward/std": diag["reward/std"],
            "groups/zero_std_fraction": diag["groups/zero_std_fraction"],
            "adv/abs_mean": float(self.all.abs().mean()),
        }


def stat_tracker(settings: Any) -> PerPromptStatTracker | None:
    """Flow-GRPO's per-prompt statistics when ``settings.per_prompt_tracker`` (biased std), else None."""
    if not settings.per_prompt_tracker:
        return None
    global_std = settings.advantage_mode == "global_std"
    return PerPromptStatTracker(global_std=global_std, eps=settings.advantage_eps)


def gather_advantages(
    raw: dict[str, torch.Tensor],
    global_rows: list[dict],
    *,
    combine: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, Any]],
    settings: Any,
    tracker: PerPromptStatTracker | None,
    accelerator: Any,
) -> StepAdvantages:
    """Gather every rank's reward components, ``combine`` them into one reward, then group-relative
    advantages (or the tracker's, cleared every step) and the clip: the same on every rank. Each rank's
    rows are the contiguous groups of its ``global_rows`` share."""
    names = list(raw)
    local = torch.stack([raw[k] for k in names], dim=1).to(accelerator.device)
    gathered = accelerator.gather(local).cpu()
    raw_all = {k: gathered[:, i] for i, k in enumerate(names)}
    total, _ = combine(raw_all)
    G = settings.group_size
    group_ids = [r["position"] for r in global_rows for _ in range(G)]
    if tracker is not None:
        adv_all = tracker.update([r["prompt"] for r in global_rows for _ in range(G)], total)
        tracker.clear()
    else:
        adv_all = group_advantages(total, group_ids, settings.advantage_mode, settings.advantage_eps)
    if settings.adv_clip is not None:
        adv_all = clip_advantages(adv_all, settings.adv_clip)
    n = local.shape[0]
    mine = slice(accelerator.process_index * n, (accelerator.process_index + 1) * n)
    return StepAdvantages(raw_all, total, group_ids, adv_all, mine, adv_all[mine].float())
