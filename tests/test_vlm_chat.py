"""The single-image judge scorer (``vlm_chat``): specs, and the local Qwen-VL judge against an independent
transformers computation on tiny weights (Qwen2.5-VL and Qwen3-VL, text-first and image-first)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.registry import get_scorer
from evalsuite.rewards.vlm_chat import CallableChat, LocalQwenChat, OpenAIChat


def test_specs():
    assert isinstance(get_scorer("vlm_chat", "http://127.0.0.1:1/v1", "m"), OpenAIChat)
    assert isinstance(get_scorer("vlm_chat", lambda im, t: "x"), CallableChat)
    with pytest.raises(ConfigError, match="model name"):
        get_scorer("vlm_chat", "http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="'local', an http"):
        get_scorer("vlm_chat", "ftp://x")
    chat = get_scorer("vlm_chat", lambda im, t: "7")
    assert chat.ask(Image.new("RGB", (4, 4)), "q", int).value == 7
    failed = chat.ask(Image.new("RGB", (4, 4)), "q", lambda raw: int("x" + raw))
    assert failed.value is None and "unusable reply" in failed.error


@pytest.mark.parametrize(("name", "image_first"), [("qwen2.5-vl", False), ("qwen3-vl", True)])
def test_local_chat_matches_reference(tiny_dir, name, image_first):
    from qwen_vl_utils import fetch_image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = str(tiny_dir / name)
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    image.putpixel((3, 4), (1, 2, 3))
    chat = LocalQwenChat(path, image_first=image_first, dtype="float32", max_new_tokens=10)
    got = chat.ask(image, "Is the square red?", lambda raw: raw.upper())

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    parts = [{"type": "text", "text": "Is the square red?"}, {"type": "image"}]
    turn = [{"role": "user", "content": parts[::-1] if image_first else parts}]
    text = processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], images=[fetch_image({"image": image})], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=10,
            repetition_penalty=1.05,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    raw = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert got.ok and got.raw == raw and got.value == raw.upper()
    assert chat.describe()["image_first"] is image_first and chat.describe()["model"] == path
