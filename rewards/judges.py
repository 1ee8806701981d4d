"""Pairwise VLM judges for DenseAlignBench: which of two images follows a caption better.

The protocol (instructions, answer format and parsing) is in :mod:`evalsuite.rewards.judge_protocol`.

Two judges speak that protocol:

- ``OpenAIJudge``: any OpenAI-compatible ``/chat/completions`` endpoint (the official default is
  ``gemini-2.0-flash`` on Google's OpenAI-compatible endpoint, temperature 0.3), over HTTP with the
  standard library only. Images go as base64 PNG data URLs (lossless; the official script sends JPEG
  q95, available as ``image_format="jpeg"``). Malformed answers and transient HTTP failures are retried
  with exponential backoff; after the last attempt the judgement is *failed* (``preference=None``) and
  is never turned into a tie.
- ``LocalQwenJudge``: Qwen2.5-VL through transformers. ``mode="generate"`` (default) decodes the JSON
  answer greedily and parses it like an API answer; ``mode="score"`` asks for the bare label and picks
  the label whose full answer ``<label><|im_end|>`` has the highest log-probability (constrained
  scoring: always a valid answer, no reasoning, one forward).

Judges never raise for a bad answer: they return a ``Judgement`` whose ``error`` says what went wrong.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.rewards.judge_local import LocalQwenJudge
from evalsuite.rewards.judge_protocol import (
    JUDGE_PROMPT,
    PROMPT_SHA,
    RAW_KEEP,
    AnswerParseError,
    encode_image,
    parse_answer,
)
from evalsuite.scorer import Judgement, PairJudge

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"
DEFAULT_API_MODEL = "gemini-2.0-flash"
API_KEY_ENV = ("EVALSUITE_JUDGE_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY")


# -- OpenAI-compatible HTTP judge -----------------------------------------------------------------
class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _FatalError(Exception):
    """An answer no retry can fix (bad key, unknown model, malformed request)."""


_RETRY_STATUS = {408, 409, 425, 429}


class OpenAIJudge(PairJudge):
    """Judge through an OpenAI-compatible ``chat/completions`` endpoint (Gemini, OpenAI, vLLM, SGLang…).

    ``max_retries`` counts retries after the first attempt. Retried: connection errors, timeouts, HTTP
    408/409/425/429 and 5xx, bodies that are not a chat completion, and answers without a valid
    preference (temperature > 0 makes a second answer differ). Not retried: other 4xx (bad key, unknown
    model). Waits ``backoff * 2**k`` seconds (capped at ``max_backoff``; a server's ``Retry-After``
    is honoured up to that cap). ``timeout`` bounds each attempt: connecting, and reading the whole
    body. The API key comes from ``api_key`` or the first set variable of ``api_key_env``; without one
    no ``Authorization`` header is sent (local servers). The key never appears in ``describe()``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_API_MODEL,
        api_key: str | None = None,
        *,
        temperature: float = 0.3,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_tokens: int | None = None,
        image_format: str = "png",
        max_concurrency: int = 16,
        api_key_env: tuple[str, ...] = API_KEY_ENV,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"judge base_url must be an http(s) URL, got {base_url!r}")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or max_concurrency < 1:
            raise ConfigError("judge needs timeout > 0, max_retries >= 0, backoff >= 0, max_concurrency >= 1")
        encode_image(Image.new("RGB", (1, 1)), image_format)  # validates the format now, not mid-run
        path = parsed.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path += "/chat/completions"
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))
        self.base_url = base_url
        self.model = model
        self.temperature = temperature
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_tokens = max_tokens
        self.image_format = image_format
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})
        self._api_key = (
            api_key
            if api_key is not None
            else next((os.environ[v] for v in api_key_env if os.environ.get(v)), None)
        )

    def describe(self) -> dict[str, Any]:
        p = urllib.parse.urlsplit(self.url)
        return {
            "judge": "openai-compatible",
            "model": self.model,
            "endpoint": urllib.parse.urlunsplit((p.scheme, p.hostname or "", p.path, "", ""))
            + (f" (port {p.port})" if p.port else ""),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "image_format": self.image_format,
            "prompt_sha": PROMPT_SHA,
            "extra_body": self.extra_body,
        }

    def messages(self, caption: str, image_a: Image.Image, image_b: Image.Image) -> list[dict[str, Any]]:
        """The official message layout: instructions with the caption, then 'Image A:' A, 'Image B:' B."""
        return [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": JUDGE_PROMPT.format(caption=caption)},
                    {"type": "text", "text": "Image A:"},
                    {"type": "image_url", "image_url": {"url": encode_image(image_a, self.image_format)}},
                    {"type": "text", "text": "Image B:"},
                    {"type": "image_url", "image_url": {"url": encode_image(image_b, self.image_format)}},
                ],
            }
        ]

    def judge(self, caption: str, image_a: Image.Image, image_b: Image.Image) -> Judgement:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(caption, image_a, image_b),
            "temperature": self.temperature,
            **self.extra_body,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        payload = json.dumps(body).encode("utf-8")
        errors: list[str] = []
        raw = ""
        attempts = 0
        for attempt in range(self.max_retries + 1):
            attempts = attempt + 1
            try:
                raw = self._complete(payload)
                pref, reasoning = parse_answer(raw)
                return Judgement(pref, reasoning, raw[:RAW_KEEP], attempts, None, errors)
            except _FatalError as e:
                errors.append(str(e))
                break
            except (_RetryableError, AnswerParseError) as e:
                errors.append(f"{type(e).__name__}: {e}" if isinstance(e, AnswerParseError) else str(e))
                if attempt < self.max_retries:
                    wait = min(self.max_backoff, self.backoff * 2**attempt)
                    retry_after = getattr(e, "retry_after", None)
                    if retry_after is not None:
                        wait = min(self.max_backoff, max(wait, retry_after))
                    time.sleep(wait)
        return Judgement(None, "", raw[:RAW_KEEP], attempts, errors[-1] if errors else "failed", errors)

    def _complete(self, payload: bytes) -> str:
        """One HTTP attempt -> the answer text; raises _RetryableError / _FatalError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = _read_until(resp, deadline)
        except urllib.error.HTTPError as e:
            detail = _error_body(e)
            msg = f"HTTP {e.code} from {self.describe()['endpoint']}: {detail}"
            if e.code in _RETRY_STATUS or e.code >= 500:
                raise _RetryableError(msg, _retry_after(e.headers)) from None
            raise _FatalError(msg) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _RetryableError(f"request failed: {type(reason).__name__}: {reason}") from None
        try:
            reply = json.loads(data)
            content = reply["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _RetryableError(f"not a chat completion ({type(e).__name__}): {data[:200]!r}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            raise _RetryableError(f"empty answer (finish_reason={reply['choices'][0].get('finish_reason')})")
        return content


def _read_until(resp: Any, deadline: float) -> bytes:
    """Read a response body, giving up at ``deadline`` (a slow trickle cannot hold a worker forever)."""
    chunks = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("response body not complete within the timeout")
        block = resp.read(65536)
        if not block:
            return b"".join(chunks)
        chunks.append(block)


def _error_body(e: urllib.error.HTTPError) -> str:
    try:
        return e.read(500).decode("utf-8", "replace").strip() or str(e.reason)
    except Exception:
        return str(e.reason)


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None

def make_judge(spec: str, model: str | None = None, **options: Any) -> PairJudge:
    """A judge from a CLI-style spec: ``"local"`` -> ``LocalQwenJudge``, an http(s) URL -> ``OpenAIJudge``."""
    if spec == "local":
        return LocalQwenJudge(model, **options)
    if spec.startswith(("http://", "https://")):
        return OpenAIJudge(spec, model or DEFAULT_API_MODEL, **options)
    raise ConfigError(f"--judge must be 'local' or an http(s) URL of an OpenAI-compatible API, got {spec!r}")
