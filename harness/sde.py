"""One denoising step of a rectified-flow sampler as a Gaussian with a log-prob (Flow-GRPO).

A flow model predicts the velocity v at noise level σ; the deterministic Euler step is x' = x + (σ' − σ)·v.
Flow-GRPO turns it into a stochastic step with the same marginals, so every step is a Gaussian policy
N(mean, std²) over x' whose log-prob the GRPO ratio needs. Everything here is fp32 math on any input dtype
(bf16 squares of σ-ratios overflow), and nothing here knows about models: a small function, like a diffusers
scheduler step.

    "sde" (Flow-GRPO):  std_t = a·sqrt(σ / (1 − σ)),   dt = σ' − σ < 0
                        mean  = x·(1 + std_t²·dt / (2σ)) + v·(1 + std_t²·(1 − σ) / (2σ))·dt
                        x'    = mean + std_t·sqrt(−dt)·ε
    "cps" (coefficient-preserving): std = σ'·sin(a·π/2)
                        mean  = x̂0·(1 − σ') + ε̂·sqrt(σ'² − std²),  x̂0 = x − σ·v,  ε̂ = x + (1 − σ)·v
                        x'    = mean + std·ε

At σ = 1 the "sde" std divides by zero; as in Flow-GRPO the denominator then uses ``sigma_max``, the next
sigma of the schedule. Log-probs are averaged over all non-batch dimensions, as Flow-GRPO does:

    "sde"           the Gaussian log-density log N(x'; mean, std²) (Flow-GRPO's, constants included).
    "cps"           Flow-GRPO's cps expression −(x' − mean)², with no 1/(2·std²) and no constants. It is not
                    a log-density, and the missing 1/(2·std²) does NOT cancel in the ratio of two policies
                    (log ρ = [(x' − μ_old)² − (x' − μ_new)²] averaged, instead of that over 2·std²), so this
                    is what reproduces Flow-GRPO's clipping and step size.
    "cps_gaussian"  the same cps step with the exact Gaussian log-density: the true likelihood ratio of the
                    cps transition (log ρ is the "cps" one divided by 2·std²). Kept for studies of the step;
                    use "cps" to train like Flow-GRPO.

The KL term Flow-GRPO adds (for every type) is ||μθ − μref||² / (2·std_dev_t²) averaged over elements, with
the std_dev_t its step returns: std_t = a·sqrt(σ / (1 − σ)) for "sde" (WITHOUT the sqrt(−dt) of the step's
std, so it is not the KL of the two step distributions: that would be 1/(−dt) times larger) and σ'·sin(a·π/2)
for cps. Each step carries that scale as ``kl_std``; ``grpo.kl_gaussian(mean, ref_mean, kl_std)`` is
Flow-GRPO's KL exactly, so the recipes' β mean what they mean in Flow-GRPO's configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

SDEType = Literal["sde", "cps", "cps_gaussian"]
SDE_TYPES: tuple[str, ...] = ("sde", "cps", "cps_gaussian")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class SDEStep:
    """One step's result. ``std`` is the standard deviation of x' given x, shape (B, 1, …) broadcastable
    to ``mean``; ``log_prob`` is (B,), NaN where std == 0 (a deterministic step has no density);
    ``kl_std`` is the scale Flow-GRPO divides its KL by (its ``std_dev_t``; see the module docstring)."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    kl_std: torch.Tensor


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """σ as fp32 of shape (B, 1, …, 1) from a float, a 0-d tensor or a (B,) tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def step_std(
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: float,
    like: torch.Tensor,
    *,
    sde_type: SDEType = "sde",
    sigma_max: float | None = None,
) -> torch.Tensor:
    """The standard deviation of x' given x, (B, 1, …): what the closed-form KL divides by."""
    s, s_next = _per_sample(sigma, like), _per_sample(sigma_next, like)
    if sde_type != "sde":
        return s_next * math.sin(noise_level * math.pi / 2)
    denom_sigma = torch.where(s >= 1.0, torch.full_like(s, _sigma_max(sigma_max, s_next)), s)
    std_t = torch.sqrt(s / (1.0 - denom_sigma)) * noise_level
    return std_t * torch.sqrt(s - s_next)


def _sigma_max(sigma_max: float | None, s_next: torch.Tensor) -> float:
    if sigma_max is not None:
        if not 0.0 <= sigma_max < 1.0:
            raise ValueError(f"sigma_max must be in [0, 1), got {sigma_max}")
        return float(sigma_max)
    return float(s_next.max())


