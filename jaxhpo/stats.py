"""Statistics over studies' results: confidence intervals, paired tests, anytime ranks and hyperparameter
importance. Pure functions on numbers (no journals, no files); jaxhpo.report renders what they return.

Seeds are what makes two studies comparable: studies of two methods run with the same seed share the data order
and the initial draws, so tests pair them by seed and ranks compare methods within one seed before averaging.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats as _scipy_stats

IMPORTANCE_MIN_TRIALS = 10  # fewer successful trials than this: too few to fit a forest and hold some out


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap confidence interval (low, high) of the mean of `values` (scipy.stats.bootstrap,
    `resamples` resamples drawn with `seed`); None without values, (v, v) for one value or equal values.

    The percentile interval never reaches beyond the sample's lowest and highest value (with two values it is
    exactly that range), so with a handful of seeds it is narrower than the truth: read it as "where the mean of
    these seeds' results lies", not as a guarantee about seeds not run."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_ci needs finite values")
    if x.size == 1 or np.ptp(x) == 0:  # no spread to resample: scipy would warn and return NaN
        return float(x[0]), float(x[0])
    result = _scipy_stats.bootstrap(
        (x,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
        rng=np.random.default_rng(seed),
    )  # fmt: skip
    low, high = result.confidence_interval
    return float(low), float(high)


class PairedTest(NamedTuple):
    """A paired test's outcome: how many seeds were paired, and the p-value (None: not testable)."""

    n_pairs: int
    p_value: float | None


