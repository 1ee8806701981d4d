"""The run manifest: everything needed to reproduce a number (ids, revisions, settings, versions)."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from evalsuite.errors import ConfigError
from evalsuite.store import atomic_write_json

MANIFEST = "manifest.json"

PACKAGES = (
    "evalsuite", "torch", "transformers", "diffusers", "accelerate", "peft", "open_clip_torch", "timm",
    "torchvision", "qwen-vl-utils", "rapidocr", "onnxruntime", "paddleocr", "mmdet", "mmcv", "trl",
    "numpy", "pillow", "pandas", "safetensors", "huggingface_hub", "spacy",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return env


def build_manifest(**sections: Any) -> dict[str, Any]:
    """Manifest with the given sections (benchmark, generator, scorers, sampler, seeds…) plus versions."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **sections,
        "packages": package_versions(),
        "environment": environment(),
    }


def check_or_write_manifest(out: Path, fingerprint: dict[str, Any], conflict: str, *, write: bool = True,
                            **sections: Any) -> None:
    """The resume guard: an output folder holds one fingerprint for life. A folder whose ``manifest.json``
    has another fingerprint raises ``ConfigError`` with ``conflict`` and the settings that differ (old → new);
    a new folder gets a manifest (if ``write``)."""
    from evalsuite.settings_diff import describe_changes, setting_changes

    path = Path(out) / MANIFEST
    if path.exists():
        expected = json.loads(json.dumps(fingerprint, default=str))
        changes = setting_changes(json.loads(path.read_text()).get("fingerprint"), expected)
        if changes:
            raise ConfigError(f"{conflict}; settings that differ from its {MANIFEST} (old → new): "
                              f"{describe_changes(changes)}")
        return
    if write:
        atomic_write_json(path, build_manifest(fingerprint=fingerprint, **sections))
