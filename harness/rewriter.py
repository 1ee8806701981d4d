"""The RePrompt rewriter policy: chat prompting, sampling, robust parsing, exact log-probs, and loading.

An instruct LM reads the user's prompt through its chat template and answers
``<think> reasoning </think><answer> rewritten prompt </answer>``. Only the answer is rendered; anything
malformed renders the ORIGINAL prompt (never a crash) and is charged by the format reward.

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

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from evalsuite.harness.config import DEFAULT_SYSTEM_PROMPT, LoraSettings, PolicyConfig
from evalsuite.harness.model_source import loading

from evalsuite.errors import ConfigError
from evalsuite.reward import resolve_dtype

REWRITER_FILE = "rewriter.json"
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT_RE = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)

# ------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedCompletion:
    """One completion, judged. ``rendered`` is what the generator gets: the rewrite, or the original."""

    original: str
    text: str  # the full assistant text (response prefix + completion)
    well_formed: bool
    rewrite: str | None  # the answer of a well-formed completion (whitespace collapsed), else None
    think: str | None
    error: str | None  # why it is malformed (for logs), None when well formed

    @property
    def rendered(self) -> str:
        return self.rewrite if self.rewrite is not None else self.original


def count_words(text: str) -> int:
    return len(text.split())


def parse_completion(text: str, original: str, prefix: str = "") -> ParsedCompletion:
    """Judge ``prefix + text`` against the format ``<think>…</think><answer>…</answer>``.

    Well formed means: exactly one of each tag (so nothing is nested or repeated), in that order, nothing
    but whitespace outside them or between ``</think>`` and ``<answer>``, and a non-empty answer (RePrompt
    anchors its format regex at both ends, so trailing text fails too). The reasoning may be empty.
    """
    full = (prefix + text).strip()

    def bad(reason: str) -> ParsedCompletion:
        return ParsedCompletion(original, prefix + text, False, None, None, reason)

    counts = {tag: full.count(tag) for tag in TAGS}
    missing = [t for t, c in counts.items() if c == 0]
    if missing:
        return bad(f"missing {' '.join(missing)}")
    extra = [t for t, c in counts.items() if c > 1]
    if extra:
        return bad(f"duplicate or nested {' '.join(extra)}")
    positions = [full.index(tag) for tag in TAGS]
    if positions != sorted(positions):
        return bad("tags out of order")
    if not full.startswith("<think>"):
        return bad("extra text before <think>")
    if not full.endswith("</answer>"):
        return bad("extra text after </answer>")
    m = _FORMAT_RE.fullmatch(full)
    if m is None:
        return bad("extra text between </think> and <answer>")
    think, answer = m.group(1), m.group(2)
    rewrite = " ".join(answer.split())
    if not rewrite:
        return bad("empty answer")
    return ParsedCompletion(original, prefix + text, True, rewrite, think.strip(), None)


def format_completion(rewrite: str, think: str = "") -> str:
    """The well-formed completion for a (think, rewrite) pair: the SFT target."""
    return f"<think>{think}</think><answer>{rewrite}</answer>"


# ------------------------------------------------------------------------------------------ rollouts


@dataclass
class Rollout:
    """Completions of one batch as the padded tensors every forward uses.

    input_ids/attention_mask: (N, P + C), the left-padded chat prompt then the right-padded completion.
    completion_ids/completion_mask: (N, C); the mask covers the tokens up to and including the end token.
    """

    prompts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    texts: list[str]
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens before an end token
    logp: torch.Tensor | None = None  # (N, C) sampling-time log-probs (the sampler's or a recompute)
    ref_logp: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sampler_logp: torch.Tensor | None = None  # (N, C) fp32, from the sampler's own logits (0 after the end)

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    @property
    def completion_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_len :]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: slice) -> Rollout:
        """The same padded tensors restricted to rows ``index`` (no re-padding: shapes stay aligned)."""
        return Rollout(
            self.prompts[index],
            self.input_ids[index],
            self.attention_mask[index],
            self.prompt_len,
            self.texts[index],
            self.truncated[index],
            None if self.logp is None else self.logp[index],
            None if self.ref_logp is None else self.ref_logp[index],
            sampler_logp=None if self.sampler_logp is None else self.sampler_logp[index],
        )


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
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    targets = input_ids[:, prompt_len:]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1)


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


class RewriterPolicy:
    """A causal LM (usually a ``PeftModel``) plus its tokenizer and prompting/sampling settings."""

    def __init__(self, model: Any, tokenizer: Any, config: PolicyConfig) -> None:
        if config.temperature < 0:
            raise ConfigError(f"policy.temperature must be >= 0, got {config.temperature}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.end_ids = sorted(_end_token_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_ids[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def temperature(self) -> float:
        return self.config.temperature

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
        rows = [by_prompt[p] for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
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
    ) -> Rollout:
        """``num_samples`` completions per prompt (rows grouped by prompt), drawn from softmax(logits/T).

        ``seed`` fixes every draw (a private ``torch.Generator``); ``greedy`` or T = 0 takes the argmax.
        ``model`` overrides ``self.model`` (e.g. an unwrapped DDP module). Each drawn token's log-prob is
        taken from the logits it was drawn from (fp32 log-softmax of logits / T) into ``sampler_logp`` and
        ``logp``; ``record_logprobs`` replaces ``logp`` with the train-time forward's values if wanted.
        The prompt is run once per distinct prompt and its KV cache repeated ``num_samples`` times.
        """
        model = self.model if model is None else model
        expanded = [p for p in prompts for _ in range(num_samples)]
        prompt_ids, prompt_mask = self.encode_prompts(expanded)
        gen = torch.Generator(device=prompt_ids.device).manual_seed(int(seed))
        with _eval_mode(model), _lean_lora(model):
            completion, completion_mask, sampler_logp, done = self._decode(
                model, prompt_ids, prompt_mask, num_samples, gen, greedy or self.temperature == 0
            )
        truncated = ~done
        texts = self.tokenizer.batch_decode(
            [row[m.bool()].tolist() for row, m in zip(completion, completion_mask)], skip_special_tokens=True
        )
        return Rollout(
            expanded,
            torch.cat([prompt_ids, completion], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            prompt_ids.shape[1],
            texts,
            truncated.cpu(),
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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sampling loop: (completion ids, mask, sampler log-probs, done) for left-padded prompts."""
        n, device = prompt_ids.shape[0], prompt_ids.device
        ends = torch.tensor(self.end_ids, device=device)
        mask = prompt_mask
        pos = position_ids(prompt_mask)
        first = slice(None, None, num_samples)  # one row per prompt: rows repeat within a group
        out = model(
            input_ids=prompt_ids[first],
            attention_mask=mask[first],
            position_ids=pos[first],
            use_cache=True,
            logits_to_keep=1,
        )
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        if num_samples > 1:
            cache.batch_repeat_interleave(num_samples)
            logits = logits.repeat_interleave(num_samples, dim=0)
        last_pos = pos[:, -1]
        done = torch.zeros(n, dtype=torch.bool, device=device)
        tokens, alive, logps = [], [], []
        for _ in range(self.config.max_new_tokens):
            logits = logits.float()
            if greedy:
                nxt = logits.argmax(-1)
            else:
                logits = logits / self.temperature
                nxt = _draw(torch.softmax(logits, dim=-1), gen)
            # completion_logprobs' formula on the logits the token was drawn from (T = 0: unscaled)
            picked = logits.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            live = ~done
            nxt = torch.where(live, nxt, torch.full_like(nxt, self.pad_id))
            tokens.append(nxt)
            alive.append(live)
            logps.append(torch.where(live, picked, torch.zeros_like(picked)))
            done = done | torch.isin(nxt, ends)
            if bool(done.all()):
                break
            mask = torch.cat([mask, live.long().unsqueeze(-1)], dim=1)
            last_pos = last_pos + 1
            out = model(
                input_ids=nxt.unsqueeze(-1),
                attention_mask=mask,
                position_ids=last_pos.unsqueeze(-1),
                past_key_values=cache,
                use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1, :]
        return torch.stack(tokens, dim=1), torch.stack(alive, dim=1).long(), torch.stack(logps, dim=1), done

    def teacher_forced(self, prompts: Sequence[str], completions: Sequence[str]) -> Rollout:
        """Given completions as a rollout (for SFT and tests): each ends with the end-of-turn token."""
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        end = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        rows = [self.tokenizer(c, add_special_tokens=False)["input_ids"] + [end] for c in completions]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return Rollout(
            list(prompts),
            torch.cat([prompt_ids, ids.to(self.device)], dim=1),
            torch.cat([prompt_mask, mask.to(self.device)], dim=1),
            prompt_ids.shape[1],
            list(completions),
            torch.zeros(len(rows), dtype=torch.bool),
        )

    def logprobs(
        self, rollout: Rollout, model: Any = None, *, temperature: float | None = None
    ) -> torch.Tensor:
        """(N, C) log-probs of the rollout's completion tokens (with grad if enabled by the caller)."""
        return completion_logprobs(
            self.model if model is None else model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.prompt_len,
            self.temperature if temperature is None else temperature,
        )

    @torch.no_grad()
    def record_logprobs(self, rollout: Rollout, micro_batch_size: int, *, reference: bool = False) -> None:
        """Fill ``rollout.logp`` (and ``ref_logp`` with the adapter disabled) in eval mode, in exactly
        the micro-batches the trainer will use for its first recompute."""
        with _eval_mode(self.model):
            rollout.logp = torch.cat([self.logprobs(c) for c in _chunks(rollout, micro_batch_size)])
        if reference:
            self.record_reference_logprobs(rollout, micro_batch_size)

    @torch.no_grad()
    def record_reference_logprobs(self, rollout: Rollout, micro_batch_size: int) -> None:
        """Fill ``rollout.ref_logp``: the same forward with the LoRA adapter off (the KL reference)."""
        with _eval_mode(self.model), _reference_policy(self.model):
            rollout.ref_logp = torch.cat([self.logprobs(c) for c in _chunks(rollout, micro_batch_size)])

    def parse(self, rollout: Rollout) -> list[ParsedCompletion]:
        return [
            parse_completion(t, p, self.config.response_prefix)
            for t, p in zip(rollout.texts, rollout.prompts)
        ]


