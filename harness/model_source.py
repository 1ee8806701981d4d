"""A configured model that cannot be loaded is a one-line ConfigError naming its config key and why.

The trainers' users need to know which key of their recipe to fix (``policy.model``, ``generator.model``,
``flow.model``); why the load failed (no such folder, offline and not cached, gated, misspelled) is
classified once, for every loader, by :mod:`evalsuite.hub_errors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from evalsuite.errors import ConfigError, ModelLoadError
from evalsuite.hub_errors import explain
from evalsuite.hub_errors import loading as hub_loading


@contextmanager
def loading(key: str, model: str | None) -> Iterator[None]:
    """Run the loading code of config key ``key`` (value ``model``); its failures become ConfigErrors."""
    try:
        with hub_loading(model, key, f"--set {key}=DIR"):
            yield
    except ModelLoadError as e:  # named by its config key, also when a loader inside already explained it
        raise ConfigError(str(explain(key, e.model or str(model), e.reason, f"--set {key}=DIR"))) from None
