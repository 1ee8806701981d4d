"""Pairwise VLM judges for DenseAlignBench: which of two images follows a caption better.

A judge sees the caption and two images shown as "Image A" then "Image B" and answers
``image_a`` / ``image_b`` / ``tie`` on prompt adherence only (what is depicted, not how pretty it is),
with a short reasoning, as JSON ``{"reasoning": ..., "preference": ...}`` (the official protocol of
roooobotx/prompt_echo ``dense_align_bench``; the instruction wording here is our own).

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

import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from evalsuite.errors import ConfigError

PREFERENCES = ("image_a", "image_b", "tie")

# Our wording of the official instructions (same criteria, same answer format).
JUDGE_PROMPT = """You are judging how faithfully two AI-generated images follow a text prompt.

Judge prompt adherence ONLY. Do not reward beauty, artistic quality, style or photorealism unless the \
prompt itself asks for them.

Prompt:
{caption}

How to judge:
1. List everything the prompt asks for: subjects and objects, their number, attributes (colour, size, \
material, texture), actions and poses, spatial layout (foreground/background, left/right, positions), \
any written text, the setting, style and mood.
2. For Image A, note which of these are shown correctly, which are missing or wrong, and anything \
present that contradicts the prompt.
3. Do the same for Image B.
4. Decide which image satisfies more of the prompt, more accurately. Answer "tie" only when their \
adherence is genuinely comparable.

Answer with one JSON object and nothing else (no markdown):
{{"reasoning": "<what Image A gets right and wrong; what Image B gets right and wrong; the verdict>", \
"preference": "<image_a | image_b | tie>"}}"""

# Constrained scoring asks for the bare label, since no reasoning is decoded.
LABEL_PROMPT_SUFFIX = (
    '\n\nFor this answer, skip the JSON: reply with exactly one of "image_a", "image_b" or "tie".'
)

PROMPT_SHA = hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:12]
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"
DEFAULT_API_MODEL = "gemini-2.0-flash"
API_KEY_ENV = ("EVALSUITE_JUDGE_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY")
_RAW_KEEP = 4000  # characters of a raw answer kept in a Judgement (logs stay small)


class AnswerParseError(ValueError):
    """A judge answer without a usable preference."""


@dataclass
class Judgement:
    """One pairwise verdict. ``preference`` is None when the judge failed (never read as a tie)."""

    preference: str | None
    reasoning: str = ""
    raw: str = ""
    attempts: int = 1
    error: str | None = None
    errors: list[str] = field(default_factory=list)  # one entry per failed attempt, for debugging
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.preference is not None


class PairJudge(ABC):
    """``judge(caption, image_a, image_b)``: image_a is shown first ("Image A"), image_b second."""

    max_concurrency: int = 1  # pairs judged at once by compare_runs (thread pool size)

    @abstractmethod
    def judge(self, caption: str, image_a: Image.Image, image_b: Image.Image) -> Judgement: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Everything that changes verdicts (model, prompt version, decoding), for manifests."""


# -- answer parsing (pure) ------------------------------------------------------------------------
_ALIASES = {
    "image_a": "image_a",
    "imagea": "image_a",
    "a": "image_a",
    "first": "image_a",
    "first_image": "image_a",
    "image_b": "image_b",
    "imageb": "image_b",
    "b": "image_b",
    "second": "image_b",
    "second_image": "image_b",
    "tie": "tie",
    "equal": "tie",
    "draw": "tie",
    "both": "tie",
}
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_LOOSE_PREF = re.compile(r'["\']?preference["\']?\s*[:=]\s*["\']?\s*(image[\s_-]?[ab]|tie)\b', re.IGNORECASE)
_LOOSE_REASON = re.compile(r'"reasoning"\s*:\s*"(.*?)"\s*,\s*"preference"', re.DOTALL)


def normalize_preference(value: Any) -> str | None:
    """``"Image A"``, ``"image-a"``, ``"A"`` -> ``"image_a"``; None if it names no option."""
    if not isinstance(value, str):
        return None
    key = re.sub(r"[\s\-]+", "_", value.strip().strip("\"'.*` ").lower())
    return _ALIASES.get(key)


def _json_objects(text: str) -> list[Any]:
    """Every JSON value found: the whole text, fenced blocks, then each top-level ``{...}`` in the prose."""
    found: list[Any] = []
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for cand in candidates:
        with contextlib.suppress(ValueError):  # JSONDecodeError is a ValueError
            found.append(json.loads(cand))
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        found.append(obj)
        i = text.find("{", end)
    return found


