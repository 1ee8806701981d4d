"""UnifiedReward (CodeGoat24/UnifiedReward): a Qwen2.5-VL judge that writes its verdict as text.

Two rewards, both a model answer plus a pure rule (:mod:`evalsuite.rewards.unifiedreward_rules`):

- ``unifiedreward`` (pointwise): the official Qwen pointwise prompt with the image, greedy answer, the
  first ``Final Score: x`` in [1, 5] is the score (raw 1-5; ``normalize=True`` divides by 5 as Flow-GRPO
  and DiffusionNFT do). An answer without a readable score is *not applicable* with the answer kept in
  ``details`` (the official scorers return 0.0 there). Default model ``CodeGoat24/UnifiedReward-qwen-7b``.
- ``unifiedreward_pairwise`` (``per_group``): Pref-GRPO's reward. Every unordered pair (i < j, in group
  order, image i shown first) of a group is judged once with the UnifiedReward-Think prompt; each image's
  reward is its win rate (ties and unreadable verdicts 0.5 each, rounded to 3 digits as Pref-GRPO does).
  ``both_orders=True`` also judges (j, i), to cancel the judge's position bias (not the official setting).
  Default model ``CodeGoat24/UnifiedReward-Think-qwen-7b``.

Backends: ``"local"`` runs the checkpoint in-process (transformers, left-padded batched ``generate``, greedy
with the checkpoint's own ``repetition_penalty``: the official scripts call ``generate`` with the shipped
generation config, whose ``top_k=1`` is greedy); ``"openai"`` posts the same messages (images first, then
the text, as the official vLLM client) to an OpenAI-compatible server (vLLM, SGLang) at ``base_url`` with
temperature 0; ``model`` is then the served model name. Transport failures are retried with backoff; a
sample whose request still fails is an error naming it (pointwise) or a pair left out (pairwise).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from evalsuite import qwen_vl as qvl
from evalsuite.errors import ConfigError
from evalsuite.reward import Reward, Score
from evalsuite.rewards.judge_protocol import RAW_KEEP, encode_image
from evalsuite.rewards.judges import OpenAIJudge, _FatalError, _RetryableError
from evalsuite.rewards.unifiedreward_rules import (
    FIRST,
    PAIR_PROMPTS,
    POINT_PROMPTS,
    SCORE_MAX,
    SECOND,
    TIE,
    UNPARSED_POLICIES,
    parse_final_score,
    parse_pair_verdict,
    win_tallies,
)
from evalsuite.sample import Sample

BACKENDS = ("local", "openai")


@dataclass
class Answer:
    """One request's outcome: the answer text, or the error that left it without one."""

    text: str | None
    error: str | None = None
    attempts: int = 1


