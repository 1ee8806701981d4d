"""OpenAI's ``clip`` package scoring our images as T2I-CompBench's ``CLIP_similarity.py`` does: the model and
``preprocess`` of ``clip.load``, ``clip.tokenize``, both embeddings L2-normalised, their dot product."""

from __future__ import annotations

from typing import Any

import clip
import torch
from _protocol import serve, versions
from PIL import Image


def score(request: dict[str, Any]) -> dict[str, Any]:
    # What ``clip.load(path, device="cpu", jit=False)`` does for a state-dict file. Called directly: under
    # torch >= 2.6 ``clip.load`` first tries ``torch.jit.load`` on the open file and its fallback
    # ``torch.load`` then reads from the end of it (EOFError); OpenAI's own files are TorchScript archives.
    state_dict = torch.load(request["checkpoint"], map_location="cpu", weights_only=True)
    model = clip.model.build_model(state_dict).float().eval()
    preprocess = clip.clip._transform(model.visual.input_resolution)
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
