"""The reward contract: a batch of samples in, one score (or "not applicable") per sample out.

A concrete reward implements ``_load`` (lazy model loading) and ``_score_batch`` (a batched forward
plus a pure rule). The base class owns everything that must behave the same for every reward:
input validation with errors that name the sample, isolating a bad sample so the rest of the batch
is still scored, chunking into ``batch_size``, and keeping "not applicable" apart from zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from evalsuite.errors import ConfigError, EvalsuiteError
from evalsuite.hub_errors import loading
from evalsuite.images import BadImageError, as_source_image_error, to_rgb
from evalsuite.sample import Sample

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


@dataclass
class Score:
    """What ``_score_batch`` returns per sample: a value, or ``None`` with the reason it does not apply."""

    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    @classmethod
    def not_applicable(cls, reason: str, **details: Any) -> Score:
        return cls(None, details, reason)


@dataclass
class RewardOutput:
    """Scores of one batch. ``scores[i]`` is NaN wherever ``applicable[i]`` is False.

    A sample is not applicable either by the reward's rule (``errors[i]`` is None, the reason is in
    ``details[i]["not_applicable"]``) or because its input was bad (``errors[i]`` says why).
    """

    name: str
    scores: list[float]
    applicable: list[bool]
    details: list[dict[str, Any]]
    errors: list[str | None]
    components: dict[str, RewardOutput] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def tensor(self, device: str | torch.device | None = None) -> torch.Tensor:
        return torch.tensor(self.scores, dtype=torch.float32, device=device)

    def to_frame(self):
        """Per-sample table: score, applicable, error, and every detail as a column."""
        import pandas as pd

        rows = []
        for i in range(len(self)):
            row = {"score": self.scores[i], "applicable": self.applicable[i], "error": self.errors[i]}
            row.update(self.details[i])
            for name, comp in self.components.items():
                row[f"{name}.score"] = comp.scores[i]
            rows.append(row)
        return pd.DataFrame(rows)


class Reward:
    """Base class of every reward. Subclasses set the class attributes and implement the hooks.

    Class attributes:
        name: registry name.
        default_model: canonical Hugging Face id loaded when no ``model`` is given.
        required_metadata: metadata keys every sample must carry (e.g. GenEval's ``include``).
        needs_image / needs_source_image: which images a sample must have.
        per_group: True for rewards that score a whole GRPO group jointly (implement ``_score_group``).
        backend: what produced the numbers, recorded in every result and manifest.
    """

    name: ClassVar[str] = ""
    default_model: ClassVar[str | None] = None
    required_metadata: ClassVar[tuple[str, ...]] = ()
    needs_image: ClassVar[bool] = True
    needs_source_image: ClassVar[bool] = False
    per_group: ClassVar[bool] = False
    backend: ClassVar[str] = "python"

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        batch_size: int = 16,
        revision: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        self.model_id = model or self.default_model
        self.revision = revision
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.batch_size = batch_size
        self._loaded = False

    # -- hooks ---------------------------------------------------------------------------------
    def _load(self) -> None:
        """Load models; called once, on first use. Rewards without models need not override it."""

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        """Score validated samples (RGB images, required keys present). One ``Score`` per sample."""
        raise NotImplementedError(f"{type(self).__name__} must implement _score_batch or _score_group")

    def _score_group(self, samples: list[Sample]) -> list[Score]:
        """Score one group jointly (only for ``per_group`` rewards)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _score_group")

    def settings(self) -> dict[str, Any]:
        """Reward-specific settings that change the numbers (mode, normalization…), for manifests."""
        return {}

    # -- public API ----------------------------------------------------------------------------
    def load(self) -> Reward:
        if not self._loaded:
            with loading(self.model_id, f"{self.name} reward model",
                         "DIR as the reward's model (--option model=DIR)"):
                self._load()
            self._loaded = True
        return self

    def describe(self) -> dict[str, Any]:
        """Everything a manifest needs to reproduce this reward's numbers."""
        return {
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "model": self.model_id,
            "revision": self.revision,
            "backend": self.backend,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.settings(),
        }

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput:
        return self.score(samples)

    def score(self, samples: Sequence[Sample]) -> RewardOutput:
        n = len(samples)
        results: list[Score | None] = [None] * n
        errors: list[str | None] = [None] * n
        ready: list[int] = []
        prepared: list[Sample | None] = [None] * n
        for i, sample in enumerate(samples):
            try:
                prepared[i] = self._validate(sample)
                ready.append(i)
            except (BadImageError, ConfigError, ValueError, TypeError) as e:
                errors[i] = str(e)
        if ready:
            self.load()
            for chunk in self._chunks([prepared[i] for i in ready], ready):
                for i, res in self._run(chunk).items():
                    if isinstance(res, Score):
                        results[i] = res
                    else:
                        errors[i] = res
        return self._assemble(samples, results, errors)

    # -- internals -----------------------------------------------------------------------------
    def _validate(self, sample: Sample) -> Sample:
        if not isinstance(sample, Sample):
            raise TypeError(f"expected a Sample, got {type(sample).__name__}")
        sid = sample.id
        if not isinstance(sample.prompt, str):
            raise ConfigError(f"sample {sid!r}: prompt must be str, got {type(sample.prompt).__name__}")
        missing = [k for k in self.required_metadata if k not in sample.metadata]
        if missing:
            raise ConfigError(f"sample {sid!r}: {self.name} needs metadata keys {missing}")
        image = to_rgb(sample.image, sid) if self.needs_image else sample.image
        source = sample.source_image
        if self.needs_source_image:
            try:
                source = to_rgb(source, sid)
            except BadImageError as e:
                raise BadImageError(as_source_image_error(str(e), sid)) from e
        if image is sample.image and source is sample.source_image:
            return sample
        from dataclasses import replace

        return replace(sample, image=image, source_image=source)

    def _chunks(self, samples: list[Sample], index: list[int]):
        if self.per_group:
            groups: dict[str, list[int]] = {}
            for pos, s in enumerate(samples):
                groups.setdefault(s.group_key, []).append(pos)
            for positions in groups.values():
                yield [(index[p], samples[p]) for p in positions]
        else:
            for start in range(0, len(samples), self.batch_size):
                stop = start + self.batch_size
                yield list(zip(index[start:stop], samples[start:stop]))

    def _call_hook(self, batch: list[Sample]) -> list[Score]:
        out = self._score_group(batch) if self.per_group else self._score_batch(batch)
        if len(out) != len(batch):
            raise RuntimeError(f"{self.name}: returned {len(out)} scores for {len(batch)} samples")
        return out

    def _run(self, chunk: list[tuple[int, Sample]]) -> dict[int, Score | str]:
        """Score a chunk; if it fails as a whole, score its samples one by one to find the bad ones."""
        batch = [s for _, s in chunk]
        try:
            return {i: self._check(s, r) for (i, s), r in zip(chunk, self._call_hook(batch))}
        except EvalsuiteError as e:
            if not isinstance(e, ConfigError):
                raise  # missing backend, plugin failure: the user must fix the setup, not the data
            failure = e
        except Exception as e:
            failure = e
        if len(chunk) == 1 or self.per_group:
            return {i: f"sample {s.id!r}: {self.name} failed: {type(failure).__name__}: {failure}"
                    for i, s in chunk}
        out: dict[int, Score | str] = {}
        for item in chunk:
            out.update(self._run([item]))
        return out

    def _check(self, sample: Sample, result: Score) -> Score | str:
        if result.value is None:
            if not result.reason:
                return f"sample {sample.id!r}: {self.name} returned no score and no reason"
            return result
        value = float(result.value)
        if not math.isfinite(value):
            return f"sample {sample.id!r}: {self.name} produced a non-finite score ({value})"
        return Score(value, result.details, None)

    def _assemble(self, samples, results, errors) -> RewardOutput:
        scores, applicable, details = [], [], []
        for res, err in zip(results, errors):
            if err is not None or res is None:
                scores.append(math.nan)
                applicable.append(False)
                details.append({})
            elif res.value is None:
                scores.append(math.nan)
                applicable.append(False)
                details.append({**res.details, "not_applicable": res.reason})
            else:
                scores.append(res.value)
                applicable.append(True)
                details.append(dict(res.details))
        return RewardOutput(self.name, scores, applicable, details, errors)
