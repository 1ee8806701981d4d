"""Soft VQA (GenEval 2's Soft-TIFA forward): parity with the official generate-and-softmax code on tiny
Qwen3-VL weights, first-token rules (every spelling vs distinct tokens), batching, the Qwen2.5-VL backend,
plugins."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.registry import get_scorer
from evalsuite.rewards.soft_vqa import CallableSoftVQA, Qwen25SoftVQA, QwenSoftVQA, first_token_ids
from evalsuite.scorer import describe_vqa

QUESTIONS = ["How many cats are in the image?", "Are the cats red?", "Are there any dogs in the image?",
             "How many apples are in the image?"]
SPELLINGS = [["four", "Four", " four", " Four", "4", " 4"], ["Yes", "yes", " yes", " Yes"],
             ["Yes", "yes", " yes", " Yes"], ["one", "One", " one", " One", "1", " 1"]]


def random_images(n: int, seed: int, sizes=((64, 64), (96, 64), (64, 128))) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8))
            for i in range(n)]


def sharpen(src: Path, dst: Path, model_class: str, factor: float = 40.0) -> Path:
    """The tiny checkpoint with its output rows scaled: random tiny weights give a near-uniform next-token
    distribution, where a wrong token or a wrong prompt would hardly change a probability; scaled, they do."""
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(src)
    model = getattr(transformers, model_class).from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(factor)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return dst


@pytest.fixture(scope="session")
def sharp_qwen3(tiny_dir, tmp_path_factory) -> Path:
    return sharpen(tiny_dir / "qwen3-vl", tmp_path_factory.mktemp("qwen3-sharp"),
                   "Qwen3VLForConditionalGeneration")


def official_probabilities(model_dir: Path, images, questions, spellings, tmp_path: Path) -> list[float]:
    """Upstream evaluation.py's path, written out here: image file, chat template tokenized by the
    processor, ``generate(max_new_tokens=1, do_sample=False, output_scores=True)``, softmax of ``scores[0]``
    by hand, summed over ``tokenizer.encode(form)[0]`` of every spelling (no de-duplication)."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for k, (image, question, forms) in enumerate(zip(images, questions, spellings)):
        path = tmp_path / f"img{k}.png"
        image.save(path)
        # Upstream passes the path; transformers decodes paths with torchvision's image ops, missing from a
        # CPU-only torchvision, so the file is decoded here (PIL, RGB: what load_image returns for a PNG).
        content = [{"type": "image", "image": Image.open(path).convert("RGB")},
                   {"type": "text", "text": f"{question} Answer in one word."}]
        messages = [{"role": "user", "content": content}]
        inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                               return_dict=True, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        logits = gen.scores[0][0].double().tolist()
        top = max(logits)
        total = math.fsum(math.exp(v - top) for v in logits)
        ids = [processor.tokenizer.encode(f)[0] for f in forms]
        out.append(math.fsum(math.exp(logits[i] - top) / total for i in ids))
    return out


def test_parity_with_official_generate_path(sharp_qwen3, tmp_path):
    images = random_images(2, seed=0)
    pairs = [(im, q, f) for im in images for q, f in zip(QUESTIONS, SPELLINGS)]
    ims, qs, fs = (list(x) for x in zip(*pairs))
    got = QwenSoftVQA(sharp_qwen3, batch_size=3).probabilities(ims, qs, fs)
    want = official_probabilities(sharp_qwen3, ims, qs, fs, tmp_path)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    assert max(want) / min(want) > 10, "the sharpened checkpoint should spread the probabilities"


def test_first_tokens_every_spelling_vs_distinct(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / "qwen3-vl")
    every = first_token_ids(tok, SPELLINGS[0], distinct=False)
    distinct = first_token_ids(tok, SPELLINGS[0], distinct=True)
    assert every == [tok.encode(f, add_special_tokens=False)[0] for f in SPELLINGS[0]]
    assert distinct == list(dict.fromkeys(every))
    # the tiny tokenizer splits " Four" and " 4" into a space token first, so they share it
    assert len(distinct) < len(every)


