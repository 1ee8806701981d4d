"""HPSv3's ``HPSv3RewardInferencer`` (``hpsv3/inference.py``) on our images: the official config
``HPSv3_7B.yaml`` with the base model pointed at the tiny Qwen2-VL folder and the precision set to float32
(the release runs bfloat16; both sides here run float32, so the comparison is of the computation)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import hpsv3
import torch
from _protocol import serve, versions
from hpsv3.inference import _MODEL_CONFIG_PATH, HPSv3RewardInferencer
from omegaconf import OmegaConf


def score(request: dict[str, Any]) -> dict[str, Any]:
    config = OmegaConf.load(Path(_MODEL_CONFIG_PATH) / "HPSv3_7B.yaml")
    config.model_name_or_path = request["base"]
    config.bf16, config.torch_dtype = False, "float32"
    with tempfile.TemporaryDirectory() as tmp:
        config_path = str(Path(tmp) / "HPSv3_7B.yaml")
        OmegaConf.save(config, config_path)
        inferencer = HPSv3RewardInferencer(config_path, request["checkpoint"], device="cpu")
    with torch.no_grad():
        rewards = inferencer.reward(request["images"], request["prompts"])
    return {"scores": [float(r[0]) for r in rewards],  # [mu, log sigma]: the README takes mu
            "versions": versions({"hpsv3": "hpsv3", "transformers": "transformers", "torch": "torch"}),
            "package_file": hpsv3.__file__}


if __name__ == "__main__":
    serve(score)
