"""Single-image VLM judges that answer a free-form instruction (TIIF-Bench, UniGenBench).

Registered as scorer ``vlm_chat``; benchmarks get one with ``get_scorer("vlm_chat", spec, model=...)``:

- an http(s) URL -> ``OpenAIChat``: any OpenAI-compatible ``/chat/completions`` endpoint (GPT-4o, Gemini,
  a vLLM server). It *is* the pairwise judge's HTTP client (``OpenAIJudge``: timeouts, HTTP retries,
  ``Retry-After``, the key from the environment); only the message layout and the answer check differ.
- ``"local"`` -> ``LocalQwenChat``: a Qwen-VL model through transformers (``AutoModelForImageTextToText``:
  Qwen2.5-VL and Qwen3-VL, e.g. UniGenBench's released judges), greedy decoding.
- a callable ``fn(image, text) -> str`` (tests, custom judges), or an object with ``ask_all``.

``ask_all(requests)`` runs ``ask`` for each request (a callable building ``(image, text, parse)``; one
that raises becomes that request's failed reply), concurrently up to the judge's ``max_concurrency``.
``ask(image, text, parse)`` sends the image and the instruction, reads the reply with the benchmark's
``parse`` (which raises ``ValueError`` on an unusable reply) and returns a ``ChatReply``. Unusable replies and
transient HTTP failures are retried with a fresh request (a sampling judge answers differently); a greedy
local judge would repeat itself, so it fails at once. A reply that never parses is *failed*
(``value=None``, ``error`` says why): the benchmark leaves it out, as the official scripts do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.rewards.judge_local import LocalQwenJudge
from evalsuite.rewards.judge_protocol import RAW_KEEP, encode_image
from evalsuite.rewards.judges import OpenAIJudge, _FatalError, _RetryableError

Parse = Callable[[str], Any]
Request = Callable[[], tuple[Image.Image, str, Parse]]  # builds (image, instruction, parse); may raise


@dataclass
class ChatReply:
    """One judged image: ``value`` is what ``parse`` made of the reply, None when every attempt failed."""

    value: Any
    raw: str = ""
    attempts: int = 1
    error: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def failure(self) -> str | None:
        """Why there is no value (a request that failed before reaching the judge has 0 attempts)."""
        if self.ok:
            return None
        return (
            self.error
            if self.attempts == 0
            else f"judge failed after {self.attempts} attempt(s): {self.error}"
        )


def parse_once(raw: str, parse: Parse) -> ChatReply:
    """One attempt's reply, parsed (an unusable reply is a failed ``ChatReply``, not an exception)."""
    try:
        return ChatReply(parse(raw), raw[:RAW_KEEP])
    except ValueError as e:
        msg = f"unusable reply: {e}"
        return ChatReply(None, raw[:RAW_KEEP], 1, msg, [msg])


class AskAll:
    """``ask_all``: many requests, up to ``max_concurrency`` at once, one failed reply per failing request."""

    def ask(self, image: Image.Image, text: str, parse: Parse) -> ChatReply:
        raise NotImplementedError

    def _ask_request(self, request: Request) -> ChatReply:
        try:
            return self.ask(*request())
        except Exception as e:  # a bad image or record, or a judge crash: this request only
            return ChatReply(None, "", 0, f"{type(e).__name__}: {e}", [])

    def ask_all(self, requests: Sequence[Request]) -> list[ChatReply]:
        workers = max(1, min(int(getattr(self, "max_concurrency", 1)), len(requests)))
        if workers == 1:
            return [self._ask_request(r) for r in requests]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(self._ask_request, requests))