def paired_wilcoxon(a_by_seed: Mapping[int, float], b_by_seed: Mapping[int, float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon) of a against b, paired by seed: only the seeds
    both mappings hold count, and n_pairs is how many those are. p_value is None with fewer than 2 pairs or when
    every pair is equal (no difference to test).

    Pairs with equal values are dropped by the test (Wilcoxon's zero method). With n differing pairs the exact
    null distribution's smallest two-sided p is 2 / 2**n (`smallest_wilcoxon_p`): 5 seeds can never give
    p < 0.0625, and 2 seeds never less than 0.5, however consistent the difference."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    a = np.array([a_by_seed[s] for s in seeds], dtype=float)
    b = np.array([b_by_seed[s] for s in seeds], dtype=float)
    if len(seeds) < 2 or not np.any(a != b):
        return PairedTest(len(seeds), None)
    p = _scipy_stats.wilcoxon(a, b, alternative="two-sided").pvalue
    return PairedTest(len(seeds), float(p))


def smallest_wilcoxon_p(n_differing: int) -> float:
    """The smallest two-sided p-value the exact signed-rank test can give with `n_differing` unequal pairs:
    2 / 2**n (all differences of one sign)."""
    return min(1.0, 2.0 / 2.0**n_differing)


def shared_seeds(curves: Mapping[str, Mapping[int, object]]) -> list[int]:
    """The seeds every method in `curves` has, ascending."""
    sets = [set(by_seed) for by_seed in curves.values()]
    return sorted(set.intersection(*sets)) if sets else []


def step_values(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y as a step function of x sampled on `grid`: at each point the y of the last x at or below it, NaN before
    the first x."""
    if len(x) == 0:
        return np.full(np.shape(grid), np.nan)
    idx = np.searchsorted(x, grid, side="right") - 1
    return np.where(idx >= 0, y[np.clip(idx, 0, len(y) - 1)], np.nan)


def anytime_ranks(
    curves: Mapping[str, Mapping[int, tuple[np.ndarray, np.ndarray]]], grid: Sequence[float]
) -> dict[str, np.ndarray]:
    """Average rank of each method at each budget point of `grid`, over the seeds all methods share.

    curves[method][seed] = (x, y): x the cumulative budget charged at each trial's end (ascending), y the
    best-so-far val_bpb after that trial, NaN before the first success (jaxhpo.report.best_so_far). Within one
    seed the methods are ranked at each point by their best-so-far value there (1 = lowest; ties share the
    average rank; a method without a success yet, or with no trial finished yet, ranks behind every method that
    has one), then the ranks are averaged over the shared seeds. Without a shared seed every value is NaN."""
    grid = np.asarray(grid, dtype=float)
    methods = list(curves)
    seeds = shared_seeds(curves)
    if not seeds:
        return {m: np.full(grid.shape, np.nan) for m in methods}
    total = np.zeros((len(methods), len(grid)))
    for seed in seeds:
        values = np.array([step_values(grid, *map(np.asarray, curves[m][seed])) for m in methods])
        values = np.where(np.isnan(values), np.inf, values)  # no success yet: behind every success
        total += _scipy_stats.rankdata(values, method="average", axis=0)
    return {m: total[i] / len(seeds) for i, m in enumerate(methods)}


def _encode_column(values: list, spec: Mapping | None) -> np.ndarray:
    """One hyperparameter's values as numbers: categoricals (and anything not a number) as their index among the
    space's choices (or their sorted distinct values), log-scaled and power-of-two ranges as logarithms."""
    spec = spec or {}
    numeric = all(isinstance(v, numbers.Real) for v in values)
    if spec.get("type") == "categorical" or not numeric:
        levels = list(spec.get("choices") or ()) or sorted({str(v) for v in values})
        keys = [v if v in levels else str(v) for v in values]
        levels += sorted({k for k in keys if k not in levels}, key=str)  # values outside the listed choices
        return np.array([levels.index(k) for k in keys], dtype=float)
    x = np.array(values, dtype=float)
    if (spec.get("log") or spec.get("pow2")) and (x > 0).all():
        return np.log(x)
    return x


def importance(
    params: Sequence[Mapping], values: Sequence[float], space: Mapping[str, Mapping] | Sequence[str],
    *, folds: int = 5, repeats: int = 5, seed: int = 0,
) -> list[tuple[str, float, float]]:  # fmt: skip
    """Permutation importance of each hyperparameter for val_bpb, as (name, mean, std), most important first.

    `params` and `values` are successful trials' configurations and val_bpb; `space` is the space definition
    (name -> {type, log, pow2, choices, ...}, as the journal's study info holds it) or just the parameter names
    (then anything not a number is categorical and nothing is log-scaled). A random forest
    (scikit-learn, fixed random_state) is fitted on (`folds` - 1)/`folds` of the trials and each hyperparameter's
    column is shuffled `repeats` times in the held-out fold (sklearn.inspection.permutation_importance): the
    importance is the rise in held-out mean squared error, in units of the variance of all values (about 0: the
    forest does not use it; about 1: shuffling it costs as much as predicting val_bpb's mean; a decisive one can
    reach 2, as shuffled predictions err both ways). mean and std are over all folds × repeats. Held-out folds,
    because permuting the training data of a forest that memorised it overstates every parameter. Trials lacking
    a parameter or with a non-finite value are left out; with fewer than IMPORTANCE_MIN_TRIALS left (or values
    that do not vary) the answer is []."""
    specs = dict(space) if isinstance(space, Mapping) else {name: None for name in space}
    names = list(specs)
    rows = [
        (p, float(v)) for p, v in zip(params, values)
        if v is not None and math.isfinite(v) and all(n in p for n in names)
    ]  # fmt: skip
    y = np.array([v for _, v in rows])
    if not names or len(rows) < IMPORTANCE_MIN_TRIALS or np.ptp(y) == 0:
        return []
    from sklearn.ensemble import RandomForestRegressor  # imported late: only a report with enough trials pays
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import KFold

    X = np.column_stack([_encode_column([p[n] for p, _ in rows], specs[n]) for n in names])
    variance = float(np.var(y))
    scores: list[np.ndarray] = []
    splitter = KFold(n_splits=min(folds, len(rows)), shuffle=True, random_state=seed)
    for i, (train, test) in enumerate(splitter.split(X)):
        forest = RandomForestRegressor(n_estimators=100, random_state=seed + i, n_jobs=1).fit(X[train], y[train])
        result = permutation_importance(
            forest, X[test], y[test], scoring="neg_mean_squared_error", n_repeats=repeats, random_state=seed + i,
            n_jobs=1,
        )  # fmt: skip
        scores.append(result.importances / variance)  # (features, repeats)
    pooled = np.concatenate(scores, axis=1)
    out = [(n, float(pooled[j].mean()), float(pooled[j].std(ddof=1))) for j, n in enumerate(names)]
    return sorted(out, key=lambda item: (-item[1], item[0]))
