"""The PromptLoop refiner policy: a Qwen2.5-VL that looks at a preview image and rewrites the prompt.

At chosen denoising steps the frozen flow model's decoded x̂0 preview and the ORIGINAL prompt are shown to
a multimodal LM, which answers ``<think> … </think><answer> refined prompt </answer>``; the answer conditions
the following steps (malformed → the original prompt, as in ``rewriter.py``). GRPO needs the exact
log-prob of every sampled token, so, as in the text rewriter, ``completion_logprobs`` is the ONE definition
of that log-prob: sampling draws from softmax(logits / T) with nothing else applied (top-k/top-p and
repetition penalty are off; ``generate`` is not used because it merges generation_config's settings), and
the recorded and the recomputed log-probs come from the same function on the same tensors.

Two Qwen2.5-VL details decide correctness:

- M-RoPE. Image tokens get (t, h, w) positions and the text after the image continues from the largest of
  them, so a text token's position is NOT its index. We compute the 3-D positions of the prompt once with
  the model's own ``get_rope_index`` (padding excluded), continue them by +1 per completion token, store
  them in the rollout and pass them explicitly to every forward, so the KV-cache sampler, the recorded
  log-probs and the train-time recompute see the same positions and never depend on the model's cached
  ``rope_deltas`` state.
- Image features are scattered only into the prompt's ``<|image_pad|>`` slots (we build ``inputs_embeds``
  ourselves, as the model's forward does). A completion that happens to sample ``<|image_pad|>`` is
  then an ordinary token instead of a feature-count mismatch crash inside the model.

Prompts are left-padded (the KV-cache decode appends one column for every row) and completions
right-padded, as in the text rewriter (both build on ``rollout.CompletionBatch`` and share its decoding
loop and log-prob recording); positions count real tokens only, so a row's log-probs do not depend on
which rows share its batch (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from PIL import Image

from evalsuite import qwen_vl as qvl
from evalsuite.errors import ConfigError
from evalsuite.harness.config import DEFAULT_SYSTEM_PROMPT, PolicyConfig
from evalsuite.harness.lora import add_language_lora, enable_gradient_checkpointing
from evalsuite.harness.model_source import loading
from evalsuite.harness.rollout import (
    CompletionBatch,
    CompletionPolicy,
    completion_texts,
    decode_loop,
    end_terminated,
    end_token_ids,
    eval_mode,
    gathered_logprobs,
    left_pad,
)
from evalsuite.reward import resolve_dtype

# Our own wording of PromptLoop's instruction (the paper's prompt is not public).
DEFAULT_VL_SYSTEM_PROMPT = (
    "You refine prompts for a text-to-image model while it is generating. You see an intermediate preview "
    "of the image and the prompt it must match."
)
DEFAULT_VL_USER_TEMPLATE = (
    'This is an intermediate preview of an image being generated for the prompt: "{prompt}". Compare the '
    "preview with the prompt and write an improved prompt for the remaining generation steps: keep every "
    "requirement of the original and state explicitly what is missing or wrong in the preview (objects, "
    "how many of each, colors, positions, text, style). Put your reasoning inside <think> </think> and "
    "only the improved prompt inside <answer> </answer>."
)
# A small pixel budget: the preview is blurry anyway and every image token costs each of the G rollouts.
DEFAULT_VL_MIN_PIXELS = 4 * 28 * 28
DEFAULT_VL_MAX_PIXELS = 256 * 28 * 28


def vl_policy_config(model: str, **overrides: Any) -> PolicyConfig:
    """A ``PolicyConfig`` carrying the VL instruction explicitly (so a saved config records the wording)."""
    values: dict[str, Any] = {
        "model": model,
        "system_prompt": DEFAULT_VL_SYSTEM_PROMPT,
        "user_template": DEFAULT_VL_USER_TEMPLATE,
    }
    values.update(overrides)
    return PolicyConfig(**values)


def resolve_vl_prompting(config: PolicyConfig) -> tuple[str, str]:
    """(system prompt, user template) for the VL turn.

    ``PolicyConfig``'s defaults are the TEXT rewriter's instruction, which never mentions an image; a config
    that still carries them gets the VL wording instead, so a plain ``PolicyConfig(model=...)`` is usable.
    """
    system = (
        DEFAULT_VL_SYSTEM_PROMPT if config.system_prompt == DEFAULT_SYSTEM_PROMPT else config.system_prompt
    )
    template = DEFAULT_VL_USER_TEMPLATE if config.user_template == "{prompt}" else config.user_template
    if "{prompt}" not in template:
        raise ConfigError("policy.user_template must contain {prompt} (the original prompt)")
    return system, template


# ------------------------------------------------------------------------------------------ rollouts


@dataclass
class VLRollout(CompletionBatch):
    """A ``CompletionBatch`` of the VL refiner, with everything a forward needs to recompute it exactly.

    input_ids/attention_mask: (N, P + C), the left-padded chat prompt (image pads expanded) then the
    right-padded completion. position_ids: (3, N, P + C) M-RoPE positions (padding columns hold 0 in the
    prompt and a continued count in the completion; both are masked). pixel_values: one (patches, dim)
    tensor per row; image_grid_thw: (N, 3).
    """

    _: KW_ONLY
    position_ids: torch.Tensor
    pixel_values: list[torch.Tensor]
    image_grid_thw: torch.Tensor

    def _rows_of_fields(self, index: slice) -> dict[str, Any]:
        rows = super()._rows_of_fields(index)
        rows["position_ids"] = self.position_ids[:, index]
        rows["pixel_values"] = self.pixel_values[index]
        rows["image_grid_thw"] = self.image_grid_thw[index]
        return rows


def hf_model(model: Any) -> Any:
    """The ``Qwen2_5_VLForConditionalGeneration`` inside a DDP wrapper and/or a ``PeftModel``."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def input_embeds(
    model: Any,
    input_ids: torch.Tensor,
    prompt_len: int,
    pixel_values: Sequence[torch.Tensor],
    image_grid_thw: torch.Tensor,
) -> torch.Tensor:
    """Token embeddings with the image features written into the PROMPT's ``<|image_pad|>`` slots.

    What ``Qwen2_5_VLModel.forward`` does with ``pixel_values``, except that completion columns are never
    image slots (a sampled ``<|image_pad|>`` there stays a plain token).
    """
    base = hf_model(model)
    embeds = base.get_input_embeddings()(input_ids)
    feats = base.model.get_image_features(
        torch.cat(list(pixel_values)).to(embeds.device), image_grid_thw.to(embeds.device), return_dict=True
    ).pooler_output
    feats = torch.cat(list(feats)).to(embeds.dtype)
    slots = input_ids == base.config.image_token_id
    slots[:, prompt_len:] = False
    if int(slots.sum()) != feats.shape[0]:
        raise ValueError(f"{int(slots.sum())} image slots in the prompts but {feats.shape[0]} image features")
    return embeds.masked_scatter(slots.unsqueeze(-1), feats)