class OpenAIChat(AskAll, OpenAIJudge):
    """One image + one instruction through an OpenAI-compatible endpoint (the ``OpenAIJudge`` client).

    ``system``: an optional system message; ``image_first``: the image part before the text part (the
    UniGenBench vLLM route) instead of after it; ``temperature=None`` sends none (the server's default).
    ``max_retries`` counts retries after the first attempt, for HTTP failures and unusable replies alike.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        system: str | None = None,
        image_first: bool = False,
        temperature: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, model, api_key, temperature=0.0, **options)
        self.temperature = temperature  # type: ignore[assignment]  # None: not sent
        self.system = system
        self.image_first = image_first

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        desc.pop("prompt_sha", None)  # the instruction is the benchmark's, not the pairwise protocol's
        return {
            **desc,
            "judge": "openai-compatible chat",
            "system": self.system,
            "image_first": self.image_first,
            "max_retries": self.max_retries,
        }

    def messages(self, text: str, image: Image.Image) -> list[dict[str, Any]]:  # type: ignore[override]
        parts: list[dict[str, Any]] = [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": encode_image(image, self.image_format)}},
        ]
        if self.image_first:
            parts.reverse()
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*head, {"role": "user", "content": parts}]

    def ask(self, image: Image.Image, text: str, parse: Parse) -> ChatReply:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(text, image),
            **self.extra_body,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        payload = json.dumps(body).encode("utf-8")
        errors: list[str] = []
        raw = ""
        for attempt in range(self.max_retries + 1):
            try:
                raw = self._complete(payload)
                return ChatReply(parse(raw), raw[:RAW_KEEP], attempt + 1, None, errors)
            except _FatalError as e:
                errors.append(str(e))
                break
            except (_RetryableError, ValueError) as e:
                errors.append(str(e) if isinstance(e, _RetryableError) else f"unusable reply: {e}")
                if attempt < self.max_retries:
                    time.sleep(min(self.max_backoff, self.backoff * 2**attempt))
        return ChatReply(None, raw[:RAW_KEEP], len(errors), errors[-1], errors)


class LocalQwenChat(AskAll, LocalQwenJudge):
    """A local Qwen-VL judge (transformers, greedy): the image and the instruction as one user turn.

    ``image_first`` puts the image before the text (UniGenBench's vLLM route does). Loads any
    ``AutoModelForImageTextToText`` checkpoint, so Qwen2.5-VL and Qwen3-VL judges both work.
    """

    def __init__(self, model: str | None = None, *, image_first: bool = False, **options: Any) -> None:
        super().__init__(model, mode="generate", **options)
        self.image_first = image_first

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        desc.pop("prompt_sha", None)
        return {**desc, "judge": "local-qwen-vl chat", "image_first": self.image_first}

    def load(self) -> LocalQwenChat:
        if self._model is None:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            from evalsuite.reward import resolve_dtype

            self._processor = AutoProcessor.from_pretrained(self.model_id, revision=self.revision)
            model = AutoModelForImageTextToText.from_pretrained(
                self.model_id, revision=self.revision, dtype=resolve_dtype(self.dtype)
            )
            self._model = model.to(self.device).eval()
        return self

    def chat_text(self, text: str) -> str:  # type: ignore[override]
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}, {"type": "image"}]
        if self.image_first:
            parts.reverse()
        turn = [{"role": "user", "content": parts}]
        return self._processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)

    def complete(self, image: Image.Image, text: str) -> str:
        """The greedy reply (special tokens dropped)."""
        with self._lock:
            self.load()
            return self.greedy_reply(self.chat_text(text), [self.fit(image)])[0]

    def ask(self, image: Image.Image, text: str, parse: Parse) -> ChatReply:
        return parse_once(self.complete(image, text), parse)  # greedy: a retry would repeat the reply


class CallableChat(AskAll):
    """Wraps ``fn(image, text) -> str`` as a judge (parsed once; a custom judge retries itself)."""

    max_concurrency = 1

    def __init__(self, fn: Callable[[Image.Image, str], str], model: str | None = None) -> None:
        self.fn = fn
        self.model = model
        self.name = f"callable:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "model": self.model}

    def ask(self, image: Image.Image, text: str, parse: Parse) -> ChatReply:
        return parse_once(str(self.fn(image, text)), parse)


def make_chat(spec: Any, model: str | None = None, **options: Any) -> Any:
    """A judge from ``spec``: an http(s) URL, ``"local"``, a callable, or an object with ``ask_all``."""
    if hasattr(spec, "ask_all"):
        return spec
    if isinstance(spec, str) and spec == "local":
        return LocalQwenChat(model, **options)
    if isinstance(spec, str) and spec.startswith(("http://", "https://")):
        if not model:
            raise ConfigError("an API judge needs a model name (judge_model=...)")
        return OpenAIChat(spec, model, **options)
    if callable(spec):
        return CallableChat(spec, model)
    raise ConfigError(
        f"judge must be 'local', an http(s) URL of an OpenAI-compatible API or a callable, got {spec!r}"
    )
