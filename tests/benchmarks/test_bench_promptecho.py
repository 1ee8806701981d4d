"""PromptEcho overhead: batched ``score()`` vs the bare HF forward on the same batch (goal: ratio <= 1.10).

The bare side is what a hand-rolled scorer would time: ``Qwen2_5_VLForConditionalGeneration(**inputs)``
on the already-processed right-padded batch (full logits), nothing else; ``ratio`` uses it without the
attention mask (the fast causal kernel, as the reward runs it), and the masked time is reported too.
The reward's side includes everything (validation, qwen-vl-utils resizing, image processor, tokenization,
the forward, the per-token CE), so on a tiny model the fixed preprocessing weighs more; the "medium"
model shows the trend as the forward grows. Also reported: the bare forward plus the usual preprocessing
(``process_vision_info`` + processor).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from evalsuite import Sample
from evalsuite.rewards.promptecho import PromptEcho
from tests.test_reward_promptecho import LONG_CAPTION, _img

ROUNDS = 5


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _medium(tiny: Path, out: Path) -> Path:
    """The tiny checkpoint's processor with a wider, deeper random model (forward cost closer to real)."""
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    d = AutoConfig.from_pretrained(tiny).to_dict()
    d["text_config"].pop("layer_types", None)
    text, vision = d["text_config"], d["vision_config"]
    text.update(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=2)  # head_dim 64: mrope_section must sum to 32
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": [16, 8, 8]}
    vision.update(hidden_size=128, intermediate_size=512, depth=4, num_heads=4, out_hidden_size=256,
                  fullatt_block_indexes=[3])
    config = Qwen2_5_VLConfig.from_dict(d)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    for f in tiny.iterdir():
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Shared CPUs: one thread for both sides avoids thread-sync overhead on tiny ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_MEDIUM: dict[str, Path] = {}


@pytest.fixture(params=["tiny", "medium"])
def model_dir(request, benchmark, tiny_dir, tmp_path_factory) -> Path:
    tiny = tiny_dir / "qwen2.5-vl"
    if request.param == "tiny":
        return tiny
    if benchmark.disabled:
        pytest.skip("the medium model is built only when benchmarking (--benchmark-enable)")
    if "dir" not in _MEDIUM:
        _MEDIUM["dir"] = _medium(tiny, tmp_path_factory.mktemp("medium"))
    return _MEDIUM["dir"]


def test_bench_promptecho_batched_vs_bare_forward(benchmark, model_dir):
    from qwen_vl_utils import process_vision_info
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    n = 8 if not benchmark.disabled else 3
    captions = [LONG_CAPTION[: 120 + 90 * i] for i in range(n)]
    samples = [Sample(f"b{i}", c, image=_img(48 + 8 * (i % 3), 64, i)) for i, c in enumerate(captions)]
    reward = PromptEcho(str(model_dir), batch_size=n).load()
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()

    def prepare():
        msgs = [[{"role": "user", "content": [{"type": "image", "image": s.image},
                                              {"type": "text", "text": reward.query}]}] for s in samples]
        images, _ = process_vision_info(msgs)
        texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) + s.prompt
                 for m, s in zip(msgs, samples)]
        return processor(text=texts, images=images, padding=True, return_tensors="pt")

    inputs = prepare()

    unmasked = {k: v for k, v in inputs.items() if k != "attention_mask"}

    @torch.inference_mode()
    def bare():  # right padding: no mask needed for the real tokens; the fast causal kernel (as the reward)
        return model(**unmasked, use_cache=False).logits

    @torch.inference_mode()
    def bare_masked():
        return model(**inputs, use_cache=False).logits

    @torch.inference_mode()
    def pipeline():
        return model(**prepare(), use_cache=False).logits

    bare(), bare_masked(), pipeline(), reward.score(samples)  # warm-up
    rounds = 1 if benchmark.disabled else ROUNDS
    timings = [(_timed(bare), _timed(bare_masked), _timed(pipeline), _timed(lambda: reward.score(samples)))
               for _ in range(rounds)]
    t_bare, t_masked, t_pipe, ours = (min(t[k] for t in timings) for k in range(4))
    out = benchmark.pedantic(reward.score, args=(samples,), rounds=rounds, iterations=1)

    assert all(out.applicable)
    ratio = ours / t_bare
    benchmark.extra_info.update({
        "model": model_dir.name,
        "batch": n,
        "tokens": int(inputs["attention_mask"].sum()),
        "bare_forward_s": t_bare,
        "bare_forward_with_padding_mask_s": t_masked,
        "bare_forward_plus_preprocessing_s": t_pipe,
        "reward_score_s": ours,
        "ratio": ratio,
        "ratio_vs_forward_plus_preprocessing": ours / t_pipe,
    })
    assert math.isfinite(ratio)
