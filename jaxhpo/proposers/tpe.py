"""Tree-structured Parzen Estimator: hyperopt's TPE (`hyperopt.tpe.suggest`) over the space's unit cube.

Encoding. Categoricals are `hp.choice` over their indices (their values have no order, and a choice keeps one
probability per value). Every other parameter -- floats, and integer grids too (DEPTH's 21 levels, the power-of-two
batch sizes) -- is `hp.uniform(name, 0, 1)` in the space's unit encoding, decoded by `Space.from_unit`. Integers are
ordered: as a uniform, TPE's Parzen kernels carry what a good DEPTH=12 says over to 11 and 13, where a 21- or 97-way
`hp.choice` would learn each level on its own from a handful of trials (on a synthetic quadratic like the one in
tests/test_proposers.py, choices for the integer grids did worse: best 0.77 vs 0.74 after 60 trials, late failures
11% vs 7%). The unit encoding gives every level an equal slice of [0, 1], so the prior is still uniform over levels;
a told value sits at its slice's centre, (i + 0.5) / n.

State. None besides options and caches: every `ask` computes what `hyperopt.tpe.suggest` would from the history
it is given, seeded with (seed, trial number). So a resumed study -- a fresh proposer, the journal replayed through
`tell`, then `ask(history)` -- proposes exactly what the uninterrupted one would have, and `tell` has nothing to do.
Trials this proposer did not suggest (the default trial 0, an LLM's configuration) enter the model like any other.
What does not change between asks is built once: hyperopt's posterior graph (hyperopt rebuilds it on every call)
and each told trial's encoding; no hyperopt `Trials` is built. The proposals are hyperopt's to the bit (checked
against `tpe.suggest` in tests/test_proposers.py); an ask at 60 trials took 18 ms instead of 31 ms, nearly all of
it now hyperopt's pyll evaluation of the posterior.

Startup. The first `n_startup_trials` proposals (counting every trial in the history, the default included) are
hyperopt's own uniform random draws (`hyperopt.rand.suggest`); after that TPE proper, with hyperopt's defaults for
the rest (24 EI candidates, prior weight 1, linear forgetting after 25) but for the split below.

The split (chosen by measurement). hyperopt's "good" density holds ceil(gamma * sqrt(n)) trials, with its gamma
0.25 one or two trials up to n = 64: TPE then models the neighbourhood of the one best trial. jaxhpo's default is
Optuna's rule, ceil(0.1 * n) trials (capped at 25 by hyperopt, as by Optuna), `split=linear gamma=0.1`; hyperopt's
is `split=sqrt gamma=0.25`. On benchmarks/proposer_quality.py (10 seeds x 60 trials, five objectives) the
geometric mean over objectives of the final regret against Optuna 5's default TPESampler fell from 1.98x to 1.30x;
more EI candidates (48), a lower prior weight (0.5), gamma 0.15 or 5 start-up trials moved it by less than the
benchmark's seed-to-seed noise (random against itself: 0.96x to 1.97x per objective), so they keep hyperopt's
values (README, "Benchmarks").

Pending trials (a parallel study). A "constant liar": each running configuration enters the Trials as if it had
finished with the worst loss seen so far, so it lands in the "bad" density and the next proposal moves away from
it instead of repeating it -- several workers asking at once spread out rather than pile onto the current
optimum of the acquisition. The lie is the worst value rather than the mean because a running trial must not
pull proposals towards itself (Optuna's `constant_liar` makes the same choice). The seed is the trial number
(finished + running), so a study without pending trials asks exactly as before.

Failures. Every finished trial goes in with hyperopt status "ok" and its `penalized_values` loss: an `oom` (or any
other failure) counts as just worse than the worst success. TPE only uses the loss to split trials into the best
few ("good" density) and the rest ("bad" density), so a failure always lands in the bad one,
without a made-up magnitude: proposals drift away from its neighbourhood, but only as much as from any other poor
trial -- TPE has no separate model of where trials fail. Before any trial has succeeded all losses tie and the split
is arbitrary (deterministic, so replay still matches).

Avoiding failures (`avoid_failures`; null, the default: protocol.avoid_failures, on under jaxhpo's protocol and
off under the paper's). That is how TPE came to pair a large DEVICE_BATCH_SIZE, good
in its best small-model trials, with large models that OOM. With the option, the study's failure model
(jaxhpo.feasibility, fitted on the history) filters the proposal: if it predicts hyperopt's proposal fails, TPE
proposes again with the trial's next seed, (seed, trial number, j) for j = 1, 2, ..., up to MAX_DRAWS proposals in
all, and keeps the first not predicted to fail (else the one least likely to); the meta's `rejected` counts the
proposals predicted to fail. The first proposal is always hyperopt's with the usual seed, so without the option,
or before any trial has failed, the proposals are hyperopt's to the bit.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import numpy as np
from hyperopt import hp, pyll, tpe
from hyperopt.base import Domain

from jaxhpo.feasibility import FailureModel, avoid_failures_option
from jaxhpo.journal import TrialRecord
from jaxhpo.proposers.base import Proposal, Proposer, penalized_values, trial_index
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space, SpaceError

# hyperopt logs a line per suggest at INFO; the study has its own progress output.
logging.getLogger("hyperopt").setLevel(logging.WARNING)
# How many trials are "good": hyperopt's ceil(gamma * sqrt(n)) or Optuna's ceil(gamma * n) (see `_gamma`).
SPLITS = ("sqrt", "linear")


class TPEProposer(Proposer):
    name = "tpe"
    supports_warmstart = True
    options_added = {"avoid_failures": False}
    protocol_defaults = {"avoid_failures": "avoid_failures"}

    def __init__(
        self,
        space: Space,
        seed: int,
        n_startup_trials: int = 10,
        gamma: float = 0.1,
        n_ei_candidates: int = tpe._default_n_EI_candidates,
        prior_weight: float = tpe._default_prior_weight,
        split: str = "linear",
        avoid_failures: bool | None = None,
        protocol: ProtocolConfig | None = None,
    ):
        super().__init__(space, seed, protocol)
        avoid_failures = avoid_failures_option(self.name, avoid_failures, self.protocol)
        self.failure_model = FailureModel(space, seed) if avoid_failures else None
        if isinstance(n_startup_trials, bool) or not isinstance(n_startup_trials, int) or n_startup_trials < 0:
            raise ValueError(f"tpe: n_startup_trials must be an integer >= 0, got {n_startup_trials!r}")
        if not 0 < gamma < 1:
            raise ValueError(f"tpe: gamma must be in (0, 1), got {gamma!r}")
        if isinstance(n_ei_candidates, bool) or not isinstance(n_ei_candidates, int) or n_ei_candidates < 1:
            raise ValueError(f"tpe: n_ei_candidates must be an integer >= 1, got {n_ei_candidates!r}")
        if not prior_weight > 0:
            raise ValueError(f"tpe: prior_weight must be > 0, got {prior_weight!r}")
        if split not in SPLITS:
            raise ValueError(f"tpe: split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split
        self.n_startup_trials = n_startup_trials
        self.gamma, self.n_ei_candidates, self.prior_weight = float(gamma), n_ei_candidates, float(prior_weight)
        self._categorical = {p.name: p.type == "categorical" for p in space.params}
        expr = {
            p.name: hp.choice(p.name, list(range(len(p.choices)))) if p.type == "categorical"
            else hp.uniform(p.name, 0.0, 1.0)
            for p in space.params
        }  # fmt: skip
        self._domain = Domain(lambda _: 0.0, expr)
        # hyperopt's posterior graph (tpe.build_posterior_wrapper), built once: the observations, the losses and
        # gamma are placeholder nodes that every ask's memo fills in.
        self._observed, self._observed_loss = (pyll.Literal(), pyll.Literal()), (pyll.Literal(), pyll.Literal())
        self._gamma_node = pyll.Literal(self.gamma)
        vh = self._domain.vh
        self._posterior = tpe.build_posterior(vh.v_expr, vh.idxs_by_label(), vh.vals_by_label(), *self._observed,
                                              *self._observed_loss, self._gamma_node,
                                              pyll.Literal(self.prior_weight))  # fmt: skip
        self._vals_cache: dict[int, tuple[TrialRecord, dict]] = {}  # trial number -> (its record, its values)

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        n, number = len(history), trial_index(history, pending)
        configs = [self._vals(t) for t in history] + [self._vals_of(dict(p)) for p in pending]
        losses = list(penalized_values(history, self.protocol.failure_value))
        losses += [max(losses, default=0.0)] * len(pending)  # the constant liar
        meta = {"phase": "startup" if n < self.n_startup_trials else "tpe"}

        def draw(j: int) -> dict:
            """The proposal with the j-th seed of this trial: j = 0 is the one without avoid_failures."""
            key = [self.seed, number] if j == 0 else [self.seed, number, j]
            vals = self._suggest(configs, losses, int(np.random.default_rng(key).integers(2**31 - 1)))
            return self.space.from_unit(np.array([self._to_unit(p, vals[p.name]) for p in self.space.params]))

        if self.failure_model is None:
            return Proposal(draw(0), self.name, meta)
        params, rejected, p_fail = self.failure_model.fit(history).pick(draw)
        return Proposal(params, self.name, meta | self.failure_model.meta(rejected, p_fail))

    def _suggest(self, configs: list[dict], losses: list[float], seed: int) -> dict:
        """What `hyperopt.tpe.suggest` proposes for the next trial after the observations (configs as hyperopt
        values, with their losses; trial ids 0..n-1, the new one n), computed as it does -- its random start-up
        below n_startup_trials, else the best of n_ei_candidates draws from the good density by EI -- but on the
        posterior graph built once in __init__ (hyperopt builds it on every call; gamma, the one input that may
        change, is a node the memo sets) and without a hyperopt Trials."""
        domain, n = self._domain, len(losses)
        rng = np.random.default_rng(seed)
        if n < self.n_startup_trials:
            _, vals = pyll.rec_eval(domain.s_idxs_vals, memo={domain.s_new_ids: [n], domain.s_rng: rng})
            return {label: v[0] for label, v in vals.items()}
        fake_ids = list(range(n + 1, n + 1 + self.n_ei_candidates))  # as hyperopt: max(max(tids), new id) + 2 on
        tids = list(range(n))
        memo = {
            domain.s_new_ids: fake_ids, domain.s_rng: rng, self._gamma_node: self._gamma(n),
            self._observed_loss[0]: tids, self._observed_loss[1]: losses,
            self._observed[0]: {label: tids for label in domain.params},
            self._observed[1]: {label: [c[label] for c in configs] for label in domain.params},
        }  # fmt: skip
        idxs, vals = pyll.rec_eval(self._posterior, memo=memo, print_node_on_error=False)
        return {label: next(v for i, v in zip(idxs[label], vals[label]) if i == fake_ids[0]) for label in vals}

    def _gamma(self, n: int) -> float:
        """The gamma to hand hyperopt for n trials: its good set is ceil(gamma * sqrt(n)) of them (split="sqrt");
        split="linear" makes it ceil(self.gamma * n), Optuna's rule (both capped at 25 by hyperopt)."""
        if self.split == "sqrt" or n == 0:
            return self.gamma
        return self.gamma * math.sqrt(n) * (1 - 1e-12)  # the epsilon: sqrt(n)**2 may round above n, and ceil up

    def _vals(self, trial: TrialRecord) -> dict:
        """hyperopt's values of a finished trial, computed once per trial: a told trial never changes."""
        cached = self._vals_cache.get(trial.number)
        if cached is None or cached[0] is not trial:  # another record of that number: another history
            cached = self._vals_cache[trial.number] = (trial, self._vals_of(trial.params))
        return cached[1]

    def _vals_of(self, params: dict) -> dict:
        """hyperopt's value per label: the choice index for categoricals, the unit coordinate otherwise."""
        try:
            self.space.check(params)
        except SpaceError:
            params, _ = self.space.clamp(params)  # a foreign configuration: learn from its nearest valid point
        return {
            p.name: p.choices.index(params[p.name]) if self._categorical[p.name] else float(p.to_unit(params[p.name]))
            for p in self.space.params
        }  # fmt: skip

    @staticmethod
    def _to_unit(p, v) -> float:
        if p.type == "categorical":
            return (int(v) + 0.5) / len(p.choices)
        return float(v)