def _draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row from (N, V) probabilities: invert the float64 CDF at one uniform per row (the
    distribution of ``torch.multinomial``, at a tenth of its CPU time for 32 × 507; a float32 CDF would
    round away the mass of tail tokens in a 150k vocabulary). Zero-probability tokens are never drawn."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=gen, dtype=torch.float64, device=probs.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _chunks(rollout: Rollout, micro_batch_size: int) -> list[Rollout]:
    return [rollout.rows(slice(i, i + micro_batch_size)) for i in range(0, len(rollout), micro_batch_size)]


def _set_training(model: Any, mode: bool) -> None:
    """``model.train(mode)`` unless the model is already in that mode: the call walks every submodule,
    which costs milliseconds per call on a small model and happens several times per step."""
    if model.training != mode:
        model.train(mode)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    _set_training(model, False)
    try:
        yield
    finally:
        _set_training(model, was_training)


@contextlib.contextmanager
def _lean_lora(model: Any, *, adapter: bool = True) -> Iterator[bool]:
    """Run PEFT LoRA linears as plain ops while inside: ``linear(x, W, b) + linear(linear(x, A), B) *
    scaling`` (``adapter=False``: ``linear(x, W, b)``, the reference policy), the very ops of
    ``peft.tuners.lora.Linear.forward`` in the same order (bit-identical output), without its per-call
    checks and three submodule calls. Decoding runs hundreds of one-token forwards, where that overhead
    was a quarter of the sampler's time on the tiny model (and is what keeps a GPU waiting at small batch).
    Layers in any other state (merged, several adapters, DoRA and other variants, quantized or already
    patched base layers) keep PEFT's forward. Yields whether every PEFT layer of the model was patched."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # no PEFT: nothing to patch
        yield True
        return
    patched, complete = [], True
    for module in model.modules():
        forward = _lean_forward(module, adapter) if type(module) is LoraLinear else None
        if forward is not None:
            module.forward = forward
            patched.append(module)
        elif isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            complete = False
    try:
        yield complete
    finally:
        for module in patched:
            del module.forward


def _lean_forward(module: Any, adapter: bool) -> Any:
    """The plain-ops forward of one PEFT LoRA ``Linear``, or None where PEFT's own must run."""
    base = module.base_layer
    if "forward" in vars(module) or module.merged or type(base) is not torch.nn.Linear:
        return None
    linear = torch.nn.functional.linear
    if not adapter:

        def reference(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if args or kwargs:
                return base(x, *args, **kwargs)
            return linear(x, base.weight, base.bias)

        return reference
    active = module.active_adapters
    if module.disable_adapters or len(active) != 1 or active[0] in module.lora_variant:
        return None
    name = active[0]
    if name not in module.lora_A:
        return None
    a, b, dropout, scaling = (
        module.lora_A[name],
        module.lora_B[name],
        module.lora_dropout[name],
        module.scaling[name],
    )
    if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear:
        return None
    cast = getattr(module, "cast_input_dtype_enabled", True)
    identity = isinstance(dropout, torch.nn.Identity)

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:  # e.g. PEFT's per-row adapter_names: its own forward handles them
            return type(module).forward(module, x, *args, **kwargs)
        result = linear(x, base.weight, base.bias)
        dtype = result.dtype
        if cast and x.dtype != a.weight.dtype:
            x = x.to(a.weight.dtype)
        if not identity:
            x = dropout(x)
        return (result + linear(linear(x, a.weight, a.bias), b.weight, b.bias) * scaling).to(dtype)

    return forward


@contextlib.contextmanager
def _reference_policy(model: Any) -> Iterator[None]:
    """The reference policy: the same weights with the LoRA adapter switched off (no second copy).
    PEFT's ``disable_adapter`` walks the model three times per call (5 ms on the tiny model); the lean
    forwards skip the adapter without touching any state, and PEFT's switch runs only when some layer
    could not take them."""
    if not hasattr(model, "disable_adapter"):
        raise ConfigError("a KL reference needs a PEFT model (LoRA); got a model without adapters")
    with _lean_lora(model, adapter=False) as complete, contextlib.ExitStack() as stack:
        if not complete:
            stack.enter_context(model.disable_adapter())
        yield


def _adapter_disabled(model: Any):
    """The reference policy: the same weights with the LoRA adapter switched off (no second copy)."""
    if not hasattr(model, "disable_adapter"):
        raise ConfigError("a KL reference needs a PEFT model (LoRA); got a model without adapters")
    return model.disable_adapter()


def _end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None)
    if eos is not None:
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ConfigError("the rewriter's tokenizer/model defines no end-of-sequence token")
    return {int(i) for i in ids}


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
        from peft import PeftConfig, PeftModel

        targets = PeftConfig.from_pretrained(sft_adapter).target_modules or ()
        if "lm_head" in targets:
            _untie_lm_head(model)
        model = PeftModel.from_pretrained(model, sft_adapter).merge_and_unload()
    return model, tokenizer


