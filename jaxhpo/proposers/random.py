"""The reference proposer: uniform draws from the unit cube. Every other proposer must beat it."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxhpo.journal import TrialRecord
from jaxhpo.proposers.base import Proposal, Proposer


class RandomProposer(Proposer):
    name = "random"

    def ask(self, history: Sequence[TrialRecord]) -> Proposal:
        # Seeded by (seed, trial count) so a resumed study draws exactly what an uninterrupted one would.
        rng = np.random.default_rng([self.seed, len(history)])
        return Proposal(self.space.sample(rng), self.name)