def completion_logprobs(model: Any, rollout: VLRollout, temperature: float) -> torch.Tensor:
    """(N, C) float32 log π(token) of each completion token under softmax(logits / T).

    The single definition of the policy's log-prob: the sampling-time record and every train-time
    recompute call it, so on the first inner step they agree exactly. Each call re-runs the (frozen)
    vision tower on the rollout's images; with a small pixel budget that is a small part of the cost.
    """
    n_completion = rollout.input_ids.shape[1] - rollout.prompt_len
    embeds = input_embeds(
        model, rollout.input_ids, rollout.prompt_len, rollout.pixel_values, rollout.image_grid_thw
    )
    out = model(
        inputs_embeds=embeds,
        attention_mask=rollout.attention_mask,
        position_ids=rollout.position_ids,
        use_cache=False,
        logits_to_keep=n_completion + 1,
    )
    return gathered_logprobs(out.logits[:, :-1, :], rollout.completion_ids, temperature)


# ------------------------------------------------------------------------------------------ the policy


@dataclass
class _Prompts:
    """Encoded chat prompts of a batch (left-padded), with their images and M-RoPE positions."""

    input_ids: torch.Tensor  # (N, P)
    attention_mask: torch.Tensor  # (N, P)
    position_ids: torch.Tensor  # (3, N, P)
    next_position: torch.Tensor  # (N,) position of the first completion token
    pixel_values: list[torch.Tensor]
    image_grid_thw: torch.Tensor  # (N, 3)


