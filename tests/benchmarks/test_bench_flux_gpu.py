"""Flow-GRPO step time, images/GPU/s and MFU of real-size flow transformers (random weights, bf16, LoRA), GPU.

Families at their released transformer configs, built from config (no hub access): FLUX.1-dev (12B),
SD3.5-Medium (2.2B) and Qwen-Image (20B). One step = SDE sampling of ``IMAGES`` images over ``NUM_STEPS``
steps (no grad, log-probs from harness/sde.py) and the clipped-surrogate update on every (image, step) pair in
micro-batches with gradient checkpointing, as harness/flow_train.py does; CFG families (SD3.5 at 4.5,
Qwen-Image's true CFG at 4) run both branches in sampling and training, as Flow-GRPO trains SD3.5. Text and
VAE are left out (small next to the transformer) and the conditioning is random, at a fixed text length.

Model FLOPs are counted, not estimated from the parameter count: every ``nn.Linear``/``nn.Conv2d`` call
(hooks) and every ``scaled_dot_product_attention`` call (4·B·H·Lq·Lk·d) of one forward at the real shapes.
A training pair costs its forward plus the backward a frozen-base LoRA step needs (input gradients: 1x a
linear's forward, 2x attention's); the checkpointing recompute and LoRA's own small matmuls are not model
FLOPs. MFU = model FLOPs / (step time x the GPU's dense bf16 peak). Needs CUDA and ``--benchmark-enable``;
``EVALSUITE_FLUX_BENCH=tiny`` runs the same code on the tiny configs (2 images, 2 steps) on any device.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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
SD35_MEDIUM = dict(  # stabilityai/stable-diffusion-3.5-medium transformer/config.json
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
QWEN_IMAGE = dict(  # Qwen/Qwen-Image transformer/config.json (the same in Qwen-Image-2512)
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)
PEAK_BF16_DENSE = {"H100": 989e12, "H800": 989e12, "H200": 989e12, "A100": 312e12}
NUM_STEPS, IMAGES, MICRO, SIDE = 10, 8, 4, 512
TINY_TEXT = 16  # text tokens of the tiny smoke run (64 px)


@dataclass(frozen=True)
class FlowModelSpec:
    """One family's transformer: its class, real and tiny configs, text length and guidance."""

    name: str
    cls: str  # diffusers transformer class
    real: dict[str, Any]
    tiny_ref: str  # "evalsuite.tiny.<module>:<CONFIG>"
    text_tokens: int
    cfg_scale: float | None  # CFG: both branches in every forward; None: guidance-distilled FLUX

    def config(self, tiny: bool) -> dict[str, Any]:
        if not tiny:
            return dict(self.real)
        import importlib

        module, attr = self.tiny_ref.split(":")
        return dict(getattr(importlib.import_module(module), attr))


SPECS = {
    # FLUX.1-dev pipeline default max_sequence_length 512
    "flux-dev": FlowModelSpec("flux-dev", "FluxTransformer2DModel", FLUX_DEV,
                              "evalsuite.tiny.flux:TINY_FLUX_TRANSFORMER", 512, None),
    # CLIP's 77 tokens + T5 at the pipeline's default 256; Flow-GRPO's CFG 4.5
    "sd3.5-medium": FlowModelSpec("sd3.5-medium", "SD3Transformer2DModel", SD35_MEDIUM,
                                  "evalsuite.tiny.sd3:TINY_SD3_TRANSFORMER", 77 + 256, 4.5),
    # a prompt's Qwen2.5-VL tokens after the template is dropped (no padding to a maximum); true CFG 4
    "qwen-image": FlowModelSpec("qwen-image", "QwenImageTransformer2DModel", QWEN_IMAGE,
                                "evalsuite.tiny.qwenimage:TINY_QWENIMAGE_TRANSFORMER", 128, 4.0),
}


