"""Configuration of a rewriter GRPO run: plain dataclasses, loaded from YAML with strict key checking.

One ``TrainConfig`` describes a whole run (policy, generator, rewards, data, GRPO, optimizer, run
settings). Recipes in ``harness/recipes/*.yaml`` fill it with the reference values; tests build the same
classes with tiny paths. Unknown keys are errors (a typo must not silently train with a default), and
``key.path=value`` overrides are parsed as YAML scalars so ``grpo.beta=0`` works from a command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import ConfigError

# Our own wording of RePrompt's instruction: reason about the scene, then give the rewrite in tags.
DEFAULT_SYSTEM_PROMPT = (
    "You improve prompts for a text-to-image model. Read the user's prompt, think step by step about "
    "what the image must show (objects, how many of each, colors, positions, style, lighting), then write "
    "one detailed prompt of 15 to 77 words that keeps every requirement of the original. Put your "
    "reasoning inside <think> </think> and the final prompt inside <answer> </answer>, like this: "
    "<think> reasoning here </think><answer> the rewritten prompt </answer>."
)
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """PEFT LoRA on the rewriter. The reference policy is the same model with the adapter disabled."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0  # > 0 is only active if policy.train_mode is on (see PolicyConfig)
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))


@dataclass
class PolicyConfig:
    """The rewriter LM and how it is prompted and sampled.

    ``temperature`` is applied as logits / T both when sampling and when computing log-probs; top-k, top-p
    and repetition penalty are always off while training, because the recorded log-probs must be those of
    the distribution the tokens were drawn from. ``train_mode`` runs the loss forward in train mode
    (dropout active, needed by HF gradient checkpointing): the on-policy self-test then fails unless every
    dropout probability is 0.
    """

    model: str = "Qwen/Qwen2.5-3B-Instruct"
    revision: str | None = None
    dtype: str = "bfloat16"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    user_template: str = "{prompt}"
    response_prefix: str = ""  # pre-filled start of the assistant turn (e.g. "<think>"), part of the parse
    max_new_tokens: int = 256
    temperature: float = 0.9
    lora: LoraSettings = field(default_factory=LoraSettings)
    full_finetune: bool = False  # train every weight (RePrompt), no LoRA; KL reference: a frozen copy
    gradient_checkpointing: bool = False
    train_mode: bool = False


@dataclass
class GeneratorConfig:
    """The frozen text-to-image model that renders rewrites. ``model: null`` renders nothing (text-only
    rewards); a reward that needs images then stops the run at start-up."""

    model: str | None = "black-forest-labs/FLUX.1-dev"
    revision: str | None = None
    dtype: str = "bfloat16"
    device: str | None = None  # default: the process's accelerator device
    num_inference_steps: int = 28
    guidance_scale: float | None = 3.5
    height: int = 512
    width: int = 512
    batch_size: int = 4
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # extra pipeline arguments
    same_noise_in_group: bool = True  # every rewrite of a prompt gets the same seed: only the text differs


