"""OCR reward: Flow-GRPO's rule by hand, real PP-OCR (RapidOCR) on rendered text, and the shared tester."""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from evalsuite import ConfigError, Sample, get_reward
from evalsuite.errors import MissingBackendError
from evalsuite.rewards.ocr import (
    OCRReward,
    join_lines,
    levenshtein,
    normalize,
    not_applicable_reason,
    ocr_distance,
    ocr_reward,
    quoted_target,
)
from tests.reward_tester import CHECKS, RewardSpec

pytest.importorskip("rapidocr")

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@cache
def _font(size: int = 28) -> ImageFont.FreeTypeFont:
    # Pillow >= 10.1's built-in font is scalable: no system font package needed
    return ImageFont.truetype(str(DEJAVU), size) if DEJAVU.is_file() else ImageFont.load_default(size)


def render(text: str, size: tuple[int, int] = (200, 64), font_size: int = 28) -> Image.Image:
    """Black text centred on white: what a text-to-image model is asked to draw, but clean."""
    image = Image.new("RGB", size, "white")
    if text:
        draw = ImageDraw.Draw(image)
        font = _font(font_size)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        origin = ((size[0] - (x1 - x0)) / 2 - x0, (size[1] - (y1 - y0)) / 2 - y0)
        draw.text(origin, text, fill="black", font=font)
    return image


@pytest.fixture(scope="module")
def reward() -> OCRReward:
    return OCRReward().load()


# -- the rule, by hand ---------------------------------------------------------------------------
def test_quoted_target_follows_split_on_ascii_quote():
    assert quoted_target('a neon sign that says "Open 24h" at night') == "Open 24h"
    assert quoted_target('a poster with "EVAL" and "SUITE"') == "EVAL"  # first span only
    assert quoted_target('an empty "" span') == ""
    assert quoted_target('unterminated "quote runs on') == "quote runs on"  # split('"')[1] takes the rest
    assert quoted_target("no quotes at all") is None
    assert quoted_target("curly “Hello” quotes") is None  # only ASCII " delimits, as in Flow-GRPO
    assert quoted_target("") is None


def test_not_applicable_reasons_say_why():
    assert not_applicable_reason('a sign "Hi"') is None
    assert "no double-quoted" in not_applicable_reason("a cat on a mat")
    assert "curly quotes" in not_applicable_reason("a sign saying “Hi”")
    assert "empty" in not_applicable_reason('a sign saying ""')
    assert "empty" in not_applicable_reason('a sign saying "   "')  # spaces only: empty once normalized


def test_normalize_removes_only_spaces_and_lowercases():
    assert normalize("Hello World") == "helloworld"
    assert normalize(" O P E N ") == "open"
    assert normalize("a\tB") == "a\tb"  # Flow-GRPO removes " " only


def test_levenshtein_hand_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("sitting", "kitten") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0
    assert levenshtein("ab", "ba") == 2  # no transposition operation


def test_join_lines_keeps_positive_confidence_only():
    assert join_lines(["HELLO", "junk", "WORLD"], [0.99, 0.0, 0.7]) == "HELLOWORLD"
    assert join_lines([], []) == ""


def test_formula_hand_cases():
    # one substitution in a 10-character target (space removed): 1 - 1/10
    assert ocr_reward("HELLO WORLD", "HELLO WORLE") == (pytest.approx(0.9), 1)
    # case and spaces do not matter
    assert ocr_reward("Open 24 h", "OPEN24H") == (1.0, 0)
    # containment: surrounding text is free
    assert ocr_reward("Hello", "Sign: HELLO there") == (1.0, 0)
    # the reverse is not containment: "helloworld" vs "hello" needs 5 insertions -> 1 - 5/10
    assert ocr_reward("Hello World", "hello") == (pytest.approx(0.5), 5)
    # one deletion in "coffee": 1 - 1/6
    value, dist = ocr_reward("coffee", "cofee")
    assert dist == 1 and value == pytest.approx(1 - 1 / 6)
    # nothing recognized: distance len(target) -> 0
    assert ocr_reward("abc", "") == (0.0, 3)
    # a lot of unrelated text: Levenshtein 9, capped at len("ab") = 2 -> 0, never negative
    assert levenshtein("xyzxyzxyz", "ab") == 9
    assert ocr_distance("ab", "xyzxyzxyz") == 2
    assert ocr_reward("ab", "xyzxyzxyz") == (0.0, 2)
    with pytest.raises(ValueError, match="empty"):
        ocr_reward("  ", "anything")


# -- real OCR on rendered text ------------------------------------------------------------------
def test_exact_render_scores_one(reward):
    out = reward.score([Sample("exact", 'a street sign that says "HELLO WORLD"', render("HELLO WORLD"))])
    assert out.scores == [1.0], out.details
    assert out.details[0]["target"] == "HELLO WORLD"
    assert normalize(out.details[0]["recognized"]) == "helloworld"
    assert out.details[0]["distance"] == 0


