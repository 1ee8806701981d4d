"""DPG-Bench VQA cost: ``QwenYesNoVQA.answer`` vs the bare Qwen2.5-VL forward on the same batch, and vs the
official one-question-at-a-time loop.

A DPG quadrant gets ~17 questions about the same image. ``answer`` runs the vision tower once per distinct
image and the language model once per batch of questions; the bare batched forward (processor on every
(image, question) pair, one ``model(**inputs)``) re-encodes the image for each question; the official script
asks one question per call. The model is a random-init Qwen2.5-VL with the real patch geometry at 224 px
(64 image tokens) but narrow, so a CPU run takes seconds: ratios, not absolute times, are the point.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite.rewards.vqa import QwenYesNoVQA

ROUNDS = 2
QUADRANTS = 2
QUESTIONS = [f"Is there a {c} {o} in the picture?" for c in ("red", "green", "blue", "small")
             for o in ("cat", "dog")]  # 8 per quadrant


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory):
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from evalsuite.tiny import write_tiny

    root = tmp_path_factory.mktemp("bench_dpg_vqa")
    tiny = write_tiny(root / "tiny", names=["qwen2.5-vl"])["qwen2.5-vl"]
    processor = AutoProcessor.from_pretrained(tiny)
    small = Qwen2_5_VLConfig.from_pretrained(tiny)
    text = small.text_config.to_dict()
    text.update(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2)
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": [8, 12, 12]}  # head_dim 64
    text.pop("layer_types", None)
    vision = small.vision_config.to_dict()
    vision.update(hidden_size=128, intermediate_size=256, num_heads=2, depth=4, out_hidden_size=256,
                  fullatt_block_indexes=[3])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=small.image_token_id,
                              video_token_id=small.video_token_id,
                              vision_start_token_id=small.vision_start_token_id,
                              vision_end_token_id=small.vision_end_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    folder = root / "model"
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_bench_dpg_vqa_answer_vs_bare_forward(benchmark, bench_model) -> None:
    rng = np.random.default_rng(0)
    quads = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(QUADRANTS)]
    images = [im for im in quads for _ in QUESTIONS]
    questions = [q for _ in quads for q in QUESTIONS]
    vqa = QwenYesNoVQA(str(bench_model), batch_size=len(questions)).load()
    model, processor = vqa._model, vqa._processor
    processor.tokenizer.padding_side = "left"  # bare forward: the answer position is the last one
    texts = [vqa._text(q) for q in questions]

    @torch.inference_mode()
    def bare(text_batch, image_batch):
        inputs = processor(text=text_batch, images=image_batch, return_tensors="pt", padding=True)
        logits = model(**inputs).logits[:, -1].float()
        return logits[:, vqa.yes_ids].max(-1).values - logits[:, vqa.no_ids].max(-1).values

    def loop():
        for t, im in zip(texts, images):
            bare([t], [im])

    ours_margin = vqa.yes_no_logits(images, questions) @ torch.tensor([1.0, -1.0])
    bare_margin = bare(texts, images)
    processor.tokenizer.padding_side = "right"
    torch.testing.assert_close(ours_margin, bare_margin, atol=1e-3, rtol=1e-3)  # same numbers, cheaper

    def one_round():
        processor.tokenizer.padding_side = "right"
        t_ours = _timed(lambda: vqa.answer(images, questions))
        processor.tokenizer.padding_side = "left"
        t_bare = _timed(lambda: bare(texts, images))
        t_loop = _timed(loop)
        processor.tokenizer.padding_side = "right"
        return t_ours, t_bare, t_loop

    times = [one_round() for _ in range(1 if benchmark.disabled else ROUNDS)]  # one pass as a plain test
    ours, bare_t, loop_t = (min(t[i] for t in times) for i in range(3))
    benchmark.pedantic(lambda: vqa.answer(images, questions), rounds=1, iterations=1)
    benchmark.extra_info.update({
        "pairs": len(questions), "distinct_images": QUADRANTS,
        "ours_s": ours, "bare_batched_forward_s": bare_t, "official_style_loop_s": loop_t,
        "ratio": ours / bare_t, "ratio_vs_loop": ours / loop_t,
    })
    assert math.isfinite(ours / bare_t) and math.isfinite(ours / loop_t)
