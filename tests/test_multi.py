import math

import pytest

from evalsuite import ConfigError, Reward, Sample, Score, get_reward
from evalsuite.rewards.multi import MultiReward, parse_weights


class Const(Reward):
    needs_image = False

    def __init__(self, name, value, na_on=(), fail_on=(), **kw):
        super().__init__(**kw)
        self.name, self.value, self.na_on, self.fail_on = name, value, na_on, fail_on

    def _score_batch(self, samples):
        out = []
        for s in samples:
            if s.id in self.fail_on:
                raise RuntimeError("broken input")
            out.append(Score.not_applicable("no text") if s.id in self.na_on else Score(self.value))
        return out


def make(missing="renormalize"):
    return MultiReward(
        {"a": 1.0, "b": 3.0},
        rewards={"a": Const("a", 1.0, na_on=("s1",)), "b": Const("b", 2.0, na_on=("s2",), fail_on=("s3",))},
        missing=missing,
    )


SAMPLES = [Sample(f"s{i}", "p") for i in range(4)]


def test_weighted_mean_and_components():
    out = make().score(SAMPLES)
    assert out.scores[0] == pytest.approx((1 * 1 + 3 * 2) / 4)
    assert out.scores[1] == pytest.approx(2.0)  # only b applies
    assert out.scores[2] == pytest.approx(1.0)  # only a applies
    assert out.details[1]["skipped"] == ["a"]
    assert set(out.components) == {"a", "b"} and out.components["b"].scores[0] == 2.0
    assert not out.applicable[3] and "b:" in out.errors[3] and "s3" in out.errors[3]


def test_skip_and_not_applicable_policies():
    skip = make("skip").score(SAMPLES)
    assert skip.scores[0] == pytest.approx(7.0) and skip.scores[1] == pytest.approx(6.0)
    strict = make("not_applicable").score(SAMPLES)
    assert strict.applicable[:3] == [True, False, False]
    assert strict.errors[1] is None and "a" in strict.details[1]["not_applicable"]
    assert math.isnan(strict.scores[1])


def test_parse_and_registry_construction():
    assert parse_weights("brightness:0.5, multi") == {"brightness": 0.5, "multi": 1.0}
    with pytest.raises(ConfigError):
        parse_weights("a:x")
    with pytest.raises(ConfigError):
        parse_weights({})
    with pytest.raises(ConfigError):
        MultiReward({"brightness": 1}, missing="zero")
    r = get_reward("multi", weights="brightness:2", reward_kwargs={"brightness": {"target": 1.0}})
    assert r.components["brightness"].target == 1.0
    assert r.describe()["weights"] == {"brightness": 2.0}