def test_one_wrong_letter_gives_formula_value(reward):
    out = reward.score([Sample("typo", 'a street sign that says "HELLO WORLD"', render("HELLO WORLE"))])
    assert out.details[0]["distance"] == 1, out.details
    assert out.scores[0] == pytest.approx(1 - 1 / 10)  # 10 letters once the space is removed


def test_blank_image_scores_zero_not_error(reward):
    out = reward.score([Sample("blank", 'a sign that says "EVAL"', Image.new("RGB", (120, 48), "white"))])
    assert out.scores == [0.0] and out.errors == [None]
    assert out.details[0]["recognized"] == "" and out.details[0]["distance"] == 4


def test_prompts_without_target_are_not_applicable_never_zero(reward):
    image = render("EVAL", (120, 48))
    samples = [
        Sample("first-span", 'a poster with "EVAL" and "SUITE"', image),
        Sample("no-quotes", "a poster with EVAL on it", image),
        Sample("empty-span", 'a poster with "" on it', image),
        Sample("curly", "a poster with “EVAL” on it", image),
        Sample("last", 'a sign "eval"', image),
    ]
    out = reward.score(samples)
    assert out.scores[0] == 1.0 and out.details[0]["target"] == "EVAL"
    assert out.scores[4] == 1.0  # case-insensitive
    for k in (1, 2, 3):
        assert not out.applicable[k] and out.errors[k] is None and math.isnan(out.scores[k])
        assert out.details[k]["not_applicable"]
    assert "curly" in out.details[3]["not_applicable"]


def test_describe_records_backend_and_engine(reward):
    d = reward.describe()
    assert d["name"] == "ocr" and d["backend"] == "rapidocr"
    assert d["engine"].startswith("rapidocr ")
    assert d["engine_params"]["Global.use_cls"] is False  # no angle classifier, as Flow-GRPO
    assert d["model"] and "det" in d["model"] and "rec" in d["model"]  # the bundled models, once loaded


def test_registry_and_config_errors():
    assert isinstance(get_reward("ocr"), OCRReward)
    with pytest.raises(ConfigError, match="backend"):
        OCRReward(backend="tesseract")
    with pytest.raises(ConfigError, match="no model id"):
        OCRReward("some/model")
    with pytest.raises(ConfigError, match="engine_params"):
        OCRReward(backend="paddle", engine_params={"Det.limit_side_len": 64})


@pytest.mark.skipif(importlib.util.find_spec("paddleocr") is not None, reason="paddleocr is installed")
def test_paddle_backend_missing_is_a_clear_error():
    r = OCRReward(backend="paddle")
    assert r.describe()["backend"] == "paddle"
    with pytest.raises(MissingBackendError, match=r"evalsuite\[paddle\]"):
        r.score([Sample("p", 'a sign "Hi"', render("Hi", (80, 40)))])


# -- shared tester -------------------------------------------------------------------------------
@cache
def _reference_engine():
    from rapidocr import RapidOCR

    # Flow-GRPO's PaddleOCR 2.x setup, spelled out independently of evalsuite.rewards.ocr
    return RapidOCR(params={"Global.use_cls": False, "Global.text_score": 0.5, "Global.log_level": "error",
                            "Det.limit_type": "max", "Det.limit_side_len": 960})


def _edit_distance(a: str, b: str) -> int:
    @cache
    def d(i: int, j: int) -> int:  # recursive definition, unlike the reward's two-row DP
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def _reference(_reward, samples: list[Sample]) -> list[float]:
    """Per-image RapidOCR calls and Flow-GRPO's formula, written out here."""
    engine = _reference_engine()
    out = []
    for s in samples:
        result = engine(s.image)
        lines = zip(result.txts or (), result.scores or ())
        text = "".join(t for t, c in lines if c > 0).replace(" ", "").lower()
        target = s.prompt.split('"')[1].replace(" ", "").lower()
        dist = 0 if target in text else min(_edit_distance(text, target), len(target))
        out.append(1 - dist / len(target))
    return out


@cache
def _samples_cached() -> tuple[Sample, ...]:
    return (
        Sample("s0", 'a neon sign that says "Open 24h"', render("Open 24h", (200, 64))),
        Sample("s1", 'a cafe window with "Cafe Mia" painted on it, morning light',
               render("Cafe Mio", (180, 56))),
        Sample("s2", 'a "GRPO" logo', render("GRPO", (120, 48), 30)),
        Sample("s3", 'a banner "Hello World"', render("HELLO WORLD", (240, 72), 30)),
    )


def _samples() -> list[Sample]:
    return list(_samples_cached())


SPEC = RewardSpec(
    name="ocr",
    make=lambda **kw: OCRReward(**kw),
    samples=_samples,
    reference=_reference,
    atol=1e-9,
    rtol=0.0,
    bf16_atol=None,  # OCR has no dtype
)


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check: str) -> None:
    CHECKS[check](SPEC)


def test_reference_is_not_trivial():
    """The parity samples include an imperfect render, so parity compares more than 1.0s."""
    values = _reference(None, _samples())
    assert values[1] == pytest.approx(1 - 1 / 7)  # "cafemia" vs "cafemio"
    assert values[0] == values[2] == values[3] == 1.0