def parse_answer(text: str) -> tuple[str, str]:
    """``(preference, reasoning)`` from a judge's answer, tolerating code fences and surrounding prose.

    JSON objects with a ``preference`` key are preferred; if none parses (e.g. unescaped quotes inside
    the reasoning), a ``"preference": "image_a"``-like pattern is accepted. Several answers that
    disagree, an unknown label, or no answer at all raise ``AnswerParseError``.
    """
    if not isinstance(text, str) or not text.strip():
        raise AnswerParseError("empty answer")
    prefs: list[tuple[str, str]] = []
    bad: list[str] = []
    for obj in _json_objects(text):
        if isinstance(obj, dict) and "preference" in obj:
            pref = normalize_preference(obj["preference"])
            if pref is None:
                bad.append(repr(obj["preference"])[:80])
            else:
                reasoning = obj.get("reasoning", "")
                prefs.append((pref, reasoning if isinstance(reasoning, str) else json.dumps(reasoning)))
    if not prefs and not bad:
        loose = [normalize_preference(m.group(1)) for m in _LOOSE_PREF.finditer(text)]
        if loose:
            m = _LOOSE_REASON.search(text)
            prefs = [(p, m.group(1) if m else "") for p in loose if p is not None]
    labels = {p for p, _ in prefs}
    if len(labels) > 1:
        raise AnswerParseError(f"answer holds conflicting preferences {sorted(labels)}")
    if labels:
        return prefs[0]
    if bad:
        raise AnswerParseError(f"preference must be one of {PREFERENCES}, got {', '.join(bad)}")
    raise AnswerParseError("no JSON object with a 'preference' key in the answer")


def encode_image(image: Image.Image, image_format: str = "png") -> str:
    """A ``data:`` URL of the image (RGB), as OpenAI-compatible chat APIs take images."""
    buf = io.BytesIO()
    rgb = image.convert("RGB")
    if image_format == "png":
        rgb.save(buf, format="PNG")
        mime = "image/png"
    elif image_format == "jpeg":
        rgb.save(buf, format="JPEG", quality=95)
        mime = "image/jpeg"
    else:
        raise ConfigError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


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
                return Judgement(pref, reasoning, raw[:_RAW_KEEP], attempts, None, errors)
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
        return Judgement(None, "", raw[:_RAW_KEEP], attempts, errors[-1] if errors else "failed", errors)

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


# -- local Qwen2.5-VL judge -------------------------------------------------------------------------
LOCAL_MODES = ("generate", "score")


