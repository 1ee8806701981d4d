"""HPSv3 on a tiny checkpoint in the official layout (``HPSv3.safetensors`` over a Qwen2-VL base).

The reference mirrors ``HPSv3RewardInferencer.reward`` (hpsv3 1.0.0) step by step: ``prepare_batch``'s
messages, the official ``process_vision_info`` (from the installed package's source when present, else the
same steps by hand), the processor with right padding, then ``Qwen2VLRewardModelBT.forward`` under the
transformers 4.45 it pins: embeddings, image features scattered in, the text model with the attention mask
and no position ids, ``rm_head`` on every hidden state, the rows at ``<|Reward|>``. The backbone is loaded by
transformers' own ``from_pretrained`` from the checkpoint's 4.45 key names, and the head is applied by hand
as float64 matmuls. The official package itself cannot run here (it pins transformers 4.45.2; its trainer
module imports names transformers 5 removed); its source is read where installed:
``pip install --no-deps --target /tmp/hpsv3site hpsv3`` and ``PYTHONPATH=/tmp/hpsv3site``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import math
import shutil
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample
from evalsuite.errors import ConfigError
from evalsuite.rewards.hpsv3 import (
    HPSV3_PIXELS,
    INSTRUCTION,
    RATING_SUFFIX,
    REWARD_TOKEN,
    HPSv3,
    head_from_state_dict,
    mean_and_sigma,
)
from evalsuite.tiny.hpsv3 import write_tiny_hpsv3
from tests.reward_tester import CHECKS, RewardSpec, close, noise_image, torch_threads

SMALL = 16 * 28 * 28  # 16 tokens per image keeps the tiny tests fast; one test uses the official budget
# sha256 of data_collator_qwen.INSTRUCTION + prompt_with_special_token in hpsv3 1.0.0 (PyPI wheel).
OFFICIAL_PROMPT_SHA256 = "f6ee57479d4e9eee76b49c00dc962e1e696a5a2b3cc32cebd9b1fa76fe27502c"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_hpsv3(tmp_path_factory.mktemp("hpsv3"), seed=0)


_img = noise_image


def samples() -> list[Sample]:
    return [
        Sample("h0", "a photo of a cat", image=_img(32, 32, 0)),
        Sample("h1", "cute chibi anime cartoon fox, smiling wagging tail with a small cartoon heart above "
                     "sticker", image=_img(64, 40, 1)),
        Sample("h2", "a red cube on top of a blue sphere", image=_img(48, 80, 2)),
    ]


def _official_source() -> Path | None:
    """The installed ``hpsv3`` package folder, located without importing it (its ``__init__`` fails here)."""
    spec = importlib.util.find_spec("hpsv3")
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@cache
def _official_process_vision_info():
    """``hpsv3.dataset.utils.process_vision_info`` loaded from its file (it imports nothing from hpsv3)."""
    root = _official_source()
    if root is None:
        return None
    spec = importlib.util.spec_from_file_location("_hpsv3_vision_utils", root / "dataset" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.process_vision_info


def _process_vision_info(messages: list) -> list[Image.Image]:
    """The official one when installed; else its steps for PIL input: RGB, smart_resize, bicubic."""
    official = _official_process_vision_info()
    if official is not None:
        return official(messages)[0]
    from qwen_vl_utils import smart_resize

    images = []
    for turn in messages:
        item = turn[0]["content"][0]
        image = item["image"].convert("RGB")
        h, w = smart_resize(image.height, image.width, 28, item["min_pixels"], item["max_pixels"])
        images.append(image.resize((w, h), Image.BICUBIC))
    return images


@cache
def _hf(base: str, ckpt: str):
    """Processor + ``Qwen2VLForConditionalGeneration`` loaded by transformers from the checkpoint's own (4.45)
    key names, and the raw head weights."""
    import tempfile

    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(base)
    processor.tokenizer.padding_side = "right"  # create_model_and_processor(padding_side="right")
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    state = load_file(str(Path(ckpt) / "HPSv3.safetensors"))
    folder = Path(tempfile.mkdtemp(prefix="hpsv3-ref-"))
    config = json.loads((Path(base) / "config.json").read_text())
    config["text_config"]["vocab_size"] = state["model.embed_tokens.weight"].shape[0]
    (folder / "config.json").write_text(json.dumps(config))
    backbone = {k: v for k, v in state.items() if not k.startswith("rm_head.")}
    save_file(backbone, str(folder / "model.safetensors"))
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    shutil.rmtree(folder)
    head = {k.removeprefix("rm_head."): v.double() for k, v in state.items() if k.startswith("rm_head.")}
    return processor, model, head


def official_reward(base: str, ckpt: str, ss: list[Sample], pixels: int, mrope: bool = False) -> torch.Tensor:
    """``[B, (mu, log sigma)]`` as ``HPSv3RewardInferencer.reward`` computes it, for the whole list at once.

    ``mrope=True`` instead lets transformers compute Qwen2-VL's own M-RoPE positions: what a naive port would
    do, used to show that the parity tolerance tells the two apart.
    """
    processor, model, w = _hf(base, ckpt)
    messages = [[{"role": "user", "content": [
        {"type": "image", "image": s.image, "min_pixels": pixels, "max_pixels": pixels},
        {"type": "text", "text": INSTRUCTION.format(text_prompt=s.prompt) + RATING_SUFFIX},
    ]}] for s in ss]
    images = _process_vision_info(messages)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=text, images=images, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        if mrope:
            hidden = model.model(**batch).last_hidden_state
        else:
            embeds = model.get_input_embeddings()(ids)
            vision = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
            embeds = embeds.masked_scatter((ids == model.config.image_token_id)[..., None].expand_as(embeds),
                                           vision)
            hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    def lin(x: torch.Tensor, j: int) -> torch.Tensor:
        return x @ w[f"{j}.weight"].T + w[f"{j}.bias"]

    logits = lin(torch.relu(lin(torch.relu(lin(hidden.double(), 0)), 3)), 5)  # Linear-ReLU-Dropout-...-Linear
    reward_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    return logits[ids == reward_id].view(len(ss), -1)


@pytest.fixture(scope="module")
def spec(tiny) -> RewardSpec:
    base, ckpt = str(tiny["base"]), str(tiny["checkpoint"])
    good = samples()[0]
    return RewardSpec(
        name="hpsv3",
        make=lambda dtype="float32": HPSv3(ckpt, base_model=base, dtype=dtype, min_pixels=SMALL,
                                           max_pixels=SMALL),
        samples=samples,
        reference=lambda reward, ss: official_reward(base, ckpt, ss, SMALL)[:, 0].tolist(),
        atol=1e-6,
        rtol=1e-5,
        bf16_atol=2e-3,  # tiny model: measured <= 4e-4
        extra_bad=(("reward-token", replace(good, id="bad-reward-token", prompt=f"a {REWARD_TOKEN} sign")),),
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check, spec):
    CHECKS[check](spec)


def test_sigma_in_details_and_the_parity_tolerance_is_sharp(spec, tiny):
    base, ckpt = str(tiny["base"]), str(tiny["checkpoint"])
    ss = samples()
    out = spec.make().score(ss)
    want = official_reward(base, ckpt, ss, SMALL)
    for d, (_mu, log_sigma) in zip(out.details, want.tolist()):
        assert close(d["log_sigma"], log_sigma, 1e-6, 1e-5)
        assert close(d["sigma"], math.exp(log_sigma), 1e-6, 1e-5)
    # M-RoPE positions (not what the checkpoint was trained with) move every score past the tolerance.
    naive = official_reward(base, ckpt, ss, SMALL, mrope=True)[:, 0].tolist()
    assert all(not close(got, bad, 1e-6, 1e-5) for got, bad in zip(out.scores, naive)), (out.scores, naive)


def test_official_pixel_budget_parity(tiny):
    """Default budget (256*28*28, small inputs upscaled to ~448 px): same numbers as the reference."""
    from qwen_vl_utils import smart_resize

    base, ckpt = str(tiny["base"]), str(tiny["checkpoint"])
    s = samples()[1]
    reward = HPSv3(ckpt, base_model=base).load()
    _, _, grid = reward._sequences([s])
    h, w = smart_resize(40, 64, 28, HPSV3_PIXELS, HPSV3_PIXELS)
    assert grid.tolist() == [[1, h // 14, w // 14]] and h * w >= HPSV3_PIXELS  # ceil: may pass max_pixels
    want = official_reward(base, ckpt, [s], HPSV3_PIXELS)[0, 0].item()
    assert close(reward.score([s]).scores[0], want, 1e-6, 1e-5)


# -- the rule and the prompt, by hand ---------------------------------------------------------------
def test_mean_and_sigma_by_hand():
    mu, sigma = mean_and_sigma(torch.tensor([[1.5, 0.0], [-2.0, math.log(3.0)]], dtype=torch.float64))
    assert mu.tolist() == [1.5, -2.0]
    assert sigma[0].item() == 1.0 and math.isclose(sigma[1].item(), 3.0, rel_tol=1e-12)


def test_prompt_text_is_the_official_one():
    assert hashlib.sha256((INSTRUCTION + RATING_SUFFIX).encode()).hexdigest() == OFFICIAL_PROMPT_SHA256
    root = _official_source()
    if root is None:
        pytest.skip("hpsv3 not installed (pip install --no-deps --target DIR hpsv3; PYTHONPATH=DIR)")
    tree = ast.parse((root / "dataset" / "data_collator_qwen.py").read_text())
    consts = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
              and n.targets[0].id in ("INSTRUCTION", "prompt_with_special_token")}
    assert (consts["INSTRUCTION"], consts["prompt_with_special_token"]) == (INSTRUCTION, RATING_SUFFIX)


def test_image_preparation_is_the_official_one():
    """Our resize (qwen-vl-utils) gives the pixels of the official fetch_image for RGB input of any size."""
    official = _official_process_vision_info()
    if official is None:
        pytest.skip("hpsv3 not installed (pip install --no-deps --target DIR hpsv3; PYTHONPATH=DIR)")
    from evalsuite import qwen_vl as qvl

    for w, h in ((32, 32), (64, 40), (1600, 1200), (30, 500)):
        image = _img(w, h, w + h)
        item = {"type": "image", "image": image, "min_pixels": HPSV3_PIXELS, "max_pixels": HPSV3_PIXELS}
        want = official([[{"role": "user", "content": [item]}]])[0][0]
        got = qvl.fit_image(image, HPSV3_PIXELS, HPSV3_PIXELS)
        assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want)), (w, h)


def test_head_layouts_by_hand():
    """ranknet (rm_head.{0,3,5}), rm_head_kwargs (0, layer_k.0, output_layer) and default (rm_head.weight)."""
    x = torch.tensor([[1.0, -2.0]])
    ranknet = {"0.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "0.bias": torch.zeros(2),
               "3.weight": torch.tensor([[2.0, 3.0]]), "3.bias": torch.tensor([0.5]),
               "5.weight": torch.tensor([[1.0], [-1.0]]), "5.bias": torch.tensor([0.0, 1.0])}
    # relu([1, -2]) = [1, 0]; 2*1 + 3*0 + 0.5 = 2.5; relu -> 2.5; [2.5, -2.5 + 1]
    assert head_from_state_dict(ranknet)(x).tolist() == [[2.5, -1.5]]
    kwargs = {"0.weight": ranknet["0.weight"], "0.bias": ranknet["0.bias"],
              "layer_1.0.weight": ranknet["3.weight"], "layer_1.0.bias": ranknet["3.bias"],
              "output_layer.weight": ranknet["5.weight"]}  # bias=False by default
    assert head_from_state_dict(kwargs)(x).tolist() == [[2.5, -2.5]]
    default = {"weight": torch.tensor([[1.0, 1.0], [0.0, 2.0]])}
    assert head_from_state_dict(default)(x).tolist() == [[-1.0, -4.0]]
    with pytest.raises(ConfigError, match="rm_head.extra"):
        head_from_state_dict({**ranknet, "extra.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match="mu, log sigma"):
        head_from_state_dict({"weight": torch.zeros(3, 2)})


# -- checkpoint formats ---------------------------------------------------------------------------
def test_file_path_pth_and_new_key_checkpoints_load_the_same(tiny, tmp_path):
    from safetensors.torch import load_file

    base, ckpt = str(tiny["base"]), Path(tiny["checkpoint"])
    state = load_file(str(ckpt / "HPSv3.safetensors"))
    torch.save({"model": state}, tmp_path / "HPSv3_7B.pth")  # the README's local .pth, wrapped
    renamed = {k.replace("visual.", "model.visual.", 1) if k.startswith("visual.") else
               k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k: v
               for k, v in state.items()}  # transformers >= 4.52 names
    torch.save({f"module.{k}": v for k, v in renamed.items()}, tmp_path / "new-keys.pt")
    ss = samples()[:2]
    want = HPSv3(str(ckpt), base_model=base, min_pixels=SMALL, max_pixels=SMALL).score(ss).scores
    for path in (ckpt / "HPSv3.safetensors", tmp_path / "HPSv3_7B.pth", tmp_path / "new-keys.pt"):
        got = HPSv3(str(path), base_model=base, min_pixels=SMALL, max_pixels=SMALL).score(ss).scores
        assert got == want, path.name


def test_bad_checkpoints_fail_loudly(tiny, tmp_path):
    from safetensors.torch import load_file

    base = str(tiny["base"])
    with pytest.raises(ConfigError, match="no HPSv3.safetensors"):
        HPSv3(str(tmp_path), base_model=base).load()
    state = load_file(str(Path(tiny["checkpoint"]) / "HPSv3.safetensors"))
    vocab_keys = ("model.embed_tokens.weight", "lm_head.weight")
    small = {k: (v[:-1] if k in vocab_keys else v) for k, v in state.items()}
    torch.save(small, tmp_path / "novocab.pt")
    with pytest.raises(ConfigError, match="no row for"):
        HPSv3(str(tmp_path / "novocab.pt"), base_model=base).load()
    torch.save({k: v for k, v in state.items() if not k.startswith("rm_head.")}, tmp_path / "nohead.pt")
    with pytest.raises(ConfigError, match="no rm_head"):
        HPSv3(str(tmp_path / "nohead.pt"), base_model=base).load()


def test_tiny_writer_is_deterministic(tiny, tmp_path):
    again = write_tiny_hpsv3(tmp_path, seed=0)
    first = (Path(tiny["checkpoint"]) / "HPSv3.safetensors").read_bytes()
    assert (again["checkpoint"] / "HPSv3.safetensors").read_bytes() == first


def test_registry_and_describe(tiny):
    from evalsuite.registry import get_reward

    reward = get_reward("hpsv3", model=str(tiny["checkpoint"]), base_model=str(tiny["base"]))
    assert isinstance(reward, HPSv3) and HPSv3.default_model == "MizzenAI/HPSv3"
    desc = reward.describe()
    assert desc["base_model"] == str(tiny["base"]) and desc["backend"] == "transformers"
    assert desc["min_pixels"] == desc["max_pixels"] == HPSV3_PIXELS and "mu" in desc["scale"]
    assert "revision" in desc and "base_revision" in desc
