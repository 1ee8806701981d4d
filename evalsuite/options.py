"""``--option KEY=VALUE`` checked against what a benchmark or reward takes, before anything is built.

A misspelled option must be a one-line error listing the valid ones, not a ``TypeError`` from deep inside
a constructor (or, worse, an option silently swallowed by ``**kwargs``).
"""

from __future__ import annotations

import inspect
from typing import Any

from evalsuite.errors import ConfigError


def option_names(factory: Any) -> tuple[list[str], bool]:
    """(keyword options ``factory`` takes, whether it also takes others it cannot name).

    A class whose ``__init__`` takes ``**kwargs`` passes them on to its base (the rewards' convention),
    so it takes the base's options too; a differently named ``**extra`` goes elsewhere: the set is open."""
    names: list[str] = []
    classes = [c for c in factory.__mro__ if "__init__" in vars(c)] if inspect.isclass(factory) else [None]
    for cls in classes:
        if cls is object:
            return names, False
        params = inspect.signature(cls.__init__ if cls is not None else factory).parameters
        names += [n for n, p in params.items()
                  if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in names]
        var = [n for n, p in params.items() if p.kind is p.VAR_KEYWORD]
        if not var:
            return names, False
        if cls is None or var != ["kwargs"]:  # by convention only ``**kwargs`` goes on to the base class
            return names, True
    return names, True


def check_options(name: str, factory: Any, options: dict[str, Any] | None) -> None:
    """Raise ``ConfigError`` naming every option ``factory`` does not take, and the ones it does."""
    names, open_ended = option_names(factory)
    unknown = [k for k in options or {} if k not in names]
    if unknown and not open_ended:
        which = ("option " if len(unknown) == 1 else "options ") + ", ".join(map(repr, unknown))
        raise ConfigError(f"{name} does not take {which} (takes: {', '.join(names) or 'no options'})")
