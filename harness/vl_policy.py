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
right-padded, as in ``rewriter.Rollout``; positions count real tokens only, so a row's log-probs do
not depend on which rows share its batch (up to float rounding).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from evalsuite.harness.config import DEFAULT_SYSTEM_PROMPT, LoraSettings, PolicyConfig
from evalsuite.harness.model_source import loading
from evalsuite.harness.rewriter import (
    ParsedCompletion,
    _adapter_disabled,
    _end_token_ids,
    add_lora,
    parse_completion,
)
from PIL import Image

from evalsuite import qwen_vl as qvl
from evalsuite.errors import ConfigError
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
class VLRollout:
    """Completions of one batch, with everything a forward needs to recompute them exactly.

    input_ids/attention_mask: (N, P + C), the left-padded chat prompt (image pads expanded) then the
    right-padded completion. position_ids: (3, N, P + C) M-RoPE positions (padding columns hold 0 in the
    prompt and a continued count in the completion; both are masked). pixel_values: one (patches, dim)
    tensor per row; image_grid_thw: (N, 3).
    """

    prompts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    pixel_values: list[torch.Tensor]
    image_grid_thw: torch.Tensor
    prompt_len: int
    texts: list[str]
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens before an end token
    logp: torch.Tensor | None = None  # (N, C) sampling-time log-probs
    ref_logp: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    @property
    def completion_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_len :]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: slice) -> VLRollout:
        """The same padded tensors restricted to rows ``index`` (no re-padding: shapes stay aligned)."""
        return VLRollout(
            self.prompts[index],
            self.input_ids[index],
            self.attention_mask[index],
            self.position_ids[:, index],
            self.pixel_values[index],
            self.image_grid_thw[index],
            self.prompt_len,
            self.texts[index],
            self.truncated[index],
            None if self.logp is None else self.logp[index],
            None if self.ref_logp is None else self.ref_logp[index],
        )


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
    logits = out.logits[:, :-1, :].float()
    if temperature > 0:
        logits = logits / temperature
    targets = rollout.completion_ids
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1)


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


