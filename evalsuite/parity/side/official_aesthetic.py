"""LAION's ``simple_inference.py`` (GitHub christophschuhmann/improved-aesthetic-predictor at 3ade56d; not
a pip package, so its inference lines are written here as the script has them): OpenAI ``clip`` image
features, ``normalized`` in numpy, the ``MLP`` class's ``layers``, one image at a time.

The script's ``MLP`` is a ``pytorch_lightning.LightningModule``; only ``__init__``/``forward`` run at
inference, so it is an ``nn.Module`` here (the same ``layers``, the same state-dict keys). The script's
``.type(torch.cuda.FloatTensor)`` is float32 on the CPU here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from _clip_load import load
from _protocol import serve, versions
from PIL import Image


class MLP(nn.Module):
    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(self.input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def normalized(a: np.ndarray, axis: int = -1, order: int = 2) -> np.ndarray:
    l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, axis)


def score(request: dict[str, Any]) -> dict[str, Any]:
    model = MLP(768)  # CLIP embedding dim is 768 for CLIP ViT L 14
    model.load_state_dict(torch.load(request["mlp"], map_location="cpu", weights_only=True))
    model.eval()
    model2, preprocess = load(request["checkpoint"])
    scores = []
    for path in request["images"]:
        image = preprocess(Image.open(path)).unsqueeze(0)
        with torch.no_grad():
            image_features = model2.encode_image(image)
        im_emb_arr = normalized(image_features.cpu().detach().numpy())
        with torch.no_grad():
            prediction = model(torch.from_numpy(im_emb_arr).type(torch.FloatTensor))
        scores.append(float(prediction[0, 0]))
    return {"scores": scores, "versions": versions({"openai-clip": "clip", "torch": "torch"})}


if __name__ == "__main__":
    serve(score)
