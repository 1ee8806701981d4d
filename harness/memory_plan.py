"""Per-GPU memory of a flow-policy run, from a formula: what fits where under DDP and FSDP2.

Terms (bytes per GPU, W processes, N transformer parameters, T trained ones — the LoRA's or all N):
- weights: N·e (e = bytes of the model dtype); FSDP2 keeps N·e/W plus the unit being all-gathered and
  the one prefetched (2·N·e/blocks);
- LoRA weights: fp32 whatever the model dtype, 4·T (harness/lora.py), /W under FSDP2; a full fine-tune
  trains the weights themselves (in their dtype), nothing apart;
- gradients: T·g (g = bytes of the trained weights' dtype), /W under FSDP2;
- optimizer: AdamW's two moments, 2·T·g (torch keeps them in the parameter's dtype), /W under FSDP2;
- activations with gradient checkpointing: each block keeps its input, s·b·h·e per block, and one block
  at a time is recomputed with everything it saves, ``BLOCK_ACTIVATIONS``·s·b·h·e (s tokens, b samples
  per micro-batch, h hidden size). The constant is measured here on FLUX's double-stream block with
  PyTorch's math attention (which saves the attention probabilities; flash attention saves less), so it
  is an upper bound on GPUs. Activations are per process and do not shard.
Not counted: frozen text encoders and VAE (often offloaded or on their own), the CUDA context and the
allocator's fragmentation (add ~2-4 GiB), the sampler's KV/latent buffers (small next to these).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
BLOCK_ACTIVATIONS = 42  # saved elements per token and hidden unit of one FLUX double block (tests)
STRATEGIES = ("ddp", "fsdp2")


@dataclass(frozen=True)
class TransformerShape:
    """What the formula needs of a model: sizes, not weights."""

    name: str
    params: float  # transformer parameters
    blocks: int  # repeated blocks (FSDP2 units, checkpointing units)
    hidden: int
    tokens: int  # image + text tokens of one sample at the training resolution
    lora_params: float  # trained parameters of the LoRA the recipes use


# FLUX.1-dev: 19 double + 38 single blocks, h 3072; 512² training (Flow-GRPO) → 1024 image + 512 text tokens.
# LoRA r=32 on Flow-GRPO's 13 projections: r·Σ(in+out) over them ≈ 131M (counted from the block layout).
FLUX_DEV = TransformerShape("FLUX.1-dev (12B)", 11.9e9, 57, 3072, 1024 + 512, 131e6)
# Qwen-Image: 60 blocks, h 3072; 512² → 1024 image tokens + ~256 text tokens; LoRA r=32 on its attention
# and image-MLP projections: same per-block count as FLUX's double block ≈ 60 · 3.5M.
QWEN_IMAGE = TransformerShape("Qwen-Image (20B)", 20.4e9, 60, 3072, 1024 + 256, 212e6)


def per_gpu_bytes(
    shape: TransformerShape,
    *,
    world: int,
    strategy: str,
    full_finetune: bool,
    micro_batch: int = 1,
    dtype_bytes: int = 2,
) -> dict[str, float]:
    """Each term of the module docstring in bytes, and their ``total``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    sharded = world if strategy == "fsdp2" else 1
    n, e = shape.params, dtype_bytes
    trained = n if full_finetune else shape.lora_params
    trained_bytes = e if full_finetune else 4  # LoRA weights are fp32; a full fine-tune keeps its dtype
    weights = n * e / sharded
    if strategy == "fsdp2" and world > 1:
        weights += 2 * n * e / shape.blocks
    terms = {
        "weights": weights,
        "lora_weights": 0.0 if full_finetune else 4 * trained / sharded,
        "gradients": trained * trained_bytes / sharded,
        "optimizer": 2 * trained * trained_bytes / sharded,
        "activations": shape.tokens * micro_batch * shape.hidden * e * (shape.blocks + BLOCK_ACTIVATIONS),
    }
    terms["total"] = sum(terms.values())
    return terms


def memory_table(shapes: tuple[TransformerShape, ...] = (FLUX_DEV, QWEN_IMAGE)) -> str:
    """The docs' Markdown table: GiB per GPU for LoRA / full fine-tuning at 1, 8 and 16 GPUs."""
    lines = [
        "| model | training | GPUs | DDP GiB/GPU | FSDP2 GiB/GPU |",
        "|---|---|---|---|---|",
    ]
    for shape in shapes:
        for full in (False, True):
            for world in (1, 8, 16):
                ddp, fsdp = (
                    per_gpu_bytes(shape, world=world, strategy=s, full_finetune=full)["total"] / GIB
                    for s in STRATEGIES
                )
                kind = "full" if full else "LoRA"
                lines.append(f"| {shape.name} | {kind} | {world} | {ddp:.0f} | {fsdp:.0f} |")
    return "\n".join(lines)
