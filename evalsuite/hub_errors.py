"""One readable line instead of a library traceback when a model cannot be loaded from the Hub or a folder.

diffusers, transformers, open_clip and huggingface_hub each fail differently (``OSError`` texts,
``OfflineModeIsEnabled``, ``LocalEntryNotFoundError``, ``GatedRepoError``…, often chained under a generic
``OSError``). :func:`loading` classifies them once for every loader (generator, rewards) and raises
:class:`~evalsuite.errors.ModelLoadError` naming the model, the reason and how to use a local folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from evalsuite.errors import EvalsuiteError, ModelLoadError

# Matched on class names along the MRO, so older huggingface_hub versions (other module paths) work too.
_BY_CLASS: tuple[tuple[str, str], ...] = (
    ("GatedRepoError", "gated"),
    ("RevisionNotFoundError", "revision"),
    ("RepositoryNotFoundError", "not_found"),
    ("OfflineModeIsEnabled", "offline"),
    ("LocalEntryNotFoundError", "offline"),
)
# EnvironmentError texts of transformers/diffusers that carry no typed cause.
_BY_TEXT: tuple[tuple[str, str], ...] = (
    ("gated repo", "gated"),
    ("is not a valid git identifier", "revision"),
    ("not a valid model identifier", "not_found"),
    ("repository not found", "not_found"),
    ("offline mode", "offline"),
    ("couldn't connect to", "offline"),
    ("not fully cached locally", "offline"),
    ("outgoing traffic has been disabled", "offline"),
)
_HUB_ID = re.compile(r"huggingface\.co/(?:api/models/([\w.-]+/[\w.-]+)|([\w.-]+/[\w.-]+)/resolve/)")
_LIBRARY_LOGGERS = ("diffusers", "transformers")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(model: str) -> bool:
    """A folder the user meant (``./x``, ``/x``, ``~/x``, ``a/b/c``), not an ``org/name`` Hub id."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or Path(model).exists()


def classify(exc: BaseException, model: str) -> str | None:
    """Why ``model`` could not be loaded, in words; None when ``exc`` is not a loading problem."""
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            return f"no such folder ({path})"
        if not path.is_dir():
            return f"not a folder ({path} is a file)"
    chain = _chain(exc)
    kind = next((k for e in chain for name, k in _BY_CLASS if name in {c.__name__ for c in type(e).__mro__}),
                None)
    text = " ".join(str(e) for e in chain).lower()
    kind = kind or next((k for needle, k in _BY_TEXT if needle in text), None)
    if kind is None:
        if looks_like_path(model) and isinstance(exc, (OSError, ValueError)):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"not a model folder ({first})"
        return None
    return {
        "gated": "the repository is gated: accept its license on huggingface.co and log in (`hf auth login`)",
        "revision": "that revision (branch, tag or commit) does not exist",
        "not_found": "no such repository on the Hub (misspelled id, or private without a login)",
        "offline": "not in the local Hugging Face cache and the Hub is "
        + ("offline (HF_HUB_OFFLINE=1)" if _offline() else "unreachable"),
    }[kind]


def _failing_id(exc: BaseException, model: str) -> str:
    """The Hub id named by the error when it is another one than ``model`` (e.g. a reward's processor)."""
    for e in _chain(exc):
        m = _HUB_ID.search(str(e))
        found = m and (m.group(1) or m.group(2))
        if found and found != model:
            return found
    return model


class _Hold(logging.Filter):
    """Keeps back one handler's records from the loading thread, to replay them if the load succeeds."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler, self.thread, self.held = handler, threading.get_ident(), []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        self.held.append(record)
        return False


@contextlib.contextmanager
def _held_library_logs() -> Iterator[None]:
    """Hold diffusers/transformers log lines (e.g. "Couldn't connect to the Hub") until the load succeeded;
    a failed load is reported once, by our own line. Filters, not swapped handlers: safe across threads."""
    holds = [_Hold(h) for name in _LIBRARY_LOGGERS for h in logging.getLogger(name).handlers]
    for hold in holds:
        hold.handler.addFilter(hold)
    try:
        yield
    finally:
        for hold in holds:
            hold.handler.removeFilter(hold)
    for hold in holds:  # reached only on success
        for record in hold.held:
            hold.handler.handle(record)


@contextlib.contextmanager
def loading(model: str | None, what: str, hint: str) -> Iterator[None]:
    """Run a model load; a Hub or folder failure becomes one :class:`ModelLoadError` line.

    ``what`` names the model's role ("pipeline", "pickscore reward model"); ``hint`` says where a local
    folder goes ("--model DIR", "DIR as the reward's model (--option model=DIR)")."""
    try:
        with _held_library_logs():
            yield
    except EvalsuiteError:
        raise
    except Exception as e:
        reason = classify(e, str(model)) if model is not None else None
        if reason is None:
            raise
        raise explain(what, _failing_id(e, str(model)), reason, hint) from e


def explain(what: str, model: str, reason: str, hint: str) -> ModelLoadError:
    """The one line: which model (in which role) could not be loaded, why, and how to use a local folder."""
    how = (f"pass a model folder as {hint}" if looks_like_path(model) else
           f"to use a local copy, `hf download {model} --local-dir DIR` and pass {hint}")
    error = ModelLoadError(f"cannot load {what} {model!r}: {reason}; {how}")
    error.model, error.reason = model, reason
    return error
