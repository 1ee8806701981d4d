"""The pairwise judging protocol of DenseAlignBench: the instructions, and reading a judge's answer.

A judge sees the caption and two images shown as "Image A" then "Image B" and answers
``image_a`` / ``image_b`` / ``tie`` on prompt adherence only (what is depicted, not how pretty it is),
with a short reasoning, as JSON ``{"reasoning": ..., "preference": ...}`` (the official protocol of
roooobotx/prompt_echo ``dense_align_bench``; the instruction wording here is our own). Every judge
(:mod:`evalsuite.rewards.judges`, :mod:`evalsuite.rewards.judge_local`) speaks it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import re
from typing import Any

from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.scorer import PREFERENCES

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
RAW_KEEP = 4000  # characters of a raw answer kept in a Judgement (logs stay small)


class AnswerParseError(ValueError):
    """A judge answer without a usable preference."""



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

