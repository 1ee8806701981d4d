"""The RePrompt rewriter policy: chat prompting, sampling, robust parsing, exact log-probs, and loading.

An instruct LM reads the user's prompt through its chat template and answers
``<think> reasoning </think><answer> rewritten prompt </answer>``. Only the answer is rendered; anything
malformed renders the ORIGINAL prompt (never a crash) and is charged by the format reward
(``completion_format``). What it shares with the VL refiner (rollout tensors, the decoding loop, the log-prob
formula and recording) is in ``rollout``; its LoRA plumbing is in ``lora``.

Log-probs are on-policy by construction: sampling draws from softmax(logits / T) with nothing else
applied, and ``sample`` records the log-prob of each drawn token from the very logits it was drawn from
(``Rollout.sampler_logp``, fp32, the same formula as ``completion_logprobs``), so no second forward is
needed. The trainer recomputes them with ``completion_logprobs`` in one padded forward and compares: that
self-test checks the incremental KV-cache sampler against the train-time forward, the mismatch that
vLLM-style trainers must watch (about 1e-6 in fp32, see ``config.GRPOSettings.logprobs_from``).
``record_logprobs`` still records them with the train-time forward itself (exact equality) on request.
We sample with our own short loop instead of ``generate`` because ``generate`` silently merges the model's
generation_config into ours (Qwen2.5 ships top_k=20, top_p=0.8, repetition_penalty=1.05), which would make
the tokens come from a different distribution than the one we score, and because a seeded
``torch.Generator`` makes every rollout reproducible without touching the global RNG.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError
from evalsuite.harness.completion_format import ParsedCompletion
from evalsuite.harness.config import DEFAULT_SYSTEM_PROMPT, PolicyConfig
from evalsuite.harness.full_finetune import frozen_reference_logprobs, save_lm
from evalsuite.harness.lora import add_lora, enable_gradient_checkpointing, lean_lora, merge_adapter
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
from evalsuite.harness.sharding import FinishTogether
from evalsuite.harness.token_draw import draw_tokens
from evalsuite.qwen_vl import right_pad
from evalsuite.reward import resolve_dtype

REWRITER_FILE = "rewriter.json"

# ------------------------------------------------------------------------------------------ rollouts


@dataclass
class Rollout(CompletionBatch):
    """A ``CompletionBatch`` of the text rewriter, with the sampler's own log-probs."""

    sampler_logp: torch.Tensor | None = None  # (N, C) fp32, from the sampler's own logits (0 after the end)

    def _rows_of_fields(self, index: slice) -> dict[str, Any]:
        rows = super()._rows_of_fields(index)
        rows["sampler_logp"] = None if self.sampler_logp is None else self.sampler_logp[index]
        return rows


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float,
    *,
    share_prompts: bool = True,
) -> torch.Tensor:
    """(N, C) float32 log π(token) of each completion token under softmax(logits / T).

    The single definition of the policy's log-prob: the train-time recompute (and ``record_logprobs``)
    call it, so on the first inner step they agree exactly.

    Rows whose left-padded prompts are identical (a GRPO group: G completions of one prompt) run their
    prompt once when ``share_prompts`` and the model is in eval mode: the prompt forward fills a KV cache
    that is indexed out to every row of its group (``repeat`` in autograd: gradients from all completions
    flow back into the one prompt forward), then one forward runs the completion tokens on it, as the
    sampler does. Same values as the one-pass forward up to float rounding (at most 1e-6 apart in fp32 in
    our tests) for fewer FLOPs and activations (G = 8, prompt as long as completion: 9/16 of the tokens).
    Train mode (dropout, HF gradient checkpointing, which drops KV caches) and batches without repeated
    prompts take the one-pass forward.
    """
    n_completion = input_ids.shape[1] - prompt_len
    shared = _shared_prompts(input_ids[:, :prompt_len], attention_mask[:, :prompt_len])
    if not share_prompts or model.training or shared is None:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
            logits_to_keep=n_completion + 1,
        )
        logits = out.logits[:, :-1, :]
    else:
        first, inverse = shared
        pos = position_ids(attention_mask)
        head = model(
            input_ids=input_ids[first, :prompt_len],
            attention_mask=attention_mask[first, :prompt_len],
            position_ids=pos[first, :prompt_len],
            use_cache=True,
            logits_to_keep=1,
        )
        logits = head.logits[inverse]  # (N, 1, V): the first completion token's distribution
        if n_completion > 1:
            cache = head.past_key_values
            cache.batch_select_indices(inverse)
            tail = model(
                input_ids=input_ids[:, prompt_len:-1],
                attention_mask=attention_mask[:, :-1],
                position_ids=pos[:, prompt_len:-1],
                past_key_values=cache,
                use_cache=True,
            )
            logits = torch.cat([logits, tail.logits], dim=1)
    return gathered_logprobs(logits, input_ids[:, prompt_len:], temperature)