class VLRefinerPolicy(CompletionPolicy):
    """A Qwen2.5-VL (usually a ``PeftModel``), its processor, and the prompting/sampling settings.

    ``min_pixels``/``max_pixels`` are the preview's pixel budget (qwen-vl-utils resizing): they set how many
    image tokens each row costs (max_pixels / 784 at most).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        config: PolicyConfig,
        *,
        min_pixels: int = DEFAULT_VL_MIN_PIXELS,
        max_pixels: int = DEFAULT_VL_MAX_PIXELS,
    ) -> None:
        super().__init__(model, processor.tokenizer, config)
        if config.max_new_tokens < 1:
            raise ConfigError(f"policy.max_new_tokens must be >= 1, got {config.max_new_tokens}")
        qvl.check_pixel_budget(min_pixels, max_pixels)
        self.processor = processor
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.system_prompt, self.user_template = resolve_vl_prompting(config)
        self.end_ids = end_token_ids(hf_model(model), self.tokenizer)
        self.pad_id = qvl.pad_token_id(processor)

    def chat_text(self, prompt: str) -> str:
        """The chat prompt with ONE ``<|image_pad|>`` placeholder (expanded per image in ``encode``)."""
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        user = [{"type": "image"}, {"type": "text", "text": self.user_template.format(prompt=prompt)}]
        messages.append({"role": "user", "content": user})
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + self.config.response_prefix

    def encode(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> _Prompts:
        """Left-padded chat prompts with their image inputs and M-RoPE positions, on the model's device."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images: one image per prompt")
        if not prompts:
            raise ValueError("no prompts to encode")
        fitted = [qvl.fit_image(im, self.min_pixels, self.max_pixels) for im in images]
        pixel_values, grid, counts = qvl.image_inputs(self.processor, fitted)
        patches = grid.prod(-1).tolist()
        rows = [
            self.tokenizer(qvl.expand_image_pads(self.chat_text(p), iter([n])), add_special_tokens=False)[
                "input_ids"
            ]
            for p, n in zip(prompts, counts)
        ]
        ids, mask = left_pad(rows, self.pad_id)
        device = self.device
        ids, mask, grid = ids.to(device), mask.to(device), grid.to(device)
        base = hf_model(self.model)
        mm_types = (ids == base.config.image_token_id).int()
        positions, _ = base.model.get_rope_index(
            ids, mm_token_type_ids=mm_types, image_grid_thw=grid, attention_mask=mask
        )
        next_position = positions.amax(dim=(0, 2)) + 1  # padding holds 0, real tokens are >= 0
        return _Prompts(
            ids,
            mask,
            positions,
            next_position,
            list(pixel_values.to(device).split(patches)),
            grid,
        )

    def _rollout(
        self, prompts: Sequence[str], enc: _Prompts, completion: torch.Tensor, completion_mask: torch.Tensor
    ) -> VLRollout:
        n_completion = completion.shape[1]
        steps = torch.arange(n_completion, device=completion.device)
        completion_pos = (enc.next_position.unsqueeze(-1) + steps).unsqueeze(0).expand(3, -1, -1)
        return VLRollout(
            list(prompts),
            torch.cat([enc.input_ids, completion], dim=1),
            torch.cat([enc.attention_mask, completion_mask], dim=1),
            enc.input_ids.shape[1],
            completion_texts(self.tokenizer, completion, completion_mask),
            torch.zeros(len(prompts), dtype=torch.bool),
            position_ids=torch.cat([enc.position_ids, completion_pos.to(enc.position_ids.dtype)], dim=2),
            pixel_values=enc.pixel_values,
            image_grid_thw=enc.image_grid_thw,
        )

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        seed: int,
        *,
        greedy: bool = False,
        model: Any = None,
    ) -> VLRollout:
        """ONE completion per (prompt, image) row, drawn from softmax(logits / T) with a KV cache.

        ``seed`` fixes every draw (a private ``torch.Generator``); ``greedy`` or T = 0 takes the argmax.
        ``model`` overrides ``self.model`` (e.g. an unwrapped DDP module). Log-probs are not filled here:
        call ``record_logprobs`` (a separate full forward, the one the trainer repeats).
        """
        model = self.model if model is None else model
        enc = self.encode(prompts, images)
        n = enc.input_ids.shape[0]
        gen = torch.Generator(device=enc.input_ids.device).manual_seed(int(seed))
        greedy = greedy or self.temperature == 0
        with eval_mode(model):
            embeds = input_embeds(
                model, enc.input_ids, enc.input_ids.shape[1], enc.pixel_values, enc.image_grid_thw
            )
            out = model(
                inputs_embeds=embeds,
                attention_mask=enc.attention_mask,
                position_ids=enc.position_ids,
                use_cache=True,
                logits_to_keep=1,
            )

            def choose(logits: torch.Tensor) -> tuple[torch.Tensor, None]:
                if greedy:
                    return logits.argmax(-1), None
                probs = torch.softmax(logits / self.temperature, dim=-1)
                return torch.multinomial(probs, 1, generator=gen).squeeze(-1), None

            def next_logits(tokens: torch.Tensor, mask: torch.Tensor, step: int) -> torch.Tensor:
                nonlocal out
                out = model(
                    input_ids=tokens.unsqueeze(-1),
                    attention_mask=mask,
                    position_ids=(enc.next_position + step).view(1, n, 1).expand(3, -1, -1),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
                return out.logits[:, -1, :]

            completion, completion_mask, _, done = decode_loop(
                out.logits[:, -1, :],
                choose,
                next_logits,
                enc.attention_mask,
                max_new_tokens=self.config.max_new_tokens,
                end_ids=self.end_ids,
                pad_id=self.pad_id,
            )
        rollout = self._rollout(prompts, enc, completion, completion_mask)
        rollout.truncated = (~done).cpu()
        return rollout

    def teacher_forced(
        self, prompts: Sequence[str], images: Sequence[Image.Image], completions: Sequence[str]
    ) -> VLRollout:
        """Given completions as a rollout (SFT, tests): each ends with the end-of-turn token."""
        rollout = self.teacher_forced_ids(prompts, images, end_terminated(self.tokenizer, completions))
        rollout.texts = list(completions)
        return rollout

    def teacher_forced_ids(
        self, prompts: Sequence[str], images: Sequence[Image.Image], completions: Sequence[Sequence[int]]
    ) -> VLRollout:
        """Given completion token ids as a rollout (right-padded; nothing appended): e.g. to score a
        completion sampled in another batch, or text that does not survive a decode/encode round trip."""
        if len(completions) != len(prompts) or any(len(c) == 0 for c in completions):
            raise ValueError("need one non-empty completion per prompt")
        enc = self.encode(prompts, images)
        ids, mask = qvl.right_pad(completions, self.pad_id)
        ends = torch.tensor(self.end_ids)
        truncated = torch.tensor([not bool(torch.isin(torch.as_tensor(c[-1]), ends)) for c in completions])
        rollout = self._rollout(prompts, enc, ids.to(self.device), mask.to(self.device))
        rollout.truncated = truncated
        return rollout

    def rollout_logprobs(self, model: Any, rollout: VLRollout, temperature: float) -> torch.Tensor:
        return completion_logprobs(model, rollout, temperature)


# ---------------------------------------------------------------------------------------- building


def build_vl_policy(
    config: PolicyConfig,
    device: str | torch.device = "cpu",
    seed: int = 0,
    *,
    adapter: str | None = None,
    lora: bool = True,
    trainable: bool = True,
    min_pixels: int = DEFAULT_VL_MIN_PIXELS,
    max_pixels: int = DEFAULT_VL_MAX_PIXELS,
) -> VLRefinerPolicy:
    """Qwen2.5-VL + processor from ``config.model`` (revision, dtype) with a language-model LoRA.

    The LoRA init is seeded (same start on every rank); every non-LoRA weight, the vision tower included,
    is frozen. The KL reference is the same model with the adapter disabled.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    qvl.check_pixel_budget(min_pixels, max_pixels)
    with loading("policy.model", config.model):
        processor = qvl.load_processor(config.model, config.revision)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            config.model, revision=config.revision, dtype=resolve_dtype(config.dtype)
        ).to(device)
    if lora:
        model = add_language_lora(model, config.lora, adapter, seed=seed, trainable=trainable)
    else:
        model.requires_grad_(False)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return VLRefinerPolicy(model, processor, config, min_pixels=min_pixels, max_pixels=max_pixels)