class _UnifiedRewardBase(Reward):
    """What both rewards share: building the chat request and getting answers from either backend."""

    prompt_styles: ClassVar[dict[str, str]] = {}
    default_max_new_tokens: ClassVar[int] = 512

    def __init__(
        self,
        model: str | None = None,
        *,
        backend: str = "local",
        prompt_style: str | None = None,
        max_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
        min_pixels: int = qvl.DEFAULT_MIN_PIXELS,
        max_pixels: int = qvl.DEFAULT_MAX_PIXELS,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_concurrency: int = 16,
        image_format: str = "png",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if backend not in BACKENDS:
            raise ConfigError(f"{self.name}: backend must be one of {BACKENDS}, got {backend!r}")
        style = prompt_style or next(iter(self.prompt_styles))
        if style not in self.prompt_styles:
            raise ConfigError(
                f"{self.name}: prompt_style must be one of {sorted(self.prompt_styles)}, got {style!r}"
            )
        self.max_new_tokens = max_new_tokens or self.default_max_new_tokens
        if self.max_new_tokens < 1:
            raise ConfigError(f"{self.name}: max_new_tokens must be >= 1, got {max_new_tokens}")
        qvl.check_pixel_budget(min_pixels, max_pixels)
        self.backend = "transformers" if backend == "local" else "openai-compatible"
        self.prompt_style = style
        self.repetition_penalty = repetition_penalty
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self._client: OpenAIJudge | None = None
        if backend == "openai":
            if not base_url:
                raise ConfigError(f"{self.name}: backend='openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
            self._client = OpenAIJudge(
                base_url, self.model_id, api_key, temperature=0.0, timeout=timeout, max_retries=max_retries,
                backoff=backoff, max_tokens=self.max_new_tokens, image_format=image_format,
                max_concurrency=max_concurrency,
            )

    @property
    def template(self) -> str:
        return self.prompt_styles[self.prompt_style]

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt_style": self.prompt_style, "max_new_tokens": self.max_new_tokens,
                               "decoding": "greedy"}
        if self._client is None:
            penalty = self.repetition_penalty if self.repetition_penalty is not None else "from checkpoint"
            out.update(repetition_penalty=penalty, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        else:
            info = self._client.describe()
            out.update(endpoint=info["endpoint"], temperature=0.0, image_format=info["image_format"])
        return out

    # -- local backend -----------------------------------------------------------------------------
    def _load(self) -> None:
        if self._client is not None:
            return
        from transformers import Qwen2_5_VLForConditionalGeneration

        processor = qvl.load_processor(self.model_id, self.revision)
        processor.tokenizer.padding_side = "left"  # generation appends on the right
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.model_id, revision=self.revision, dtype=self.dtype
        )
        self._processor = processor
        self._model = model.to(self.device).eval()
        if self.repetition_penalty is None:
            self._penalty = float(getattr(model.generation_config, "repetition_penalty", None) or 1.0)
        else:
            self._penalty = float(self.repetition_penalty)

    def chat_text(self, text: str, n_images: int) -> str:
        """The local prompt: a user turn [image x n, text] in the model's chat template + assistant header."""
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        turn = [{"role": "user", "content": content}]
        return self._processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)

    @torch.inference_mode()
    def _generate(self, requests: Sequence[tuple[Sequence[Image.Image], str]]) -> list[Answer]:
        out: list[Answer] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            texts = [self.chat_text(text, len(images)) for images, text in chunk]
            images = [qvl.fit_image(im, self.min_pixels, self.max_pixels) for ims, _ in chunk for im in ims]
            inputs = self._processor(text=texts, images=images, padding=True, return_tensors="pt")
            inputs = inputs.to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            ids = self._model.generate(
                **inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                repetition_penalty=self._penalty, temperature=None, top_p=None, top_k=None,
            )
            new = ids[:, inputs["input_ids"].shape[1] :]
            decoded = self._processor.batch_decode(new, skip_special_tokens=True,
                                                   clean_up_tokenization_spaces=False)
            out += [Answer(text) for text in decoded]
        return out

    # -- OpenAI-compatible backend -----------------------------------------------------------------
    def messages(self, images: Sequence[Image.Image], text: str) -> list[dict[str, Any]]:
        """The server request: images first, then the prompt text (the official vLLM client's layout)."""
        assert self._client is not None
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": encode_image(im, self._client.image_format)}}
            for im in images
        ]
        return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]

    def _ask(self, images: Sequence[Image.Image], text: str) -> Answer:
        client = self._client
        assert client is not None
        body = {"model": client.model, "messages": self.messages(images, text), "temperature": 0.0,
                "max_tokens": client.max_tokens}
        payload = json.dumps(body).encode("utf-8")
        error = "no attempt"
        for attempt in range(client.max_retries + 1):
            try:
                return Answer(client._complete(payload), None, attempt + 1)
            except _FatalError as e:
                return Answer(None, str(e), attempt + 1)
            except _RetryableError as e:
                error = str(e)
                if attempt < client.max_retries:
                    wait = min(client.max_backoff, client.backoff * 2**attempt)
                    time.sleep(min(client.max_backoff, max(wait, e.retry_after or 0.0)))
        return Answer(None, error, client.max_retries + 1)

    def answers(self, requests: Sequence[tuple[Sequence[Image.Image], str]]) -> list[Answer]:
        """One answer per ``(images, prompt text)`` request, in order, from the configured backend."""
        self.load()
        if self._client is None:
            return self._generate(requests)
        workers = max(1, min(self._client.max_concurrency, len(requests)))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda r: self._ask(*r), requests))


