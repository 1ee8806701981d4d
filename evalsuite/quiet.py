"""``evalsuite -q``: no progress bars at all, ours or those of the libraries that load and run models.

diffusers ("Loading pipeline components"), transformers ("Loading weights") and huggingface_hub (downloads)
each keep their own switch; diffusers has no environment variable for it, so the switches are flipped here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from evalsuite.progress import set_enabled

_LIBRARY_SWITCHES = (
    ("huggingface_hub.utils", "disable_progress_bars"),
    ("transformers.utils.logging", "disable_progress_bar"),
    ("diffusers.utils.logging", "disable_progress_bar"),
)


def silence_progress_bars(*, load_libraries: bool = False) -> None:
    """Turn off every progress bar for the rest of the process.

    Libraries already imported are switched now; ``load_libraries`` imports the others to switch them too
    (for commands that load pipelines anyway: it costs seconds otherwise). Without it, huggingface_hub and
    transformers imported later still read the environment variable; diffusers has none."""
    set_enabled(False)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # also read by subprocesses and late imports
    for module, switch in _LIBRARY_SWITCHES:
        root = module.partition(".")[0]
        if root in sys.modules or (load_libraries and importlib.util.find_spec(root) is not None):
            getattr(importlib.import_module(module), switch)()
