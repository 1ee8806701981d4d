"""HPSv3 (MizzenAI/HPSv3, ICCV 2025): a Qwen2-VL-7B human-preference model with an uncertainty head.

What the released checkpoint and the official inferencer (PyPI ``hpsv3`` 1.0.0: ``HPSv3RewardInferencer``;
``Qwen2VLRewardModelBT`` in ``hpsv3/model/qwen2vl_trainer.py``; config ``HPSv3_7B.yaml``:
``rm_head_type=ranknet``, ``use_special_tokens``, ``reward_token=special``, ``output_dim=2``,
``loss_type=uncertainty``) do, and what this module reproduces:

- Checkpoint: ``HPSv3.safetensors`` (hub ``MizzenAI/HPSv3``), the full state dict loaded with ``strict=True``:
  the Qwen2-VL backbone under transformers 4.45 names (``visual.*``, ``model.*``, ``lm_head.weight``) with
  the vocabulary resized to the tokenizer plus one added special token ``<|Reward|>``, and ``rm_head.*``.
  Config and processor come from the base model ``Qwen/Qwen2-VL-7B-Instruct`` (plus ``<|Reward|>``).
- Head: an MLP on the final (normed) hidden state at ``<|Reward|>``, run in float32; default ``ranknet``
  shape hidden -> 1024 -> ReLU -> 16 -> ReLU -> 2 (keys ``rm_head.{0,3,5}``); ``rm_head_kwargs`` checkpoints
  (``rm_head.0``, ``rm_head.layer_k.0``, ``rm_head.output_layer``) and the plain ``default`` head
  (``rm_head.weight``) load too, sizes read from the weights.
- Output: ``[mu, log sigma]`` (the uncertainty loss takes ``sigma = exp(out[1])``). The score is ``mu``, as
  the README's ``reward[0].item()``; ``sigma`` and ``log_sigma`` are in the details.
- Prompt: one user turn [image, ``INSTRUCTION`` filled with the prompt + the rating suffix with
  ``<|Reward|>``] under the chat template with the generation prompt (``data_collator_qwen.py``).
- Image: ``fetch_image`` with min_pixels = max_pixels = 256*28*28 (~448x448, 256 tokens), whatever the
  input size: ``smart_resize`` to multiples of 28, PIL bicubic.
- Positions: the official forward passes ``inputs_embeds`` without ``image_grid_thw`` to the text model,
  which then uses ``arange`` positions for every token, image tokens included (not M-RoPE): we do the same.

Differences from the official inferencer: in-memory images; RGBA is composited on white (the project's rule
for every reward; the official ``convert("RGB")`` drops alpha); one forward per batch with the vision tower
run once (the official code also batches, right padded with an attention mask: same numbers for every real
token).
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

HPSV3_PIXELS = OFFICIAL_PIXELS  # the inferencer's min_pixels = max_pixels (prepare_batch)
BASE_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
CHECKPOINT_FILES = ("HPSv3.safetensors",)

# INSTRUCTION, verbatim from hpsv3/dataset/data_collator_qwen.py (the checkpoint was trained on this text, so
# it is part of the model's input). Lines keep the original trailing spaces; "a overall" is the original's.
_INSTRUCTION_LINES = (
    "",
    "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and "
    "give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with "
    "0 being the worst and 10 being the best. ",
    "",
    "**Visual Quality:**  ",
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be "
    "considered:",
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, "
    "such as abnormal body structures or nonsensical environmental setups.",
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and "
    "easy to interpret, with no blurring or indistinct areas.",
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other "
    "visual elements (e.g., hair, clothing, shadows).",
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color "
    "scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should "
    "convey a sense of harmony and balance.",
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, "
    "violent, or adult material. If such content is present, the image quality and satisfaction score "
    "should be the lowest possible. ",
    "",
    "**Text Alignment:**  ",
    "Assess how well the image matches the textual prompt across the following sub-dimensions:",
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, "
    "object) align with the textual description. The subject should match the description in terms of "
    "number, appearance, and behavior.",
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate "
    "how well the image adheres to this style.",
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in "
    "the image logically fit the scenario described in the prompt. The environment should support and "
    "enhance the subject without contradictions.",
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, "
    "clothing, accessories, expressions, actions) are faithfully represented in the image. Minor "
    "deviations may be acceptable, but critical attributes should be preserved.",
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are "
    "captured in the image. The generated content should not introduce elements that conflict with or "
    "distort the original description.",
    "Textual prompt - {text_prompt}",
    "",
    "",
    "",
)
INSTRUCTION = "\n".join(_INSTRUCTION_LINES)


def rating_text(prompt: str) -> str:
    """The user text of the rating prompt: the instruction filled with the prompt, plus the suffix."""
    return INSTRUCTION.format(text_prompt=prompt) + RATING_SUFFIX


def mean_and_sigma(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule: head output ``[..., (mu, log sigma)]`` -> (score = mu, sigma = exp(log sigma))."""
    return out[..., 0], torch.exp(out[..., 1])