class LocalQwenJudge(PairJudge):
    """Qwen2.5-VL (default ``Qwen/Qwen2.5-VL-7B-Instruct``) as the judge, through transformers.

    Same chat layout as the API judge (instructions with the caption, "Image A:", image, "Image B:",
    image), in the model's own chat template. ``generate``: greedy decoding of up to ``max_new_tokens``
    (with the model's shipped ``repetition_penalty`` 1.05 by default), parsed like an API answer; a
    greedy answer does not change on retry, so an unusable one is failed at once. ``score``: one batched
    forward over the three full answers ``image_a<|im_end|>``, ``image_b<|im_end|>``, ``tie<|im_end|>``
    (teacher-forced after the assistant header) and the label with the highest summed log-probability
    wins; the log-probabilities are kept in ``details``. Images are resized to the
    ``min_pixels``/``max_pixels`` budget as qwen-vl-utils does. One pair at a time (``max_concurrency``
    is 1; a lock guards the model).
    """

    default_model: ClassVar[str] = "Qwen/Qwen2.5-VL-7B-Instruct"
    max_concurrency = 1

    def __init__(
        self,
        model: str | None = None,
        *,
        mode: str = "generate",
        device: str = "cpu",
        dtype: str = "bfloat16",
        revision: str | None = None,
        max_new_tokens: int = 1024,
        repetition_penalty: float = 1.05,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        from evalsuite.rewards import _qwen_vl as qvl

        if mode not in LOCAL_MODES:
            raise ConfigError(f"LocalQwenJudge mode must be one of {LOCAL_MODES}, got {mode!r}")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model_id = model or self.default_model
        self.mode = mode
        self.device = device
        self.dtype = dtype
        self.revision = revision
        self.max_new_tokens = max_new_tokens
        self.repetition_penalty = repetition_penalty
        self.min_pixels = qvl.DEFAULT_MIN_PIXELS if min_pixels is None else min_pixels
        self.max_pixels = qvl.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        qvl.check_pixel_budget(self.min_pixels, self.max_pixels)
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "judge": "local-qwen2.5-vl",
            "model": self.model_id,
            "revision": self.revision,
            "mode": self.mode,
            "decoding": "greedy" if self.mode == "generate" else "label log-prob argmax",
            "max_new_tokens": self.max_new_tokens if self.mode == "generate" else None,
            "repetition_penalty": self.repetition_penalty if self.mode == "generate" else None,
            "dtype": self.dtype,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "prompt_sha": PROMPT_SHA,
        }

    def load(self) -> LocalQwenJudge:
        if self._model is None:
            from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

            from evalsuite.reward import resolve_dtype

            processor = AutoProcessor.from_pretrained(self.model_id, revision=self.revision)
            processor.tokenizer.padding_side = "right"
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                self.model_id, revision=self.revision, dtype=resolve_dtype(self.dtype)
            )
            self._model = model.to(self.device).eval()
            self._processor = processor
        return self

    def chat_text(self, caption: str) -> str:
        """The prompt text up to and including the assistant header (images as placeholders)."""
        instructions = JUDGE_PROMPT.format(caption=caption)
        if self.mode == "score":
            instructions += LABEL_PROMPT_SUFFIX
        turn = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": instructions},
                    {"type": "text", "text": "Image A:"},
                    {"type": "image"},
                    {"type": "text", "text": "Image B:"},
                    {"type": "image"},
                ],
            }
        ]
        return self._processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)

    def fit(self, image: Image.Image) -> Image.Image:
        from evalsuite.rewards import _qwen_vl as qvl

        return qvl.fit_image(image.convert("RGB"), self.min_pixels, self.max_pixels)

    def judge(self, caption: str, image_a: Image.Image, image_b: Image.Image) -> Judgement:
        with self._lock:
            self.load()
            images = [self.fit(image_a), self.fit(image_b)]
            if self.mode == "score":
                return self._score(caption, images)
            return self._generate(caption, images)

    def _generate(self, caption: str, images: list[Image.Image]) -> Judgement:
        import torch

        inputs = self._processor(text=[self.chat_text(caption)], images=images, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self._model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                repetition_penalty=self.repetition_penalty,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new = out[0, inputs["input_ids"].shape[1] :]
        raw = self._processor.tokenizer.decode(new, skip_special_tokens=True)
        details = {"new_tokens": int(new.numel())}
        try:
            pref, reasoning = parse_answer(raw)
        except AnswerParseError as e:
            msg = f"AnswerParseError: {e}"
            return Judgement(None, "", raw[:_RAW_KEEP], 1, msg, [msg], details)
        return Judgement(pref, reasoning, raw[:_RAW_KEEP], 1, None, [], details)

    def _score(self, caption: str, images: list[Image.Image]) -> Judgement:
        import torch

        prefix = self.chat_text(caption)
        end = "<|im_end|>"
        texts = [prefix + label + end for label in PREFERENCES]
        enc = self._processor(text=texts, images=images * len(texts), return_tensors="pt", padding=True)
        tok = self._processor.tokenizer
        n_prefix = len(self._processor(text=[prefix], images=images, return_tensors="pt")["input_ids"][0])
        enc = enc.to(self.device)
        with torch.inference_mode():
            logits = self._model(**enc, use_cache=False).logits.float()
        logp = torch.log_softmax(logits, -1)
        scores: dict[str, float] = {}
        for i, label in enumerate(PREFERENCES):
            target = tok(label + end, add_special_tokens=False)["input_ids"]
            ids = enc["input_ids"][i, n_prefix : n_prefix + len(target)].tolist()
            if ids != target:  # tokenization across the prefix boundary must not merge
                msg = f"label {label!r} tokenized differently inside the prompt ({ids} vs {target})"
                return Judgement(None, "", "", 1, msg, [msg])
            pos = torch.arange(n_prefix - 1, n_prefix - 1 + len(target), device=logp.device)
            scores[label] = float(logp[i, pos, torch.tensor(target, device=logp.device)].sum())
        best = max(PREFERENCES, key=lambda p: scores[p])  # ties resolve in PREFERENCES order
        return Judgement(best, "", best, 1, None, [], {"label_logprobs": scores})


def make_judge(spec: str, model: str | None = None, **options: Any) -> PairJudge:
    """A judge from a CLI-style spec: ``"local"`` -> ``LocalQwenJudge``, an http(s) URL -> ``OpenAIJudge``."""
    if spec == "local":
        return LocalQwenJudge(model, **options)
    if spec.startswith(("http://", "https://")):
        return OpenAIJudge(spec, model or DEFAULT_API_MODEL, **options)
    raise ConfigError(f"--judge must be 'local' or an http(s) URL of an OpenAI-compatible API, got {spec!r}")
