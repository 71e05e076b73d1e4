"""CMA-ES in the space's unit cube, on evosax's `CMA_ES` (the update rules are evosax's; this file hands out members
and collects results one trial at a time).

Generations. The search starts at the space default's unit encoding with step size `sigma0` (null: 0.25, a quarter of
every range). Generation g's population of `population_size` points (default 4 + floor(3 ln d), 11 for the 14-D
autoresearch space) is sampled by evosax with the key `fold_in(key(seed), g)` as soon as generation g - 1 has been
updated. `ask` hands out its members in order, one per call; `tell` files each finished trial under the generation;
once `population_size` trials have been told, evosax's `tell` updates mean, step size and covariance on them and the
next generation is sampled. Members not handed out by then are dropped.

Parallel studies (a generation in flight). `ask(history, pending)` skips the open members that are running now
(their configurations are in `pending`). When every open member is running -- more workers than members left --
it draws an extra point from the current distribution, N(m, sigma^2 C), seeded by (seed, generation, number of
running trials); told back, an extra point is an injected solution (below). A member still running when its
generation is updated is told later to the next generation, injected too. So workers never wait for a generation
to finish, and never run the same member twice.

Replay. `ask` changes nothing: the state is a function of the told trials in order, so a fresh proposer with the
same seed that is told the journal again is in exactly the state of the run that wrote it, and asks the same next
point.

Trials it did not propose. A told trial whose params equal a member still open in the current generation is that
member. Any other trial -- the default trial 0, an LLM's configuration in Centaur, a member of an old generation --
is an *injected* solution at its own unit encoding. Following Hansen, "Injecting external solutions into CMA-ES"
(arXiv:1110.4181), its step y = (x - m) / sigma is shortened to a Mahalanobis length ||C^{-1/2} y|| of at most
sqrt(d) + 2d / (d + 2) before the update, so a far-away point can pull the mean at most about as far as a sampled
one would and cannot blow up sigma or C.

Boundaries. A sampled member may leave [0, 1]^d; `Space.from_unit` clips it for evaluation. A member inside the cube
is told to evosax as sampled; one outside is told as the *repaired* point clip(x, 0, 1), the configuration that was
actually evaluated -- an injected solution too (Hansen, ibid.), so the same Mahalanobis clipping applies. Telling
the unclipped sample instead lets the mean drift out of the cube along any coordinate whose best value is at a bound
(WARMUP_RATIO = 0, say), where the objective is flat; on a synthetic quadratic like the one in
tests/test_proposers.py its best value after 200 trials was about twice repair's (0.40 vs 0.19). With repair the
mean, a positive-weight average of evaluated points, stays in the cube. Points are not snapped to the integer or
categorical grid: a level's whole slice evaluates alike, and snapping would collapse the variance along coordinates
with few levels.

Failures. The generation's fitness is `penalized_values` over all told trials: an `oom` (or any failure) ranks just
behind the worst success, i.e. among the worst members of its generation. evosax's CMA-ES uses only ranks
(recombination weights by rank, negative weights for the worst), so the mean moves away from a region that OOMs and
the covariance shrinks towards it. Several failures in one generation tie with each other.

Avoiding failures (`avoid_failures`; null: protocol.avoid_failures, on under jaxhpo's protocol). Before a member
is handed out, the study's failure model (jaxhpo.feasibility, fitted on the told trials) predicts whether it fails; if so the member is redrawn from the
generation's N(m, sigma^2 C), up to MAX_DRAWS draws in all, and the first not predicted to fail is handed out
(else the one least likely to fail); the meta's `rejected` counts the draws predicted to fail. This is resampling,
the usual constraint handling of CMA-ES: the generation becomes a sample of the distribution where the model
predicts success, and what CMA-ES is told is the point that ran. A member's redraws are seeded by (seed,
generation, member, k), fixed by the generation and not by the model, so `tell` recognises any of them as that
member; `ask` still changes nothing, and replay is exact. Extra draws are redrawn alike.

Cost. Per process, the first proposer of a given (population_size, d) jit-compiles evosax's init/ask/tell (a few
seconds on CPU); after that ask and tell take microseconds. The arrays are tiny: run the study process on the CPU
(JAX_PLATFORMS=cpu), or JAX there would claim most of a GPU's memory that the trainer needs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from evosax.algorithms import CMA_ES

from jaxhpo.feasibility import MAX_DRAWS, FailureModel, avoid_failures_option
from jaxhpo.journal import TrialRecord
from jaxhpo.proposers.base import Proposal, Proposer, penalized_values
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space, SpaceError

# evosax jit-compiles ask/tell per algorithm object (`self` is a static argument), so share one per shape:
# every proposer of the same population size and dimension reuses the compiled functions.
_ALGORITHMS: dict[tuple[int, int], CMA_ES] = {}


def _algorithm(population_size: int, dim: int) -> CMA_ES:
    key = (population_size, dim)
    if key not in _ALGORITHMS:
        _ALGORITHMS[key] = CMA_ES(population_size=population_size, solution=jnp.zeros(dim))
    return _ALGORITHMS[key]


def default_population_size(dim: int) -> int:
    """Hansen's default lambda = 4 + floor(3 ln d)."""
    return 4 + int(math.floor(3 * math.log(dim)))


