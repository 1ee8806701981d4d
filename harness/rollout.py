"""What the LM rewriter and the VL refiner share: completions as padded tensors, and the policy around them.

Both policies feed a chat prompt (left-padded, so the KV-cache decode appends one column for every row)
and draw a right-padded completion from softmax(logits / T) with nothing else applied. Both score it with
ONE log-prob formula (``gathered_logprobs``), record the sampling-time and reference log-probs in the
trainer's micro-batches, and judge it with the same parser. What differs (the prompt encoding, positions,
images, the forward) stays in ``rewriter.py`` and ``vl_policy.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

from evalsuite.errors import ConfigError
from evalsuite.harness.completion_format import ParsedCompletion, parse_completion
from evalsuite.harness.config import PolicyConfig
from evalsuite.harness.lora import reference_policy

# ------------------------------------------------------------------------------------------ rollouts

_Batch = TypeVar("_Batch", bound="CompletionBatch")


@dataclass
class CompletionBatch:
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

    def rows(self: _Batch, index: slice) -> _Batch:
        """The same padded tensors restricted to rows ``index`` (no re-padding: shapes stay aligned)."""
        return replace(self, **self._rows_of_fields(index))

    def _rows_of_fields(self, index: slice) -> dict[str, Any]:
        """Each per-row field restricted to rows ``index`` (``extra`` starts empty); subclasses add theirs."""
        return {
            "prompts": self.prompts[index],
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "texts": self.texts[index],
            "truncated": self.truncated[index],
            "logp": None if self.logp is None else self.logp[index],
            "ref_logp": None if self.ref_logp is None else self.ref_logp[index],
            "extra": {},
        }


def micro_batches(rollout: _Batch, micro_batch_size: int) -> list[_Batch]:
    """``rollout`` in consecutive row blocks of ``micro_batch_size``: the trainer's forward batches."""
    return [rollout.rows(slice(i, i + micro_batch_size)) for i in range(0, len(rollout), micro_batch_size)]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token rows into ``(input_ids, attention_mask)``, padded on the LEFT with ``pad_id``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def end_terminated(tokenizer: Any, completions: Sequence[str]) -> list[list[int]]:
    """Each completion's token ids followed by the end-of-turn token: a teacher-forced completion."""
    end = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return [tokenizer(c, add_special_tokens=False)["input_ids"] + [end] for c in completions]


def completion_texts(tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The text of each completion row: its unmasked tokens, special tokens dropped."""
    rows = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a completion (the generation config's and the tokenizer's EOS), sorted."""
    ids: set[int] = set()
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None)
    if eos is not None:
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ConfigError("the rewriter's tokenizer/model defines no end-of-sequence token")
    return sorted(int(i) for i in ids)


def gathered_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 log softmax(logits / T) at ``targets`` (T = 0: unscaled): THE formula of a token's log-prob,
    so the sampler's record and the train-time recompute agree exactly."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


TokenChooser = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
NextLogits = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def decode_loop(
    logits: torch.Tensor,
    choose: TokenChooser,
    next_logits: NextLogits,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    end_ids: Sequence[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The KV-cache decoding loop of both policies: (completion ids, mask, log-probs or None, done).

    ``logits``: (N, V) at the prompts' last position. ``choose`` picks each row's next token from fp32
    logits (with its log-prob, or None); ``next_logits(tokens, attention_mask, step)`` runs them through
    the model on its cache. A row's mask covers its tokens up to and including its first end token; after
    it the row gets ``pad_id`` (masked, log-prob 0). No forward runs after the last token.
    """
    n, device = logits.shape[0], logits.device
    ends = torch.tensor(list(end_ids), device=device)
    mask = attention_mask
    done = torch.zeros(n, dtype=torch.bool, device=device)
    tokens, alive, logps = [], [], []
    for step in range(max_new_tokens):
        nxt, logp = choose(logits.float())
        live = ~done
        nxt = torch.where(live, nxt, torch.full_like(nxt, pad_id))
        tokens.append(nxt)
        alive.append(live)
        if logp is not None:
            logps.append(torch.where(live, logp, torch.zeros_like(logp)))
        done = done | torch.isin(nxt, ends)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, live.long().unsqueeze(-1)], dim=1)
        logits = next_logits(nxt, mask, step)
    recorded = torch.stack(logps, dim=1) if logps else None
    return torch.stack(tokens, dim=1), torch.stack(alive, dim=1).long(), recorded, done


# ----------------------------------------------------------------------------------- model modes


def set_training(model: Any, mode: bool) -> None:
    """``model.train(mode)`` unless the model is already in that mode: the call walks every submodule,
    which costs milliseconds per call on a small model and happens several times per step."""
    if model.training != mode:
        model.train(mode)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode while inside (no dropout), the previous mode restored afterwards even on error."""
    was_training = model.training
    set_training(model, False)
    try:
        yield
    finally:
        set_training(model, was_training)


# ------------------------------------------------------------------------------------ the policy


class CompletionPolicy:
    """A chat model (usually a ``PeftModel``) that writes ``<think>…</think><answer>…</answer>``
    completions: the settings check, log-prob recording and parsing both prompt policies share.

    Subclasses set ``end_ids``/``pad_id`` and define ``rollout_logprobs`` (their one forward)."""

    end_ids: list[int]
    pad_id: int

    def __init__(self, model: Any, tokenizer: Any, config: PolicyConfig) -> None:
        if config.temperature < 0:
            raise ConfigError(f"policy.temperature must be >= 0, got {config.temperature}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def temperature(self) -> float:
        return self.config.temperature

    def rollout_logprobs(self, model: Any, rollout: Any, temperature: float) -> torch.Tensor:
        """The policy's one forward: (N, C) log-probs of ``rollout``'s completions under ``model``."""
        raise NotImplementedError

    def logprobs(self, rollout: Any, model: Any = None, *, temperature: float | None = None) -> torch.Tensor:
        """(N, C) log-probs of the rollout's completion tokens (with grad if enabled by the caller)."""
        return self.rollout_logprobs(
            self.model if model is None else model,
            rollout,
            self.temperature if temperature is None else temperature,
        )

    @torch.no_grad()
    def record_logprobs(self, rollout: Any, micro_batch_size: int, *, reference: bool = False) -> None:
        """Fill ``rollout.logp`` (and ``ref_logp`` with the adapter disabled) in eval mode, in exactly
        the micro-batches the trainer will use for its first recompute."""
        with eval_mode(self.model):
            rollout.logp = torch.cat([self.logprobs(c) for c in micro_batches(rollout, micro_batch_size)])
        if reference:
            self.record_reference_logprobs(rollout, micro_batch_size)

    @torch.no_grad()
    def record_reference_logprobs(self, rollout: Any, micro_batch_size: int) -> None:
        """Fill ``rollout.ref_logp``: the same forward with the LoRA adapter off (the KL reference)."""
        with eval_mode(self.model), reference_policy(self.model):
            rollout.ref_logp = torch.cat([self.logprobs(c) for c in micro_batches(rollout, micro_batch_size)])

    def parse(self, rollout: CompletionBatch) -> list[ParsedCompletion]:
        """Each completion judged; ``.rendered`` is the rewrite, or the original prompt when malformed."""
        return [
            parse_completion(t, p, self.config.response_prefix)
            for t, p in zip(rollout.texts, rollout.prompts)
        ]
