"""The official HPSv2.1 (``hpsv2``) on our images: ``hpsv2.img_score.score(path, prompt, cp=...)`` with its
model built exactly as ``initialize_model`` builds it (vendored open_clip, ``light_augmentation=True``), only
the architecture name being the tiny one the checkpoint was written for.

The 1.2.0 wheel lacks the BPE vocabulary its vendored tokenizer opens at import: it is copied in from
open_clip (the same file) before ``hpsv2`` is imported.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import torch
from _protocol import serve, versions


def _add_missing_vocabulary(bpe: str) -> None:
    package = Path(importlib.util.find_spec("hpsv2").submodule_search_locations[0])
    target = package / "src" / "open_clip" / Path(bpe).name
    if not target.is_file():
        shutil.copy(bpe, target)


def score(request: dict[str, Any]) -> dict[str, Any]:
    _add_missing_vocabulary(request["bpe"])
    from hpsv2 import img_score
    from hpsv2.src import open_clip as hps_open_clip

    hps_open_clip.add_model_config(request["arch_config"])
    arch = Path(request["arch_config"]).stem
    model, _, preprocess_val = hps_open_clip.create_model_and_transforms(
        arch, None, precision="amp", device="cpu", jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False,
    )
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)
    torch.manual_seed(0)
    scores = [float(img_score.score(path, prompt, cp=request["checkpoint"], hps_version="v2.1")[0])
              for prompt, path in zip(request["prompts"], request["images"])]
    return {"scores": scores, "versions": versions({"hpsv2": "hpsv2", "torch": "torch"})}


if __name__ == "__main__":
    serve(score)
