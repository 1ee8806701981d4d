"""A configured model that cannot be loaded is a one-line ConfigError naming its config key and why.

Hugging Face and diffusers report a missing folder as an invalid repo id, and an uncached model under
HF_HUB_OFFLINE as a connection problem, each with a long traceback; the trainers' users need to know
which key of their recipe to fix (``policy.model``, ``generator.model``, ``flow.model``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evalsuite.errors import ConfigError

_TRUE = ("1", "true", "yes", "on")


def looks_like_folder(model: str) -> bool:
    """A path rather than a Hub id ("name" or "org/name")."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _why(model: str, error: BaseException) -> str:
    first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    if Path(model).expanduser().exists():
        return f"the folder exists but does not load: {first}"
    if looks_like_folder(model):
        return "no such folder"
    if offline():
        return "no such folder, and offline (HF_HUB_OFFLINE) with no copy in the Hugging Face cache"
    return f"no such folder, and not loadable from the Hugging Face Hub: {first}"


@contextmanager
def loading(key: str, model: str | None) -> Iterator[None]:
    """Run the loading code of config key ``key`` (value ``model``); its failures become ConfigErrors."""
    if model and looks_like_folder(model) and not Path(model).expanduser().exists():
        raise ConfigError(f"cannot load {key} {model!r}: no such folder")
    try:
        yield
    except ConfigError:
        raise
    except (OSError, ValueError) as e:  # ValueError: invalid repo ids (huggingface_hub, diffusers)
        raise ConfigError(f"cannot load {key} {model!r}: {_why(str(model), e)}") from None
