"""What ``clip.load(path, device="cpu", jit=False)`` does for a state-dict file, for the side scripts of the
``clip`` venv. Called directly: under torch >= 2.6 ``clip.load`` first tries ``torch.jit.load`` on the open
file and its fallback ``torch.load`` then reads from the end of it (EOFError); OpenAI's own files are
TorchScript archives."""

from __future__ import annotations

from typing import Any

import clip
import torch


def load(checkpoint: str) -> tuple[Any, Any]:
    """``(model, preprocess)`` as ``clip.load`` returns them on the CPU (``build_model`` rounds the weights
    to fp16, ``.float()`` as ``clip.load`` does for ``device="cpu"``)."""
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = clip.model.build_model(state_dict).float().eval()
    return model, clip.clip._transform(model.visual.input_resolution)
