"""The base Reward's guarantees, shown on small rewards whose right answers are known by hand."""

import math

import pytest
from PIL import Image

from evalsuite import ConfigError, Reward, Sample, Score
from evalsuite.errors import MissingBackendError
from evalsuite.rewards.brightness import Brightness


def solid(value: int, size=(8, 8)) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


class Echo(Reward):
    """Scores len(prompt); raises on prompts containing 'boom'; NaN on 'nan'; N/A on 'skip'."""

    name = "echo"
    needs_image = False
    required_metadata = ("k",)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches: list[list[str]] = []
        self.loads = 0

    def _load(self):
        self.loads += 1

    def _score_batch(self, samples):
        self.batches.append([s.id for s in samples])
        if any("boom" in s.prompt for s in samples):
            raise RuntimeError("model exploded")
        out = []
        for s in samples:
            if "skip" in s.prompt:
                out.append(Score.not_applicable("nothing to check", checked=False))
            elif "nan" in s.prompt:
                out.append(Score(float("nan")))
            else:
                out.append(Score(len(s.prompt), {"k": s.metadata["k"]}))
        return out


def S(i, prompt, **meta):
    return Sample(id=f"s{i}", prompt=prompt, metadata={"k": i, **meta})


def test_brightness_matches_hand_values():
    out = Brightness().score([Sample("a", "p", solid(0)), Sample("b", "p", solid(255)),
                              Sample("c", "p", Image.new("RGB", (2, 1), (255, 0, 0)))])
    assert out.scores[0] == 0.0 and out.scores[1] == pytest.approx(1.0)
    assert out.scores[2] == pytest.approx(0.299)
    target = Brightness(target=0.5).score([Sample("a", "p", solid(255))])
    assert target.scores[0] == pytest.approx(0.5)


def test_lazy_load_once_and_chunking():
    r = Echo(batch_size=2)
    assert r.loads == 0
    out = r.score([S(i, "x" * i) for i in range(5)])
    assert r.loads == 1 and r.batches == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    assert out.scores == [0, 1, 2, 3, 4] and all(out.applicable)
    r.score([S(9, "y")])
    assert r.loads == 1


def test_one_bad_sample_never_loses_the_batch():
    r = Echo(batch_size=8)
    samples = [S(0, "fine"), S(1, "boom here"), S(2, "skip me"), S(3, "nan"),
               Sample("s4", "no metadata"), Sample("s5", b"\xff\xfe bytes"), S(6, "ok")]
    out = r.score(samples)
    assert out.scores[0] == 4 and out.scores[6] == 2
    assert out.applicable == [True, False, False, False, False, False, True]
    assert "s1" in out.errors[1] and "model exploded" in out.errors[1]
    assert out.errors[2] is None and out.details[2]["not_applicable"] == "nothing to check"
    assert "s3" in out.errors[3] and "non-finite" in out.errors[3]
    assert "s4" in out.errors[4] and "['k']" in out.errors[4]
    assert "s5" in out.errors[5] and "str" in out.errors[5]
    assert all(math.isnan(out.scores[i]) for i in (1, 2, 3, 4, 5))
    frame = out.to_frame()
    assert list(frame["applicable"]) == out.applicable and frame.loc[0, "k"] == 0


def test_bad_images_are_errors_naming_the_sample():
    samples = [Sample("good", "p", solid(128)), Sample("corrupt", "p", b"\x89PNG\r\n\x1a\nxx"),
               Sample("empty", "p", Image.new("RGB", (0, 0))), Sample("rgba", "p", Image.new("RGBA", (4, 4))),
               Sample("none", "p", None)]
    out = Brightness().score(samples)
    assert out.applicable == [True, False, False, True, False]
    for i in (1, 2, 4):
        assert repr(samples[i].id) in out.errors[i]
    assert out.scores[3] == pytest.approx(1.0)  # transparent -> white


def test_setup_errors_propagate_instead_of_per_sample_failures():
    class NeedsBackend(Reward):
        name = "needs"
        needs_image = False

        def _score_batch(self, samples):
            raise MissingBackendError("install evalsuite[ocr]")

    with pytest.raises(MissingBackendError):
        NeedsBackend().score([Sample("a", "p")])


def test_wrong_length_from_hook_is_reported():
    class Short(Reward):
        name = "short"
        needs_image = False

        def _score_batch(self, samples):
            return [Score(1.0)]

    out = Short().score([Sample("a", "p")])
    assert out.applicable == [True]
    out = Short().score([Sample("a", "p"), Sample("b", "q")])  # batch fails, then each alone works
    assert out.applicable == [True, True]


def test_group_rewards_see_whole_groups():
    class Rank(Reward):
        name = "rank"
        needs_image = False
        per_group = True

        def _score_group(self, samples):
            order = sorted(range(len(samples)), key=lambda i: samples[i].seed)
            return [Score(float(order.index(i))) for i in range(len(samples))]

    samples = [Sample(f"{p}{k}", p, seed=s) for p, ks in (("a", (3, 1)), ("b", (5, 9, 7))) for k, s in
               enumerate(ks)]
    out = Rank().score(samples)
    assert out.scores == [1.0, 0.0, 0.0, 2.0, 1.0]


def test_config_validation_and_describe():
    with pytest.raises(ConfigError):
        Brightness(batch_size=0)
    with pytest.raises(ConfigError, match="dtype"):
        Brightness(dtype="float8")
    d = Brightness(dtype="bf16", target=0.2).describe()
    assert d["name"] == "brightness" and d["dtype"] == "bfloat16" and d["target"] == 0.2
    assert d["class"] == "evalsuite.rewards.brightness.Brightness"
