"""The study's model of failure: how likely a configuration is to fail (OOM, divergence, ...), learned from the
told trials, so that any proposer can avoid what is predicted to fail (the `avoid_failures` option of random, tpe
and cmaes; Centaur's prompt marks a CMA-ES suggestion still predicted to fail). Configurations whose shapes the
memory pre-flight has already refused, in this study or another sharing its compilation cache (jaxhpo.footprints),
are certain failures: the study sets `known_to_fail`, and their p_fail is 1.

The model. An extra-trees classifier (scikit-learn's ExtraTreesClassifier: 50 trees, every feature considered at
each split, random_state = the proposer's seed) on the unit encodings of the trials that ran, label "failed";
p_fail is the share of trees that vote "fails", and a configuration is predicted to fail above THRESHOLD = 0.2.
Trials lost to their LLM call (error NOT_RUN_PREFIX ...) never ran and say nothing about their configuration.
Until a trial has failed and one has succeeded there is nothing to learn: p_fail is 0 everywhere, so a proposer
proposes exactly what it would without the model. Same trials, same forest: predictions, hence replayed proposals,
are identical; `fit` refits only when the trials changed (41 ms at 100 trials on a 2-core CPU, 3 ms per p_fail).

The choice (measured on benchmarks/proposer_quality.py's autoresearch objective, whose OOM region includes the
issue's large-batch-with-a-large-model corner: 20 seeds x 60 trials; failed share of all trials / of the last
30 / mean final regret). Without a model: tpe 11.8 % / 6.3 % / 0.634, random 20.3 % / 22.7 % / 0.928. Extra trees
at 0.3 (random_state 0): tpe 6.7 % / 2.0 % / 0.566, random 10.1 % / 8.3 % / 0.877; with each proposer's seed, as
here: tpe 8.2 % / 3.5 % / 0.652, random 10.2 % / 8.8 % / 0.842. At 0.5 they miss more: tpe 9.4 % / 5.2 %,
random 13.2 % / 13.0 %. Lower, all failed / mean final regret: at 0.2 tpe 7.0 % / 0.586, random 7.9 % / 0.844
(used); at 0.1 tpe 6.7 % / 0.625, random 6.2 % / 0.890, where false rejections start to cost random regret. A
random forest (all features, 0.3): tpe 8.2 % / 3.5 % / 0.602, random 11.5 % / 9.8 %.
L1-penalized logistic regression on degree-2 features (fast: 2-9 ms), 0.5: tpe 9.6 % / 4.2 %, random 14.8 % /
14.0 %; at 0.3 its false rejections cost TPE regret (0.638 vs 0.562 over 10 seeds). Class weights "balanced"
rejected more good configurations than they caught failures. Fitted on the first trials of studies and scored on
their next 20 proposals, kNN (k = 5) caught 2 of TPE's 11 failures after 40 trials while rejecting 10 of its 109
good proposals, and a Gaussian-process classifier (ARD RBF kernel) took 2-3 s per fit and rejected 20-50 % of the
good proposals at thresholds where it caught most failures. Trees suit the data: few trials, a few relevant
parameters among 14, and failure regions bounded by thresholds and their interactions (a device batch of 256 *and*
a large model).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import sklearn
from sklearn.ensemble import ExtraTreesClassifier

from jaxhpo.journal import TrialRecord
from jaxhpo.protocol import NOT_RUN_PREFIX
from jaxhpo.space import Space, SpaceError

N_TREES = 50
THRESHOLD = 0.2  # a configuration is predicted to fail when p_fail, the share of trees that say so, exceeds it
MAX_DRAWS = 20  # candidates a proposer draws at most for one proposal before it keeps the least likely to fail

T = TypeVar("T")


def avoid_failures_option(method: str, value: Any, protocol: Any = None) -> bool:
    """A method's `avoid_failures` option, checked: true or false, else ValueError (one line); null takes the
    protocol's `avoid_failures` (jaxhpo's: true; the paper's: false), true without a protocol."""
    if value is None:
        return bool(getattr(protocol, "avoid_failures", True))
    if not isinstance(value, bool):
        raise ValueError(f"{method}: avoid_failures must be true, false or null, got {value!r}")
    return value


