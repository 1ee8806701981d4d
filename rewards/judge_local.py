"""Qwen2.5-VL as a local pairwise judge (transformers): greedy JSON answers or constrained label scoring."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.rewards.judge_protocol import (
    JUDGE_PROMPT,
    LABEL_PROMPT_SUFFIX,
    PROMPT_SHA,
    RAW_KEEP,
    AnswerParseError,
    parse_answer,
)
from evalsuite.scorer import PREFERENCES, Judgement, PairJudge

LOCAL_MODES = ("generate", "score")


class LocalQwenJudge(PairJudge):
    """Qwen2.5-VL (default ``Qwen/Qwen2.5-VL-7B-Instruct``) as the judge, through transformers.

    Same chat layout as the API judge (instructions with the caption, "Image A:", image, "Image B:",
    image), in the model's own chat template. ``generate``: greedy decoding of up to ``max_new_tokens``
    (with the model's shipped ``repetition_penalty`` 1.05 by default), parsed like an API answer; a
    greedy answer does not change on retry, so an unusable one is failed at once. ``score``: one batched
    forward over the three full answers ``image_a<|im_end|>``, ``image_b<|im_end|>``, ``tie<|im_end|>``
    (teacher-forced after the assistant header) and the label with the highest summed log-probability
    wins; the log-probabilities are kept in ``details``. Images are resized to the
    ``min_pixels``/``max_pixels`` budget as qwen-vl-utils does. One pair at a time (``max_concurrency``
    is 1; a lock guards the model).
    """

    default_model: ClassVar[str] = "Qwen/Qwen2.5-VL-7B-Instruct"
    max_concurrency = 1

    def __init__(
        self,
        model: str | None = None,
        *,
        mode: str = "generate",
        device: str = "cpu",
        dtype: str = "bfloat16",
        revision: str | None = None,
        max_new_tokens: int = 1024,
        repetition_penalty: float = 1.05,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        from evalsuite import qwen_vl as qvl

        if mode not in LOCAL_MODES:
            raise ConfigError(f"LocalQwenJudge mode must be one of {LOCAL_MODES}, got {mode!r}")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model_id = model or self.default_model
        self.mode = mode
        self.device = device
        self.dtype = dtype
        self.revision = revision
        self.max_new_tokens = max_new_tokens
        self.repetition_penalty = repetition_penalty
        self.min_pixels = qvl.DEFAULT_MIN_PIXELS if min_pixels is None else min_pixels
        self.max_pixels = qvl.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        qvl.check_pixel_budget(self.min_pixels, self.max_pixels)
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "judge": "local-qwen2.5-vl",
            "model": self.model_id,
            "revision": self.revision,
            "mode": self.mode,
            "decoding": "greedy" if self.mode == "generate" else "label log-prob argmax",
            "max_new_tokens": self.max_new_tokens if self.mode == "generate" else None,
            "repetition_penalty": self.repetition_penalty if self.mode == "generate" else None,
            "dtype": self.dtype,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "prompt_sha": PROMPT_SHA,
        }

    def load(self) -> LocalQwenJudge:
        if self._model is None:
            from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

            from evalsuite.reward import resolve_dtype

            processor = AutoProcessor.from_pretrained(self.model_id, revision=self.revision)
            processor.tokenizer.padding_side = "right"
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                self.model_id, revision=self.revision, dtype=resolve_dtype(self.dtype)
            )
            self._model = model.to(self.device).eval()
            self._processor = processor
        return self

    def chat_text(self, caption: str) -> str:
        """The prompt text up to and including the assistant header (images as placeholders)."""
        instructions = JUDGE_PROMPT.format(caption=caption)
        if self.mode == "score":
            instructions += LABEL_PROMPT_SUFFIX
        turn = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": instructions},
                    {"type": "text", "text": "Image A:"},
                    {"type": "image"},
                    {"type": "text", "text": "Image B:"},
                    {"type": "image"},
                ],
            }
        ]
        return self._processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)

    def fit(self, image: Image.Image) -> Image.Image:
        from evalsuite import qwen_vl as qvl

        return qvl.fit_image(image.convert("RGB"), self.min_pixels, self.max_pixels)

    def judge(self, caption: str, image_a: Image.Image, image_b: Image.Image) -> Judgement:
        with self._lock:
            self.load()
            images = [self.fit(image_a), self.fit(image_b)]
            if self.mode == "score":
                return self._score(caption, images)
            return self._generate(caption, images)

    def greedy_reply(self, chat_text: str, images: list[Image.Image]) -> tuple[str, int]:
        """The greedy reply to one chat turn (special tokens dropped) and its number of new tokens.

        Sampling settings from the checkpoint's generation config are switched off so that the reply
        depends only on the weights (the judge and the chat scorer share this one decoding).
        """
        import torch

        inputs = self._processor(text=[chat_text], images=images, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self._model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                repetition_penalty=self.repetition_penalty,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new = out[0, inputs["input_ids"].shape[1] :]
        return self._processor.tokenizer.decode(new, skip_special_tokens=True), int(new.numel())

    def _generate(self, caption: str, images: list[Image.Image]) -> Judgement:
        raw, new_tokens = self.greedy_reply(self.chat_text(caption), images)
        details = {"new_tokens": new_tokens}
        try:
            pref, reasoning = parse_answer(raw)
        except AnswerParseError as e:
            msg = f"AnswerParseError: {e}"
            return Judgement(None, "", raw[:RAW_KEEP], 1, msg, [msg], details)
        return Judgement(pref, reasoning, raw[:RAW_KEEP], 1, None, [], details)

    def _score(self, caption: str, images: list[Image.Image]) -> Judgement:
        import torch

        prefix = self.chat_text(caption)
        end = "<|im_end|>"
        texts = [prefix + label + end for label in PREFERENCES]
        enc = self._processor(text=texts, images=images * len(texts), return_tensors="pt", padding=True)
        tok = self._processor.tokenizer
        n_prefix = len(self._processor(text=[prefix], images=images, return_tensors="pt")["input_ids"][0])
        enc = enc.to(self.device)
        with torch.inference_mode():
            logits = self._model(**enc, use_cache=False).logits.float()
        logp = torch.log_softmax(logits, -1)
        scores: dict[str, float] = {}
        for i, label in enumerate(PREFERENCES):
            target = tok(label + end, add_special_tokens=False)["input_ids"]
            ids = enc["input_ids"][i, n_prefix : n_prefix + len(target)].tolist()
            if ids != target:  # tokenization across the prefix boundary must not merge
                msg = f"label {label!r} tokenized differently inside the prompt ({ids} vs {target})"
                return Judgement(None, "", "", 1, msg, [msg])
            pos = torch.arange(n_prefix - 1, n_prefix - 1 + len(target), device=logp.device)
            scores[label] = float(logp[i, pos, torch.tensor(target, device=logp.device)].sum())
        best = max(PREFERENCES, key=lambda p: scores[p])  # ties resolve in PREFERENCES order
        return Judgement(best, "", best, 1, None, [], {"label_logprobs": scores})

