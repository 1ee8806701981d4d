"""The per-GPU memory formula (harness/memory_plan.py): a case worked by hand, and each term against what a
medium FLUX transformer here really holds (tensor bytes after an AdamW step; bytes saved for backward)."""

from __future__ import annotations

import pytest
import torch

from evalsuite.harness.memory_plan import (
    BLOCK_ACTIVATIONS,
    FLUX_DEV,
    TransformerShape,
    memory_table,
    per_gpu_bytes,
)

HAND = TransformerShape("hand", params=1000, blocks=10, hidden=4, tokens=8, lora_params=10)


def test_formula_on_a_case_worked_by_hand():
    full = per_gpu_bytes(HAND, world=2, strategy="fsdp2", full_finetune=True)
    # weights 1000·2/2 + 2·1000·2/10 gathered units; grads 1000·2/2; AdamW 2·1000·2/2; acts 8·4·2·(10 + 42)
    assert full == {
        "weights": 1400,
        "lora_weights": 0,
        "gradients": 1000,
        "optimizer": 2000,
        "activations": 8 * 4 * 2 * (10 + BLOCK_ACTIVATIONS),
        "total": 4400 + 3328,
    }
    lora = per_gpu_bytes(HAND, world=8, strategy="ddp", full_finetune=False)
    assert (lora["weights"], lora["lora_weights"], lora["gradients"], lora["optimizer"]) == (2000, 40, 40, 80)
    with pytest.raises(ValueError, match="strategy"):
        per_gpu_bytes(HAND, world=2, strategy="zero3", full_finetune=True)


def test_table_rows_shrink_with_fsdp_and_gpus():
    table = memory_table()
    assert table.count("\n") == 2 + 2 * 2 * 3 - 1
    one = per_gpu_bytes(FLUX_DEV, world=1, strategy="fsdp2", full_finetune=True)["total"]
    sixteen = per_gpu_bytes(FLUX_DEV, world=16, strategy="fsdp2", full_finetune=True)["total"]
    ddp = per_gpu_bytes(FLUX_DEV, world=16, strategy="ddp", full_finetune=True)["total"]
    assert sixteen < one / 4 and ddp == one  # DDP replicates everything; FSDP2 divides all but activations


def _medium(layers: int, single: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=layers,
        num_single_layers=single,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )


def _forward(model, batch: int, image_tokens: int, text_tokens: int):
    x, enc = torch.randn(batch, image_tokens, 64), torch.randn(batch, text_tokens, 64)
    return model(
        hidden_states=x,
        encoder_hidden_states=enc,
        pooled_projections=torch.randn(batch, 32),
        timestep=torch.ones(batch),
        img_ids=torch.zeros(image_tokens, 3),
        txt_ids=torch.zeros(text_tokens, 3),
        guidance=torch.ones(batch),
    ).sample


def _saved_bytes(model, checkpointing: bool, batch: int, image_tokens: int, text_tokens: int) -> int:
    """Bytes autograd keeps for backward (each storage once): the activations of one forward."""
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _forward(model, batch, image_tokens, text_tokens)
    return sum(seen.values())


@pytest.mark.parametrize("full_finetune", [True, False])
def test_weight_gradient_and_optimizer_terms_equal_what_is_held(full_finetune):
    from evalsuite.harness.flow_config import FlowLoraSettings
    from evalsuite.harness.lora import add_transformer_lora

    torch.set_num_threads(1)
    model = _medium(1, 2)
    base = sum(p.numel() for p in model.parameters())
    if full_finetune:
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
        add_transformer_lora(model, FlowLoraSettings(r=4, alpha=4, target_modules=["to_q", "to_k", "to_v"]))
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-3)
    _forward(model, 1, 16, 8).square().mean().backward()
    opt.step()

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    lora = 0 if full_finetune else sum(p.numel() for p in trained)
    shape = TransformerShape("medium", base, 3, 128, 24, lora)
    terms = per_gpu_bytes(shape, world=1, strategy="ddp", full_finetune=full_finetune, dtype_bytes=4)
    frozen_or_all = [p for p in model.parameters() if full_finetune or not p.requires_grad]
    assert terms["weights"] == nbytes(frozen_or_all)
    assert terms["lora_weights"] == (0 if full_finetune else nbytes(trained))
    assert terms["gradients"] == nbytes(p.grad for p in trained)
    moments = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    assert terms["optimizer"] == nbytes(moments)


def test_activation_term_against_bytes_saved_for_backward():
    """With checkpointing a run holds every block's input plus one block's full activations while it is
    recomputed; measured on a medium model of another shape than the constant was measured on."""
    torch.set_num_threads(1)
    batch, image_tokens, text_tokens = 3, 96, 32
    stored = _saved_bytes(_medium(2, 3), True, batch, image_tokens, text_tokens)
    one_block = _saved_bytes(_medium(1, 0), False, batch, image_tokens, text_tokens) - _saved_bytes(
        _medium(1, 0), True, batch, image_tokens, text_tokens
    )
    measured = stored + one_block
    shape = TransformerShape("medium", 0, 5, 128, image_tokens + text_tokens, 0)
    predicted = per_gpu_bytes(
        shape, world=1, strategy="ddp", full_finetune=True, micro_batch=batch, dtype_bytes=4
    )["activations"]
    assert predicted == pytest.approx(measured, rel=0.25), (predicted, measured)
