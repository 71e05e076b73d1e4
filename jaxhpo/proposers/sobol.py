"""Quasi-random search: a scrambled Sobol sequence over the space's unit cube (scipy.stats.qmc).

Trial t (t >= 1; trial 0 is the default) gets the sequence's point t - 1, so the first 2^k trials cover the cube
far more evenly than as many uniform draws: the space-filling design a surrogate benchmark is fitted on
(benchmarks/surrogate_data.py), and a baseline that a learner must beat as surely as random. Powers of two in
the number of trials keep Sobol's balance properties; any count works.

State: none but the seed (the scrambling): a resumed study asks for the same points, and trials it did not
propose change nothing. In a parallel study each running trial holds its own index, so asks never repeat one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from scipy.stats import qmc

from jaxhpo.journal import TrialRecord
from jaxhpo.proposers.base import Proposal, Proposer, trial_index


class SobolProposer(Proposer):
    name = "sobol"

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        index = max(trial_index(history, pending) - 1, 0)
        engine = qmc.Sobol(self.space.dim, scramble=True, seed=self.seed)
        if index:  # scipy refuses to fast-forward by 0
            engine.fast_forward(index)
        return Proposal(self.space.from_unit(engine.random(1)[0]), self.name, {"sobol_index": index})
