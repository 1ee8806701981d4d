"""BLIP-VQA, T2I-CompBench's attribute-binding scorer, on transformers' ``BlipForQuestionAnswering``.

What the official ``BLIPvqa_eval`` does per image (config ``inference: vqa_prob``, checkpoint
``model_base_vqa_capfilt_large.pth`` = HF ``Salesforce/blip-vqa-base``):

- questions: the prompt's spaCy noun chunks (at most 8), each asked as ``"{chunk}?"`` after BLIP's
  ``pre_question``;
- image: resized to 480×480 (bicubic, PIL), OpenAI-CLIP mean/std; the ViT runs on the 30×30 patch grid.
  Caveat: the official run uses the checkpoint's own 480-px position embeddings, while HF's
  ``blip-vqa-base`` was converted at 384 px (transformers' ``convert_blip_original_pytorch_to_hf.py``
  builds ``blip_vqa(image_size=384)``, which resamples them to 24×24). Here they are bicubic-resampled
  back to 30×30 (``interpolate_pos_encoding=True``), so P(yes) is close to, not bit-equal with, the
  official ``.pth`` (``image_size=None`` runs at HF's 384 instead);
- question tokens: BERT uncased, at most 35 tokens, the first token replaced by BLIP's ``[ENC]`` (the
  official code pads to the longest question of its batch, with a mask: padding changes nothing there);
- answer: ONE decoder step from ``[DEC]``; ``P(yes) = p["yes"] / (p["yes"] + p["no"])`` with ``p`` the
  softmax over the whole vocabulary of that first-token distribution (``BLIP_VQA.vqa_prob``, not the
  ``rank`` inference over an answer list);
- image score: the product of P(yes) over the questions (see
  :func:`evalsuite.rewards.compbench_rules.attribute_score` for the official 4-decimal rounding).

Batching: one vision forward per batch (all images at one size); the (image, question) pairs go through the
text encoder and one decoder step grouped by question length, unpadded (see :meth:`BlipVQA.p_yes` for the
transformers bug that rules padding out). The per-question P(yes) values are in each sample's details.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.nlp import parse, spacy_nlp
from evalsuite.reward import Reward, Score
from evalsuite.rewards.compbench_rules import BLIP_MAX_QUESTIONS, attribute_score, blip_questions
from evalsuite.sample import Sample

__all__ = ["BlipVQA", "yes_probability"]

QUESTION_MAX_TOKENS = 35  # BLIP_VQA.forward: truncation=True, max_length=35
OFFICIAL_IMAGE_SIZE = 480  # BLIPvqa_eval/configs/vqa.yaml


def yes_probability(first_token_logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """Pure rule (``vqa_prob``): softmax over the vocabulary, then P(yes) / (P(yes) + P(no)), in float32."""
    prob = torch.softmax(first_token_logits.float(), dim=-1)
    p_yes, p_no = prob[:, yes_id], prob[:, no_id]
    return p_yes / (p_yes + p_no)


class BlipVQA(Reward):
    """Product over the prompt's noun phrases of BLIP's P("yes") to ``"{noun phrase}?"``.

    ``image_size``: side of the square input (official 480; None = the checkpoint's own size, 384 for
    blip-vqa-base). ``max_questions``: noun chunks asked (official 8). ``official_rounding``: 4-decimal
    rounding of each answer and of the product, as the official JSON round trip does (off by default: a
    reward for training wants the unrounded value). ``enc_token``: replace the question's first token by
    BLIP's ``[ENC]`` as the original BLIP does (transformers' own VQA code keeps ``[CLS]``).
    A prompt without noun chunks asks nothing and scores 1.0, as in the official code (``n_questions`` 0).
    """

    name = "blip_vqa"
    default_model = "Salesforce/blip-vqa-base"
    backend = "transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        image_size: int | None = OFFICIAL_IMAGE_SIZE,
        max_questions: int = BLIP_MAX_QUESTIONS,
        official_rounding: bool = False,
        enc_token: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if image_size is not None and image_size < 1:
            raise ConfigError(f"blip_vqa: image_size must be positive, got {image_size}")
        if max_questions < 1:
            raise ConfigError(f"blip_vqa: max_questions must be >= 1, got {max_questions}")
        self.image_size = image_size
        self.max_questions = max_questions
        self.official_rounding = official_rounding
        self.enc_token = enc_token

    def settings(self) -> dict[str, Any]:
        return {
            "inference": "vqa_prob: softmax first answer token, P(yes)/(P(yes)+P(no))",
            "questions": f"spaCy noun chunks (first {self.max_questions}) + '?'",
            "image_size": self.image_size,
            "question_start": "[ENC]" if self.enc_token else "[CLS]",
            "official_rounding": self.official_rounding,
        }

    # -- model -------------------------------------------------------------------------------------
    def _load(self) -> None:
        from transformers import BlipForQuestionAnswering, BlipProcessor

        self.nlp = spacy_nlp()
        self.model = (
            BlipForQuestionAnswering.from_pretrained(self.model_id, revision=self.revision, dtype=self.dtype)
            .to(self.device)
            .eval()
        )
        processor = BlipProcessor.from_pretrained(self.model_id, revision=self.revision)
        self.tokenizer = processor.tokenizer
        self.mean = np.asarray(processor.image_processor.image_mean, dtype=np.float32)
        self.std = np.asarray(processor.image_processor.image_std, dtype=np.float32)
        text_cfg = self.model.config.text_config
        self.native_size = int(self.model.config.vision_config.image_size)
        self.side = self.image_size or self.native_size
        self.bos_id = int(text_cfg.bos_token_id)
        self.yes_id, self.no_id = (self._single_token(w) for w in ("yes", "no"))
        self.enc_id = self._enc_id(int(text_cfg.vocab_size)) if self.enc_token else None

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ConfigError(f"blip_vqa: {word!r} is not one token of {self.model_id}'s tokenizer ({ids})")
        return int(ids[0])

    def _enc_id(self, vocab_size: int) -> int:
        """BLIP's ``[ENC]``: the tokenizer's, else the id BLIP's ``init_tokenizer`` gives it ([DEC] + 1)."""
        enc = self.tokenizer.convert_tokens_to_ids("[ENC]")
        if isinstance(enc, int) and enc != self.tokenizer.unk_token_id:
            return enc
        if self.bos_id + 1 < vocab_size:
            return self.bos_id + 1
        raise ConfigError(f"blip_vqa: {self.model_id} has no [ENC] token; pass enc_token=False")

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Official test transform: PIL bicubic resize to side×side, [0, 1], normalise."""
        arrays = []
        for img in images:
            x = (
                np.asarray(img.resize((self.side, self.side), Image.Resampling.BICUBIC), dtype=np.float32)
                / 255.0
            )
            arrays.append(((x - self.mean) / self.std).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(arrays))

    @torch.inference_mode()
    def p_yes(self, images: Sequence[Image.Image], questions: Sequence[Sequence[str]]) -> list[list[float]]:
        """P(yes) for every question of every image.

        One vision forward for the batch; then one encoder + one decoder step per question *length*:
        questions are never padded, because transformers 5's BLIP text model drops the cross-attention
        mask (``BlipTextAttention`` does not hand ``encoder_attention_mask`` on), so the decoder would
        attend to a padded question's pad positions and a question's answer would depend on its batch.
        """
        pairs = [(k, q) for k, qs in enumerate(questions) for q in qs]
        if not pairs:
            return [[] for _ in images]
        vision = self.model.vision_model(
            pixel_values=self.pixels(images).to(self.device, self.dtype),
            interpolate_pos_encoding=self.side != self.native_size,
        )
        image_embeds = vision.last_hidden_state
        ids = self.tokenizer([q for _, q in pairs], truncation=True, max_length=QUESTION_MAX_TOKENS).input_ids
        by_length: dict[int, list[int]] = {}
        for n, row in enumerate(ids):
            by_length.setdefault(len(row), []).append(n)
        probs: list[float] = [math.nan] * len(pairs)
        for members in by_length.values():
            input_ids = torch.tensor([ids[n] for n in members], dtype=torch.long, device=self.device)
            if self.enc_id is not None:
                input_ids[:, 0] = self.enc_id
            rows = torch.tensor([pairs[n][0] for n in members], device=image_embeds.device)
            embeds = image_embeds.index_select(0, rows)
            question = self.model.text_encoder(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                encoder_hidden_states=embeds,
                encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long, device=self.device),
            ).last_hidden_state
            start = torch.full((len(members), 1), self.bos_id, dtype=torch.long, device=self.device)
            logits = self.model.text_decoder(
                input_ids=start,
                encoder_hidden_states=question,
                encoder_attention_mask=torch.ones_like(input_ids),
            ).logits[:, 0, :]
            for n, p in zip(members, yes_probability(logits, self.yes_id, self.no_id).tolist()):
                probs[n] = p
        out: list[list[float]] = [[] for _ in images]
        for (k, _), p in zip(pairs, probs):
            out[k].append(p)
        return out

    # -- reward ------------------------------------------------------------------------------------
    def questions(self, prompt: str) -> tuple[list[str], list[str]]:
        """(noun chunks, questions) of one prompt."""
        chunks = list(parse(self.nlp, prompt).noun_chunks)
        return chunks, blip_questions(chunks, self.max_questions)

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        asked = [self.questions(s.prompt) for s in samples]
        answers = self.p_yes([s.image for s in samples], [qs for _, qs in asked])
        out = []
        for (chunks, qs), ps in zip(asked, answers):
            value = attribute_score(ps, self.official_rounding)
            out.append(
                Score(
                    value,
                    {"questions": qs, "p_yes": ps, "n_questions": len(qs), "n_noun_chunks": len(chunks)},
                )
            )
        return out