class FailureModel:
    """p_fail(configs): the probability that each configuration fails, from a classifier fitted on the told trials'
    unit encodings (label: the trial failed; a pruned one did not). Trials lost to their LLM call never ran and are left out. With no
    failure or no success yet it knows nothing: p_fail is 0 everywhere."""

    def __init__(self, space: Space, seed: int = 0, threshold: float = THRESHOLD):
        self.space, self.seed, self.threshold = space, seed, threshold
        self._units: dict[int, tuple[TrialRecord, np.ndarray]] = {}  # trial number -> (its record, its encoding)
        self._data: tuple[np.ndarray, np.ndarray] | None = None  # the (X, y) the classifier was fitted on
        self._clf: Any = None  # None: knows nothing
        # Set by the study: whether a configuration is already known to fail (the pre-flight cache by shape,
        # jaxhpo.footprints); such a configuration has p_fail 1, whatever the classifier says
        self.known_to_fail: Callable[[Mapping], bool] | None = None

    @property
    def knows_anything(self) -> bool:
        """Whether it has seen both a failure and a success (else p_fail is 0 everywhere)."""
        return self._clf is not None

    def fit(self, history: Sequence[TrialRecord]) -> FailureModel:
        """Fit on the trials that ran; refits only when they differ from the last fit's (same history, no work)."""
        ran = [t for t in history if not (t.error or "").startswith(NOT_RUN_PREFIX)]
        X = np.array([self._unit(t) for t in ran]).reshape(len(ran), self.space.dim)
        # A pruned trial ran until its pruner stopped it: slow to learn, not infeasible.
        y = np.array([t.failed and t.status != "pruned" for t in ran], dtype=bool)
        if self._data is not None and np.array_equal(X, self._data[0]) and np.array_equal(y, self._data[1]):
            return self
        self._data, self._clf = (X, y), None
        if y.any() and not y.all():
            # refitted at every ask: sklearn's checks of each tree's parameters and inputs (they are ours, finite,
            # valid) are a quarter of the fit's time, and skipping them changes no prediction
            with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
                self._clf = ExtraTreesClassifier(N_TREES, max_features=None, random_state=self.seed).fit(X, y)
        return self

    def p_fail(self, configs: Sequence[Mapping]) -> np.ndarray:
        """The probability that each configuration fails: 1 for one known to fail, else the classifier's (0 while
        it knows nothing)."""
        p = np.zeros(len(configs))
        if self._clf is not None and len(configs):
            X = np.array([self._encode(c) for c in configs])
            with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
                p = self._clf.predict_proba(X)[:, list(self._clf.classes_).index(True)]
        if self.known_to_fail is not None:
            p = np.where([self.known_to_fail(c) for c in configs], 1.0, p)
        return p

    def pick(self, draw: Callable[[int], T], config: Callable[[T], Mapping] = lambda c: c,
             max_draws: int = MAX_DRAWS) -> tuple[T, int, float]:  # fmt: skip
        """The first of draw(0), draw(1), ... (at most `max_draws`) not predicted to fail, else the one least likely
        to fail: (that draw, how many of the draws were predicted to fail, its p_fail). `config` maps a draw to its
        configuration."""
        drawn: list[tuple[float, T]] = []
        for k in range(max_draws):
            c = draw(k)
            p = float(self.p_fail([config(c)])[0])
            if p <= self.threshold:
                return c, len(drawn), p
            drawn.append((p, c))
        p, c = min(drawn, key=lambda d: d[0])
        return c, len(drawn), p

    def meta(self, rejected: int, p_fail: float) -> dict[str, Any]:
        """What a proposal's meta records of a `pick`: `rejected`, the draws predicted to fail (when any), and
        `p_fail` when the configuration proposed is itself predicted to fail (every draw was)."""
        meta: dict[str, Any] = {"rejected": rejected} if rejected else {}
        if p_fail > self.threshold:
            meta["p_fail"] = round(p_fail, 3)
        return meta

    def _unit(self, trial: TrialRecord) -> np.ndarray:
        """A told trial's encoding, computed once per trial: a told trial never changes."""
        cached = self._units.get(trial.number)
        if cached is None or cached[0] is not trial:  # another record of that number: another history
            cached = self._units[trial.number] = (trial, self._encode(trial.params))
        return cached[1]

    def _encode(self, config: Mapping) -> np.ndarray:
        try:
            return self.space.to_unit(config)
        except SpaceError:
            return self.space.to_unit(self.space.clamp(config)[0])  # a foreign configuration: its nearest valid point