class UnifiedReward(_UnifiedRewardBase):
    """Pointwise UnifiedReward: the model's "Final Score" (1-5) for one image and its caption."""

    name = "unifiedreward"
    default_model = "CodeGoat24/UnifiedReward-qwen-7b"
    backend = "transformers"
    prompt_styles: ClassVar[dict[str, str]] = POINT_PROMPTS

    def __init__(self, model: str | None = None, *, normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.normalize = normalize

    def settings(self) -> dict[str, Any]:
        scale = "score / 5 (0.2-1, as Flow-GRPO)" if self.normalize else "raw Final Score, 1-5"
        return {**super().settings(), "scale": scale, "not_applicable": "no Final Score in [1, 5]"}

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        got = self.answers([([s.image], self.template.format(prompt=s.prompt)) for s in samples])
        failed = [f"{s.id!r}: {a.error}" for s, a in zip(samples, got) if a.text is None]
        if failed:  # the base class then rescores one by one, so the error names the sample
            raise RuntimeError(f"no answer from the server for {', '.join(failed)}")
        out = []
        for answer in got:
            text = answer.text or ""
            parsed = parse_final_score(text)
            if parsed.value is None:
                out.append(Score.not_applicable(parsed.reason or "unreadable", answer=text[:RAW_KEEP]))
                continue
            value = parsed.value / SCORE_MAX if self.normalize else parsed.value
            out.append(Score(value, {"final_score": parsed.value, "answer": text[:RAW_KEEP]}))
        return out


class UnifiedRewardPairwise(_UnifiedRewardBase):
    """Pref-GRPO's pairwise reward: each image's win rate against the other images of its group."""

    name = "unifiedreward_pairwise"
    default_model = "CodeGoat24/UnifiedReward-Think-qwen-7b"
    backend = "transformers"
    per_group = True
    prompt_styles: ClassVar[dict[str, str]] = PAIR_PROMPTS
    default_max_new_tokens: ClassVar[int] = 4096  # Pref-GRPO's max_tokens: Think answers reason first

    def __init__(
        self,
        model: str | None = None,
        *,
        both_orders: bool = False,
        unparsed: str = "tie",
        round_digits: int | None = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if unparsed not in UNPARSED_POLICIES:
            raise ConfigError(f"{self.name}: unparsed must be one of {UNPARSED_POLICIES}, got {unparsed!r}")
        self.both_orders = both_orders
        self.unparsed = unparsed
        self.round_digits = round_digits

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "scale": "win rate in [0, 1] within the group",
                "pairs": "both orders" if self.both_orders else "each unordered pair once (i < j, i first)",
                "unparsed": self.unparsed, "round_digits": self.round_digits}

    def pairs(self, n: int) -> list[tuple[int, int]]:
        """The (first shown, second shown) index pairs judged for a group of ``n``."""
        once = list(itertools.combinations(range(n), 2))
        return once + [(j, i) for i, j in once] if self.both_orders else once

    def _score_group(self, samples: list[Sample]) -> list[Score]:
        n = len(samples)
        if n < 2:
            return [Score.not_applicable("group of one: no other image to compare with")] * n
        prompts = {s.prompt for s in samples}
        if len(prompts) > 1:
            raise ValueError(f"group {samples[0].group_key!r} mixes prompts {sorted(prompts)[:3]}; "
                             "a pairwise judgement needs one caption")
        caption = self.template.format(prompt=samples[0].prompt)
        pairs = self.pairs(n)
        got = self.answers([([samples[i].image, samples[j].image], caption) for i, j in pairs])
        judged, records = [], [[] for _ in range(n)]
        for (i, j), answer in zip(pairs, got):
            verdict = None if answer.text is None else parse_pair_verdict(answer.text, self.prompt_style)
            judged.append((i, j, verdict, answer.text is not None))
            record = {"first": samples[i].id, "second": samples[j].id, "verdict": _VERDICT_NAMES.get(verdict),
                      "answer": (answer.text or "")[:RAW_KEEP], "error": answer.error}
            records[i].append(record)
            records[j].append(record)
        out = []
        for tally, record in zip(win_tallies(n, judged, self.unparsed), records):
            details = {"wins": tally.wins, "comparisons": tally.comparisons, "unparsed": tally.unparsed,
                       "failed": tally.failed, "judgements": record}
            rate = tally.rate(self.round_digits)
            if rate is None:
                out.append(Score.not_applicable("no usable comparison in its group", **details))
            else:
                out.append(Score(rate, details))
        return out


_VERDICT_NAMES = {FIRST: "first", SECOND: "second", TIE: "tie"}
