"""Copies of our tiny transformers-5 folders in the layout the official packages' transformers 4.x reads.

The same weights and tokenizer, only the file layout differs: what the hub's real folders look like in the
era the official code was written for. transformers 5 writes a processor's sub-configs into one
``processor_config.json`` (4.x reads ``preprocessor_config.json``), BPE merges as ``[a, b]`` pairs (tokenizers
< 0.20 reads ``"a b"`` strings), the chat template as ``chat_template.jinja`` (4.45 reads
``chat_template.json``), and Qwen2-VL's text settings nested under ``text_config`` with ``rope_parameters``
(4.45 reads them flat, with ``rope_scaling``; missing flat keys would silently become the 7B defaults).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["clip_folder_v4", "qwen2_vl_config_v4", "qwen2_vl_folder_v4"]


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _merges_as_strings(folder: Path) -> None:
    """tokenizers < 0.20 reads BPE merges as ``"a b"`` strings, newer ones write ``[a, b]``: same merges."""
    tok = _read(folder / "tokenizer.json")
    tok["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    _write(folder / "tokenizer.json", tok)


def _image_processor_file(folder: Path) -> dict[str, Any]:
    """``preprocessor_config.json`` from the nested ``processor_config.json`` (returned, then written)."""
    return dict(_read(folder / "processor_config.json")["image_processor"])


def clip_folder_v4(src: Path, dst: Path) -> Path:
    """A ``CLIPModel`` + processor folder as the hub's PickScore/laion folders have it."""
    shutil.copytree(src, dst)
    _write(dst / "preprocessor_config.json", _image_processor_file(dst))
    _merges_as_strings(dst)
    return dst


def qwen2_vl_config_v4(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers-5 ``Qwen2VLConfig`` dict in the flat layout of ``Qwen/Qwen2-VL-7B-Instruct``'s
    ``config.json`` (text settings at the top, ``rope_scaling: {type: mrope, mrope_section}``)."""
    text = dict(config["text_config"])
    rope = text.pop("rope_parameters")
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only plain M-RoPE has a 4.x spelling, got {rope}")
    for key in ("model_type", "layer_types", "dtype"):
        text.pop(key, None)
    vision = {k: v for k, v in config["vision_config"].items()
              if k not in ("rope_parameters", "model_type", "initializer_range")}
    out = {key: value for key, value in config.items()
           if key not in ("text_config", "vision_config", "dtype", "transformers_version")}
    out.update(text)
    out.update(rope_theta=rope["rope_theta"], rope_scaling={"type": "mrope",
                                                            "mrope_section": rope["mrope_section"]},
               vision_config=vision, torch_dtype=config.get("dtype", "float32"))
    return out


def qwen2_vl_folder_v4(src: Path, dst: Path) -> Path:
    """A Qwen2-VL model + processor folder written by transformers 5 (weights already under the 4.x key
    names: ``model.*``, ``visual.*``, ``lm_head.weight``) rewritten in the layout transformers 4.45 reads."""
    shutil.copytree(src, dst)
    _write(dst / "config.json", qwen2_vl_config_v4(_read(src / "config.json")))
    image = _image_processor_file(dst)
    size = image.pop("size")  # 4.45's Qwen2VLImageProcessor reads the pixel budget as min/max_pixels
    image.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    _write(dst / "preprocessor_config.json", image)
    (dst / "processor_config.json").unlink()
    template = (dst / "chat_template.jinja").read_text(encoding="utf-8")
    _write(dst / "chat_template.json", {"chat_template": template})
    (dst / "chat_template.jinja").unlink()
    tok_config = _read(dst / "tokenizer_config.json")
    tok_config["additional_special_tokens"] = tok_config.pop("extra_special_tokens", [])
    tok_config.pop("backend", None)
    tok_config["chat_template"] = template
    _write(dst / "tokenizer_config.json", tok_config)
    _merges_as_strings(dst)
    return dst