def build_transformer(spec: FlowModelSpec, tiny: bool, device: torch.device | str, dtype=torch.bfloat16):
    """The family's transformer from config with random weights, built directly in ``dtype`` on ``device``
    (an fp32 init of 20B parameters would need 80 GB); ``device="meta"`` sizes it without memory."""
    import diffusers

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return getattr(diffusers, spec.cls)(**spec.config(tiny))
    finally:
        torch.set_default_dtype(default)


def latent_shape(spec: FlowModelSpec, cfg: dict[str, Any], batch: int, side: int) -> tuple[int, ...]:
    """The transformer's latent input: packed 2x2 tokens (FLUX, Qwen-Image) or (C, H/8, W/8) (SD3)."""
    if spec.cls == "SD3Transformer2DModel":
        return (batch, cfg["in_channels"], side // 8, side // 8)
    return (batch, (side // 16) ** 2, cfg["in_channels"])


def velocity_fn(
    spec: FlowModelSpec, model: Any, cfg: dict[str, Any], side: int, text: int, device, n: int = IMAGES
) -> Callable:
    """``velocity(x, sigma, rows)`` with random conditioning of ``text`` tokens for ``n`` rows, guidance
    applied as the family's pipeline does (CFG: one forward over [positive; negative])."""
    gen = torch.Generator().manual_seed(0)
    dtype = model.dtype

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    width = cfg["joint_attention_dim"]
    embeds = randn(2 * n, text, width)  # rows n.. are the negative prompt's
    h = w = side // 16
    if spec.cls == "FluxTransformer2DModel":
        pooled = randn(n, cfg["pooled_projection_dim"])
        img_ids = torch.zeros(h * w, 3, device=device)
        img_ids[:, 1] = torch.arange(h, device=device).repeat_interleave(w)
        img_ids[:, 2] = torch.arange(w, device=device).repeat(h)
        txt_ids = torch.zeros(text, 3, device=device)

        def forward(x, sigma, rows):
            return model(hidden_states=x, timestep=sigma, guidance=torch.full_like(sigma, 3.5),
                         pooled_projections=pooled[rows], encoder_hidden_states=embeds[rows],
                         txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    elif spec.cls == "SD3Transformer2DModel":
        pooled = randn(2 * n, cfg["pooled_projection_dim"])

        def forward(x, sigma, rows):
            return model(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=embeds[rows],
                         pooled_projections=pooled[rows], return_dict=False)[0]
    else:
        mask = torch.ones(2 * n, text, dtype=torch.long, device=device)

        def forward(x, sigma, rows):
            return model(hidden_states=x, timestep=sigma, encoder_hidden_states=embeds[rows],
                         encoder_hidden_states_mask=mask[rows], img_shapes=[[(1, h, w)]] * len(rows),
                         return_dict=False)[0]

    def velocity(x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        x, sigma = x.to(dtype), sigma.to(device, dtype)
        if spec.cfg_scale is None:
            return forward(x, sigma, rows)
        both = forward(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([rows, rows + n])).float()
        pos, neg = both.chunk(2)
        return neg + spec.cfg_scale * (pos - neg)

    return velocity


@contextlib.contextmanager
def counting_flops() -> Iterator[dict[str, float]]:
    """Count the model FLOPs of what runs inside: 2·in·out per row of every ``nn.Linear`` call, 2·in·k²·out
    per output pixel of every ``nn.Conv2d``, 4·B·H·Lq·Lk·d per ``scaled_dot_product_attention``."""
    counts = {"linear": 0.0, "attention": 0.0}

    def on_linear(module: torch.nn.Linear, args: tuple, _out: Any) -> None:
        rows = args[0].numel() // args[0].shape[-1]
        counts["linear"] += 2.0 * module.in_features * module.out_features * rows

    def on_conv(module: torch.nn.Conv2d, _args: tuple, out: torch.Tensor) -> None:
        kh, kw = module.kernel_size
        per_pixel = 2.0 * module.in_channels // module.groups * kh * kw * module.out_channels
        counts["linear"] += per_pixel * out.shape[0] * out.shape[-2] * out.shape[-1]

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted_sdpa(query, key, value, *args, **kwargs):
        *batch, lq, d = query.shape
        counts["attention"] += 4.0 * math.prod(batch) * lq * key.shape[-2] * d
        return sdpa(query, key, value, *args, **kwargs)

    handles = [
        torch.nn.modules.module.register_module_forward_hook(
            lambda m, a, o: on_linear(m, a, o) if isinstance(m, torch.nn.Linear) else
            on_conv(m, a, o) if isinstance(m, torch.nn.Conv2d) else None
        )
    ]
    torch.nn.functional.scaled_dot_product_attention = counted_sdpa
    try:
        yield counts
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for handle in handles:
            handle.remove()


def training_pair_flops(linear: float, attention: float) -> float:
    """A frozen-base LoRA forward+backward: the forward plus input gradients (1x linear, 2x attention)."""
    return 2.0 * linear + 3.0 * attention


def mfu(flops: float, seconds: float, device_name: str) -> float | None:
    """Model FLOPs utilisation against the GPU's dense bf16 peak; None for a GPU not in PEAK_BF16_DENSE."""
    peak = next((v for k, v in PEAK_BF16_DENSE.items() if k in device_name), None)
    return None if peak is None else flops / seconds / peak


def run_benchmark(spec: FlowModelSpec, tiny: bool, device: torch.device) -> dict[str, Any]:
    """Build the transformer, count one image's forward FLOPs, time the Flow-GRPO step (best of 3)."""
    from peft import LoraConfig

    side, text = (64, TINY_TEXT) if tiny else (SIDE, spec.text_tokens)
    images, num_steps = (2, 2) if tiny else (IMAGES, NUM_STEPS)
    model = build_transformer(spec, tiny, device)
    cfg = spec.config(tiny)
    model.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    velocity = velocity_fn(spec, model, cfg, side, text, device, images)
    with torch.no_grad(), counting_flops() as per_image:  # before the adapter: LoRA's matmuls are not counted
        velocity(torch.randn(latent_shape(spec, cfg, 1, side), device=device), torch.ones(1),
                 torch.zeros(1, dtype=torch.long, device=device))
    model.add_adapter(LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian",
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in lora:
        p.data = p.data.float()
        p.requires_grad_(True)
    model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(lora, lr=1e-4)
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
    all_rows = torch.arange(images, device=device)

    def step() -> None:
        x = torch.randn(latent_shape(spec, cfg, images, side), device=device)
        xs, logps = [x], []
        with torch.no_grad():
            for j in range(num_steps):
                v = velocity(x, torch.full((images,), float(sigmas[j])), all_rows)
                out = sde_step_with_logprob(
                    v, x, float(sigmas[j]), float(sigmas[j + 1]), sigma_max=float(sigmas[1])
                )
                x = out.prev_sample
                xs.append(x)
                logps.append(out.log_prob)
        adv = torch.randn(images, device=device)
        pairs = [(i, j) for i in range(images) for j in range(num_steps)]
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
    times = []
    for _ in range(1 if tiny else 3):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = min(times)
    forward = per_image["linear"] + per_image["attention"]
    flops = images * num_steps * (forward + training_pair_flops(per_image["linear"], per_image["attention"]))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return {
        "model": spec.name,
        "device": name,
        "params": n_params,
        "images": images,
        "steps": num_steps,
        "side": side,
        "image_tokens": (side // 16) ** 2,
        "text_tokens": text,
        "cfg": spec.cfg_scale,
        "step_s": step_s,
        "images_per_gpu_s": images / step_s,
        "model_tflops_per_s": flops / step_s / 1e12,
        "mfu": mfu(flops, step_s, name),
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


@pytest.mark.parametrize("model", list(SPECS))
def test_bench_flow_gpu_step_images_per_s_and_mfu(model, benchmark) -> None:
    tiny = os.environ.get("EVALSUITE_FLUX_BENCH") == "tiny"
    if benchmark.disabled and not tiny:
        pytest.skip("timing run: pass --benchmark-enable")
    if not torch.cuda.is_available() and not tiny:
        pytest.skip("needs a GPU (EVALSUITE_FLUX_BENCH=tiny runs the tiny configs anywhere)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = run_benchmark(SPECS[model], tiny, device)
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{model} Flow-GRPO step:", info)
    assert info["step_s"] > 0


# ------------------------------------------------------------ the helpers, checked on the CPU (no GPU needed)


@pytest.mark.parametrize(
    ("model", "billions"), [("flux-dev", 11.90), ("sd3.5-medium", 2.24), ("qwen-image", 20.43)]
)
def test_the_real_size_configs_have_the_released_parameter_counts(model, billions):
    """Built on the meta device (no memory): FLUX.1-dev 11.9B, SD3.5-Medium's MMDiT-X 2.24B, Qwen-Image
    20.4B."""
    transformer = build_transformer(SPECS[model], tiny=False, device="meta")
    assert sum(p.numel() for p in transformer.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def _attention_by_hand(spec: FlowModelSpec, cfg: dict[str, Any], side: int, text: int) -> float:
    """4·B·H·L²·d per attention layer from the architecture: joint attention over image + text tokens in
    every block (FLUX's single blocks too), plus SD3.5's image-only second attention in its dual layers."""
    image = (side // 16) ** 2
    joint = image + text
    heads, d = cfg["num_attention_heads"], cfg["attention_head_dim"]
    batch = 1 if spec.cfg_scale is None else 2
    layers = cfg["num_layers"] + cfg.get("num_single_layers", 0)
    total = layers * joint**2
    total += len(cfg.get("dual_attention_layers", ())) * image**2
    return 4.0 * batch * heads * d * total


@pytest.mark.parametrize("model", list(SPECS))
def test_the_flop_counter_matches_torch_and_the_architecture_on_the_tiny_configs(model):
    """Linear and conv FLOPs equal torch's own FlopCounterMode (which does not count attention on the CPU);
    attention FLOPs equal the count from the architecture."""
    from torch.utils.flop_counter import FlopCounterMode

    spec, side = SPECS[model], 64
    cfg = spec.config(tiny=True)
    transformer = build_transformer(spec, tiny=True, device="cpu", dtype=torch.float32)
    velocity = velocity_fn(spec, transformer, cfg, side, TINY_TEXT, "cpu")
    x = torch.randn(latent_shape(spec, cfg, 1, side))
    row = torch.zeros(1, dtype=torch.long)
    with torch.no_grad(), counting_flops() as ours:
        velocity(x, torch.ones(1), row)
    with torch.no_grad(), FlopCounterMode(display=False) as theirs:
        velocity(x, torch.ones(1), row)
    assert ours["linear"] > 0 and ours["linear"] == theirs.get_total_flops()
    assert ours["attention"] == _attention_by_hand(spec, cfg, side, TINY_TEXT)


def test_training_flops_and_mfu_arithmetic():
    assert training_pair_flops(linear=10.0, attention=1.0) == 23.0  # 2 x 10 + 3 x 1
    assert mfu(989e12 / 2, 1.0, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert mfu(1e12, 1.0, "some other GPU") is None


@pytest.mark.parametrize("model", list(SPECS))
def test_the_benchmark_runs_on_the_tiny_configs_on_the_cpu(model):
    info = run_benchmark(SPECS[model], tiny=True, device=torch.device("cpu"))
    assert info["model"] == model and info["step_s"] > 0 and info["mfu"] is None
    assert info["images_per_gpu_s"] == pytest.approx(info["images"] / info["step_s"])
    assert info["model_tflops_per_s"] > 0