class VLRefinerPolicy:
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
        if config.temperature < 0:
            raise ConfigError(f"policy.temperature must be >= 0, got {config.temperature}")
        if config.max_new_tokens < 1:
            raise ConfigError(f"policy.max_new_tokens must be >= 1, got {config.max_new_tokens}")
        qvl.check_pixel_budget(min_pixels, max_pixels)
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.system_prompt, self.user_template = resolve_vl_prompting(config)
        self.end_ids = sorted(_end_token_ids(hf_model(model), self.tokenizer))
        self.pad_id = qvl.pad_token_id(processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def temperature(self) -> float:
        return self.config.temperature

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
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
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
        texts = self.tokenizer.batch_decode(
            [row[m.bool()].tolist() for row, m in zip(completion, completion_mask)], skip_special_tokens=True
        )
        return VLRollout(
            list(prompts),
            torch.cat([enc.input_ids, completion], dim=1),
            torch.cat([enc.attention_mask, completion_mask], dim=1),
            torch.cat([enc.position_ids, completion_pos.to(enc.position_ids.dtype)], dim=2),
            enc.pixel_values,
            enc.image_grid_thw,
            enc.input_ids.shape[1],
            texts,
            torch.zeros(len(prompts), dtype=torch.bool),
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
        n, max_new = enc.input_ids.shape[0], self.config.max_new_tokens
        device = enc.input_ids.device
        gen = torch.Generator(device=device).manual_seed(int(seed))
        greedy = greedy or self.temperature == 0
        ends = torch.tensor(self.end_ids, device=device)
        was_training = model.training
        model.eval()
        try:
            mask = enc.attention_mask
            embeds = input_embeds(
                model, enc.input_ids, enc.input_ids.shape[1], enc.pixel_values, enc.image_grid_thw
            )
            out = model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=enc.position_ids,
                use_cache=True,
                logits_to_keep=1,
            )
            done = torch.zeros(n, dtype=torch.bool, device=device)
            tokens, alive = [], []
            for step in range(max_new):
                logits = out.logits[:, -1, :].float()
                if greedy:
                    nxt = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits / self.temperature, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
                live = ~done
                nxt = torch.where(live, nxt, torch.full_like(nxt, self.pad_id))
                tokens.append(nxt)
                alive.append(live)
                done = done | torch.isin(nxt, ends)
                if bool(done.all()) or step == max_new - 1:
                    break
                mask = torch.cat([mask, live.long().unsqueeze(-1)], dim=1)
                pos = (enc.next_position + step).view(1, n, 1).expand(3, -1, -1)
                out = model(
                    input_ids=nxt.unsqueeze(-1),
                    attention_mask=mask,
                    position_ids=pos,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
        finally:
            model.train(was_training)
        rollout = self._rollout(prompts, enc, torch.stack(tokens, dim=1), torch.stack(alive, dim=1).long())
        rollout.truncated = (~done).cpu()
        return rollout

    def teacher_forced(
        self, prompts: Sequence[str], images: Sequence[Image.Image], completions: Sequence[str]
    ) -> VLRollout:
        """Given completions as a rollout (SFT, tests): each ends with the end-of-turn token."""
        end = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        rows = [self.tokenizer(c, add_special_tokens=False)["input_ids"] + [end] for c in completions]
        rollout = self.teacher_forced_ids(prompts, images, rows)
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

    def logprobs(
        self, rollout: VLRollout, model: Any = None, *, temperature: float | None = None
    ) -> torch.Tensor:
        """(N, C) log-probs of the rollout's completion tokens (with grad if enabled by the caller)."""
        return completion_logprobs(
            self.model if model is None else model,
            rollout,
            self.temperature if temperature is None else temperature,
        )

    @torch.no_grad()
    def record_logprobs(self, rollout: VLRollout, micro_batch_size: int, *, reference: bool = False) -> None:
        """Fill ``rollout.logp`` (and ``ref_logp`` with the adapter disabled) in eval mode, in exactly
        the micro-batches the trainer will use for its first recompute."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            chunks = [
                rollout.rows(slice(i, i + micro_batch_size)) for i in range(0, len(rollout), micro_batch_size)
            ]
            rollout.logp = torch.cat([self.logprobs(c) for c in chunks])
            if reference:
                with _adapter_disabled(model):
                    rollout.ref_logp = torch.cat([self.logprobs(c) for c in chunks])
        finally:
            model.train(was_training)

    def parse(self, rollout: VLRollout) -> list[ParsedCompletion]:
        """Each completion judged; ``.rendered`` is the refined prompt, or the original when malformed."""
        return [
            parse_completion(t, p, self.config.response_prefix)
            for t, p in zip(rollout.texts, rollout.prompts)
        ]


# ---------------------------------------------------------------------------------------- building


def language_lora_pattern(target_modules: Sequence[str]) -> str:
    """A PEFT ``target_modules`` regex matching the named linear layers of the LANGUAGE model only.

    Qwen2.5-VL's vision blocks also have ``gate_proj``/``up_proj``/``down_proj``; plain names would put
    LoRA into the vision tower, which PromptLoop keeps frozen. ``lm_head`` is kept if listed.
    """
    names = [n for n in target_modules if n != "lm_head"]
    if not names and "lm_head" not in target_modules:
        raise ConfigError("policy.lora.target_modules is empty")
    alternatives = []
    if names:
        alternatives.append(r".*language_model\..*\.(?:" + "|".join(map(re.escape, names)) + ")")
    if "lm_head" in target_modules:
        alternatives.append(r"(?:.*\.)?lm_head")
    return "|".join(f"(?:{a})" for a in alternatives)


def add_language_lora(model: Any, lora: LoraSettings, adapter: str | None = None, *, trainable: bool = True):
    """A PEFT LoRA on the language model's linear layers only: fresh, or the one saved at ``adapter``."""
    return add_lora(
        model, lora, adapter, trainable=trainable, targets=language_lora_pattern(lora.target_modules)
    )


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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA A matrices are random
            model = add_language_lora(model, config.lora, adapter, trainable=trainable)
    else:
        model.requires_grad_(False)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return VLRefinerPolicy(model, processor, config, min_pixels=min_pixels, max_pixels=max_pixels)