def _untie_lm_head(model: Any) -> None:
    """Give lm_head its own weight before merging a LoRA into it: with tied embeddings the merge would
    otherwise also change the input embeddings (a different model than the one that was trained)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        model.config.tie_word_embeddings = False


def add_lora(
    model: Any,
    lora: LoraSettings,
    adapter: str | None = None,
    *,
    trainable: bool = True,
    targets: str | list[str] | None = None,
):
    """Wrap ``model`` in a PEFT LoRA: a fresh adapter, or the one saved at ``adapter``. ``targets``
    (names or a PEFT regex) overrides ``lora.target_modules``, e.g. to keep a vision tower out."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    if lora.r < 1:
        raise ConfigError(f"policy.lora.r must be >= 1 (full fine-tuning is not supported), got {lora.r}")
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if targets is None else targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def build_policy(
    config: PolicyConfig,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    sft_adapter: str | None = None,
    adapter: str | None = None,
    lora: bool = True,
    trainable: bool = True,
) -> RewriterPolicy:
    """The policy: base model (+ merged SFT warm start) + LoRA (fresh, seeded init, or loaded)."""
    model, tokenizer = load_base_model(config, device, sft_adapter)
    if lora:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA A matrices are random: same seed, same start on every rank
            model = add_lora(model, config.lora, adapter, trainable=trainable)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return RewriterPolicy(model, tokenizer, config)


def save_rewriter(
    path: str | Path,
    policy: RewriterPolicy,
    model: Any = None,
    *,
    step: int | None = None,
    sft_adapter: str | Path | None = None,
) -> Path:
    """Write an inference-ready rewriter: ``adapter/`` (PEFT safetensors), the SFT adapter it sits on,
    and ``rewriter.json`` (base model, prompting and sampling settings)."""
    import shutil

    from evalsuite.store import atomic_write_json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (model or policy.model).save_pretrained(path / "adapter", safe_serialization=True)
    sft_name = None
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
            "adapter": "adapter",
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
    sft = folder / meta["sft_adapter"] if meta.get("sft_adapter") else None
    policy = build_policy(
        cfg,
        device=device,
        sft_adapter=None if sft is None else str(sft),
        adapter=str(folder / meta.get("adapter", "adapter")),
        trainable=False,
    )
    policy.model.eval()
    return Rewriter(policy, sample=sample, source=str(folder), batch_size=batch_size)
