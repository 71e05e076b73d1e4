"""jaxhpo.stats on synthetic numbers whose answer is known: intervals, paired tests, anytime ranks, importance."""

import math
import warnings

import numpy as np
import pytest

from jaxhpo.stats import (
    IMPORTANCE_MIN_TRIALS,
    anytime_ranks,
    bootstrap_ci,
    importance,
    paired_wilcoxon,
    shared_seeds,
    smallest_wilcoxon_p,
)

NAN = float("nan")


@pytest.fixture(autouse=True)
def no_warnings():
    """Degenerate inputs are handled, not warned about (scipy's degenerate-data and small-sample warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 0.1, 8), rng.normal(1.0, 0.1, 400)
    widths = []
    for sample in (small, large):
        low, high = bootstrap_ci(sample)
        assert low < sample.mean() < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(n): 50 times the samples, about 7 times narrower
    assert 0.01 < widths[1] < 0.05  # about 2 × 1.96 × 0.1 / sqrt(400) = 0.0196


def test_bootstrap_ci_is_reproducible_and_follows_the_confidence():
    values = [0.95, 0.97, 0.96, 0.99, 0.94, 0.98]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    low90, high90 = bootstrap_ci(values, confidence=0.9)
    low99, high99 = bootstrap_ci(values, confidence=0.99)
    assert low99 <= low90 < high90 <= high99
    assert min(values) <= low99 and high99 <= max(values)  # a percentile interval stays within the sample


def test_bootstrap_ci_degenerate_samples():
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([0.97]) == (0.97, 0.97)
    assert bootstrap_ci([0.97, 0.97, 0.97]) == (0.97, 0.97)
    assert bootstrap_ci([0.95, 0.96]) == pytest.approx((0.95, 0.96))  # two values: the range itself
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.9, NAN])


def test_wilcoxon_small_p_for_a_consistent_shift_and_large_p_for_noise():
    rng = np.random.default_rng(1)
    base = {seed: 1.0 + 0.05 * rng.normal() for seed in range(8)}
    shifted = {seed: v - 0.01 + 0.001 * rng.normal() for seed, v in base.items()}
    n, p = paired_wilcoxon(shifted, base)
    assert n == 8 and p < 0.05
    assert p == pytest.approx(smallest_wilcoxon_p(8))  # better on every seed: the smallest p 8 pairs allow
    noisy = {seed: v + 0.01 * (-1) ** seed + 0.001 * seed for seed, v in base.items()}  # alternating signs
    n, p = paired_wilcoxon(noisy, base)
    assert n == 8 and p > 0.2  # 4 of 8 seeds each way: 0.31
    assert paired_wilcoxon(base, shifted).p_value == pytest.approx(paired_wilcoxon(shifted, base).p_value)


def test_wilcoxon_pairs_only_the_seeds_both_have():
    a = {0: 0.90, 1: 0.91, 2: 0.92, 3: 0.93, 7: 5.0}
    b = {0: 1.00, 1: 1.01, 2: 1.02, 3: 1.03, 9: 0.0}
    n, p = paired_wilcoxon(a, b)
    assert n == 4  # seeds 7 and 9 have no partner
    assert p == pytest.approx(paired_wilcoxon({s: a[s] for s in range(4)}, {s: b[s] for s in range(4)}).p_value)
    assert p == pytest.approx(0.125)  # 4 pairs, all one way: 2 / 2^4


def test_wilcoxon_not_testable_says_none():
    assert paired_wilcoxon({0: 0.9}, {0: 1.0}) == (1, None)
    assert paired_wilcoxon({0: 0.9, 1: 0.8}, {2: 1.0, 3: 1.1}) == (0, None)
    assert paired_wilcoxon({}, {}) == (0, None)
    assert paired_wilcoxon({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.9, 1: 0.8, 2: 0.7}) == (3, None)  # no difference


def test_smallest_wilcoxon_p_is_what_few_seeds_allow():
    assert smallest_wilcoxon_p(5) == 0.0625
    assert smallest_wilcoxon_p(2) == 0.5
    assert smallest_wilcoxon_p(1) == 1.0
    five = paired_wilcoxon({s: 0.9 for s in range(5)}, {s: 1.0 + s / 100 for s in range(5)})
    assert five.p_value == pytest.approx(0.0625)  # as consistent as five seeds can be, and still above 0.05


def curve(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative budget, best-so-far) from (budget at trial end, best so far) pairs."""
    return np.array([x for x, _ in points], dtype=float), np.array([y for _, y in points], dtype=float)


def test_anytime_ranks_a_method_always_better_ranks_first_everywhere():
    grid = np.linspace(1, 30, 50)
    curves = {
        "good": {s: curve([(1, 0.9 - s / 100), (10, 0.8), (20, 0.7)]) for s in range(3)},
        "bad": {s: curve([(1, 1.0), (12, 0.95), (25, 0.9)]) for s in range(3)},
        "worse": {s: curve([(1, 1.1), (5, 1.05)]) for s in range(3)},
    }
    ranks = anytime_ranks(curves, grid)
    assert list(ranks) == ["good", "bad", "worse"]
    np.testing.assert_array_equal(ranks["good"], np.ones(len(grid)))
    np.testing.assert_array_equal(ranks["bad"], np.full(len(grid), 2.0))
    np.testing.assert_array_equal(ranks["worse"], np.full(len(grid), 3.0))


