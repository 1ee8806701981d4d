"""All LoRA plumbing of the three policies: adding, merging, switching off, fast decoding, saving, loading.

The LM rewriter and the VL refiner are ``PeftModel``s (transformers + PEFT); the flow policy's
transformer carries its adapter through diffusers' PEFT integration. In every case the reference policy
of the KL term is the same weights with the adapter switched off, so no second copy is held.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError
from evalsuite.harness.config import LoraSettings
from evalsuite.harness.flow_config import FlowLoraSettings

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name for a saved transformer LoRA

# --------------------------------------------------------------------------- transformers LMs (PEFT)


def add_lora(
    model: Any,
    lora: LoraSettings,
    adapter: str | None = None,
    *,
    seed: int = 0,
    trainable: bool = True,
    targets: str | list[str] | None = None,
):
    """Wrap ``model`` in a PEFT LoRA: a fresh adapter, or the one saved at ``adapter``. ``targets``
    (names or a PEFT regex) overrides ``lora.target_modules``, e.g. to keep a vision tower out.

    LoRA A matrices are random: they are drawn under ``seed`` (same start on every rank) without
    touching the global RNG."""
    from peft import LoraConfig, PeftModel, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if adapter is not None:
            return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
        if lora.r < 1:
            raise ConfigError(f"policy.lora.r must be >= 1 (or policy.full_finetune: true), got {lora.r}")
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules) if targets is None else targets,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)


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


def add_language_lora(
    model: Any, lora: LoraSettings, adapter: str | None = None, *, seed: int = 0, trainable: bool = True
):
    """A PEFT LoRA on the language model's linear layers only: fresh, or the one saved at ``adapter``."""
    return add_lora(
        model,
        lora,
        adapter,
        seed=seed,
        trainable=trainable,
        targets=language_lora_pattern(lora.target_modules),
    )


def merge_adapter(model: Any, adapter: str) -> Any:
    """``model`` with the PEFT adapter saved at ``adapter`` merged into its weights (an SFT warm start)."""
    from peft import PeftConfig, PeftModel

    targets = PeftConfig.from_pretrained(adapter).target_modules or ()
    if "lm_head" in targets:
        _untie_lm_head(model)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def _untie_lm_head(model: Any) -> None:
    """Give lm_head its own weight before merging a LoRA into it: with tied embeddings the merge would
    otherwise also change the input embeddings (a different model than the one that was trained)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        model.config.tie_word_embeddings = False


def enable_gradient_checkpointing(model: Any) -> None:
    """HF gradient checkpointing; the embeddings' outputs then require grad, because with a LoRA the
    frozen embeddings would otherwise cut the graph before the first checkpointed block."""
    model.gradient_checkpointing_enable()
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


# ------------------------------------------------------------------------------ the reference policy


def _require_adapter(model: Any) -> None:
    if not hasattr(model, "disable_adapter"):
        raise ConfigError("a KL reference needs a PEFT model (LoRA); got a model without adapters")


@contextlib.contextmanager
def reference_policy(model: Any) -> Iterator[None]:
    """The reference policy of a PEFT model: the same weights with the LoRA adapter switched off (no second
    copy). PEFT's ``disable_adapter`` walks the model three times per call (5 ms on the tiny model); the
    lean forwards skip the adapter without touching any state, and PEFT's switch runs only when some layer
    could not take them."""
    _require_adapter(model)
    with lean_lora(model, adapter=False) as complete, contextlib.ExitStack() as stack:
        if not complete:
            stack.enter_context(model.disable_adapter())
        yield


@contextlib.contextmanager
def lean_lora(model: Any, *, adapter: bool = True) -> Iterator[bool]:
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


# ------------------------------------------- diffusers transformers (FLUX, SD3, any flow family)


def add_transformer_lora(transformer: Any, lora: FlowLoraSettings, *, seed: int = 0) -> None:
    """A fresh Gaussian-init LoRA on the ``lora.target_modules`` the transformer has, its weights in fp32
    (master weights for the adapter, whatever the base dtype) and the only trainable parameters."""
    from peft import LoraConfig

    names = {n for n, _ in transformer.named_modules()}
    targets = [t for t in lora.target_modules if any(n == t or n.endswith("." + t) for n in names)]
    if not targets:
        raise ConfigError(f"flow.lora.target_modules {lora.target_modules} match no transformer module")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, init_lora_weights="gaussian", target_modules=targets)
        )
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)


@contextlib.contextmanager
def transformer_adapter_disabled(transformer: Any) -> Iterator[None]:
    """The reference policy: the base transformer (LoRA off), restored afterwards even on error."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def transformer_lora_state_dict(transformer: Any) -> dict[str, torch.Tensor]:
    """The adapter's weights, detached on the CPU (what a checkpoint writes)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def transformer_lora_metadata(transformer: Any) -> dict[str, Any]:
    """The adapter's PEFT config (rank, alpha, targets) as diffusers saves it next to the weights: without it
    a loader assumes alpha == rank and renders an adapter with alpha != rank at the wrong strength."""
    return transformer.peft_config["default"].to_dict()


def save_transformer_lora(
    pipeline_type: type,
    folder: str,
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
) -> None:
    """diffusers LoRA format (with the adapter's rank/alpha metadata): loaded by ``pipe.load_lora_weights``
    and ``evalsuite run --lora``."""
    pipeline_type.save_lora_weights(
        folder,
        transformer_lora_layers=state_dict,
        transformer_lora_adapter_metadata=metadata,
        safe_serialization=True,
    )


def load_transformer_lora(transformer: Any, folder: str) -> None:
    """Restore adapter weights written by ``save_transformer_lora`` into the existing adapter (resume)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / LORA_WEIGHTS))
    weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
    result = set_peft_model_state_dict(transformer, weights)
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"{folder}: LoRA does not match flow.lora ({result.unexpected_keys[:3]}…)")