def injection_bound(dim: int) -> float:
    """Hansen's bound on an injected step's Mahalanobis length: sqrt(d) + 2d / (d + 2)."""
    return math.sqrt(dim) + 2 * dim / (dim + 2)


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing their average rank (what evosax computes, without float32 rounding)."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


class CMAESProposer(Proposer):
    name = "cmaes"
    supports_warmstart = True
    options_added = {"avoid_failures": False}
    protocol_defaults = {"avoid_failures": "avoid_failures"}

    def __init__(self, space: Space, seed: int, population_size: int | None = None, sigma0: float | None = None,
                 avoid_failures: bool | None = None, protocol: ProtocolConfig | None = None):  # fmt: skip
        super().__init__(space, seed, protocol)
        avoid_failures = avoid_failures_option(self.name, avoid_failures, self.protocol)
        self.failure_model = FailureModel(space, seed) if avoid_failures else None
        d = space.dim
        if population_size is None:
            population_size = default_population_size(d)
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 2:
            raise ValueError(f"cmaes: population_size must be an integer >= 2 or null, got {population_size!r}")
        if sigma0 is None:
            sigma0 = 0.25
        if isinstance(sigma0, bool) or not isinstance(sigma0, (int, float)) or not 0 < sigma0 < 10:
            raise ValueError(f"cmaes: sigma0 must be a number in (0, 10) or null, got {sigma0!r}")
        self.population_size, self.sigma0 = population_size, float(sigma0)
        self._es = _algorithm(population_size, d)
        self._params = self._es.default_params.replace(std_init=jnp.asarray(self.sigma0, dtype=jnp.float32))
        self._key = jax.random.key(seed)
        mean0 = jnp.asarray(space.to_unit(space.default()), dtype=jnp.float32)
        self._state = self._es.init(self._key, mean0, self._params)
        self._generation = 0
        self._told: list[TrialRecord] = []  # every trial told, in order (for penalized_values)
        self._solutions: list[np.ndarray] = []  # this generation's told solutions, as handed to evosax
        self._told_idx: list[int] = []  # ... and their positions in self._told
        self._injected = 0  # this generation's told solutions that were repaired or injected
        self._sample()

    # -- the ask/tell protocol -------------------------------------------------------------------------------

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        """The first open member of the current generation that is not running (history is not needed: the state
        comes from tell), or an extra draw from the distribution when every open member is running."""
        params, member, picked = self._suggest(pending)
        meta = {"generation": self._generation, "member": member, "sigma": float(self._state.std)}
        return Proposal(params, self.name, meta | picked)

    def tell(self, trial: TrialRecord) -> None:
        self._told.append(trial)
        j, x = self._member_of(trial.params)  # x: its own sample (or redraw) -- exactly what was drawn
        if j is not None:
            self._used[j] = True
        if j is None or not np.all((x >= 0) & (x <= 1)):
            # a repaired member (clipped into the cube) or a foreign trial: an injected solution
            x = self._bounded(np.clip(x, 0.0, 1.0) if j is not None else self._unit(trial.params))
            self._injected += 1
        self._solutions.append(x)
        self._told_idx.append(len(self._told) - 1)
        if len(self._solutions) == self.population_size:
            self._update()

    # -- read-only state for a hybrid (Centaur) ----------------------------------------------------------------

    def state_summary(self, pending: Sequence[Mapping] = ()) -> dict[str, Any]:
        """Where the search stands: the unit-cube mean per parameter, the step size sigma, the covariance
        matrix C (sampling covariance is sigma^2 C; rows and columns in the order of `names`), the decoded next
        configuration `ask(history, pending)` hands out, the generation number and how much of it has been told."""
        C = np.asarray(self._state.C, dtype=float)
        return {
            "names": list(self.space.names),
            "mean": {n: float(v) for n, v in zip(self.space.names, self._mean)},
            "sigma": float(self._sigma),
            "covariance": C.tolist(),
            "next_suggestion": self._suggest(pending)[0],
            "generation": self._generation,
            "population_size": self.population_size,
            "told_in_generation": len(self._solutions),
            "injected_in_generation": self._injected,
        }

    def paper_state(self, pending: Sequence[Mapping] = ()) -> dict:
        """The state as the study's Centaur prompt shows it (`jaxhpo.llm.paper.cma_analysis`): trials so far (the
        one being asked included), sigma, the top 5 told trials by told value, C over every parameter."""
        values = penalized_values(self._told, self.protocol.failure_value)
        top = np.argsort(values, kind="stable")[:5]
        return {
            "n_trials": len(self._told) + len(pending) + 1, "sigma": self._sigma,
            "top": [(dict(self._told[i].params), float(values[i])) for i in top],
            "cov": np.asarray(self._state.C, dtype=float).tolist(), "cov_names": list(self.space.names),
        }  # fmt: skip

    # -- internals ---------------------------------------------------------------------------------------------

    @property
    def _mean(self) -> np.ndarray:
        return np.asarray(self._state.mean, dtype=float)

    @property
    def _sigma(self) -> float:
        return float(self._state.std)

    def _sample(self) -> None:
        """Sample this generation's population (evosax's ask also refreshes the eigendecomposition of C)."""
        key = jax.random.fold_in(self._key, self._generation)
        population, self._state = self._es.ask(key, self._state, self._params)
        self._population = np.asarray(population, dtype=float)
        self._decoded = [self.space.from_unit(x) for x in self._population]
        self._redraws: dict[int, list[tuple[np.ndarray, dict]]] = {}  # member -> its redraws (see `_draws`)
        self._used = [False] * self.population_size
        B, D = np.asarray(self._state.B, dtype=float), np.asarray(self._state.D, dtype=float)
        self._sqrt_C = (B * D) @ B.T
        self._inv_sqrt_C = (B / D) @ B.T

    def _suggest(self, pending: Sequence[Mapping]) -> tuple[dict, int | None, dict]:
        """(configuration, member index, what avoid_failures records in the meta) of the next proposal: the first
        open member not running -- with avoid_failures, its first draw not predicted to fail (see `_draws`) -- else
        an extra draw from N(m, sigma^2 C) (member None)."""
        running = [dict(p) for p in pending]
        model = self.failure_model.fit(self._told) if self.failure_model is not None else None
        for j in range(self.population_size):
            if self._used[j] or self._decoded[j] in running:
                continue
            if model is None:
                return dict(self._decoded[j]), j, {}
            if running and any(params in running for _, params in self._draws(j)):  # a redraw of it is running
                continue
            (_, params), rejected, p_fail = model.pick(lambda k: self._draws(j)[k], config=lambda d: d[1])
            return dict(params), j, model.meta(rejected, p_fail)
        if model is None:
            return self._extra(len(running), 0), None, {}
        params, rejected, p_fail = model.pick(lambda k: self._extra(len(running), k))
        return params, None, model.meta(rejected, p_fail)

    def _extra(self, n_running: int, k: int) -> dict:
        """The k-th extra draw from N(m, sigma^2 C) with `n_running` trials running (k = 0 without avoid_failures)."""
        rng = np.random.default_rng([self.seed, self._generation, n_running] + ([k] if k else []))
        x = self._mean + self._sigma * self._sqrt_C @ rng.standard_normal(self.space.dim)
        return self.space.from_unit(np.clip(x, 0.0, 1.0))

    def _draws(self, j: int) -> list[tuple[np.ndarray, dict]]:
        """Member j's draws, (unit point, configuration): its own sample, then MAX_DRAWS - 1 redraws from this
        generation's N(m, sigma^2 C), seeded by (seed, generation, j, k). They depend on the generation alone, not on
        the failure model, so `tell` knows every point the member may have been handed out as."""
        if j not in self._redraws:
            draws = [(self._population[j], self._decoded[j])]
            for k in range(1, MAX_DRAWS):
                z = np.random.default_rng([self.seed, self._generation, j, k]).standard_normal(self.space.dim)
                x = self._mean + self._sigma * self._sqrt_C @ z
                draws.append((x, self.space.from_unit(x)))
            self._redraws[j] = draws
        return self._redraws[j]

    def _member_of(self, params: Mapping) -> tuple[int | None, np.ndarray | None]:
        """(member, its point) of an open member that was handed out as `params`, else (None, None)."""
        for j in range(self.population_size):
            if not self._used[j] and self._decoded[j] == params:
                return j, self._population[j]
        if self.failure_model is not None:
            for j in range(self.population_size):
                if not self._used[j]:
                    x = next((x for x, p in self._draws(j)[1:] if p == params), None)
                    if x is not None:
                        return j, x
        return None, None

    def _unit(self, params: dict) -> np.ndarray:
        try:
            return self.space.to_unit(params)
        except SpaceError:
            return self.space.to_unit(self.space.clamp(params)[0])  # learn from its nearest valid point

    def _bounded(self, x: np.ndarray) -> np.ndarray:
        """x moved towards the mean until its step y = (x - m) / sigma has Mahalanobis length ||C^{-1/2} y||
        at most Hansen's bound (unchanged if it already has)."""
        y = (x - self._mean) / self._sigma
        length = float(np.linalg.norm(self._inv_sqrt_C @ y))
        bound = injection_bound(self.space.dim)
        return self._mean + self._sigma * y * (bound / length) if length > bound else x

    def _update(self) -> None:
        # evosax's CMA-ES uses only ranks: hand it exact float64 ranks (ties averaged) rather than float32 values.
        fitness = _ranks(penalized_values(self._told, self.protocol.failure_value)[self._told_idx])
        key = jax.random.fold_in(self._key, self._generation)
        population = jnp.asarray(np.stack(self._solutions), dtype=jnp.float32)
        self._state, _ = self._es.tell(key, population, jnp.asarray(fitness, dtype=jnp.float32), self._state,
                                       self._params)
        self._generation += 1
        self._solutions, self._told_idx, self._injected = [], [], 0
        self._sample()
