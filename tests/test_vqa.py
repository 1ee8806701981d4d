"""Yes/no VQA backends: Qwen2.5-VL logit answerer parity on tiny weights, batching, plugins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.rewards.vqa import CallableVQA, QwenYesNoVQA, decide, get_vqa
from evalsuite.scorer import describe_vqa

QUESTIONS = ["Is there a cabbage?", "Is the truck red?", "Are there eight cabbages?", "Is it morning?",
             "Is the lamp on the desk?", "Is the truck parked?"]


def random_images(n: int, seed: int, sizes=((56, 56), (56, 84), (84, 56))) -> list[Image.Image]:
    """Sides are multiples of 28 inside the pixel budget, so neither path resizes them."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8))
            for i in range(n)]


def chat_text(processor, question: str) -> str:
    content = [{"type": "image"}, {"type": "text", "text": f"{question} Please answer yes or no."}]
    return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    first = [tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "yes", "No", "no")]
    return first[:2], first[2:]


def write_decisive_qwen(src: Path, dst: Path, questions=QUESTIONS, seed: int = 0) -> Path:
    """The tiny Qwen2.5-VL with its yes/no output rows set so that answers vary with image and question.

    Random tiny weights put a large constant offset between the yes and no logits (every answer is "yes").
    Here the no rows are a random vector r and the yes rows r + d, where d is the top principal direction of
    the final hidden state over calibration inputs, made orthogonal to its mean: the margin d.h is then
    centred on zero and both answers occur.
    """
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(src)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    hidden = []
    with torch.no_grad():
        for image in random_images(2, seed + 1):
            for q in questions:
                inputs = processor(text=[chat_text(processor, q)], images=[image], return_tensors="pt")
                hidden.append(model.model(**inputs).last_hidden_state[0, -1])
    h = torch.stack(hidden).double()
    mu = h.mean(0)
    v = torch.linalg.svd(h - mu, full_matrices=False).Vh[0]
    d = v - (v @ mu) / (mu @ mu) * mu
    d = d * (2.0 / (h @ d).std())
    yes, no = answer_token_ids(processor.tokenizer)
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(h.shape[1], generator=g, dtype=torch.float64) * 0.1
    with torch.no_grad():
        model.lm_head.weight[no] = r.float()
        model.lm_head.weight[yes] = (r + d).float()
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return dst


_DECISIVE: dict[Path, Path] = {}


def decisive_qwen_dir(tiny_dir: Path, tmp_path_factory) -> Path:
    """One decisive checkpoint per test session (shared by test_vqa and test_dpg_bench)."""
    src = tiny_dir / "qwen2.5-vl"
    if src not in _DECISIVE:
        _DECISIVE[src] = write_decisive_qwen(src, tmp_path_factory.mktemp("qwen-decisive"))
    return _DECISIVE[src]


@pytest.fixture(scope="session")
def decisive_qwen(tiny_dir, tmp_path_factory) -> Path:
    return decisive_qwen_dir(tiny_dir, tmp_path_factory)


