"""The answer format both prompt policies are trained to: ``<think> … </think><answer> … </answer>``.

Only the answer is rendered; anything malformed renders the ORIGINAL prompt (never a crash) and is
charged by the format reward. The LM rewriter, the VL refiner and the rewards judge completions here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT_RE = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class ParsedCompletion:
    """One completion, judged. ``rendered`` is what the generator gets: the rewrite, or the original."""

    original: str
    text: str  # the full assistant text (response prefix + completion)
    well_formed: bool
    rewrite: str | None  # the answer of a well-formed completion (whitespace collapsed), else None
    think: str | None
    error: str | None  # why it is malformed (for logs), None when well formed

    @property
    def rendered(self) -> str:
        return self.rewrite if self.rewrite is not None else self.original


def count_words(text: str) -> int:
    return len(text.split())


def parse_completion(text: str, original: str, prefix: str = "") -> ParsedCompletion:
    """Judge ``prefix + text`` against the format ``<think>…</think><answer>…</answer>``.

    Well formed means: exactly one of each tag (so nothing is nested or repeated), in that order, nothing
    but whitespace outside them or between ``</think>`` and ``<answer>``, and a non-empty answer (RePrompt
    anchors its format regex at both ends, so trailing text fails too). The reasoning may be empty.
    """
    full = (prefix + text).strip()

    def bad(reason: str) -> ParsedCompletion:
        return ParsedCompletion(original, prefix + text, False, None, None, reason)

    counts = {tag: full.count(tag) for tag in TAGS}
    missing = [t for t, c in counts.items() if c == 0]
    if missing:
        return bad(f"missing {' '.join(missing)}")
    extra = [t for t, c in counts.items() if c > 1]
    if extra:
        return bad(f"duplicate or nested {' '.join(extra)}")
    positions = [full.index(tag) for tag in TAGS]
    if positions != sorted(positions):
        return bad("tags out of order")
    if not full.startswith("<think>"):
        return bad("extra text before <think>")
    if not full.endswith("</answer>"):
        return bad("extra text after </answer>")
    m = _FORMAT_RE.fullmatch(full)
    if m is None:
        return bad("extra text between </think> and <answer>")
    think, answer = m.group(1), m.group(2)
    rewrite = " ".join(answer.split())
    if not rewrite:
        return bad("empty answer")
    return ParsedCompletion(original, prefix + text, True, rewrite, think.strip(), None)


def format_completion(rewrite: str, think: str = "") -> str:
    """The well-formed completion for a (think, rewrite) pair: the SFT target."""
    return f"<think>{think}</think><answer>{rewrite}</answer>"
