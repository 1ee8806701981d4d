"""Rewards of the rewriter: RePrompt's format and length rules, library rewards, and how they are combined.

Per completion, every component yields a raw value (NaN when it does not apply or failed on that sample).
``combine`` turns the components into one scalar reward per completion:

1. normalize each component over the step's batch. "batch" (default) standardizes it, z = (x − mean) / std
   over the finite values of the whole step (the trainer gathers all ranks first, so the result does not
   depend on the number of processes); a constant component becomes 0. "none" keeps raw values.
2. a NaN (not applicable / error) becomes the component's batch mean (0 after standardization), so it
   pushes the sample neither up nor down while the other components still count;
3. weighted sum with the configured weights.

Images are always scored against the ORIGINAL prompt and its metadata (``Sample.prompt``); the rewrite is
only ``Sample.rendered_prompt``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from evalsuite.errors import ConfigError
from evalsuite.harness.completion_format import ParsedCompletion, count_words
from evalsuite.harness.config import RewardsConfig, RewardSpec
from evalsuite.harness.reward_calls import ChunkScorer, check_call_settings, guarded_score
from evalsuite.reward import Reward
from evalsuite.sample import Sample

BUILTIN_COMPONENTS = ("format", "length")
NORMALIZATIONS = ("batch", "none")


# ------------------------------------------------------------------------------------------- the rules


def format_reward(parsed: ParsedCompletion) -> float:
    """+1 for a well-formed ``<think>…</think><answer>…</answer>`` completion, −1 otherwise (RePrompt)."""
    return 1.0 if parsed.well_formed else -1.0


def length_reward(parsed: ParsedCompletion, min_words: int = 15, max_words: int = 77) -> float:
    """+1 if the rewrite has ``min_words``–``max_words`` words (inclusive, the spec's 15–77), −1 otherwise.

    77 is CLIP's token limit, so longer rewrites are cut in the text encoder. A completion without a
    usable rewrite gets 0 (RePrompt's length function pays 0 when no answer is found): the format reward
    already charges it. RePrompt's code uses the strict bounds 15 < n < 77; set 16/76 to reproduce them.
    """
    if parsed.rewrite is None:
        return 0.0
    n = count_words(parsed.rewrite)
    return 1.0 if min_words <= n <= max_words else -1.0


def normalize_component(values: torch.Tensor, mode: str = "batch") -> torch.Tensor:
    """(N,) raw values (NaN = absent) → (N,) float64 normalized values with NaN replaced by the mean."""
    if mode not in NORMALIZATIONS:
        raise ConfigError(f"reward normalization {mode!r} is not one of {NORMALIZATIONS}")
    x = values.detach().to(torch.float64)
    finite = torch.isfinite(x)
    if not bool(finite.any()):
        return torch.zeros_like(x)
    mean = x[finite].mean()
    if mode == "batch":
        std = x[finite].std(correction=0)
        z = (x - mean) / std if float(std) > 0 else torch.zeros_like(x)
        return torch.where(finite, z, torch.zeros_like(x))
    return torch.where(finite, x, mean)


def combine(
    components: dict[str, torch.Tensor], weights: dict[str, float], mode: str = "batch"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of normalized components → ((N,) total float64, {name: normalized (N,)})."""
    if not components:
        raise ConfigError("no reward components to combine")
    normed = {name: normalize_component(v, mode) for name, v in components.items()}
    total = sum(weights[name] * v for name, v in normed.items())
    return total, normed  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ the set


def reward_options(cls: Any) -> set[str] | None:
    """The keyword options ``cls(...)`` takes, following ``**kwargs`` up the base classes (a subclass
    passes them on to its base); None when that cannot be told."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    options: set[str] = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        init = klass.__dict__.get("__init__") if isinstance(klass, type) else klass
        if klass is object:
            return None
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            return None
        options |= {p.name for p in params if p.kind in named and p.name != "self"}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return options
    return None


def build_reward(spec: RewardSpec, device: str | None = None, where: str = "reward") -> Reward:
    """A library reward from its registry name, or from ``spec.target`` ("module:Class"); on ``device``
    (the process's accelerator) unless its kwargs say otherwise. A misspelled option is a ConfigError
    naming its config key (``where``.kwargs.NAME) and the options the reward takes."""
    if spec.target:
        module, _, attr = spec.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"reward {spec.name!r}: cannot import {spec.target!r}: {e}") from None
    else:
        from evalsuite.registry import registry

        cls = registry.get("rewards", spec.name)
    kwargs = dict(spec.kwargs)
    options = reward_options(cls)
    if device is not None and (options is None or "device" in options):  # RemoteReward has no device
        kwargs.setdefault("device", device)
    try:
        return cls(**kwargs)
    except TypeError as e:  # only a misspelled option of this spec becomes a ConfigError; bugs stay loud
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if bad is None or bad.group(1) not in spec.kwargs:
            raise
        takes = f"; it takes {sorted(options)}" if options is not None else ""
        raise ConfigError(
            f"{where}.kwargs.{bad.group(1)}: unknown option of reward {spec.name!r}{takes}"
        ) from None


class RewardSet:
    """The configured components. ``raw(samples, parsed)`` returns {name: (N,) raw values} plus per-sample
    details; ``combine`` (above) makes the training reward out of them."""

    def __init__(
        self,
        config: RewardsConfig,
        rewards: dict[str, Reward] | None = None,
        device: str | None = None,
        where: str = "rewards.components",
    ) -> None:
        if config.normalize not in NORMALIZATIONS:
            raise ConfigError(f"rewards.normalize {config.normalize!r} is not one of {NORMALIZATIONS}")
        names = [s.name for s in config.components]
        if len(set(names)) != len(names):
            raise ConfigError(f"reward component names must be unique, got {names}")
        if not 0 < config.min_words <= config.max_words:
            raise ConfigError(f"need 0 < min_words <= max_words, got {config.min_words}, {config.max_words}")
        check_call_settings(config.timeout_s, config.retries, config.retry_backoff_s, "rewards")
        if config.chunk_groups is not None and config.chunk_groups < 1:
            raise ConfigError(f"rewards.chunk_groups must be >= 1 or null, got {config.chunk_groups}")
        if config.overlap and config.chunk_groups is None:
            raise ConfigError(
                "rewards.overlap needs rewards.chunk_groups (groups per chunk): rewards of chunk k are "
                "computed while chunk k+1 samples, and the whole step as one chunk leaves nothing to overlap"
            )
        self.config = config
        self.weights = {s.name: float(s.weight) for s in config.components}
        given = dict(rewards or {})
        self.library: dict[str, Reward] = {
            s.name: given.get(s.name) or build_reward(s, device, f"{where}[{i}]")
            for i, s in enumerate(config.components)
            if s.name not in BUILTIN_COMPONENTS or s.target
        }

    @property
    def needs_image(self) -> bool:
        """Whether any component looks at images. A served reward (``RemoteReward``) learns that from its
        server, so it connects here, unless a local component already answers the question."""
        if any(r.needs_image for r in self.library.values()):
            return True
        for r in self.library.values():
            if r.backend == "remote":
                r.load()
        return any(r.needs_image for r in self.library.values())

    def describe(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
            "normalize": self.config.normalize,
            "length_words": [self.config.min_words, self.config.max_words],
            "library": {n: r.describe() for n, r in self.library.items()},
        }

    def raw(
        self, samples: Sequence[Sample], parsed: Sequence[ParsedCompletion]
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Score every component on every sample (one batched ``score`` call per library reward, with the
        configured timeout and retries)."""
        if len(samples) != len(parsed):
            raise ConfigError(f"{len(samples)} samples for {len(parsed)} parsed completions")
        values: dict[str, torch.Tensor] = {}
        details: list[dict[str, Any]] = [{} for _ in samples]
        for spec in self.config.components:
            name = spec.name
            if name in self.library:
                out = guarded_score(
                    name,
                    self.library[name],
                    samples,
                    timeout_s=self.config.timeout_s,
                    retries=self.config.retries,
                    backoff_s=self.config.retry_backoff_s,
                )
                values[name] = torch.tensor(out.scores, dtype=torch.float64)
                for d, err, det in zip(details, out.errors, out.details):
                    if err is not None:
                        d[f"{name}.error"] = err
                    elif "not_applicable" in det:
                        d[f"{name}.not_applicable"] = det["not_applicable"]
            elif name == "format":
                values[name] = torch.tensor([format_reward(p) for p in parsed], dtype=torch.float64)
            else:
                lo, hi = self.config.min_words, self.config.max_words
                values[name] = torch.tensor([length_reward(p, lo, hi) for p in parsed], dtype=torch.float64)
        return values, details

    def scorer(self) -> ChunkScorer:
        """A step's chunked scoring (``rewards.overlap``): ``submit(samples, parsed)`` per chunk, then
        ``collect()``; use as a context manager."""
        return ChunkScorer(self.raw, self.config.overlap)

    def combine(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return combine(values, self.weights, self.config.normalize)


def finite_stats(values: torch.Tensor) -> tuple[float, float, int]:
    """(mean, population std, count of non-finite) of a (N,) tensor, for logging."""
    x = values.detach().double().reshape(-1)
    ok = torch.isfinite(x)
    n_bad = int((~ok).sum())
    x = x[ok]
    if not x.numel():
        return math.nan, math.nan, n_bad
    return float(x.mean()), float(x.std(correction=0)), n_bad