@dataclass
class RewardSpec:
    """One reward component. ``name`` is a registry name, or the built-ins "format" and "length";
    ``target`` ("module:Class") builds a reward class that is not registered (tests, private rewards)."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: str | None = None


@dataclass
class RewardsConfig:
    """How components are combined. ``normalize``: "batch" standardizes each component over the step's
    whole batch (all ranks) before the weighted sum, so weights compare like with like whatever each
    reward's scale; "none" sums raw values (weights then carry the scale).

    ``chunk_groups``: a step's groups are rendered and scored in chunks of this many groups (null: the
    whole step at once); ``overlap`` scores chunk k on a worker thread while chunk k+1 samples — it changes
    nothing but speed (docs/training.md). ``timeout_s`` bounds each reward call (null: no bound);
    a call that raises is retried ``retries`` times after ``retry_backoff_s``·2^attempt seconds, then the
    run stops naming the reward (reward_calls.py)."""

    components: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("format"), RewardSpec("length")])
    normalize: str = "batch"
    min_words: int = 15
    max_words: int = 77
    overlap: bool = False
    chunk_groups: int | None = None
    timeout_s: float | None = None
    retries: int = 2
    retry_backoff_s: float = 1.0


@dataclass
class DataConfig:
    """Training prompts: inline ``prompts`` (strings or {"prompt", ...metadata} rows), a local ``path``
    (.jsonl rows or .txt lines), or an evalsuite data file ``key`` (flowgrpo/geneval/train_metadata.jsonl).
    Every key of a row other than "prompt" and "id" is the sample's metadata (GenEval's tag/include...)."""

    prompts: list[Any] | None = None
    path: str | None = None
    key: str | None = None
    data_dir: str | None = None
    limit: int | None = None
    shuffle: bool = True


@dataclass
class SFTConfig:
    """Optional supervised warm start on (prompt, rewrite[, think]) pairs, as RePrompt's SFT stage.

    A LoRA is trained on the completion tokens, saved to ``out_dir/sft_adapter`` and merged into the base
    weights; RL then trains a fresh adapter, so the KL reference (adapter off) is the SFT model."""

    steps: int = 0  # 0 = no warm start
    pairs: list[dict[str, str]] | None = None
    path: str | None = None  # .jsonl with "prompt", "rewrite" and optional "think"
    lr: float = 1e-5
    batch_size: int = 4
    target_modules: list[str] | None = None  # LoRA targets of the warm start (default: policy.lora's)


@dataclass
class GRPOSettings:
    """GRPO hyper-parameters (names follow evalsuite.harness.grpo)."""

    group_size: int = 4
    prompts_per_step: int = 8  # global, over all ranks; each rank takes a whole-group share
    num_inner_epochs: int = 1
    minibatches: int = 1  # optimizer steps per inner epoch
    micro_batch_size: int = 8  # completions per forward (gradient accumulation inside a minibatch)
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    beta: float = 0.04
    aggregation: str = "sequence_mean"
    advantage_mode: str = "group_std"
    advantage_eps: float = 1e-4
    adv_clip: float | None = 5.0
    per_prompt_tracker: bool = False  # Flow-GRPO's running per-prompt statistics instead of the group
    ratio_check: bool = True
    ratio_tol: float = 1e-5
    # Where the rollout's (old) log-probs come from. "sampler": the sampler's own logits, no extra forward;
    # the self-test then compares the KV-cache sampler with the train-time forward (we measured at most
    # 1.5e-6 apart in float32, 2e-3 to 1.6e-2 in bfloat16). "recompute": one more forward after sampling
    # with the train-time function (exactly equal, any dtype). "auto": sampler in float32, else recompute.
    logprobs_from: str = "auto"


@dataclass
class OptimConfig:
    lr: float = 2e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0


@dataclass
class TrainConfig:
    """A whole run. ``resume`` continues from ``out_dir/checkpoints/latest`` when it exists."""

    out_dir: str = "runs/rewriter"
    steps: int = 100
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int | None = 3
    resume: bool = True
    resume_override: bool = False  # resume even with changed settings, recorded in the manifest's history
    log_samples_every: int = 1
    logged_samples: int = 8
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "evalsuite-rewriter"
    torch_threads: int | None = None
    progress: bool = True
    log_param_hash: bool = False  # each rank logs a SHA-256 of its trainable weights per step (DDP desync)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ loading


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from plain data, checking every key and coercing YAML scalars."""
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "2e-6" as a string
        except ValueError:
            pass
    if (tp in (int, float, str, bool) and not isinstance(value, tp)) or (
        tp is int and isinstance(value, bool)
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_recipe(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML recipe as plain data, with ``key.path=value`` overrides applied."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return apply_overrides(data, overrides or [])


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (plus overrides) into a ``TrainConfig``."""
    return from_dict(TrainConfig, read_recipe(path, overrides), str(path))


def save_config(config: Any, path: str | Path) -> None:
    """Any run config (a dataclass with ``to_dict``) as YAML, atomically."""
    from evalsuite.store import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))
