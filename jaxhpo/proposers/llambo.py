"""method=llambo: LLAMBO (Liu et al., ICLR 2024) as the study's "LLAMBO (Paper)" backend ran it -- an LLM samples
candidate configurations conditioned on a target score, the LLM as a surrogate scores each candidate from few-shot
examples, and the candidate with the highest expected improvement runs.

One trial, after trial 0 (the default; there is no initial design):
1. Every told trial is an observation: its val_bpb, or for a failure a penalty fixed when it is told, the worst
   success so far + 0.5 (2.0 before any success), as the study scored failures.
2. Target = best - alpha * range (minimising; the range over all observations, penalties included, or 0.1 * |max|
   when it is 0). The study's alpha = -0.2 asks for a score 20 % of the range *worse* than the best: LLAMBO's way
   of asking for new configurations rather than copies of the best.
3. The candidate sampler (`jaxhpo.llm.llambo.sampler_prompt`) is asked for `samples` completions at temperature
   0.8; a reply counts when its `## ... ##` names every parameter with a valid value and the configuration is
   neither observed, running nor already a candidate. Up to 4 such calls, until min(5, candidates) are found; then
   seeded random draws fill the set up to `candidates` (the study padded so too), recorded in the meta.
4. Each candidate is scored by the surrogate prompt, `samples` completions at temperature 0.7: the mean and
   standard deviation of the numbers read (one `## x ##` per reply; a candidate with none gets the others' mean
   and std; std at least 1e-5). Expected improvement below the best observation picks the one to run.
At the study's values a trial makes 11 requests for 110 completions; every request is a row of the journal's
`llm_turns` (kind llambo-sampler or llambo-scorer) and the report gives the LLM seconds per trial (never charged
to the budget). A study replays by telling the journal's trials again; its LLM calls are not repeated.

When no candidate comes out of the sampler calls (a dead LLM, unusable replies) the trial is a seeded random draw
tagged `llambo→fallback`, each call's reason in its row.

Where jaxhpo departs from the study's backend: categories are written by name (the study numbered them); a failure
is named in the sampler's examples beside its penalty (the study showed only the number); the examples are cut to
the LLM's context (the study sent all of them, its context was 32k); a configuration is also checked against the
ones running; the random fallback is seeded by the study's seed and trial (the study's used seed 42 for every run)
and tagged; the study's last-attempt rule (candidates left unchecked on the fourth call) is not reproduced.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import norm

from jaxhpo.journal import TrialRecord
from jaxhpo.llm import TEXT, llambo
from jaxhpo.proposers.base import Proposal, Proposer, trial_index
from jaxhpo.proposers.llm import chat_turn, llm_failure, prompt_budget, scrubbed
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space

FALLBACK = "llambo→fallback"
SAMPLER_TEMPERATURE, SCORER_TEMPERATURE = 0.8, 0.7  # the study's
SAMPLER_CALLS = 4  # the study's attempts at enough candidates
MIN_STD = 1e-5


def _key(params: Mapping) -> str:
    return json.dumps(params, sort_keys=True)


class LLAMBOProposer(Proposer):
    """LLAMBO: an LLM samples candidates toward a target score and scores them; expected improvement chooses."""

    name = "llambo"
    uses_llm = True

    def __init__(self, space: Space, seed: int, candidates: int = 10, samples: int = 10, alpha: float = -0.2,
                 llm: Any = None, protocol: ProtocolConfig | None = None):  # fmt: skip
        super().__init__(space, seed, protocol)
        for name, value in (("candidates", candidates), ("samples", samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"llambo: {name} must be an integer >= 1, got {value!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not -1 <= alpha <= 1 or alpha == 0:
            raise ValueError(f"llambo: alpha must be a number in [-1, 1] other than 0, got {alpha!r}")
        self.candidates, self.samples, self.alpha = candidates, samples, float(alpha)
        self.llm = llm
        self.observed: list[tuple[dict, float, str | None]] = []  # (params, score, failure status or None)
        self._ok: list[float] = []

    def tell(self, trial: TrialRecord) -> None:
        if trial.failed:
            score = max(self._ok) + 0.5 if self._ok else 2.0
        else:
            score = float(trial.val_bpb)
            self._ok.append(score)
        self.observed.append((self.space.clamp(trial.params)[0], score, trial.status if trial.failed else None))

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        rng = np.random.default_rng([self.seed, trial_index(history, pending)])
        examples = [self.observed[i] for i in llambo.shuffled(len(self.observed))]
        scores = [score for _, score, _ in self.observed]
        budget = prompt_budget(self.llm)
        seen = {_key(p) for p, _, _ in self.observed} | {_key(dict(p)) for p in pending}
        calls: list[dict] = []
        target = self._target(scores) if scores else None
        found = self._sample(examples, target, budget, seen, calls) if scores else []
        if not found:
            reason = "no observation to learn from" if not scores else "no usable candidate from the sampler"
            meta = {"llambo": {"fallback": reason}, **({"llm_turn": calls} if calls else {})}
            return Proposal(self._draw(rng, seen), FALLBACK, meta)
        padded = 0
        while len(found) < self.candidates:
            found.append(self._draw(rng, seen))
            padded += 1
        mean, std = self._score(examples, found, budget, calls)
        best = min(scores)
        z = (best - mean) / std
        ei = (best - mean) * norm.cdf(z) + std * norm.pdf(z)
        i = int(np.argmax(ei))
        meta = {
            "target": target, "candidates": len(found), "padded": padded, "chosen": i,
            "chosen_padding": i >= len(found) - padded, "mean": float(mean[i]), "std": float(std[i]),
            "ei": float(ei[i]), "llm_seconds": round(sum(c["latency_s"] or 0.0 for c in calls), 3),
        }  # fmt: skip
        return Proposal(found[i], self.name, {"llm_turn": calls, "llambo": meta})

    # -- the steps ---------------------------------------------------------------------------------------------

    def _target(self, scores: Sequence[float]) -> float:
        spread = max(scores) - min(scores)
        if spread == 0:
            spread = max(0.1 * abs(max(scores)), 1e-6)
        return min(scores) - self.alpha * spread

    def _sample(self, examples, target: float, budget: int, seen: set, calls: list) -> list[dict]:
        """Candidates from up to SAMPLER_CALLS sampler calls (`seen` grows with them)."""
        wanted = min(5, self.candidates)
        found: list[dict] = []
        messages = llambo.sampler_prompt(self.space, examples, target, budget, self.objective)
        for _ in range(SAMPLER_CALLS):
            if len(found) >= wanted:
                break
            replies, turn = chat_turn(self.llm, "llambo-sampler", messages, TEXT, llm_failure, n=self.samples,
                                      temperature=SAMPLER_TEMPERATURE)  # fmt: skip
            new = []
            for reply in replies or ():
                params = llambo.parse_candidate(reply.text, self.space)
                if params is not None and _key(params) not in seen:
                    seen.add(_key(params))
                    new.append(params)
            if replies is not None:
                turn["parsed"] = new
                if not new:
                    turn["fallback"] = f"no new valid configuration in {len(replies)} replies"
            calls.append(scrubbed(self.llm, turn))
            found += new
        return found[: self.candidates]

    def _score(self, examples, found: list[dict], budget: int, calls: list) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the surrogate's scores of each candidate."""
        mean, std = np.full(len(found), np.nan), np.full(len(found), np.nan)
        for j, params in enumerate(found):
            messages = llambo.scorer_prompt(self.space, examples, params, budget, self.objective)
            replies, turn = chat_turn(self.llm, "llambo-scorer", messages, TEXT, llm_failure, n=self.samples,
                                      temperature=SCORER_TEMPERATURE)  # fmt: skip
            values = np.array([self.objective.own(llambo.parse_score(r.text)) for r in replies or ()] or [np.nan])
            if replies is not None:
                turn["parsed"] = [None if math.isnan(v) else float(v) for v in values]
                if np.isnan(values).all():
                    turn["fallback"] = f"no score in {len(replies)} replies"
            calls.append(scrubbed(self.llm, turn))
            if not np.isnan(values).all():
                mean[j], std[j] = np.nanmean(values), np.nanstd(values)
        known = ~np.isnan(mean)
        if not known.any():  # nothing scored: every candidate alike, the first runs (the study's rule)
            return np.zeros(len(found)), np.ones(len(found))
        mean[~known], std[~known] = mean[known].mean(), std[known].mean()
        return mean, np.maximum(std, MIN_STD)

    def _draw(self, rng: np.random.Generator, seen: set) -> dict:
        """A seeded random configuration not seen yet (or the last draw, after 100 tries)."""
        for _ in range(100):
            params = self.space.sample(rng)
            if _key(params) not in seen:
                break
        seen.add(_key(params))
        return params
