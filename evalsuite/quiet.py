"""``evalsuite -q``: no progress bars at all, ours or those of the libraries that load and run models.

diffusers ("Loading pipeline components"), transformers ("Loading weights") and huggingface_hub (downloads)
each keep their own switch; diffusers has no environment variable for it, so the switches are flipped here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

from evalsuite.progress import set_enabled

_LIBRARY_SWITCHES = (
    ("huggingface_hub.utils", "disable_progress_bars"),
    ("transformers.utils.logging", "disable_progress_bar"),
    ("diffusers.utils.logging", "disable_progress_bar"),
)


def silence_progress_bars() -> None:
    """Turn off every progress bar for the rest of the process (libraries not installed are skipped)."""
    set_enabled(False)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # also read by subprocesses and late imports
    for module, switch in _LIBRARY_SWITCHES:
        if importlib.util.find_spec(module.partition(".")[0]) is not None:
            getattr(importlib.import_module(module), switch)()