def _layer_order(path: str) -> tuple[int, int]:
    """Where a head Linear sits: ``""`` (the default single Linear), ``N`` (the ranknet Sequential),
    ``layer_K.0`` (hidden layers added from ``rm_head_kwargs``), ``output_layer`` (their last Linear)."""
    if path == "" or path.isdigit():
        return 0, int(path or 0)
    m = re.fullmatch(r"layer_(\d+)\.0", path)
    if m is not None:
        return 1, int(m[1])
    if path == "output_layer":
        return 2, 0
    raise ConfigError(f"hpsv3: unexpected reward-head key rm_head.{path}")


def head_from_state_dict(state: Mapping[str, torch.Tensor]) -> qvl.MLPHead:
    """The official ``rm_head`` from ``{"<layer>.weight"/".bias": tensor}`` (keys without ``rm_head.``)."""
    layers: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        path, _, kind = key.rpartition(".")
        if kind not in ("weight", "bias"):
            raise ConfigError(f"hpsv3: unexpected reward-head key rm_head.{key}")
        layers.setdefault(_layer_order(path), {})[kind] = value
    if not layers:
        raise ConfigError("hpsv3: the checkpoint has no rm_head.* weights (not an HPSv3 reward model?)")
    head = qvl.mlp_head([layers[k] for k in sorted(layers)])
    if head.linears[-1].out_features != 2:
        raise ConfigError(f"hpsv3: the head must output (mu, log sigma), got {head.linears[-1].out_features}")
    return head


class HPSv3(QwenVLRewardModel):
    """Human preference score v3 for (prompt, image); higher is better, unbounded.

    ``base_model``, ``base_revision``, ``min_pixels``, ``max_pixels``: see ``QwenVLRewardModel``.
    """

    name = "hpsv3"
    default_model = "MizzenAI/HPSv3"
    base_model_id = BASE_MODEL
    backbone_class = "Qwen2VLModel"
    checkpoint_files = CHECKPOINT_FILES
    head_prefix = "rm_head."

    def head_settings(self) -> dict[str, Any]:
        return {"checkpoint_file": CHECKPOINT_FILES[0], "rm_head_type": "ranknet",
                "scale": "mu of the (mu, log sigma) head, unbounded; sigma in details"}

    def build_heads(self, head_state: Mapping[str, torch.Tensor]) -> list[nn.Module]:
        return [head_from_state_dict(head_state)]

    def _sequences(self, samples: Sequence[Sample]) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
        """One id list per sample (chat turn with its image pads expanded) and the batch's image tensors."""
        images = [qvl.fit_image(s.image, self.min_pixels, self.max_pixels) for s in samples]
        pixel_values, grid, counts = qvl.image_inputs(self._processor, images)
        texts = []
        for s, count in zip(samples, counts):
            turn = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": rating_text(s.prompt)}]}]
            text = self._processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
            texts.append(qvl.expand_image_pads(text, iter([count])))
        seqs = self._processor.tokenizer(texts, add_special_tokens=False)["input_ids"]
        sample_ids = [s.id for s in samples]
        qvl.check_reward_sequences(seqs, sample_ids, self._reward_id, self._max_positions, "prompt")
        return seqs, pixel_values, grid

    @torch.inference_mode()
    def head_outputs(self, samples: Sequence[Sample]) -> torch.Tensor:
        """``[B, (mu, log sigma)]`` for a batch: one backbone forward, the head in float32."""
        self.load()
        seqs, pixel_values, grid = self._sequences(samples)
        pooled = qvl.hidden_at_token(self._backbone, seqs, self._pad_id, pixel_values, grid, self._reward_id)
        return self._heads[0](pooled).cpu()

    # -- reward ----------------------------------------------------------------------------------
    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        out = self.head_outputs(samples)
        mu, sigma = mean_and_sigma(out)
        return [Score(float(mu[i]), {"sigma": float(sigma[i]), "log_sigma": float(out[i, 1])})
                for i in range(len(samples))]