def test_anytime_ranks_ties_share_and_no_success_ranks_last():
    curves = {
        "a": {0: curve([(10, 1.0), (20, 0.9)]), 1: curve([(10, 1.0), (20, 0.8)])},
        "b": {0: curve([(10, 1.0), (20, 0.8)]), 1: curve([(10, 1.0), (20, 0.9)])},
        "c": {0: curve([(5, NAN), (15, NAN)]), 1: curve([(5, NAN), (30, 0.5)])},
    }
    ranks = anytime_ranks(curves, [0, 10, 25, 30])
    # t=0: no trial finished anywhere, all tie; t=10: a and b tie on 1.0, c has no success; t=25: a and b split
    # the seeds; t=30: c's only success (seed 1) beats both there, and c still has none on seed 0.
    np.testing.assert_allclose(ranks["a"], [2.0, 1.5, 1.5, 2.0])
    np.testing.assert_allclose(ranks["b"], [2.0, 1.5, 1.5, 2.0])
    np.testing.assert_allclose(ranks["c"], [2.0, 3.0, 3.0, 2.0])  # (3 + 1) / 2 at t=30
    assert sum(r[2] for r in ranks.values()) == pytest.approx(6.0)  # ranks of 3 methods always sum to 6


def test_anytime_ranks_use_only_the_seeds_every_method_has():
    curves = {
        "a": {0: curve([(1, 0.9)]), 1: curve([(1, 0.9)]), 2: curve([(1, 2.0)])},
        "b": {0: curve([(1, 1.0)]), 1: curve([(1, 1.0)])},
    }
    assert shared_seeds(curves) == [0, 1]
    ranks = anytime_ranks(curves, [1.0])
    assert (ranks["a"][0], ranks["b"][0]) == (1.0, 2.0)  # seed 2, where a is worse, has no partner
    nothing_shared = anytime_ranks({"a": {0: curve([(1, 0.9)])}, "b": {1: curve([(1, 1.0)])}}, [0.0, 1.0])
    assert all(np.isnan(r).all() for r in nothing_shared.values())
    assert anytime_ranks({"a": {0: curve([])}, "b": {0: curve([(1, 1.0)])}}, [2.0])["a"][0] == 2.0


def synthetic_trials(n: int, seed: int = 0):
    """val_bpb driven by log LR (quadratic around 1e-3) and a little by the activation; WIDTH and NOISE do not
    matter; LR is log-scaled, so its effect only reads as smooth on a log axis."""
    rng = np.random.default_rng(seed)
    params, values = [], []
    for _ in range(n):
        p = {"LR": float(10 ** rng.uniform(-5, -1)), "WIDTH": int(rng.integers(64, 512)),
             "ACT": str(rng.choice(["relu", "gelu", "silu"])), "NOISE": float(rng.uniform())}  # fmt: skip
        params.append(p)
        values.append(1.0 + 0.05 * (math.log10(p["LR"]) + 3) ** 2 + (0.03 if p["ACT"] == "relu" else 0.0)
                      + 0.002 * rng.normal())  # fmt: skip
    return params, values


SPACE = {
    "LR": {"type": "float", "low": 1e-5, "high": 0.1, "log": True},
    "WIDTH": {"type": "int", "low": 64, "high": 512},
    "ACT": {"type": "categorical", "choices": ["relu", "gelu", "silu"]},
    "NOISE": {"type": "float", "low": 0.0, "high": 1.0},
}


def test_importance_ranks_the_driving_parameter_above_noise():
    params, values = synthetic_trials(200)
    result = importance(params, values, SPACE)
    names = [name for name, _, _ in result]
    assert sorted(names) == sorted(SPACE)  # one importance per hyperparameter, categoricals included
    assert names[:2] == ["LR", "ACT"]
    scores = {name: (mean, std) for name, mean, std in result}
    assert scores["LR"][0] > 0.5 and scores["LR"][0] > 10 * max(scores["WIDTH"][0], scores["NOISE"][0])
    assert scores["ACT"][0] > max(scores["WIDTH"][0], scores["NOISE"][0])
    assert all(std >= 0 for _, std in scores.values())
    assert [m for _, m, _ in result] == sorted((m for _, m, _ in result), reverse=True)


def test_importance_is_reproducible():
    params, values = synthetic_trials(20, seed=2)
    assert importance(params, values, SPACE) == importance(params, values, SPACE)  # fixed random states


def test_importance_from_names_alone_infers_the_types():
    params, values = synthetic_trials(120, seed=1)
    names = [name for name, _, _ in importance(params, values, ["NOISE", "ACT", "LR", "WIDTH"])]
    assert names[0] == "LR" and set(names) == set(SPACE)


def test_importance_needs_enough_varying_trials():
    params, values = synthetic_trials(IMPORTANCE_MIN_TRIALS - 1)
    assert importance(params, values, SPACE) == []
    assert importance(params[:1] * 20, [1.0] * 20, SPACE) == []  # nothing varies
    params, values = synthetic_trials(30)
    values[:25] = [NAN] * 25  # left out: five trials remain
    assert importance(params, values, SPACE) == []
    assert len(importance(*synthetic_trials(IMPORTANCE_MIN_TRIALS), SPACE)) == len(SPACE)
