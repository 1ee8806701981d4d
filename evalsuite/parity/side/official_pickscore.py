"""PickScore's README computation (transformers 4.x ``CLIPModel``) on our images, one prompt per image."""

from __future__ import annotations

from typing import Any

import torch
from _protocol import serve, versions
from PIL import Image
from transformers import AutoModel, AutoProcessor


def score(request: dict[str, Any]) -> dict[str, Any]:
    processor = AutoProcessor.from_pretrained(request["model"])
    model = AutoModel.from_pretrained(request["model"]).eval()
    scores = []
    for prompt, path in zip(request["prompts"], request["images"]):
        image_inputs = processor(images=[Image.open(path)], padding=True, truncation=True, max_length=77,
                                 return_tensors="pt")
        text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77,
                                return_tensors="pt")
        with torch.no_grad():
            image_embs = model.get_image_features(**image_inputs)
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs)
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            scores.append(float((model.logit_scale.exp() * (text_embs @ image_embs.T)[0])[0]))
    return {"scores": scores, "versions": versions({"transformers": "transformers", "torch": "torch"})}


if __name__ == "__main__":
    serve(score)