def sde_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    *,
    noise_level: float = 0.7,
    sde_type: SDEType = "sde",
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    sigma_max: float | None = None,
) -> SDEStep:
    """Draw x' (or take the given ``prev_sample``) and return it with log p(x' | x), mean and std.

    velocity, sample: (B, …) in any dtype. sigma, sigma_next: floats or (B,) tensors with σ' < σ.
    ``prev_sample`` given → its log-prob under this step (the train-time recompute); else x' = mean + std·ε
    with ``noise`` ε, or ε drawn from ``generator`` (one per row for batch-independent draws).
    ``sigma_max``: the schedule's second sigma, used in place of σ = 1 in the "sde" denominator
    (default: σ' of this call, which is the same thing on the first step).
    """
    if sde_type not in SDE_TYPES:
        raise ValueError(f"sde_type must be one of {SDE_TYPES}, got {sde_type!r}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    v, x = velocity.float(), sample.float()
    s, s_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    if bool((s_next >= s).any()):
        raise ValueError("sigma_next must be smaller than sigma (the sampler runs from noise to data)")
    dt = s_next - s
    std = step_std(sigma, sigma_next, noise_level, x, sde_type=sde_type, sigma_max=sigma_max)
    if sde_type == "sde":
        denom_sigma = torch.where(s >= 1.0, torch.full_like(s, _sigma_max(sigma_max, s_next)), s)
        std_t2 = (s / (1.0 - denom_sigma)) * noise_level**2
        mean = x * (1 + std_t2 * dt / (2 * s)) + v * (1 + std_t2 * (1 - s) / (2 * s)) * dt
    else:
        x0 = x - s * v
        eps_hat = x + (1 - s) * v
        mean = x0 * (1 - s_next) + eps_hat * torch.sqrt((s_next * s_next - std * std).clamp(min=0.0))
    if prev_sample is None:
        if noise is None:
            noise = _randn(x, generator)
        prev = mean + std * noise.float()
    else:
        prev = prev_sample.float()
    if sde_type == "cps":
        log_prob = cps_log_prob(prev.detach(), mean, std)
    else:
        log_prob = gaussian_log_prob(prev.detach(), mean, std)
    kl_std = std / torch.sqrt(-dt) if sde_type == "sde" else std  # Flow-GRPO's std_dev_t
    return SDEStep(prev, log_prob, mean, std, kl_std)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std²) per element, averaged over non-batch dims → (B,); NaN for rows with std == 0."""
    std = std.expand_as(mean)
    positive = std > 0
    safe = torch.where(positive, std, torch.ones_like(std))
    per_element = -((x - mean) ** 2) / (2 * safe * safe) - torch.log(safe) - _LOG_SQRT_2PI
    per_element = torch.where(positive, per_element, torch.full_like(per_element, math.nan))
    return per_element.reshape(per_element.shape[0], -1).mean(dim=1)


def cps_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's cps "log-prob" −(x − mean)² averaged over non-batch dims → (B,), fp32.

    NaN for rows with std == 0, like the Gaussian: a deterministic step is no policy (our sampler makes the
    last cps step, σ' = 0, an Euler step; Flow-GRPO's code would return −(x − mean)² there).
    """
    per_element = -((x.float() - mean.float()) ** 2)
    per_row = per_element.reshape(per_element.shape[0], -1).mean(dim=1)
    deterministic = (std.expand_as(mean) <= 0).reshape(mean.shape[0], -1).any(dim=1)
    return torch.where(deterministic, torch.full_like(per_row, math.nan), per_row)


def _randn(like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    if isinstance(generator, list):
        if len(generator) != like.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {like.shape[0]}")
        return torch.stack(
            [
                torch.randn(like.shape[1:], generator=g, device=g.device, dtype=torch.float32).to(like.device)
                for g in generator
            ]
        )
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32).to(like.device)


def euler_step(velocity: torch.Tensor, sample: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """The deterministic ODE step x + (σ' − σ)·v in fp32 (what the SDE step reduces to at noise level 0)."""
    x = sample.float()
    return x + (_per_sample(sigma_next, x) - _per_sample(sigma, x)) * velocity.float()


def predicted_x0(velocity: torch.Tensor, sample: torch.Tensor, sigma) -> torch.Tensor:
    """x̂0 = x − σ·v: the model's current guess of the clean latents (PromptLoop's preview)."""
    x = sample.float()
    return x - _per_sample(sigma, x) * velocity.float()
