"""The official ImageReward (``image-reward``) scoring our images: ``ImageReward.load`` + ``model.score``.

The cwd holds a ``bert-base-uncased/`` folder (the shared vocabulary), which ``BertTokenizer.from_pretrained(
'bert-base-uncased')`` in the official ``init_tokenizer`` reads instead of the hub.
"""

from __future__ import annotations

from typing import Any

import ImageReward as RM
import torch
from _protocol import serve, versions


def score(request: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = RM.load(request["checkpoint"], device="cpu", med_config=request["med_config"])
    with torch.no_grad():
        scores = [float(model.score(prompt, path))
                  for prompt, path in zip(request["prompts"], request["images"])]
    return {"scores": scores, "versions": versions({
        "image-reward": "ImageReward", "transformers": "transformers", "torch": "torch", "timm": "timm",
        "diffusers": "diffusers"})}


if __name__ == "__main__":
    serve(score)
