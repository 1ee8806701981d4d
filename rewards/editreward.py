"""EditReward (TIGER-AI-Lab/EditReward): a Qwen2.5-VL reward model for instruction-guided image edits.

Scores (instruction = ``sample.prompt``, ``sample.source_image``, ``sample.image`` = the edited image).
What the released checkpoint and the official inferencer (``EditRewardInferencer``, config
``EditReward-Qwen2.5-7B-VL.yaml``: ``rm_head_type=ranknet_multi_head``, ``pooling_strategy=mean``,
``use_special_tokens``, ``reward_token=special``, ``output_dim=2``) do, and what this module reproduces:

- Checkpoint: a directory with ``model.safetensors`` (or ``model.pth``, possibly ``{"model": ...}``) holding
  the full state dict: the Qwen2.5-VL backbone with its vocabulary resized by one added special token
  ``<|Reward|>``, plus ``rm_heads.head_0`` / ``rm_heads.head_1``. Config and processor come from the base
  model (``Qwen/Qwen2.5-VL-7B-Instruct``), with ``<|Reward|>`` added to the tokenizer.
- Heads: MLPs on the final (normed) hidden state at the ``<|Reward|>`` token; default shape
  hidden -> 1024 -> ReLU -> 16 -> ReLU -> 2 (mean, log sigma), run in float32. The layer sizes are read
  from the checkpoint, so custom ``rm_head_kwargs`` checkpoints load too.
- Two prompts per pair: with ``ranknet_multi_head`` the inferencer ignores ``reward_dim`` (the README's
  "overall_detail") and always builds a "dim1" prompt (instruction following, fed to head 0) and a
  "dim2" prompt (visual quality, head 1). Each is a user turn [source image, edited image, template text
  + the rating suffix with ``<|Reward|>``] under the model's chat template with the generation prompt.
- Fusion (``pooling_strategy``): "mean" of the two heads' [mean, log sigma] (official config); "min" and
  "sum" as in the official code. The score is the fused mean (``rewards[i][0]`` in the official README).
- Images: qwen-vl-utils resizing with min_pixels = max_pixels = 256*28*28 for both images (~448x448,
  256 tokens each), whatever the input size.
- Positions: the official forward passes ``inputs_embeds`` without ``image_grid_thw`` to the backbone,
  so transformers falls back to plain 1-D positions (``cumsum(attention_mask) - 1``) for every token,
  image tokens included; the checkpoint was trained that way, so we do the same (not M-RoPE).

Differences from the official inferencer: in-memory images instead of paths, and one forward per batch for
both prompts (2B sequences, right padded, vision tower run once per image) instead of one call per pair.

Hub ids: ``default_model`` is ``TIGER-Lab/EditReward-Qwen2.5-VL-7B``, the id found pinned (with a revision)
in public code that loads it; one third-party guide spells it ``TIGER-Lab/EditReward-Qwen2.5-7B-VL``. Its
file names were not verifiable offline, hence the ``model.safetensors`` then ``model.pth`` fallback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from evalsuite import qwen_vl as qvl
from evalsuite.errors import ConfigError
from evalsuite.qwen_vl import RATING_SUFFIX
from evalsuite.qwen_vl import REWARD_TOKEN as REWARD_TOKEN  # re-exported: the tiny writer's
from evalsuite.reward import Score
from evalsuite.rewards.qwen_vl_reward import OFFICIAL_PIXELS, QwenVLRewardModel
from evalsuite.sample import Sample

EDITREWARD_PIXELS = OFFICIAL_PIXELS  # the official min_pixels = max_pixels
POOLINGS = ("mean", "min", "sum")
BASE_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
CHECKPOINT_FILES = ("model.safetensors", "model.pth")

# The two rating prompts, verbatim from the official EditReward/dataset/prompts.py
# (INSTRUCTION_EDIT_FOLLOWING, INSTRUCTION_EDIT_QUALITY) and data_collator_qwen_edit.py
# (prompt_with_special_token): the released checkpoint was trained on exactly this text, so it is part of
# the model's input format. Lines keep the original trailing double spaces (Markdown line breaks).
_FOLLOWING_LINES = (
    "",
    "You are tasked with evaluating an edited image **in comparison with the original source image** "
    "based on **Instruction Following & Semantic Fidelity**, and assigning a score from 1 to 4, with "
    "1 being the worst and 4 being the best.  ",
    "This dimension focuses on how accurately, completely, and exclusively the model executed the "
    "given text instruction.",
    "",
    "**Inputs Provided:**  ",
    "- Source Image (before editing)  ",
    "- Edited Image (after applying the instruction)  ",
    "- Text Instruction  ",
    "",
    "**Sub-Dimensions to Evaluate:**",
    "",
    "- **Semantic Accuracy:**  ",
    "  Assess whether the edited content accurately captures the semantics of the instruction. The "
    "edited result should precisely match the intended meaning. For example, if the instruction is "
    "\"replace apples with oranges,\" the object must clearly be oranges, not other fruits.",
    "",
    "- **Completeness of Editing:**  ",
    "  Check whether **all parts** of the instruction are fully executed. For multi-step edits "
    "(e.g., \"replace a red car with a blue bicycle\"), both the color change and the object "
    "replacement must be done without omissions.",
    "",
    "- **Exclusivity of Edit (No Over-Editing):**  ",
    "  Ensure that only the requested parts are changed. The rest of the image (as seen in the "
    "source) should remain unaltered. For example, if the instruction only involves replacing an "
    "object, the background, lighting, and unrelated objects should not be unnecessarily modified.",
    "",
    "**Scoring Criteria:**",
    "- **4 (Very Good):** Perfectly accurate, complete, and exclusive execution of the instruction.  ",
    "- **3 (Relatively Good):** Largely correct, but with minor omissions or slight over-editing.  ",
    "- **2 (Relatively Poor):** Major misinterpretation, incomplete edits, or noticeable unintended "
    "changes.  ",
    "- **1 (Very Poor):** Instruction ignored or completely wrong execution.",
    "",
    "Text instruction - {text_prompt}",
    "",
)
_QUALITY_LINES = (
    "",
    "You are tasked with evaluating an edited image **in comparison with the original source image** "
    "based on **Visual Quality & Realism**, and assigning a score from 1 to 4, with 1 being the "
    "worst and 4 being the best.  ",
    "This dimension focuses on how realistic, artifact-free, and aesthetically appealing the edited "
    "image is, while remaining consistent with the source image.",
    "",
    "**Inputs Provided:**  ",
    "- Source Image (before editing)  ",
    "- Edited Image (after applying the instruction)  ",
    "- Text Instruction  ",
    "",
    "**Sub-Dimensions to Evaluate:**",
    "",
    "- **Plausibility & Physical Consistency:**  ",
    "  Check whether the edit aligns with the laws of physics and the scene context. Lighting, "
    "shadows, reflections, perspective, size, and interactions with the environment should all "
    "appear natural compared to the source image.",
    "",
    "- **Artifact-Free Quality:**  ",
    "  Look for technical flaws such as blur, distortions, pixel misalignment, unnatural textures, "
    "or seams around edited regions. High-quality results should be free from such visible artifacts.",
    "",
    "- **Aesthetic Quality:**  ",
    "  Evaluate the overall harmony and visual appeal. The image should look natural, balanced, and "
    "pleasant. Colors, composition, and atmosphere should enhance the image rather than degrade it.",
    "",
    "**Scoring Criteria:**",
    "- **4 (Very Good):** Perfectly realistic, artifact-free, seamless, and aesthetically pleasing.  ",
    "- **3 (Relatively Good):** Mostly realistic and clean, with only minor flaws that do not "
    "significantly distract.  ",
    "- **2 (Relatively Poor):** Noticeable physical inconsistencies or visible artifacts that make "
    "the edit unnatural.  ",
    "- **1 (Very Poor):** Severe artifacts, incoherent composition, or visually unusable result.",
    "",
    "Text instruction - {text_prompt}",
    "",
)
EDIT_FOLLOWING_TEMPLATE = "\n".join(_FOLLOWING_LINES)  # "dim1" -> head 0
EDIT_QUALITY_TEMPLATE = "\n".join(_QUALITY_LINES)  # "dim2" -> head 1
TEMPLATES = (EDIT_FOLLOWING_TEMPLATE, EDIT_QUALITY_TEMPLATE)


def rating_text(template: str, instruction: str) -> str:
    """The user text of one rating prompt (template filled with the instruction, plus the suffix)."""
    return template.format(text_prompt=instruction) + RATING_SUFFIX


def fuse_heads(per_head: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """The rule: ``[heads, batch, (mean, log sigma)]`` -> ``[batch, 2]``, as the official multi-head forward.

    "mean"/"min" act elementwise over heads; "sum" treats each head as a Gaussian (mean, log sigma) and
    returns the sum of means with the log of the summed-variance sigma.
    """
    if pooling == "mean":
        return per_head.mean(0)
    if pooling == "min":
        return per_head.min(0).values
    if pooling == "sum":
        mean = per_head[:, :, 0].sum(0)
        sigma = torch.sqrt((torch.exp(per_head[:, :, 1]) ** 2).sum(0))
        return torch.stack([mean, torch.log(sigma)], dim=-1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def heads_from_state_dict(state: Mapping[str, torch.Tensor]) -> list[qvl.MLPHead]:
    """Rebuild the official heads from ``{"head_i.<layer>.weight"/".bias": tensor}`` (sizes from weights)."""
    layers: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        m = re.fullmatch(r"head_(\d+)\.(\d+)\.(weight|bias)", key)
        if m is None:
            raise ConfigError(f"editreward: unexpected reward-head key rm_heads.{key}")
        layers.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = value
    return [qvl.mlp_head([layers[h][idx] for idx in sorted(layers[h])]) for h in sorted(layers)]


class EditReward(QwenVLRewardModel):
    """Human-preference reward for (instruction, source image, edited image); higher is better."""

    name = "editreward"
    default_model = "TIGER-Lab/EditReward-Qwen2.5-VL-7B"
    needs_source_image = True
    base_model_id = BASE_MODEL
    backbone_class = "Qwen2_5_VLModel"
    checkpoint_files = CHECKPOINT_FILES
    head_prefix = "rm_heads."

    def __init__(self, model: str | None = None, *, pooling: str = "mean", **kwargs: Any) -> None:
        """``base_model``, ``base_revision``, ``min_pixels``, ``max_pixels``: see ``QwenVLRewardModel``."""
        super().__init__(model, **kwargs)
        if pooling not in POOLINGS:
            raise ConfigError(f"editreward: pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling

    def head_settings(self) -> dict[str, Any]:
        return {
            "rm_head_type": "ranknet_multi_head",
            "prompts": ["dim1 (instruction following) -> head_0", "dim2 (visual quality) -> head_1"],
            "pooling": self.pooling,
        }

    def build_heads(self, head_state: Mapping[str, torch.Tensor]) -> list[nn.Module]:
        heads = heads_from_state_dict(head_state)
        if len(heads) != 2:
            raise ConfigError(f"editreward: expected 2 reward heads (ranknet_multi_head), found {len(heads)}")
        return heads

    def _sequences(self, samples: Sequence[Sample]) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
        """2B id lists (all dim1 prompts, then all dim2 prompts) and the 2B images' tensors (src, edit)."""
        images = []
        for s in samples:
            images.append(qvl.fit_image(s.source_image, self.min_pixels, self.max_pixels))
            images.append(qvl.fit_image(s.image, self.min_pixels, self.max_pixels))
        pixel_values, grid, counts = qvl.image_inputs(self._processor, images)
        texts = []
        for template in TEMPLATES:
            for k, s in enumerate(samples):
                content = [{"type": "image"}, {"type": "image"},
                           {"type": "text", "text": rating_text(template, s.prompt)}]
                turn = [{"role": "user", "content": content}]
                text = self._processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
                texts.append(qvl.expand_image_pads(text, iter(counts[2 * k : 2 * k + 2])))
        seqs = self._processor.tokenizer(texts, add_special_tokens=False)["input_ids"]
        sample_ids = [s.id for s in samples] * len(TEMPLATES)
        qvl.check_reward_sequences(seqs, sample_ids, self._reward_id, self._max_positions, "instruction")
        return seqs, pixel_values, grid

    @torch.inference_mode()
    def head_outputs(self, samples: Sequence[Sample]) -> torch.Tensor:
        """``[2 heads, B, (mean, log sigma)]`` for a batch: one backbone forward over 2B sequences."""
        self.load()
        n = len(samples)
        seqs, pixel_values, grid = self._sequences(samples)
        # Both prompts of a pair show the same two images: their features are scattered twice.
        pooled = qvl.hidden_at_token(self._backbone, seqs, self._pad_id, pixel_values, grid, self._reward_id,
                                     vision_repeats=2)
        return torch.stack([self._heads[0](pooled[:n]), self._heads[1](pooled[n:])]).cpu()

    # -- reward ----------------------------------------------------------------------------------
    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        per_head = self.head_outputs(samples)
        fused = fuse_heads(per_head, self.pooling)
        return [
            Score(float(fused[i, 0]), {
                "following_mean": float(per_head[0, i, 0]),
                "quality_mean": float(per_head[1, i, 0]),
                "following_log_sigma": float(per_head[0, i, 1]),
                "quality_log_sigma": float(per_head[1, i, 1]),
                "log_sigma": float(fused[i, 1]),
            })
            for i in range(len(samples))
        ]
