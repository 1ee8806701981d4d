"""Flow-GRPO step time and MFU of a FLUX.1-dev-size transformer (random weights, bf16, LoRA) on a GPU.

One step = SDE sampling of B images over ``NUM_STEPS`` steps (no grad, log-probs from harness/sde.py) and
the clipped-surrogate update on every (image, step) pair in micro-batches with gradient checkpointing, as
harness/flow_train.py does; text and VAE are left out (their cost is small next to the 12B transformer), the
conditioning is random. MFU = model FLOPs / (step time × peak bf16 dense FLOP/s of the GPU): forward
2·N·T + attention, backward through activations 2× forward (frozen base: no weight gradients), plus one
recomputed forward under checkpointing. Needs CUDA; ``EVALSUITE_FLUX_BENCH=tiny`` runs the same code on a
small config on any device (a smoke test of the benchmark itself).
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from evalsuite.harness import grpo
from evalsuite.harness.sde import sde_step_with_logprob

FLUX_DEV = dict(  # black-forest-labs/FLUX.1-dev transformer/config.json
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
PEAK_BF16_DENSE = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
NUM_STEPS, IMAGES, MICRO, TEXT_TOKENS, SIDE = 10, 8, 4, 512, 512


def _flops_per_token_forward(cfg: dict, n_params: int, seq: int) -> float:
    """2 FLOPs per parameter per token, plus attention (QK^T and AV: 4·seq·width per token per block)."""
    width = cfg["attention_head_dim"] * cfg["num_attention_heads"]
    blocks = cfg["num_layers"] + cfg["num_single_layers"]
    return 2.0 * n_params + 4.0 * seq * width * blocks


def test_bench_flux_size_step_and_mfu(benchmark) -> None:
    tiny = os.environ.get("EVALSUITE_FLUX_BENCH") == "tiny"
    if benchmark.disabled and not tiny:
        pytest.skip("timing run: pass --benchmark-enable")
    if not torch.cuda.is_available() and not tiny:
        pytest.skip("needs a GPU (EVALSUITE_FLUX_BENCH=tiny runs a small config anywhere)")
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    from evalsuite.tiny.flux import TINY_FLUX_TRANSFORMER

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = TINY_FLUX_TRANSFORMER if tiny else FLUX_DEV
    side, text = (64, 16) if tiny else (SIDE, TEXT_TOKENS)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build directly in bf16 (fp32 init of 12B would need 48 GB)
    try:
        with device:
            model = FluxTransformer2DModel(**cfg)
    finally:
        torch.set_default_dtype(default)
    model.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    model.add_adapter(
        LoraConfig(
            r=32,
            lora_alpha=64,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in lora:
        p.data = p.data.float()
        p.requires_grad_(True)
    model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(lora, lr=1e-4)

    h = w = side // 16
    seq = h * w
    img_ids = torch.zeros(seq, 3, device=device)
    img_ids[:, 1] = torch.arange(h, device=device).repeat_interleave(w)
    img_ids[:, 2] = torch.arange(w, device=device).repeat(h)
    txt_ids = torch.zeros(text, 3, device=device)
    embeds = torch.randn(IMAGES, text, cfg["joint_attention_dim"], device=device, dtype=torch.bfloat16)
    pooled = torch.randn(IMAGES, cfg["pooled_projection_dim"], device=device, dtype=torch.bfloat16)
    guidance = torch.full((IMAGES,), 3.5, device=device)
    sigmas = torch.linspace(1.0, 0.0, NUM_STEPS + 1)

    def velocity(x, sigma, rows):
        return model(
            hidden_states=x.to(torch.bfloat16),
            timestep=sigma.to(device, torch.bfloat16),
            guidance=guidance[rows],
            pooled_projections=pooled[rows],
            encoder_hidden_states=embeds[rows],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]

    def step() -> None:
        x = torch.randn(IMAGES, seq, cfg["in_channels"], device=device)
        xs, logps = [x], []
        all_rows = torch.arange(IMAGES, device=device)
        with torch.no_grad():
            for j in range(NUM_STEPS):
                v = velocity(x, torch.full((IMAGES,), float(sigmas[j])), all_rows)
                out = sde_step_with_logprob(
                    v, x, float(sigmas[j]), float(sigmas[j + 1]), sigma_max=float(sigmas[1])
                )
                x = out.prev_sample
                xs.append(x)
                logps.append(out.log_prob)
        adv = torch.randn(IMAGES, device=device)
        pairs = [(i, j) for i in range(IMAGES) for j in range(NUM_STEPS)]
        for s in range(0, len(pairs), MICRO):
            rows = torch.tensor([p[0] for p in pairs[s : s + MICRO]], device=device)
            cols = [p[1] for p in pairs[s : s + MICRO]]
            lat = torch.stack([xs[j][i] for i, j in zip(rows.tolist(), cols)])
            nxt = torch.stack([xs[j + 1][i] for i, j in zip(rows.tolist(), cols)])
            sig, sig_next = sigmas[cols], sigmas[[c + 1 for c in cols]]
            v = velocity(lat, sig, rows)
            out = sde_step_with_logprob(v, lat, sig, sig_next, prev_sample=nxt, sigma_max=float(sigmas[1]))
            old = torch.stack([logps[j][i] for i, j in zip(rows.tolist(), cols)])
            loss, _ = grpo.clipped_surrogate(out.log_prob, old, adv[rows], 1e-4)
            (loss.mean() * len(cols) / len(pairs)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rounds = 1 if tiny else 3
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = min(times)
    tokens = seq + text
    fwd = _flops_per_token_forward(cfg, n_params, tokens) * tokens
    flops = IMAGES * NUM_STEPS * fwd + IMAGES * NUM_STEPS * fwd * (
        1 + 2 + 1
    )  # sampling; fwd + bwd + recompute
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_DENSE.items() if k in name), None)
    info = {
        "device": name,
        "params": n_params,
        "images": IMAGES,
        "steps": NUM_STEPS,
        "tokens": tokens,
        "step_s": step_s,
        "model_tflops_per_s": flops / step_s / 1e12,
        "mfu": None if peak is None else flops / step_s / peak,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print("\nFLUX-size Flow-GRPO step:", info)
    assert step_s > 0
