"""The reference proposer: uniform draws from the unit cube. Every other proposer must beat it.

With `avoid_failures` (jaxhpo.feasibility) a draw predicted to fail is drawn again, up to MAX_DRAWS times (then
the draw least likely to fail is kept); the meta's `rejected` counts the draws predicted to fail. The first draw
is the one without it, so until a trial has failed the proposals are the same."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxhpo.feasibility import FailureModel, avoid_failures_option
from jaxhpo.journal import TrialRecord
from jaxhpo.proposers.base import Proposal, Proposer, trial_index
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space


class RandomProposer(Proposer):
    name = "random"
    options_added = {"avoid_failures": False}
    protocol_defaults = {"avoid_failures": "avoid_failures"}

    def __init__(self, space: Space, seed: int, avoid_failures: bool | None = None,
                 protocol: ProtocolConfig | None = None):  # fmt: skip
        super().__init__(space, seed, protocol)
        self.avoid_failures = avoid_failures_option(self.name, avoid_failures, self.protocol)
        self.failure_model = FailureModel(space, seed) if self.avoid_failures else None

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        # Seeded by (seed, trial number) so a resumed study draws exactly what an uninterrupted one would.
        rng = np.random.default_rng([self.seed, trial_index(history, pending)])
        if self.failure_model is None:
            return Proposal(self.space.sample(rng), self.name)
        params, rejected, p_fail = self.failure_model.fit(history).pick(lambda _: self.space.sample(rng))
        return Proposal(params, self.name, self.failure_model.meta(rejected, p_fail))
