"""One tester for every reward (torchmetrics style).

Each reward contributes a ``RewardSpec``: how to build it (on tiny checkpoints), a set of valid samples,
and an independent ``reference`` that computes the expected scores from the raw model outputs or the
official code path. ``test_rewards.py`` runs every check below on every spec.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from evalsuite import Reward, Sample


@dataclass
class RewardSpec:
    name: str
    make: Callable[..., Reward]  # make(dtype="float32") -> Reward
    samples: Callable[[], list[Sample]]  # valid samples of mixed image sizes and prompt lengths
    reference: Callable[[Reward, list[Sample]], list[float]] | None  # independent computation
    atol: float = 1e-5
    rtol: float = 1e-4
    bf16_atol: float | None = None  # None: bf16 not supported by this reward
    bad_prompt_ok: bool = True  # empty/long prompts are scored (else: must be N/A or a named error)
    extra_bad: Sequence[tuple[str, Sample]] = field(default_factory=tuple)


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    """A seeded uniform-noise RGB image: every pixel matters to a model, nothing is constant."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny models on shared CPUs: few threads avoid thread-sync overhead that dominates such small ops."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def close(a: float, b: float, atol: float, rtol: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= atol + rtol * abs(b)


def check_parity(spec: RewardSpec) -> None:
    assert spec.reference is not None, f"{spec.name}: no reference computation"
    reward = spec.make()
    samples = spec.samples()
    out = reward.score(samples)
    assert all(out.applicable), f"{spec.name}: {out.errors} {out.details}"
    expected = spec.reference(reward, samples)
    for s, got, want in zip(samples, out.scores, expected):
        assert close(got, want, spec.atol, spec.rtol), f"{spec.name} sample {s.id}: {got} != reference {want}"


def check_batch_invariance(spec: RewardSpec) -> None:
    reward = spec.make()
    samples = spec.samples()
    together = reward.score(samples).scores
    reversed_ = reward.score(samples[::-1]).scores[::-1]
    for i, s in enumerate(samples):
        alone = reward.score([s]).scores[0]
        assert close(alone, together[i], spec.atol, spec.rtol), f"{spec.name} {s.id}: alone {alone} vs batch"
        assert close(reversed_[i], together[i], spec.atol, spec.rtol), f"{spec.name} {s.id}: order matters"


def check_determinism(spec: RewardSpec) -> None:
    samples = spec.samples()
    a = spec.make().score(samples)
    b = spec.make().score(samples)
    as_bytes = [np.asarray(x.scores, dtype=np.float64).tobytes() for x in (a, b)]
    assert as_bytes[0] == as_bytes[1], f"{spec.name}: {a.scores} != {b.scores}"


def check_dtype(spec: RewardSpec) -> None:
    if spec.bf16_atol is None:
        return
    samples = spec.samples()
    fp32 = spec.make(dtype="float32").score(samples).scores
    bf16 = spec.make(dtype="bfloat16").score(samples).scores
    for s, a, b in zip(samples, fp32, bf16):
        assert abs(a - b) <= spec.bf16_atol, f"{spec.name} {s.id}: fp32 {a} vs bf16 {b} > {spec.bf16_atol}"


def bad_inputs(good: Sample) -> list[tuple[str, Sample, str]]:
    """(label, sample, expectation): 'error' must name the sample; 'ok' must score; 'either' may do both."""
    png = _png(good.image if isinstance(good.image, Image.Image) else Image.new("RGB", (32, 32)))
    rgba = Image.new("RGBA", (40, 24), (10, 200, 30, 128))
    grey16 = Image.fromarray(np.full((24, 40), 40000, dtype=np.uint16))
    return [
        ("corrupt", replace(good, id="bad-corrupt", image=b"definitely not a png"), "error"),
        ("truncated", replace(good, id="bad-truncated", image=png[: len(png) // 2]), "error"),
        ("zero", replace(good, id="bad-zero", image=Image.new("RGB", (0, 0))), "error"),
        ("none", replace(good, id="bad-none", image=None), "error"),
        ("nonutf8", replace(good, id="bad-bytes-prompt", prompt=b"\xff\xfe"), "error"),
        ("rgba", replace(good, id="ok-rgba", image=rgba), "ok"),
        ("grey", replace(good, id="ok-grey", image=Image.new("L", (30, 50), 90)), "ok"),
        ("16bit", replace(good, id="ok-16bit", image=grey16), "ok"),
        ("large", replace(good, id="ok-large", image=Image.new("RGB", (1600, 1200), (120, 60, 200))), "ok"),
        ("empty-prompt", replace(good, id="edge-empty-prompt", prompt=""), "either"),
        ("long-prompt", replace(good, id="edge-long-prompt", prompt="a red cube " * 150), "either"),
    ]


def check_bad_input(spec: RewardSpec) -> None:
    reward = spec.make()
    good = spec.samples()
    cases = bad_inputs(good[0]) + [(label, s, "error") for label, s in spec.extra_bad]
    batch = [good[0], *[s for _, s, _ in cases], good[-1]]
    out = reward.score(batch)
    baseline = reward.score([good[0], good[-1]]).scores
    assert close(out.scores[0], baseline[0], spec.atol, spec.rtol)
    assert close(out.scores[-1], baseline[1], spec.atol, spec.rtol)
    for k, (label, sample, expect) in enumerate(cases, start=1):
        err, ok = out.errors[k], out.applicable[k]
        if expect == "error":
            assert err is not None and repr(sample.id) in err, f"{spec.name} {label}: {err!r}"
        elif expect == "ok":
            assert ok and err is None, f"{spec.name} {label}: {err!r}"
        else:
            assert ok or (err and repr(sample.id) in err) or out.details[k].get("not_applicable"), label
        if not ok:
            assert math.isnan(out.scores[k])


CHECKS: dict[str, Callable[[RewardSpec], Any]] = {
    "parity": check_parity,
    "batch_invariance": check_batch_invariance,
    "determinism": check_determinism,
    "dtype": check_dtype,
    "bad_input": check_bad_input,
}