def _shared_prompts(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(one row index per distinct prompt, each row's distinct-prompt index), or None if all differ."""
    key = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    if unique.shape[0] == key.shape[0]:
        return None
    first = torch.zeros(unique.shape[0], dtype=torch.long, device=key.device)
    first.scatter_reduce_(
        0, inverse, torch.arange(key.shape[0], device=key.device), "amin", include_self=False
    )
    return first, inverse


# ------------------------------------------------------------------------------------------ the policy


class RewriterPolicy(CompletionPolicy):
    """A causal LM (usually a ``PeftModel``) plus its tokenizer and prompting/sampling settings."""

    def __init__(self, model: Any, tokenizer: Any, config: PolicyConfig, reference: Any = None) -> None:
        super().__init__(model, tokenizer, config)
        self.reference = reference  # full fine-tuning with β ≠ 0: the frozen starting LM
        self.end_ids = end_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_ids[0]

    @torch.no_grad()
    def record_reference_logprobs(self, rollout: Any, micro_batch_size: int) -> None:
        """KL reference log-probs: a full fine-tune's frozen copy, else the LoRA switched off."""
        if self.reference is None:
            return super().record_reference_logprobs(rollout, micro_batch_size)
        rollout.ref_logp = frozen_reference_logprobs(self, rollout, micro_batch_size)

    def chat_text(self, prompt: str) -> str:
        messages = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        messages.append({"role": "user", "content": self.config.user_template.format(prompt=prompt)})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + self.config.response_prefix

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded chat prompts: (N, P) ids and mask, on the model's device.

        Each distinct prompt is templated and tokenized once (a GRPO batch repeats every prompt G times)."""
        unique = list(dict.fromkeys(prompts))
        encoded = self.tokenizer([self.chat_text(p) for p in unique], add_special_tokens=False)["input_ids"]
        by_prompt = dict(zip(unique, encoded))
        ids, mask = left_pad([by_prompt[p] for p in prompts], self.pad_id)
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        num_samples: int = 1,
        seed: int = 0,
        *,
        greedy: bool = False,
        model: Any = None,
        rows_of: tuple[int, int] | None = None,
    ) -> Rollout:
        """``num_samples`` completions per prompt (rows grouped by prompt), drawn from softmax(logits/T).

        ``seed`` fixes every draw (a private ``torch.Generator``); ``greedy`` or T = 0 takes the argmax.
        ``rows_of=(first, total)``: a data-parallel rank's rows of a ``total``-row batch drawn from ``seed``
        (token_draw.py: the same completions for any number of ranks; default: these rows are all).
        ``model`` overrides ``self.model`` (e.g. an unwrapped DDP module). Each drawn token's log-prob is
        taken from the logits it was drawn from (fp32 log-softmax of logits / T) into ``sampler_logp`` and
        ``logp``; ``record_logprobs`` replaces ``logp`` with the train-time forward's values if wanted.
        The prompt is run once per distinct prompt and its KV cache repeated ``num_samples`` times.
        """
        model = self.model if model is None else model
        expanded = [p for p in prompts for _ in range(num_samples)]
        prompt_ids, prompt_mask = self.encode_prompts(expanded)
        gen = torch.Generator(device=prompt_ids.device).manual_seed(int(seed))
        with eval_mode(model), lean_lora(model):
            completion, completion_mask, sampler_logp, done = self._decode(
                model, prompt_ids, prompt_mask, num_samples, gen, greedy or self.temperature == 0, rows_of
            )
        return Rollout(
            expanded,
            torch.cat([prompt_ids, completion], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            prompt_ids.shape[1],
            completion_texts(self.tokenizer, completion, completion_mask),
            (~done).cpu(),
            logp=sampler_logp,
            sampler_logp=sampler_logp,
        )

    def _decode(
        self,
        model: Any,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        num_samples: int,
        gen: torch.Generator,
        greedy: bool,
        rows_of: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sampling loop: (completion ids, mask, sampler log-probs, done) for left-padded prompts."""
        pos = position_ids(prompt_mask)
        first = slice(None, None, num_samples)  # one row per prompt: rows repeat within a group
        out = model(
            input_ids=prompt_ids[first],
            attention_mask=prompt_mask[first],
            position_ids=pos[first],
            use_cache=True,
            logits_to_keep=1,
        )
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        if num_samples > 1:
            cache.batch_repeat_interleave(num_samples)
            logits = logits.repeat_interleave(num_samples, dim=0)
        last_pos = pos[:, -1]

        def choose(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if greedy:
                nxt = logits.argmax(-1)
            else:
                logits = logits / self.temperature
                nxt = draw_tokens(torch.softmax(logits, dim=-1), gen, rows_of)
            # completion_logprobs' formula on the logits the token was drawn from (T = 0: unscaled)
            return nxt, gathered_logprobs(logits, nxt, 0.0)

        lockstep = FinishTogether(model)  # FSDP: ranks decode the same number of forwards

        def next_logits(tokens: torch.Tensor, mask: torch.Tensor, step: int) -> torch.Tensor:
            nonlocal cache
            lockstep.forward_coming()
            out = model(
                input_ids=tokens.unsqueeze(-1),
                attention_mask=mask,
                position_ids=(last_pos + step + 1).unsqueeze(-1),
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            return out.logits[:, -1, :]

        completion, completion_mask, logps, done = decode_loop(
            logits,
            choose,
            next_logits,
            prompt_mask,
            max_new_tokens=self.config.max_new_tokens,
            end_ids=self.end_ids,
            pad_id=self.pad_id,
        )
        lockstep.until_all_finish(prompt_ids[:1, -1:])
        assert logps is not None  # choose always gives the drawn token's log-prob
        return completion, completion_mask, logps, done

    def teacher_forced(self, prompts: Sequence[str], completions: Sequence[str]) -> Rollout:
        """Given completions as a rollout (for SFT and tests): each ends with the end-of-turn token."""
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        ids, mask = right_pad(end_terminated(self.tokenizer, completions), self.pad_id)
        return Rollout(
            list(prompts),
            torch.cat([prompt_ids, ids.to(self.device)], dim=1),
            torch.cat([prompt_mask, mask.to(self.device)], dim=1),
            prompt_ids.shape[1],
            list(completions),
            torch.zeros(len(completions), dtype=torch.bool),
        )

    def rollout_logprobs(self, model: Any, rollout: Rollout, temperature: float) -> torch.Tensor:
        return completion_logprobs(
            model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len, temperature
        )


# ---------------------------------------------------------------------------------------- building


def load_base_model(config: PolicyConfig, device: str | torch.device = "cpu", sft_adapter: str | None = None):
    """(model, tokenizer): the base LM in ``config.dtype``, with an SFT adapter merged in if given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with loading("policy.model", config.model):
        tokenizer = AutoTokenizer.from_pretrained(config.model, revision=config.revision)
        model = AutoModelForCausalLM.from_pretrained(
            config.model, revision=config.revision, dtype=resolve_dtype(config.dtype)
        ).to(device)
    if sft_adapter is not None:
        model = merge_adapter(model, sft_adapter)
    return model, tokenizer


def build_policy(
    config: PolicyConfig,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    sft_adapter: str | None = None,
    adapter: str | None = None,
    lora: bool = True,
    trainable: bool = True,
    reference: bool = False,
) -> RewriterPolicy:
    """The policy: base model (+ merged SFT warm start) + LoRA (fresh, seeded init, or loaded), or all of it
    trained (``policy.full_finetune``; a frozen copy for the KL when ``reference``)."""
    model, tokenizer = load_base_model(config, device, sft_adapter)
    frozen = copy.deepcopy(model).requires_grad_(False) if config.full_finetune and reference else None
    if config.full_finetune and lora:
        model.requires_grad_(trainable)
    elif lora:
        model = add_lora(model, config.lora, adapter, seed=seed, trainable=trainable)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return RewriterPolicy(model, tokenizer, config, reference=frozen)


def save_rewriter(
    path: str | Path,
    policy: RewriterPolicy,
    model: Any = None,
    *,
    step: int | None = None,
    sft_adapter: str | Path | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write an inference-ready rewriter: ``adapter/`` (PEFT safetensors), the SFT adapter it sits on,
    and ``rewriter.json`` (base model, prompting and sampling settings). ``state_dict``: the weights
    gathered whole when the live model is sharded (FSDP2)."""
    import shutil

    from evalsuite.store import atomic_write_json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    full = policy.config.full_finetune  # its SFT warm start was merged into the weights before training
    save_lm(path, model or policy.model, policy.tokenizer, full=full, state_dict=state_dict)
    sft_adapter, sft_name = None if full else sft_adapter, None
    if sft_adapter is not None:
        sft_name = "sft_adapter"
        if Path(sft_adapter).resolve() != (path / sft_name).resolve():
            shutil.copytree(sft_adapter, path / sft_name, dirs_exist_ok=True)
    cfg = policy.config
    atomic_write_json(
        path / REWRITER_FILE,
        {
            "format": "evalsuite-rewriter",
            "version": 1,
            "step": step,
            "base_model": cfg.model,
            "revision": cfg.revision,
            "dtype": cfg.dtype,
            "system_prompt": cfg.system_prompt,
            "user_template": cfg.user_template,
            "response_prefix": cfg.response_prefix,
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "adapter": None if full else "adapter",
            "model": "model" if full else None,
            "sft_adapter": sft_name,
        },
    )
    return path


# ---------------------------------------------------------------------------------------- inference


class Rewriter:
    """A trained (or plain) rewriter for inference: ``rewrite(prompts, seed)`` → prompts to render."""

    def __init__(
        self, policy: RewriterPolicy, *, sample: bool = False, source: str | None = None, batch_size: int = 16
    ) -> None:
        self.policy = policy
        self.sample = sample
        self.source = source
        self.batch_size = batch_size

    def rewrite_detailed(self, prompts: Sequence[str], seed: int = 0) -> list[ParsedCompletion]:
        out: list[ParsedCompletion] = []
        for start in range(0, len(prompts), self.batch_size):
            part = list(prompts[start : start + self.batch_size])
            rollout = self.policy.sample(part, 1, seed + start, greedy=not self.sample)
            out.extend(self.policy.parse(rollout))
        return out

    def rewrite(self, prompts: Sequence[str], seed: int = 0) -> list[str]:
        """One rewrite per prompt (greedy unless ``sample``); a malformed answer gives back the original."""
        return [p.rendered for p in self.rewrite_detailed(prompts, seed)]

    def describe(self) -> dict[str, Any]:
        cfg = self.policy.config
        return {
            "rewriter": self.source,
            "base_model": cfg.model,
            "revision": cfg.revision,
            "sample": self.sample,
            "temperature": cfg.temperature,
            "max_new_tokens": cfg.max_new_tokens,
        }


def resolve_rewriter_dir(path: str | Path) -> Path | None:
    """The folder holding ``rewriter.json``: the path itself, a run's ``final/``, or its latest checkpoint."""
    path = Path(path)
    if (path / REWRITER_FILE).is_file():
        return path
    if (path / "final" / REWRITER_FILE).is_file():
        return path / "final"
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        candidate = path / "checkpoints" / latest.read_text().strip()
        if (candidate / REWRITER_FILE).is_file():
            return candidate
    return None


def load_rewriter(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    sample: bool = False,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
) -> Rewriter:
    """Load a rewriter saved by the trainer (a checkpoint, ``final/`` or a run folder), or wrap a plain
    instruct LM (Hub id or folder without ``rewriter.json``) with the default instruction as a baseline."""
    folder = resolve_rewriter_dir(path)
    if folder is None:
        if Path(path).exists() and not (Path(path) / "config.json").is_file():
            raise ConfigError(f"{path}: neither a trained rewriter ({REWRITER_FILE}) nor a model folder")
        cfg = PolicyConfig(model=str(path), dtype=dtype or "float32", system_prompt=DEFAULT_SYSTEM_PROMPT)
        if max_new_tokens is not None:
            cfg.max_new_tokens = max_new_tokens
        policy = build_policy(cfg, device=device, lora=False)
        policy.model.eval()
        return Rewriter(policy, sample=sample, source=str(path), batch_size=batch_size)
    meta = json.loads((folder / REWRITER_FILE).read_text())
    cfg = PolicyConfig(
        model=meta["base_model"],
        revision=meta.get("revision"),
        dtype=dtype or meta.get("dtype", "float32"),
        system_prompt=meta["system_prompt"],
        user_template=meta["user_template"],
        response_prefix=meta.get("response_prefix", ""),
        max_new_tokens=max_new_tokens or meta["max_new_tokens"],
        temperature=meta["temperature"],
    )
    cfg.model = str(folder / meta["model"]) if meta.get("model") else cfg.model  # a full fine-tune's LM
    sft = folder / meta["sft_adapter"] if meta.get("sft_adapter") else None
    policy = build_policy(
        cfg,
        device=device,
        sft_adapter=None if sft is None else str(sft),
        adapter=None if meta.get("model") else str(folder / meta.get("adapter", "adapter")),
        lora=not meta.get("model"),
        trainable=False,
    )
    policy.model.eval()
    return Rewriter(policy, sample=sample, source=str(folder), batch_size=batch_size)
