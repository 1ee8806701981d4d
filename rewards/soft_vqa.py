"""Soft VQA: the probability a VLM gives the correct answer's first token (GenEval 2's Soft-TIFA forward).

Contract (duck-typed; benchmarks get a backend with ``get_scorer("soft_vqa", spec, **options)``)::

    probabilities(images, questions, spellings) -> list[float]

``images[i]`` is asked ``questions[i]``; the result is the sum, over the spellings ``spellings[i]`` of the
correct answer, of the probability of the spelling's first token at the first answer position (softmax over
the full vocabulary). Which spellings count is the benchmark's rule (``geneval2_rules.answer_forms``).

Built in: ``QwenSoftVQA`` (``"qwen3-vl"``, default ``Qwen/Qwen3-VL-8B-Instruct`` as GenEval 2's authors) and
``Qwen25SoftVQA`` (``"qwen2.5-vl"``). Method, as upstream ``evaluation.py``: one user turn (no system turn in
Qwen3-VL's template) holding the image and ``"{question} Answer in one word."``, the generation prompt, and
``p = softmax(logits)`` of the first generated position, where upstream runs ``generate(max_new_tokens=1,
do_sample=False, output_scores=True)``: with greedy decoding and no repetition penalty those scores are the
raw logits, which is what we read (one forward; prefix cache and batching of ``rewards.vqa``). Upstream passes
image paths, so the processor's own resize applies; so does it here (``pixel_budget = False``).

First tokens: ``tokenizer.encode(form, add_special_tokens=False)[0]`` per spelling. Upstream sums over every
spelling *without* de-duplication (two spellings sharing a first token count it twice);
``distinct_first_tokens=True`` sums each distinct token once (UniRL's local scorer). With the real Qwen
tokenizer every GenEval 2 spelling has its own first token, so both give the same numbers there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.rewards.vqa import QwenFirstToken, resolve_backend
from evalsuite.scorer import check_pairs

SOFT_PROMPT = "{question} Answer in one word."


def first_token_ids(tokenizer: Any, spellings: Sequence[str], distinct: bool) -> list[int]:
    """The first token id of each spelling (each distinct id once if ``distinct``, in first-seen order)."""
    ids = []
    for form in spellings:
        encoded = tokenizer.encode(form, add_special_tokens=False)
        if not encoded:
            raise ValueError(f"answer spelling {form!r} encodes to no tokens")
        ids.append(encoded[0])
    return list(dict.fromkeys(ids)) if distinct else ids


def check_spellings(questions: Sequence[str], spellings: Sequence[Sequence[str]]) -> None:
    if len(spellings) != len(questions):
        raise ValueError(f"soft VQA: {len(questions)} questions but {len(spellings)} spelling lists")
    for forms in spellings:
        if isinstance(forms, str) or not forms:
            raise ValueError(
                f"soft VQA: each question needs a non-empty list of answer spellings, got {forms!r}"
            )


class QwenSoftVQA(QwenFirstToken):
    """Qwen3-VL soft answer probabilities (see the module docstring)."""

    name = "qwen3-vl"
    default_model = "Qwen/Qwen3-VL-8B-Instruct"
    model_class = "Qwen3VLForConditionalGeneration"
    pixel_budget = False

    def __init__(
        self,
        model: str | None = None,
        *,
        prompt: str = SOFT_PROMPT,
        distinct_first_tokens: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(model, prompt=prompt, **options)
        self.distinct_first_tokens = bool(distinct_first_tokens)
        which = "each distinct token once" if self.distinct_first_tokens else "every spelling, as upstream"
        self.method = (
            "softmax over the vocabulary at the first answer position, summed over the first tokens of the "
            f"answer's spellings ({which}); one forward, no generation"
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "vqa_distinct_first_tokens": self.distinct_first_tokens}

    def probabilities(
        self, images: Sequence[Image.Image], questions: Sequence[str], spellings: Sequence[Sequence[str]]
    ) -> list[float]:
        """Per pair: the summed probability of the first tokens of its answer spellings (float64 sum)."""
        check_pairs(images, questions)
        check_spellings(questions, spellings)
        self.load()
        tok = self._processor.tokenizer
        ids = [first_token_ids(tok, forms, self.distinct_first_tokens) for forms in spellings]

        def soft(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
            probs = torch.softmax(logits.double(), dim=-1)
            return torch.stack([probs[i, ids[r]].sum() for i, r in enumerate(rows)])[:, None].float()

        return self.first_token_rows(images, questions, soft, 1)[:, 0].tolist()


class Qwen25SoftVQA(QwenSoftVQA):
    """The same soft answer read from Qwen2.5-VL (its default system turn, qwen-vl-utils pixel budget)."""

    name = "qwen2.5-vl"
    default_model = "Qwen/Qwen2.5-VL-7B-Instruct"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    pixel_budget = True


class CallableSoftVQA:
    """Wraps a plain function ``fn(images, questions, spellings) -> list[float]`` as a backend."""

    def __init__(self, fn: Callable[..., Sequence[float]], model: str | None = None) -> None:
        self.fn = fn
        self.name = f"callable:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        self.model = model

    def probabilities(
        self, images: Sequence[Image.Image], questions: Sequence[str], spellings: Sequence[Sequence[str]]
    ) -> list[float]:
        check_pairs(images, questions)
        check_spellings(questions, spellings)
        return [float(p) for p in self.fn(images, questions, spellings)]

    def describe(self) -> dict[str, Any]:
        return {"vqa": self.name, "vqa_model": self.model, "vqa_method": "user callable"}


BUILTIN_SOFT_VQA: dict[str, type] = {"qwen3-vl": QwenSoftVQA, "qwen2.5-vl": Qwen25SoftVQA}


def get_soft_vqa(spec: Any = None, **options: Any) -> Any:
    """A soft VQA backend: ``"qwen3-vl"`` (default), ``"qwen2.5-vl"``, ``"module:attr"``, an object or a
    callable."""
    backend = resolve_backend(spec, options, BUILTIN_SOFT_VQA, "qwen3-vl", "probabilities", CallableSoftVQA,
                              "soft VQA backend")
    if not hasattr(backend, "probabilities"):
        raise ConfigError(
            f"soft VQA backend {type(backend).__name__} has no probabilities(images, questions, spellings)"
        )
    return backend
