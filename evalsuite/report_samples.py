"""The report's sample grid as data: one JSON-ready card per image, plus thumbnails written once.

The page renders cards from one JSON blob in pages (a DPG run has 4,260 images; building them all as DOM
at load is what makes a report slow), so everything a card shows is computed here: status, task, reason
and its kind (for the filters), the evidence to draw over the image, an OCR edit script, the questions
asked of the image with their answers, the prompt shaded by how likely an echoing VLM found each token.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from evalsuite.images import MAX_PIXELS
from evalsuite.textdiff import text_diff

__all__ = ["TASK_FIELDS", "THUMB_SIZE", "cards", "reason_kind", "status_of", "thumbnail"]

THUMB_SIZE = 256  # longest side of a grid thumbnail, in pixels
THUMB_DIR = "thumbs"
TASK_FIELDS = ("tag", "task", "category", "dimension", "skill")  # first present one is a card's task
REASON_FIELDS = ("reason", "error", "not_applicable")


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (isinstance(value, str) and not value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _scorer_prefixed(key: str, name: str, row: Mapping[str, Any]) -> bool:
    """``key`` is ``name`` under a scorer's prefix: ``detection.evidence`` (a reward's details), or
    ``blip_questions`` where ``blip_score`` is there too (T2I-CompBench's per-scorer columns; the check keeps
    ``n_questions`` from passing for ``questions``)."""
    if key.endswith("." + name):
        return True
    prefix = key[: -len(name) - 1]
    return key.endswith("_" + name) and prefix.isalpha() and f"{prefix}_score" in row


def _field(row: Mapping[str, Any], name: str) -> Any:
    """``name`` as a column, else as a scorer-prefixed column, else in metadata."""
    if _present(row.get(name)):
        return row[name]
    for key, value in row.items():
        if isinstance(key, str) and _scorer_prefixed(key, name, row) and _present(value):
            return value
    meta = row.get("metadata")
    return meta.get(name) if isinstance(meta, Mapping) else None


def status_of(row: Mapping[str, Any]) -> str:
    """``error`` (scorer could not judge), ``na`` (not applicable), ``fail`` or ``ok``.

    Fail = ``correct`` is False, or no ``correct`` column and a score of exactly 0 (as the old grid did).
    """
    if _present(row.get("error")):
        return "error"
    if _present(row.get("not_applicable")):
        return "na"
    correct = row.get("correct")
    if isinstance(correct, bool):
        return "ok" if correct else "fail"
    return "fail" if _number(row.get("score")) == 0.0 else "ok"


_CLAUSE = re.compile(r"^(include|exclude)\[\d+\]: ")


def reason_kind(reason: str) -> str:
    """A failure reason with its specifics blanked, so like failures group under one filter entry.

    GenEval clauses read as the check that failed (``count``, ``colour``, ``position``, ``exclude``);
    anything else keeps its words with numbers and quoted text replaced.
    """
    first = re.split(r"; (?=(?:include|exclude)\[)", reason)[0]
    if _CLAUSE.match(first):
        body = _CLAUSE.sub("", first)
        if first.startswith("exclude"):
            return "exclude: too many"
        if "no target" in body or re.search(r"expected .+ (left of|right of|above|below) include", body):
            return "position"
        if re.search(r", found \d+ \w+; and ", body):
            return "colour"
        return "count"
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", first)
    return re.sub(r"\d+(\.\d+)?", "N", text)[:60]


def thumbnail(out: Path, image_rel: str) -> str | None:
    """A small JPEG of the image under ``out/thumbs`` (relative path), made only if not there yet; an
    image already no larger than a thumbnail is its own (re-encoding it as JPEG only adds artefacts).

    The name hashes the image path, size and mtime, so a regenerated image gets a fresh thumbnail. None
    when the image cannot be read or is a decompression bomb (the card then links the original and says
    nothing more: the sample's own error says why).
    """
    src = out / image_rel
    try:
        stat = src.stat()
    except OSError:
        return None
    key = hashlib.sha1(f"{image_rel}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    rel = f"{THUMB_DIR}/{key}.jpg"
    dest = out / rel
    if dest.exists():
        return rel
    try:
        with Image.open(src) as img:  # reads the header only
            if max(img.size) <= THUMB_SIZE:
                return image_rel
            if img.size[0] * img.size[1] > MAX_PIXELS:  # refused when scored: never decoded here either
                return None
            img = img.convert("RGB")
            img.thumbnail((THUMB_SIZE, THUMB_SIZE))
            dest.parent.mkdir(exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            img.save(tmp, "JPEG", quality=82)
            tmp.replace(dest)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return rel


def _listish(value: Any) -> list | None:
    if value is None or isinstance(value, (str, bytes, Mapping)):
        return None
    try:
        return list(value)
    except TypeError:
        return None


def _plain(value: Any) -> Any:
    """JSON-ready copy (numpy arrays and scalars from parquet round trips become lists and floats)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def questions(row: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Each question asked of the image with its answer and credit, from what the benchmarks record:
    DPG (questions, answers, final/raw 0/1), TIIF (metadata questions + gold answers, the judge's preds and
    per-question ``hits``),
    GenEval 2 (metadata ``vqa_list`` [question, answer] pairs, soft ``question_scores``), T2I-CompBench's
    BLIP-VQA (``blip_questions``, one per noun phrase, with its ``blip_p_yes``)."""
    qs = _listish(_field(row, "questions"))
    if qs is None and (pairs := _listish(_field(row, "vqa_list"))) is not None:
        qs = [p[0] if _listish(p) else p for p in pairs]
    if not qs:
        return None
    out = [{"q": str(q)} for q in qs]
    meta = row.get("metadata") if isinstance(row.get("metadata"), Mapping) else {}
    preds, gold = _listish(_field(row, "preds")), _listish(meta.get("answers"))
    hits = _listish(row.get("hits"))
    answers = _listish(row.get("answers")) if preds is None else preds
    credit = _listish(row.get("final")) or _listish(row.get("raw"))
    soft = _listish(_field(row, "question_scores"))
    if soft is None:
        soft = _listish(_field(row, "p_yes"))
    for k, item in enumerate(out):
        if answers is not None and k < len(answers):
            item["a"] = str(answers[k])
        if preds is not None and gold is not None and k < len(gold):
            item["gold"] = str(gold[k])
            if hits is not None and k < len(hits):  # the benchmark's own verdict, not re-judged here
                item["s"] = float(bool(hits[k]))
        elif soft is not None and k < len(soft) and _number(soft[k]) is not None:
            item["s"] = round(float(soft[k]), 4)
        elif credit is not None and k < len(credit):  # DPG: 0/1 after parent zeroing, else the raw yes/no
            value = float(credit[k]) if isinstance(credit[k], bool) else _number(credit[k])
            if value is not None:
                item["s"] = value
    return out


def _card(row: Mapping[str, Any], out: Path, make_thumbs: bool) -> dict[str, Any]:
    image = str(row.get("image") or "")
    reason = next((str(row[f]) for f in REASON_FIELDS if _present(row.get(f))), "")
    task = next((_field(row, f) for f in TASK_FIELDS if _present(_field(row, f))), None)
    card: dict[str, Any] = {
        "id": str(row.get("id")), "group": str(row.get("group")), "prompt": str(row.get("prompt") or ""),
        "img": image, "thumb": thumbnail(out, image) if make_thumbs and image else None,
        "task": None if task is None else str(task), "status": status_of(row),
        "score": _number(row.get("score")), "reason": reason, "kind": reason_kind(reason) if reason else "",
    }
    rendered = row.get("rendered_prompt")
    if _present(rendered) and rendered != row.get("prompt"):
        card["rendered"] = str(rendered)
    evidence = _field(row, "evidence")
    if isinstance(evidence, Mapping):
        card["ev"] = _plain(evidence)
    target, recognized = _field(row, "target"), _field(row, "recognized")
    if isinstance(target, str) and isinstance(recognized, str):
        card["ocr"] = text_diff(target, recognized)
    qa = questions(row)
    if qa:
        card["qa"] = qa
    tokens = _listish(_field(row, "caption_tokens"))
    if tokens:  # PromptEcho (DenseAlignBench's companion): the prompt as the VLM's answer, token by token
        card["echo"] = {"asked": str(_field(row, "query") or ""), "tokens": _plain(tokens)}
    return card


def cards(per_sample, out: Path | None = None) -> list[dict[str, Any]]:
    """One card per row of the per-sample table; thumbnails under ``out`` when given."""
    root = Path(out) if out is not None else Path(".")
    return [_card(row, root, out is not None) for row in per_sample.to_dict(orient="records")]