def reference_logits(model_dir: Path, images, questions, dtype=torch.float32) -> torch.Tensor:
    """Independent path: the processor's own text+image encoding and the full model, one pair at a time."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).eval()
    yes, no = answer_token_ids(processor.tokenizer)
    rows = []
    with torch.no_grad():
        for image, q in zip(images, questions):
            inputs = processor(text=[chat_text(processor, q)], images=[image], return_tensors="pt")
            logits = model(**inputs).logits[0, -1].float()
            rows.append([logits[yes].max().item(), logits[no].max().item()])
    return torch.tensor(rows)


def pairs(n_images: int = 3, seed: int = 0):
    images = random_images(n_images, seed)
    rng = np.random.default_rng(seed)
    out = [(im, q) for im in images for q in QUESTIONS[:4]]
    order = rng.permutation(len(out))  # interleave images so the batch mixes them
    return [out[i][0] for i in order], [out[i][1] for i in order]


def test_parity_with_independent_forward(decisive_qwen):
    images, questions = pairs()
    vqa = QwenYesNoVQA(decisive_qwen, batch_size=5)
    got = vqa.yes_no_logits(images, questions)
    want = reference_logits(decisive_qwen, images, questions)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    expected = ["yes" if y > n else "no" for y, n in want.tolist()]
    assert vqa.answer(images, questions) == expected
    assert {"yes", "no"} <= set(expected), "the decisive checkpoint should give both answers"


def test_parity_plain_tiny_checkpoint(tiny_dir):
    images, questions = pairs(2, seed=3)
    got = QwenYesNoVQA(tiny_dir / "qwen2.5-vl", batch_size=3).yes_no_logits(images, questions)
    torch.testing.assert_close(got, reference_logits(tiny_dir / "qwen2.5-vl", images, questions),
                               atol=1e-4, rtol=1e-4)


def test_batch_invariance_and_determinism(decisive_qwen):
    images, questions = pairs(seed=1)
    big = QwenYesNoVQA(decisive_qwen, batch_size=7)
    many = big.yes_no_logits(images, questions)
    big.batch_size = 1
    one = big.yes_no_logits(images, questions)
    big.batch_size = 7
    backwards = big.yes_no_logits(images[::-1], questions[::-1]).flip(0)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backwards, many, atol=1e-5, rtol=1e-5)
    assert torch.equal(big.yes_no_logits(images, questions), many)


def test_vision_tower_sees_each_image_once(decisive_qwen, monkeypatch):
    images, questions = pairs(3)
    vqa = QwenYesNoVQA(decisive_qwen, batch_size=4).load()
    seen = []
    inner = vqa._model.model.get_image_features

    def counting(pixel_values, image_grid_thw, **kw):
        seen.append(len(image_grid_thw))
        return inner(pixel_values, image_grid_thw, **kw)

    monkeypatch.setattr(vqa._model.model, "get_image_features", counting)
    vqa.answer(images, questions)
    assert sum(seen) == 3 and len(questions) == 12


def test_bf16_close_to_fp32(decisive_qwen):
    images, questions = pairs(2, seed=2)
    fp32 = QwenYesNoVQA(decisive_qwen).yes_no_logits(images, questions)
    bf16 = QwenYesNoVQA(decisive_qwen, dtype="bfloat16").yes_no_logits(images, questions)
    assert (fp32 - bf16).abs().max() < 0.25
    margin = fp32[:, 0] - fp32[:, 1]
    clear = margin.abs() > 0.5
    assert torch.equal((bf16[clear, 0] > bf16[clear, 1]), margin[clear] > 0)


def test_decide_rule():
    assert decide(1.0, 0.5) == "yes" and decide(0.5, 1.0) == "no" and decide(0.3, 0.3) == "no"


def test_bad_inputs(tiny_dir):
    vqa = QwenYesNoVQA(tiny_dir / "qwen2.5-vl")
    img = random_images(1, 0)[0]
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        vqa.answer([img, img], ["Is it?"])
    with pytest.raises(TypeError, match="must be str"):
        vqa.answer([img], [3])
    assert vqa.answer([], []) == []
    with pytest.raises(ConfigError, match="question"):
        QwenYesNoVQA(tiny_dir / "qwen2.5-vl", prompt="Answer yes or no.")
    with pytest.raises(ConfigError, match="batch_size"):
        QwenYesNoVQA(tiny_dir / "qwen2.5-vl", batch_size=0)


def test_describe_names_backend_model_and_method(tiny_dir):
    desc = describe_vqa(QwenYesNoVQA(tiny_dir / "qwen2.5-vl", dtype="bfloat16"))
    assert desc["vqa"] == "qwen2.5-vl" and desc["vqa_model"] == str(tiny_dir / "qwen2.5-vl")
    assert "logits" in desc["vqa_method"] and desc["vqa_dtype"] == "bfloat16"
    assert "{question}" in desc["vqa_prompt"]
    assert QwenYesNoVQA().describe()["vqa_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"


class EchoBackend:
    """A plugin class: built by get_vqa with the backend options."""

    def __init__(self, model=None, **options):
        self.model, self.options = model, options

    def answer(self, images, questions):
        return ["yes" if "?" in q else "no" for q in questions]

    def describe(self):
        return {"vqa": "echo", "vqa_model": self.model}


def always_no(images, questions):
    return ["no"] * len(questions)


def test_get_vqa_plugins():
    img = random_images(1, 0)[0]
    assert isinstance(get_vqa(), QwenYesNoVQA)
    assert isinstance(get_vqa("qwen2.5-vl", batch_size=2), QwenYesNoVQA)
    built = get_vqa("tests.test_vqa:EchoBackend", model="m", device="cpu")
    assert isinstance(built, EchoBackend) and built.model == "m" and built.options == {"device": "cpu"}
    assert isinstance(get_vqa(EchoBackend, model="k"), EchoBackend)
    obj = EchoBackend()
    assert get_vqa(obj) is obj
    fn = get_vqa(always_no)
    assert isinstance(fn, CallableVQA) and fn.answer([img], ["Is it?"]) == ["no"]
    assert describe_vqa(fn)["vqa"] == "callable:tests.test_vqa.always_no"
    assert get_vqa("tests.test_vqa:always_no").answer([img, img], ["a", "b"]) == ["no", "no"]
    for bad in ("mplug", "tests.test_vqa:nope", "no_such_module_xyz:f"):
        with pytest.raises(ConfigError):
            get_vqa(bad)
    with pytest.raises(ConfigError):
        get_vqa(42)


def test_shared_prefix_tokenizes_like_the_whole_prompt(tiny_dir):
    """Keys/values of the system turn + image are reused across questions: the split must not move tokens."""
    vqa = QwenYesNoVQA(tiny_dir / "qwen2.5-vl").load()
    tok = vqa._processor.tokenizer
    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    for q in [*QUESTIONS, "What?", " leading space, trailing space ", "é£ — “quotes”"]:
        head, tail = vqa.split_prompt(q)
        assert head == vqa._prefix and head.endswith("<|vision_end|>")
        assert ids(head + tail) == ids(head) + ids(tail)
