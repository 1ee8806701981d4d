"""Yes/no visual question answering backends for question-graph benchmarks (DPG-Bench).

The backend contract (:class:`evalsuite.scorer.VQABackend`) is in the scorer contracts; benchmarks get a
backend through the registry: ``get_scorer("vqa", spec, **options)`` calls :func:`get_vqa`.

A backend is anything with ``answer(images, questions) -> list[str]``: ``images[i]`` is asked
``questions[i]``, one answer string per pair, batched however the backend likes. A benchmark counts an answer
as yes by its own rule (DPG-Bench official: exactly ``"yes"``). ``describe()`` (optional) says what produced
the answers; every benchmark result records it, because answers from different VQA models are not
interchangeable (DPG-Bench's published numbers come from mPLUG-large; ours from whatever is named here).

The Qwen-VL plumbing below (``QwenFirstToken``: prompt, prefix cache, batching, reading the logits at the
first answer position) is shared with the soft answerers of ``rewards.soft_vqa`` (GenEval 2), which read a
probability there instead of a yes/no decision.

Built in: ``QwenYesNoVQA`` (default ``Qwen/Qwen2.5-VL-7B-Instruct``). Method: one forward pass per
question, no generation. The image and ``"{question} Please answer yes or no."`` are the user turn of the
model's own chat template (default system turn), and the answer is read at the first assistant position:
"yes" iff the largest logit among the first tokens of ``Yes``/``yes`` beats the largest among ``No``/``no``
(a tie is "no").
This is the first token greedy decoding would emit, restricted to the two answers, so the answer is always
exactly "yes" or "no" and never depends on how a free-form reply would be parsed.

Cost: a DPG quadrant gets ~17 questions about the same image. The vision tower and the language model's pass
over the shared prefix (system turn + image, ~90% of each sequence's tokens) run once per distinct image (by
object identity); each question then runs only its own tokens against those cached keys and values. The
result equals one full forward per (image, question) up to float rounding (tested against that), and right
padding with explicit positions keeps a pair's answer independent of what else is in the batch.

Plugins: ``get_vqa`` also takes a backend object, a plain callable ``fn(images, questions) -> list[str]``,
a backend class, or a ``"module:attr"`` string naming one of those (a class is instantiated with the backend
options: model, device, dtype, batch_size and any extra options).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.reward import resolve_dtype
from evalsuite.scorer import check_pairs

DEFAULT_PROMPT = "{question} Please answer yes or no."
YES_WORDS = ("Yes", "yes")
NO_WORDS = ("No", "no")
VISION_END = "<|vision_end|>"


def decide(yes_logit: float, no_logit: float) -> str:
    """The yes/no rule of ``QwenYesNoVQA``: strictly larger yes logit -> "yes", else "no"."""
    return "yes" if yes_logit > no_logit else "no"


class CallableVQA:
    """Wraps a plain function ``fn(images, questions) -> list[str]`` as a backend."""

    def __init__(
        self,
        fn: Callable[[Sequence[Image.Image], Sequence[str]], Sequence[str]],
        name: str | None = None,
        model: str | None = None,
    ) -> None:
        self.fn = fn
        qualname = getattr(fn, "__qualname__", repr(fn))
        self.name = name or f"callable:{getattr(fn, '__module__', '?')}.{qualname}"
        self.model = model

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        check_pairs(images, questions)
        return [str(a) for a in self.fn(images, questions)]

    def describe(self) -> dict[str, Any]:
        return {"vqa": self.name, "vqa_model": self.model, "vqa_method": "user callable"}


class QwenFirstToken:
    """A Qwen-VL chat model read at its first answer position, with the prefix cache of the module docstring.

    Subclasses decide what to read there (``first_token_rows``' ``reduce``). ``model_class`` names the
    transformers class (Qwen2.5-VL and Qwen3-VL share the plumbing); ``pixel_budget`` says whether images are
    resized with qwen-vl-utils' budget first (Qwen2.5-VL, as its reference code) or left to the processor's
    own resize (what the processor does with an image path, as GenEval 2's official Qwen3-VL code).
    """

    name = "qwen-vl"
    default_model = "Qwen/Qwen2.5-VL-7B-Instruct"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    method = ""
    pixel_budget = True

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        batch_size: int = 32,
        revision: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        from evalsuite import qwen_vl as qvl

        who = type(self).__name__
        if batch_size < 1:
            raise ConfigError(f"{who}: batch_size must be >= 1, got {batch_size}")
        if "{question}" not in prompt:
            raise ConfigError(f"{who}: prompt must contain '{{question}}', got {prompt!r}")
        self.model_id = str(model or self.default_model)
        self.revision = revision
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.batch_size = batch_size
        self.prompt = prompt
        self.min_pixels = qvl.DEFAULT_MIN_PIXELS if min_pixels is None else min_pixels
        self.max_pixels = qvl.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        qvl.check_pixel_budget(self.min_pixels, self.max_pixels)
        self._loaded = False

    def describe(self) -> dict[str, Any]:
        return {
            "vqa": self.name,
            "vqa_model": self.model_id,
            "vqa_revision": self.revision,
            "vqa_method": self.method,
            "vqa_prompt": self.prompt,
            "vqa_dtype": str(self.dtype).removeprefix("torch."),
            "vqa_min_pixels": self.min_pixels if self.pixel_budget else None,
            "vqa_max_pixels": self.max_pixels if self.pixel_budget else None,
            "vqa_resize": "qwen-vl-utils pixel budget" if self.pixel_budget else "the processor's own",
        }

    # -- model -------------------------------------------------------------------------------------
    def load(self) -> QwenFirstToken:
        if self._loaded:
            return self
        import transformers

        from evalsuite import qwen_vl as qvl

        self._processor = qvl.load_processor(self.model_id, self.revision)
        model = getattr(transformers, self.model_class).from_pretrained(
            self.model_id, revision=self.revision, dtype=self.dtype
        )
        self._model = model.to(self.device).eval()
        self._pad_id = qvl.pad_token_id(self._processor)
        self._image_token_id = model.config.image_token_id
        self._prefix = self.split_prompt("?")[0]
        self._after_load()
        self._loaded = True
        return self

    def _after_load(self) -> None:
        """Hook: look up the answer tokens once the tokenizer is there."""

    def fit(self, image: Image.Image) -> Image.Image:
        """The image as the processor should get it (see ``pixel_budget``)."""
        from evalsuite import qwen_vl as qvl

        if not self.pixel_budget:
            return image.convert("RGB")
        return qvl.fit_image(image, self.min_pixels, self.max_pixels)

    def _text(self, question: str) -> str:
        content = [{"type": "image"}, {"type": "text", "text": self.prompt.format(question=question)}]
        return self._processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    def split_prompt(self, question: str) -> tuple[str, str]:
        """The chat text around the image: (everything up to ``<|vision_end|>``, the rest).

        The first part is the same for every question, so its keys and values are computed once per image.
        """
        text = self._text(question)
        cut = text.index(VISION_END) + len(VISION_END)
        return text[:cut], text[cut:]

    @torch.inference_mode()
    def _prefix_cache(self, images: Sequence[Image.Image]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                                     torch.Tensor, torch.Tensor]:
        """Run system turn + image once per image: ((keys, values) per layer, prefix mask, next position)."""
        from evalsuite import qwen_vl as qvl

        dev = self.device
        fitted = [self.fit(im) for im in images]
        pixel_values, grid, counts = qvl.image_inputs(self._processor, fitted)
        grid = grid.to(dev)
        feats = self._model.model.get_image_features(pixel_values.to(dev, self.dtype), grid, return_dict=True)
        seqs = self._processor.tokenizer([qvl.expand_image_pads(self._prefix, iter([n])) for n in counts],
                                         add_special_tokens=False)["input_ids"]
        ids, mask = qvl.right_pad(seqs, self._pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        mm = (ids == self._image_token_id).long()
        position_ids, _ = self._model.model.get_rope_index(ids, mm, grid, attention_mask=mask)
        out = self._model.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, image_grid_thw=grid,
            mm_token_type_ids=mm, use_cache=True,
            mm_encoder_outputs={"image": feats},
        )
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        next_pos = position_ids.masked_fill(mask[None] == 0, -1).amax(dim=(0, 2)) + 1
        return kv, mask, next_pos

    @torch.inference_mode()
    def first_token_rows(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        reduce: Callable[[torch.Tensor, list[int]], torch.Tensor],
        width: int,
    ) -> torch.Tensor:
        """``[N, width]`` float32: ``reduce(logits, rows)`` of the first-answer-position logits, by batch.

        ``logits`` is ``[B, vocab]`` float32 on the CPU for the pairs ``rows`` (indices into the inputs); the
        full-vocabulary rows are never all held at once.
        """
        from transformers import DynamicCache

        from evalsuite import qwen_vl as qvl

        check_pairs(images, questions)
        self.load()
        out = torch.empty(len(questions), width, dtype=torch.float32)
        if not questions:
            return out
        slot: dict[int, int] = {}
        unique: list[Image.Image] = []
        for im in images:
            if id(im) not in slot:
                slot[id(im)] = len(unique)
                unique.append(im)
        which = [slot[id(im)] for im in images]
        distinct = list(dict.fromkeys(questions))
        tails = dict(zip(distinct, self._processor.tokenizer([self.split_prompt(q)[1] for q in distinct],
                                                             add_special_tokens=False)["input_ids"]))
        dev = self.device
        for a in range(0, len(unique), self.batch_size):
            kv, prefix_mask, next_pos = self._prefix_cache(unique[a : a + self.batch_size])
            rows = [r for r in range(len(questions)) if a <= which[r] < a + self.batch_size]
            for b in range(0, len(rows), self.batch_size):
                sub = rows[b : b + self.batch_size]
                local = torch.tensor([which[r] - a for r in sub], device=dev)
                ids, mask = qvl.right_pad([tails[questions[r]] for r in sub], self._pad_id)
                ids, mask = ids.to(dev), mask.to(dev)
                positions = next_pos[local][:, None] + torch.arange(ids.shape[1], device=dev)[None]
                hidden = self._model.model.language_model(
                    input_ids=ids,
                    attention_mask=torch.cat([prefix_mask[local], mask], dim=1),
                    position_ids=positions[None].expand(3, -1, -1),
                    past_key_values=DynamicCache(ddp_cache_data=[(k[local], v[local]) for k, v in kv]),
                    use_cache=True,
                ).last_hidden_state
                last = hidden[torch.arange(len(sub), device=dev), mask.sum(1) - 1]
                out[sub] = reduce(self._model.lm_head(last).float().cpu(), sub)
        return out


class QwenYesNoVQA(QwenFirstToken):
    """Qwen2.5-VL answering yes/no by comparing first-token logits (see the module docstring)."""

    name = "qwen2.5-vl"
    default_model = "Qwen/Qwen2.5-VL-7B-Instruct"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    method = "first-token logits: max(Yes,yes) > max(No,no); one forward, no generation"

    def _after_load(self) -> None:
        self.yes_ids, self.no_ids = self._answer_token_ids()

    def _answer_token_ids(self) -> tuple[list[int], list[int]]:
        """First token of each answer word; yes and no must not share one (else the rule is meaningless)."""
        tok = self._processor.tokenizer

        def first(words: Sequence[str]) -> list[int]:
            return sorted({tok.encode(w, add_special_tokens=False)[0] for w in words})

        yes, no = first(YES_WORDS), first(NO_WORDS)
        if set(yes) & set(no):
            raise ConfigError(f"QwenYesNoVQA: yes/no words share a first token ({set(yes) & set(no)})")
        return yes, no

    def yes_no_logits(self, images: Sequence[Image.Image], questions: Sequence[str]) -> torch.Tensor:
        """``[N, 2]`` float32: (max yes-token logit, max no-token logit) at the first answer position."""

        def yes_no(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
            del rows
            yes = logits[:, self.yes_ids].max(-1).values
            return torch.stack([yes, logits[:, self.no_ids].max(-1).values], 1)

        return self.first_token_rows(images, questions, yes_no, 2)

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        return [decide(float(y), float(n)) for y, n in self.yes_no_logits(images, questions).tolist()]


BUILTIN_VQA: dict[str, type] = {"qwen2.5-vl": QwenYesNoVQA}


def get_vqa(spec: Any = None, **options: Any) -> Any:
    """A VQA backend from a name (``"qwen2.5-vl"``, the default), ``"module:attr"``, an object or a callable.

    ``options`` (model, device, dtype, batch_size, ...) go to a class being instantiated; objects and plain
    callables are used as they are.
    """
    return resolve_backend(spec, options, BUILTIN_VQA, "qwen2.5-vl", "answer", CallableVQA, "VQA backend")


def resolve_backend(
    spec: Any,
    options: dict[str, Any],
    builtins: dict[str, type],
    default: str,
    method: str,
    wrap: Callable[..., Any],
    what: str,
) -> Any:
    """A backend from a built-in name, ``"module:attr"``, a class (instantiated with ``options``), an object
    with ``method``, or a plain callable (wrapped as ``wrap(fn, model=options.get("model"))``)."""
    if spec is None:
        spec = default
    if isinstance(spec, str):
        if spec in builtins:
            return builtins[spec](**options)
        module, sep, attr = spec.partition(":")
        if not sep or not module or not attr:
            raise ConfigError(f"unknown {what} {spec!r}; use one of {sorted(builtins)} or 'module:attr'")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{what} {spec!r} cannot be loaded: {type(e).__name__}: {e}") from e
        spec = obj
    if isinstance(spec, type):
        return spec(**options)
    if hasattr(spec, method):
        return spec
    if callable(spec):
        return wrap(spec, model=options.get("model"))
    raise ConfigError(f"a {what} needs {method}(...) or to be callable, got {type(spec).__name__}")
