"""Centaur: CMA-ES with an LLM that, on some trials, sees CMA-ES's state and may replace its proposal.

Protocol (the study's, DESIGN.md §5). CMA-ES (`CMAESProposer`) is asked on every trial and told every finished
trial, whoever proposed it. Trial t (its number: the finished plus the running trials; trial 0 is the default
and never asked) is an *LLM turn* iff `is_llm_turn(t, warmup, ratio)`: t >= warmup and (t - warmup) is a
multiple of round(1 / ratio). With the defaults (warmup 10, ratio 0.3, round(3.33) = 3) that is trials 10, 13, 16, ...: a
share 1/round(1/ratio) ≈ ratio of the trials after the warm-up.

On an LLM turn the prompt (`jaxhpo.llm.prompt.centaur_prompt`) holds the search space, CMA-ES's mean (decoded and
in unit coordinates), step size σ, covariance matrix labelled by parameter and next suggestion (marked "predicted to
fail" when CMA-ES's failure model still predicts that after its redraws, see `CMAESProposer`), the top-5 trials,
the last 20 evaluations with failure reasons, the best configuration, and guidance. If the reply parses, its
configuration -- clamped to the bounds, missing parameters filled from CMA-ES's suggestion -- is proposed with
proposer "llm"; when CMA-ES's failure model predicts that configuration fails, the LLM is told so and asked once
more in the same conversation (`jaxhpo.proposers.llm.reask_if_predicted_to_fail`). If the LLM is missing, fails,
or replies without a usable JSON object, CMA-ES's suggestion is proposed with proposer "llm→fallback" and the
reason is recorded (the study lost the trial instead, see below).
Every other trial runs CMA-ES's suggestion with proposer "cmaes".

Telling. An LLM configuration is, to CMA-ES, an injected solution: it counts as one of the generation's
population and its step is clipped to Hansen's Mahalanobis bound (`CMAESProposer.tell`), so a far-off
configuration cannot blow up σ or C. The suggestion it replaced stays open and is handed out on the next ask.

Replay. Centaur's state is CMA-ES's, a function of the told trials in order; a resumed study tells the journal's
trials (the LLM's configurations as they ran) and continues exactly. The LLM is not asked again for past trials.

Every proposal's meta holds CMA-ES's (generation, member, sigma); an LLM turn adds `llm_turn` (see
`jaxhpo.proposers.llm`) and, when the LLM's configuration ran, `changed`: the parameters in which it differs from
CMA-ES's suggestion.

The study's Centaur (`protocol.centaur=paper`; its CMA-ES is protocol.cmaes's, Optuna's under protocol=paper).
Its counter starts at 1 after trial 0 and grows by one per proposal that was not lost to an LLM error, and a
trial is an LLM turn iff the counter is >= warmup and a multiple of round(1 / ratio): trials 12, 15, 18, ... The
prompt is the study's (`jaxhpo.llm.paper.centaur_prompt`: no mean vector, the VRAM line, the top 5 of all
finished trials), sent without a schema. Any LLM failure -- unreachable, or a reply that is not a JSON object --
loses the trial: it never runs (proposer "llm→error"), CMA-ES is told the failure value (the study's 100) for
its own sample, the history shows `{} → CRASHED (…)`, and as the counter did not move, the next trial is an LLM
turn again.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

from jaxhpo.journal import TrialRecord
from jaxhpo.llm import paper
from jaxhpo.llm.prompt import centaur_prompt
from jaxhpo.proposers.base import Proposal, Proposer, trial_index
from jaxhpo.proposers.cmaes import CMAESProposer
from jaxhpo.proposers.llm import (FALLBACK, LLM_ERROR, paper_llm_turn, paper_rows, prompt_budget,
                                  reask_if_predicted_to_fail)
from jaxhpo.proposers.optuna_samplers import OptunaCMAESProposer
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space


def llm_period(ratio: float) -> int:
    """Every how many trials the LLM is asked after the warm-up: round(1 / ratio) (at least 1)."""
    return max(1, round(1 / ratio))


def is_llm_turn(t: int, warmup: int, ratio: float) -> bool:
    """Whether trial number t is an LLM turn: t >= warmup and (t - warmup) % round(1 / ratio) == 0.

    With warmup 10 and ratio 0.3 (period 3): trials 10, 13, 16, 19, ...; ratio 0.5: 10, 12, 14, ...; ratio 1:
    every trial from `warmup` on. The share of post-warm-up trials is 1 / round(1 / ratio), ≈ ratio.
    """
    return t >= warmup and (t - warmup) % llm_period(ratio) == 0


def is_paper_llm_turn(count: int, warmup: int, ratio: float) -> bool:
    """The study's rule: its counter (trials so far, less those lost to an LLM error) >= warmup and a multiple of
    round(1 / ratio); with warmup 10 and ratio 0.3, trials 12, 15, 18, ..."""
    return count >= warmup and count % llm_period(ratio) == 0


def make_cmaes(space: Space, seed: int, population_size: int | None, sigma0: float | None,
               protocol: ProtocolConfig | None) -> CMAESProposer | OptunaCMAESProposer:  # fmt: skip
    """The CMA-ES protocol.cmaes names: jaxhpo's on evosax, or the study's on Optuna."""
    cls = OptunaCMAESProposer if protocol is not None and protocol.cmaes == "optuna" else CMAESProposer
    return cls(space, seed, population_size=population_size, sigma0=sigma0, protocol=protocol)


class CentaurProposer(Proposer):
    """CMA-ES on every trial; an LLM may replace its proposal on the trials `is_llm_turn` picks."""

    name = "centaur"
    uses_llm = True

    def __init__(self, space: Space, seed: int, llm: Any = None, warmup: int = 10, ratio: float = 0.3,
                 population_size: int | None = None, sigma0: float | None = None,
                 protocol: ProtocolConfig | None = None):  # fmt: skip
        super().__init__(space, seed, protocol)
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
            raise ValueError(f"centaur: warmup must be an integer >= 0 (trials before the first LLM turn), "
                             f"got {warmup!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
            raise ValueError(f"centaur: ratio must be a number in (0, 1] (share of trials the LLM proposes), "
                             f"got {ratio!r}")
        self.warmup, self.ratio = int(warmup), float(ratio)
        self.llm = llm  # an LLMClient (jaxhpo.llm.client) or None; a study may set it after construction
        if self.protocol.centaur == "jaxhpo" and self.protocol.cmaes == "optuna":
            raise ValueError("centaur: protocol.centaur=jaxhpo shows CMA-ES's mean, which only protocol.cmaes=evosax "
                             "exposes; set protocol.cmaes=evosax, or protocol.centaur=paper")
        self.cmaes = make_cmaes(space, seed, population_size, sigma0, protocol)

    @property
    def failure_model(self):
        """CMA-ES's (its LLM turns see what it predicts of the suggestion)."""
        return self.cmaes.failure_model

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        suggestion = self.cmaes.ask(history, pending)
        if self.protocol.centaur == "paper":
            return self._ask_paper(suggestion, history, pending)
        if not is_llm_turn(trial_index(history, pending), self.warmup, self.ratio):
            return Proposal(suggestion.params, "cmaes", suggestion.meta)
        state = dict(self.cmaes.state_summary(pending), sigma0=self.cmaes.sigma0)
        messages = centaur_prompt(self.space, state, history, suggestion.params, max_tokens=prompt_budget(self.llm),
                                  pending=pending, suggestion_p_fail=suggestion.meta.get("p_fail"),
                                  objective=self.objective)  # fmt: skip
        params, turn, p_fail = reask_if_predicted_to_fail(self.llm, "centaur", messages, self.space, suggestion.params,
                                                          "CMA-ES's suggestion", self.failure_model)  # fmt: skip
        meta = dict(suggestion.meta, llm_turn=turn)
        if params is None:
            return Proposal(suggestion.params, FALLBACK, meta)
        meta.pop("p_fail", None)  # the suggestion's; the LLM's configuration is judged below
        if self.failure_model is not None:
            meta.update(self.failure_model.meta(0, p_fail))
        meta["changed"] = [n for n in self.space.names if params[n] != suggestion.params[n]]
        return Proposal(params, "llm", meta)

    def _ask_paper(self, suggestion: Proposal, history: Sequence[TrialRecord],
                   pending: Sequence[Mapping]) -> Proposal:  # fmt: skip
        count = trial_index(history, pending) - sum(t.proposer == LLM_ERROR for t in history)
        if not is_paper_llm_turn(count, self.warmup, self.ratio):
            return Proposal(suggestion.params, "cmaes", suggestion.meta)
        raw = suggestion.meta.get("optuna_params", suggestion.params)  # what CMA-ES drew, before snapping
        prompt = paper.centaur_prompt(self.space, self.cmaes.paper_state(pending), raw, paper_rows(history),
                                      self.protocol.available_vram)  # fmt: skip
        params, llm_raw, turn, _ = paper_llm_turn(self.llm, "centaur", prompt, self.space)
        meta = dict(suggestion.meta, llm_turn=turn)
        if params is None:  # the study lost the trial on any LLM failure
            return Proposal(suggestion.params, LLM_ERROR, dict(meta, not_run=turn["fallback"]))
        if "optuna_params" in meta:  # Optuna's trial is told what the LLM proposed, as the study overwrote it
            meta["optuna_params"] = {n: llm_raw[n] for n in raw}
        meta["changed"] = [n for n in self.space.names if params[n] != suggestion.params[n]]
        return Proposal(params, "llm", meta)

    def tell(self, trial: TrialRecord) -> None:
        self.cmaes.tell(trial)  # every trial, whoever proposed it: an LLM configuration is an injected solution

    def state_summary(self) -> dict[str, Any]:
        """CMA-ES's state (see `CMAESProposer.state_summary`)."""
        return self.cmaes.state_summary()
