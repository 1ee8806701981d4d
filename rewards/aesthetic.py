"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor): Flow-GRPO's "aesthetic".

The official ``simple_inference.py``: OpenAI CLIP ViT-L/14 (``clip.load``) embeds the image, the embedding
is L2-normalised (a zero vector stays zero), and an MLP maps it to a score of roughly 1–10. The MLP is
``nn.Sequential(Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64),
Dropout(0.1), Linear(64, 16), Linear(16, 1))``: no activations at all (the ReLUs are commented out in the
official code; the "linearMSE" checkpoint was trained so), dropout only at train time. The checkpoint
``sac+logos+ava1-l14-linearMSE.pth`` is a plain state dict with keys ``layers.{0,2,4,6,7}.*``.

Backbone: open_clip ``ViT-L-14``/``openai`` (QuickGELU, see ``clip_models``), whose eval transform is
``clip.load``'s (shortest side to 224 bicubic, centre crop, OpenAI mean/std). Flow-GRPO and DDPO run the
same weights through transformers' ``CLIPModel`` + ``CLIPProcessor``, whose resize differs from
torchvision's by a pixel-level rounding; we follow the original predictor. The prompt is not used.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError
from evalsuite.reward import Reward, Score
from evalsuite.rewards.clip_models import CONFIG_FILE, encode_images, load_open_clip, resolve_checkpoint
from evalsuite.sample import Sample

__all__ = [
    "BACKBONE", "BACKBONE_DIR", "CHECKPOINT", "LINEAR_INDICES", "MLP_WIDTHS",
    "AestheticMLP", "LAIONAesthetic", "aesthetic_score",
]

CHECKPOINT = "sac+logos+ava1-l14-linearMSE.pth"
BACKBONE = ("ViT-L-14", "openai")  # clip.load("ViT-L/14") in open_clip's naming
BACKBONE_DIR = "clip"  # a local folder may carry its backbone here (the tiny model's layout)
MLP_WIDTHS = (768, 1024, 128, 64, 16, 1)
LINEAR_INDICES = (0, 2, 4, 6, 7)  # positions of the Linear layers in the official nn.Sequential
_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}  # position -> p; identity in eval mode, kept for the key layout


class AestheticMLP(torch.nn.Module):
    """The official MLP: ``self.layers`` at the same positions, hence the official state-dict keys."""

    def __init__(self, input_size: int = MLP_WIDTHS[0]) -> None:
        super().__init__()
        widths = (input_size, *MLP_WIDTHS[1:])
        linears = iter(torch.nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.layers = torch.nn.Sequential(
            *(torch.nn.Dropout(_DROPOUTS[i]) if i in _DROPOUTS else next(linears) for i in range(8))
        )

    @property
    def input_size(self) -> int:
        return self.layers[0].in_features

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def aesthetic_score(image_embeds: torch.Tensor, mlp: torch.nn.Module) -> torch.Tensor:
    """Pure rule: ``mlp(embed / ||embed||)`` per image in float32 (a zero embedding stays zero)."""
    x = image_embeds.float()
    norms = x.norm(dim=-1, keepdim=True)
    unit = x / torch.where(norms == 0, torch.ones_like(norms), norms)
    return mlp(unit).squeeze(-1)


class LAIONAesthetic(Reward):
    """LAION aesthetic predictor v2 over an open_clip CLIP ViT-L/14; one image forward per batch.

    ``model``: the hub repo holding ``checkpoint`` (default ``camenduru/improved-aesthetic-predictor``, a
    mirror of the official GitHub file; LAION publishes it on GitHub only), a folder holding it, or the
    file. ``clip``: the backbone, an open_clip architecture (with ``clip_pretrained``, default the OpenAI
    weights) or a ``local-dir`` folder; by default a model folder's ``clip/`` when present, else ViT-L-14.
    The MLP always runs in float32, as the official code's ``.type(torch.cuda.FloatTensor)``.
    """

    name = "aesthetic"
    default_model = "camenduru/improved-aesthetic-predictor"
    backend = "open_clip"

    def __init__(
        self,
        model: str | None = None,
        *,
        checkpoint: str = CHECKPOINT,
        clip: str | None = None,
        clip_pretrained: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.checkpoint = checkpoint
        bundled = Path(str(self.model_id)).expanduser() / BACKBONE_DIR
        if clip is None and (bundled / CONFIG_FILE).is_file():
            clip = str(bundled)
        self.clip = clip or BACKBONE[0]
        folder_backbone = (Path(self.clip) / CONFIG_FILE).is_file()
        if folder_backbone and clip_pretrained is not None:
            raise ConfigError("aesthetic: clip_pretrained applies to an architecture name, not a folder")
        self.clip_pretrained = None if folder_backbone else (clip_pretrained or BACKBONE[1])

    def settings(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "clip": self.clip,
            "clip_pretrained": self.clip_pretrained,
            "scale": "MLP(normalized CLIP image embedding), about 1-10 (unbounded)",
        }

    def _load(self) -> None:
        file = resolve_checkpoint(str(self.model_id), self.checkpoint, self.revision)
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated file, pickled code: name the file
            raise ConfigError(f"aesthetic: cannot load {file}: {type(e).__name__}: {e}") from e
        if not isinstance(state, dict) or "layers.0.weight" not in state:
            raise ConfigError(f"aesthetic: {file} is not the official MLP state dict (no layers.0.weight)")
        mlp = AestheticMLP(int(state["layers.0.weight"].shape[1])).eval()
        try:
            mlp.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"aesthetic: {file} does not fit the official MLP: {e}") from e
        self.mlp = mlp.to(self.device).requires_grad_(False)
        self.model, self.preprocess, _ = load_open_clip(
            self.clip, self.clip_pretrained, device=self.device, dtype=self.dtype
        )
        width = getattr(self.model.visual, "output_dim", None)
        if width != mlp.input_size:
            raise ConfigError(
                f"aesthetic: {self.clip} embeds to {width} dims, the MLP in {file} takes {mlp.input_size}"
            )

    def _embed(self, samples: Sequence[Sample]) -> torch.Tensor:
        return encode_images(self.model, torch.stack([self.preprocess(s.image) for s in samples]))

    @torch.inference_mode()
    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        embeds = self._embed(samples)
        values = aesthetic_score(embeds, self.mlp)
        return [Score(v) for v in values.tolist()]