def test_distinct_tokens_sum_each_token_once(sharp_qwen3, tmp_path):
    from transformers import AutoTokenizer

    images = random_images(1, seed=2)
    ims, qs, fs = images * 2, [QUESTIONS[0], QUESTIONS[3]], [SPELLINGS[0], SPELLINGS[3]]
    every = QwenSoftVQA(sharp_qwen3).probabilities(ims, qs, fs)
    once = QwenSoftVQA(sharp_qwen3, distinct_first_tokens=True).probabilities(ims, qs, fs)
    tok = AutoTokenizer.from_pretrained(sharp_qwen3)
    # each token's probability alone, from single-spelling questions; then the two sums by hand
    for k, forms in enumerate(fs):
        ids = first_token_ids(tok, forms, distinct=False)
        alone = dict(zip(ids, QwenSoftVQA(sharp_qwen3).probabilities(
            [ims[k]] * len(forms), [qs[k]] * len(forms), [[f] for f in forms])))
        assert every[k] == pytest.approx(sum(alone[i] for i in ids), rel=1e-4)
        assert once[k] == pytest.approx(sum(alone[i] for i in set(ids)), rel=1e-4)
        assert every[k] > once[k]


def test_batch_invariance(sharp_qwen3):
    images = random_images(3, seed=1)
    rng = np.random.default_rng(0)
    pairs = [(im, q, f) for im in images for q, f in zip(QUESTIONS, SPELLINGS)]
    order = rng.permutation(len(pairs))
    ims, qs, fs = (list(x) for x in zip(*[pairs[i] for i in order]))
    vqa = QwenSoftVQA(sharp_qwen3, batch_size=5)
    many = vqa.probabilities(ims, qs, fs)
    # Qwen3-VL's template: no system turn; the cached prefix ends with the image
    assert vqa.split_prompt("Q?") == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>",
                                      "Q? Answer in one word.<|im_end|>\n<|im_start|>assistant\n")
    vqa.batch_size = 1
    np.testing.assert_allclose(vqa.probabilities(ims, qs, fs), many, rtol=1e-4)
    assert vqa.probabilities([], [], []) == []


def test_qwen2_5_backend_matches_its_full_forward(tiny_dir, tmp_path_factory):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model_dir = sharpen(tiny_dir / "qwen2.5-vl", tmp_path_factory.mktemp("qwen25-sharp"),
                        "Qwen2_5_VLForConditionalGeneration")
    images = random_images(2, seed=4, sizes=((56, 56), (56, 84)))  # multiples of 28: no resize either way
    got = Qwen25SoftVQA(model_dir).probabilities(images, QUESTIONS[:2], SPELLINGS[:2])
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    for image, q, forms, p in zip(images, QUESTIONS, SPELLINGS, got):
        content = [{"type": "image"}, {"type": "text", "text": f"{q} Answer in one word."}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        assert text.startswith("<|im_start|>system")  # Qwen2.5-VL's default system turn is kept
        with torch.no_grad():
            logits = model(**processor(text=[text], images=[image], return_tensors="pt")).logits[0, -1]
        probs = torch.softmax(logits.double(), -1)
        ids = [processor.tokenizer.encode(f)[0] for f in forms]
        assert p == pytest.approx(float(probs[ids].sum()), rel=1e-3)


def test_registry_builtins_plugins_and_errors(tiny_dir):
    default = get_scorer("soft_vqa", None, model=str(tiny_dir / "qwen3-vl"))
    assert isinstance(default, QwenSoftVQA) and not default._loaded  # nothing loads before use
    desc = describe_vqa(default)
    assert desc["vqa"] == "qwen3-vl" and desc["vqa_resize"] == "the processor's own"
    assert desc["vqa_prompt"] == "{question} Answer in one word."
    assert desc["vqa_distinct_first_tokens"] is False
    assert QwenSoftVQA.default_model == "Qwen/Qwen3-VL-8B-Instruct"
    assert isinstance(get_scorer("soft_vqa", "qwen2.5-vl"), Qwen25SoftVQA)

    def table(images, questions, spellings):
        return [len(forms) / 10 for forms in spellings]

    wrapped = get_scorer("soft_vqa", table, model="lookup")
    assert isinstance(wrapped, CallableSoftVQA) and wrapped.describe()["vqa_model"] == "lookup"
    assert wrapped.probabilities([None, None], ["q1", "q2"], [["a"], ["a", "b"]]) == [0.1, 0.2]
    with pytest.raises(ValueError, match="2 questions but 1 spelling"):
        wrapped.probabilities([None, None], ["q1", "q2"], [["a"]])
    with pytest.raises(ValueError, match="non-empty list"):
        wrapped.probabilities([None], ["q1"], ["Yes"])
    with pytest.raises(ConfigError, match="unknown soft VQA backend"):
        get_scorer("soft_vqa", "nope")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        get_scorer("soft_vqa", "evalsuite.rewards.soft_vqa:Missing")
    with pytest.raises(ConfigError, match="batch_size"):
        QwenSoftVQA(batch_size=0)
