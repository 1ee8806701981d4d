"""PromptEcho (arXiv 2604.12652): how well a frozen VLM "echoes" the prompt after seeing the image.

R = -CE(C | X, q): the image X and a fixed user query q go in as the user turn, the original prompt C is
teacher-forced as the assistant answer, and the reward is the mean (or summed) log-probability of C's
tokens. One forward per batch, no generation.

What exactly is scored (the authors' repository publishes no reward code, so these follow the paper's
formula and are recorded in ``settings()``):

- Chat layout: the model's own chat template with its default system turn, user content
  ``[image, query]``, then ``<|im_start|>assistant\\n`` followed by the caption.
- Loss positions: the caption's tokens only (tokenized on their own, exactly as they follow the
  assistant header), never the template, query, image or padding tokens. The closing ``<|im_end|>``
  is not counted by default (the paper scores C); ``count_end_token=True`` adds it.
- No truncation: a sequence longer than ``max_length`` (default: the model's
  ``max_position_embeddings``) is an error naming the sample, never a silently shortened caption.
- An empty caption has no tokens to score: not applicable (reason recorded), not a zero.

Batching uses right padding with the model's own M-RoPE positions, so a sample's score does not
depend on what else is in the batch. ``mean`` vs ``sum`` differ by the caption's token count, which is
constant within a GRPO group (same prompt) but not across prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from evalsuite import qwen_vl as qvl
from evalsuite.errors import ConfigError
from evalsuite.reward import Reward, Score
from evalsuite.sample import Sample

DEFAULT_QUERY = "Describe this image in detail."
REDUCTIONS = ("mean", "sum")
_LM_HEAD_CHUNK = 1024  # caption rows per lm_head call: bounds the [rows, vocab] logits in memory


def echo_reward(token_logprobs: Sequence[float] | torch.Tensor, reduction: str = "mean") -> float:
    """The rule: log-probabilities of the caption tokens -> reward (= minus token-mean or summed CE)."""
    lp = torch.as_tensor(token_logprobs, dtype=torch.float64)
    if lp.numel() == 0:
        raise ValueError("no caption tokens to score")
    if reduction == "mean":
        return float(lp.mean())
    if reduction == "sum":
        return float(lp.sum())
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


@dataclass
class EchoBatch:
    """Hand-built sequences of one batch: ``seqs[i] = prefix ids + target ids`` (no padding)."""

    seqs: list[list[int]]
    starts: list[int]  # index of the first target token in seqs[i]
    targets: list[list[int]]  # the token ids the loss is taken over
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    image_tokens: list[int]
    spans: list[list[tuple[int, int]]] | None = None  # caption characters per target token (fast tokenizer)


class PromptEcho(Reward):
    """Negative teacher-forced cross-entropy of the prompt as a VLM's description of the image."""

    name = "promptecho"
    default_model = "Qwen/Qwen2.5-VL-7B-Instruct"
    backend = "transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        query: str = DEFAULT_QUERY,
        reduction: str = "mean",
        count_end_token: bool = False,
        min_pixels: int = qvl.DEFAULT_MIN_PIXELS,
        max_pixels: int = qvl.DEFAULT_MAX_PIXELS,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if reduction not in REDUCTIONS:
            raise ConfigError(f"promptecho: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("promptecho: query must be a non-empty string")
        qvl.check_pixel_budget(min_pixels, max_pixels)
        if max_length is not None and max_length < 1:
            raise ConfigError(f"promptecho: max_length must be >= 1, got {max_length}")
        self.query = query
        self.reduction = reduction
        self.count_end_token = count_end_token
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_length = max_length

    def settings(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "reduction": self.reduction,
            "count_end_token": self.count_end_token,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "max_length": self.max_length,  # None: the model's max_position_embeddings
            "truncation": "never (over-long samples are errors)",
        }

    # -- model -----------------------------------------------------------------------------------
    def _load(self) -> None:
        from transformers import Qwen2_5_VLForConditionalGeneration

        self._processor = qvl.load_processor(self.model_id, self.revision)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.model_id, revision=self.revision, dtype=self.dtype
        )
        self._model = model.to(self.device).eval()
        tok = self._processor.tokenizer
        self._pad_id = qvl.pad_token_id(self._processor)
        self._end_id = tok.convert_tokens_to_ids("<|im_end|>")
        self._image_token_id = model.config.image_token_id
        limit = int(model.config.text_config.max_position_embeddings)
        self._max_length = limit if self.max_length is None else self.max_length
        user_turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.query}]}]
        # Same for every sample; only the number of image pads differs.
        self._prefix = self._processor.apply_chat_template(
            user_turn, tokenize=False, add_generation_prompt=True
        )

    def encode(self, samples: Sequence[Sample]) -> EchoBatch:
        """Token sequences and image tensors for a batch (public so tests can check what is scored)."""
        self.load()
        tok = self._processor.tokenizer
        images = [qvl.fit_image(s.image, self.min_pixels, self.max_pixels) for s in samples]
        pixel_values, grid, counts = qvl.image_inputs(self._processor, images)
        prefixes = tok([qvl.expand_image_pads(self._prefix, iter([n])) for n in counts],
                       add_special_tokens=False)["input_ids"]
        encoded = tok([s.prompt for s in samples], add_special_tokens=False,
                      return_offsets_mapping=tok.is_fast)
        captions = encoded["input_ids"]
        offsets = encoded.get("offset_mapping")
        seqs, starts, targets, spans = [], [], [], []
        for k, (s, prefix, caption) in enumerate(zip(samples, prefixes, captions)):
            target = list(caption) + ([self._end_id] if self.count_end_token and caption else [])
            if offsets is not None:  # the end token, when counted, sits after the caption's last character
                end = [(len(s.prompt), len(s.prompt))] * (len(target) - len(caption))
                spans.append([(int(a), int(b)) for a, b in offsets[k]] + end)
            seq = list(prefix) + target
            if len(seq) > self._max_length:
                raise ValueError(
                    f"sample {s.id!r}: {len(seq)} tokens (caption {len(caption)}) exceed max_length "
                    f"{self._max_length}; promptecho never truncates the caption"
                )
            seqs.append(seq)
            starts.append(len(prefix))
            targets.append(target)
        spans_or_none = None if offsets is None else spans
        return EchoBatch(seqs, starts, targets, pixel_values, grid, counts, spans_or_none)

    @torch.inference_mode()
    def _caption_logprobs(self, batch: EchoBatch) -> list[torch.Tensor]:
        """One forward over the padded batch; log p of each target token given everything before it."""
        dev = self.device
        ids, _ = qvl.right_pad(batch.seqs, self._pad_id)
        # No attention mask: with right padding, causal attention already keeps every real token away from
        # the pads after it (their outputs are never read), the pads come after all real tokens so M-RoPE
        # positions of real tokens are unchanged, and mask-free SDPA takes the fast causal kernel.
        out = self._model.model(
            input_ids=ids.to(dev),
            attention_mask=None,
            pixel_values=batch.pixel_values.to(dev, self.dtype),
            image_grid_thw=batch.image_grid_thw.to(dev),
            mm_token_type_ids=(ids == self._image_token_id).long().to(dev),
            use_cache=False,
        )
        hidden = out.last_hidden_state
        rows_b, rows_t, flat = [], [], []
        for i, (start, target) in enumerate(zip(batch.starts, batch.targets)):
            rows_b += [i] * len(target)
            rows_t += range(start - 1, start - 1 + len(target))  # position t predicts token t + 1
            flat += target
        picked = hidden[torch.tensor(rows_b, device=dev), torch.tensor(rows_t, device=dev)]
        flat_t = torch.tensor(flat, device=dev)
        logp = torch.empty(len(flat), dtype=torch.float32, device=dev)
        for a in range(0, len(flat), _LM_HEAD_CHUNK):
            logits = self._model.lm_head(picked[a : a + _LM_HEAD_CHUNK]).float()
            logp[a : a + _LM_HEAD_CHUNK] = torch.log_softmax(logits, -1).gather(
                1, flat_t[a : a + _LM_HEAD_CHUNK, None]
            )[:, 0]
        return list(logp.cpu().split([len(t) for t in batch.targets]))

    # -- reward ----------------------------------------------------------------------------------
    def _echo_record(self, batch: EchoBatch, k: int, logprobs: torch.Tensor) -> dict[str, Any]:
        """What the VLM was asked and how likely it found each caption token, for the report's card
        (display only: 4 decimals; the score above uses the unrounded values)."""
        if batch.spans is None:
            return {"query": self.query}
        tokens = [[a, b, round(float(v), 4)] for (a, b), v in zip(batch.spans[k], logprobs.tolist())]
        return {"query": self.query, "caption_tokens": tokens}

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        scored = [i for i, s in enumerate(samples) if s.prompt != ""]
        results: list[Score] = [
            Score.not_applicable("empty prompt: no caption tokens to score", n_caption_tokens=0)
        ] * len(samples)
        if not scored:
            return results
        batch = self.encode([samples[i] for i in scored])
        for k, (i, lp) in enumerate(zip(scored, self._caption_logprobs(batch))):
            n = len(lp)
            value = echo_reward(lp, self.reduction)
            results[i] = Score(value, {
                "n_caption_tokens": n,
                "ce": -float(lp.double().mean()),  # token-mean cross-entropy, whatever the reduction
                "n_image_tokens": batch.image_tokens[k],
                "n_sequence_tokens": len(batch.seqs[k]),
                "truncated": False,
                **self._echo_record(batch, k, lp),
            })
        return results
