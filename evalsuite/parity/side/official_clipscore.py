"""OpenAI's ``clip`` package scoring our images as T2I-CompBench's ``CLIP_similarity.py`` does: the model and
``preprocess`` of ``clip.load``, ``clip.tokenize``, both embeddings L2-normalised, their dot product."""

from __future__ import annotations

from typing import Any

import clip
import torch
from _clip_load import load
from _protocol import serve, versions
from PIL import Image


def score(request: dict[str, Any]) -> dict[str, Any]:
    model, preprocess = load(request["checkpoint"])
    scores = []
    with torch.no_grad():
        for prompt, path in zip(request["prompts"], request["images"]):
            image = preprocess(Image.open(path)).unsqueeze(0)
            image_features = model.encode_image(image)
            text_features = model.encode_text(clip.tokenize(prompt))
            image_features = image_features / image_features.norm(dim=1, keepdim=True)
            text_features = text_features / text_features.norm(dim=1, keepdim=True)
            scores.append(float((image_features @ text_features.T).item()))
    return {"scores": scores, "versions": versions({"openai-clip": "clip", "torch": "torch"})}


if __name__ == "__main__":
    serve(score)
