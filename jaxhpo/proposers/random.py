"""The reference proposer: uniform draws from the unit cube. Every other proposer must beat it."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxhpo.journal import TrialRecord
from jaxhpo.proposers.base import Proposal, Proposer, trial_index


class RandomProposer(Proposer):
    name = "random"

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        # Seeded by (seed, trial number) so a resumed study draws exactly what an uninterrupted one would.
        rng = np.random.default_rng([self.seed, trial_index(history, pending)])
        return Proposal(self.space.sample(rng), self.name)
