"""DiffusersGenerator on the tiny FLUX and Kontext checkpoints: seeds, batching, size handling."""

import numpy as np
import pytest
from PIL import Image

from evalsuite import DiffusersGenerator, GenerationRequest, get_generator
from evalsuite.benchmark import Benchmark, PromptRecord
from evalsuite.seeding import derive_seed


@pytest.fixture(scope="module")
def flux(tiny_dir):
    return DiffusersGenerator.from_pretrained(
        str(tiny_dir / "flux"), dtype="float32", num_inference_steps=3, height=64, width=64, batch_size=3
    )


def arr(img):
    return np.asarray(img, dtype=np.int16)


def test_image_depends_only_on_prompt_and_seed(flux):
    reqs = [GenerationRequest("a red apple", 11), GenerationRequest("two cats on a sofa", 12),
            GenerationRequest("a red apple", 13), GenerationRequest("a blue car", 14)]
    batch = flux.generate(reqs)
    assert len(batch) == 4 and all(im.size == (64, 64) and im.mode == "RGB" for im in batch)
    alone = flux.generate([reqs[2]])[0]
    # same seed, different batch size and position (batch of 3 + 1 vs alone): same image (fp tolerance)
    assert np.abs(arr(alone) - arr(batch[2])).max() <= 1
    assert np.abs(arr(batch[0]) - arr(batch[2])).mean() > 1  # a different seed is a different image


def test_per_request_size_and_manifest(flux):
    imgs = flux.generate([GenerationRequest("a", 1, height=32, width=48), GenerationRequest("b", 2)])
    assert imgs[0].size == (48, 32) and imgs[1].size == (64, 64)
    d = flux.describe()
    assert d["pipeline"] == "FluxPipeline" and d["num_inference_steps"] == 3 and d["dtype"] == "float32"
    assert d["guidance_scale"] == 3.5 and d["model"].endswith("flux")


def test_kontext_edits_at_the_requested_size(tiny_dir):
    gen = get_generator("diffusers", str(tiny_dir / "flux-kontext"), dtype="float32",
                        num_inference_steps=2, guidance_scale=2.5, height=64, width=64)
    assert type(gen.pipeline).__name__ == "FluxKontextPipeline"
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    out = gen.generate([GenerationRequest("make it blue", 5, source_image=source),
                        GenerationRequest("make it green", 6, source_image=source)])
    assert [im.size for im in out] == [(64, 64), (64, 64)]  # never silently upsized to ~1 MP


def test_benchmark_seeds_are_stable_per_prompt_and_index():
    class Toy(Benchmark):
        name = "toy"
        images_per_prompt = 3

        def prompts(self, data_dir=None):
            return [PromptRecord("p0", "a cat"), PromptRecord("p1", "a dog")]

        def score(self, samples):
            return []

        def aggregate(self, per_sample):
            return per_sample

    toy = Toy()
    full = toy.samples(toy.prompts(), base_seed=7)
    subset = toy.samples(toy.prompts()[1:], base_seed=7)
    assert [s.id for s in full] == ["p0/0", "p0/1", "p0/2", "p1/0", "p1/1", "p1/2"]
    assert [s.seed for s in subset] == [s.seed for s in full[3:]]
    assert full[0].seed == derive_seed(7, "p0", 0) and len({s.seed for s in full}) == 6
    assert toy.samples(toy.prompts(), base_seed=8)[0].seed != full[0].seed
    assert full[4].group == "p1" and full[4].group_key == "p1"


class _Recorder:
    """A pipeline stand-in with both guidance arguments: records what the generator passes."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, prompt, height=64, width=64, num_inference_steps=4, generator=None, output_type="pil",
                 guidance_scale=3.5, true_cfg_scale=4.0, negative_prompt=None):
        self.calls.append({"guidance_scale": guidance_scale, "true_cfg_scale": true_cfg_scale,
                           "negative_prompt": negative_prompt})
        from types import SimpleNamespace

        return SimpleNamespace(images=[Image.new("RGB", (width, height)) for _ in prompt])


class QwenImagePipeline(_Recorder):
    pass


class FluxPipeline(_Recorder):
    pass


def test_guidance_reaches_each_familys_cfg_argument():
    """``--guidance`` is FLUX's distilled guidance_scale but Qwen-Image's true_cfg_scale (which only runs
    with a negative prompt, so the model card's " " is passed when none is given)."""
    from evalsuite.generator import DiffusersGenerator, GenerationRequest

    qwen, flux = QwenImagePipeline(), FluxPipeline()
    for pipe in (qwen, flux):
        generator = DiffusersGenerator(pipe, guidance_scale=5.0, height=64, width=64)
        generator.generate([GenerationRequest("a cat", 0)])
    assert qwen.calls == [{"guidance_scale": 3.5, "true_cfg_scale": 5.0, "negative_prompt": [" "]}]
    assert flux.calls == [{"guidance_scale": 5.0, "true_cfg_scale": 4.0, "negative_prompt": None}]
