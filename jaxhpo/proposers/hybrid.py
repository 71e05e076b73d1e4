"""method=hybrid: an LLM changes the model's structure, a classical optimizer tunes the numbers inside it.

The study's space gains a categorical per structural option of the GPT and the knobs structures bring
(`jaxhpo.structure.with_structure`), so every trial is one configuration of structure and numbers. After the
default configuration (and `repeats` reruns of it under other training seeds, whose spread is the noise), the
search runs in epochs:

1. the LLM sees every structure tried (best val_bpb, trials, failures, best numbers) and answers with a parent,
   the changes to make to it, and the numeric sub-space worth tuning inside (`jaxhpo.llm.hybrid`); a failed or
   unusable reply falls back to the first untried one-change neighbour of the best structure, over every number
   near the best structure's (`NEAR`);
2. an inner proposer (`inner`, any classical method) tunes that sub-space for `inner_trials` trials; its first
   trial is the parent's best numbers in the new structure, the numbers outside the sub-space stay at them;
3. the epoch's best against the best before it decides whether the structure improved on it by more than the
   noise. After `patience` structures in a row that did not, or after `structures` structures, the rest of the
   budget refines the best structure's numbers over the whole numeric space (one log line and the trial's meta
   say when and why).

Every trial's meta["hybrid"] holds its structure (choices and `structure_id`), the sub-space's definition and
`space_id`, the parent, the epoch, the phase and the kind of `change` (structural or numeric). A resumed study is
told the journal's trials in order and rebuilds its epochs from that meta, without asking the LLM again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from jaxhpo import structure
from jaxhpo.journal import TrialRecord
from jaxhpo.llm.client import one_line
from jaxhpo.llm.hybrid import StructureSummary, parse_structure_reply, reply_schema, structure_prompt
from jaxhpo.llm.prompt import ReplyError
from jaxhpo.proposers.base import Proposal, Proposer
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space, definition_id

log = logging.getLogger(__name__)
STRUCTURE = "llm-structure"
FALLBACK = "llm-structure→fallback"
REPEAT = "repeat"
NEAR = 0.15  # the fallback sub-space's half-width in unit coordinates: a ×/÷ 1.7 factor on a 40× log range


@dataclasses.dataclass
class Epoch:
    """One structure's inner study: its sub-space, the proposer tuning it, and the numbers it starts from."""

    number: int
    choices: dict
    parent: str | None
    space: Space
    start: dict  # the full configuration of its first trial
    phase: str  # explore | refine
    proposer: Proposer
    started: int = 0  # trials asked (or replayed) in this epoch
    trials: list = dataclasses.field(default_factory=list)  # finished, projected onto `space`
    closed: bool = False  # counted towards a stall
    own: int = 0  # finished trials proposed in this epoch (a replay counts them as asked)

    @property
    def structure_id(self) -> str:
        return structure.structure_id(self.choices)


class HybridProposer(Proposer):
    """An LLM proposes structures and their numeric sub-spaces; `inner` tunes the numbers inside each."""

    name = "hybrid"
    uses_llm = True

    def __init__(self, space: Space, seed: int, llm: Any = None, inner: str = "tpe", inner_trials: int = 8,
                 structures: int = 4, patience: int = 2, repeats: int = 2, noise: float | None = None,
                 protocol: ProtocolConfig | None = None):  # fmt: skip
        from jaxhpo.proposers import PROPOSERS  # the registry imports this module

        super().__init__(space, seed, protocol)
        cls = PROPOSERS.get(inner)
        if cls is None or cls.uses_llm or cls is HybridProposer or cls.edits_source:
            classical = [n for n, c in PROPOSERS.items() if not (c.uses_llm or c.edits_source)]
            raise ValueError(f"hybrid: inner={inner!r} is not a classical method; choose one of: {', '.join(classical)}")
        for key, value, low in (("inner_trials", inner_trials, 1), ("structures", structures, 0),
                                ("patience", patience, 1), ("repeats", repeats, 0)):  # fmt: skip
            if not isinstance(value, int) or value < low:
                raise ValueError(f"hybrid: {key}={value!r} must be an integer >= {low}")
        if noise is not None and not noise >= 0:
            raise ValueError(f"hybrid: noise={noise!r} must be >= 0, or null to measure it with repeats")
        if noise is None and repeats < 1:
            raise ValueError("hybrid: noise=null is measured from repeats of the default; set repeats >= 1 or a noise")
        self.llm, self.inner = llm, inner
        self.inner_trials, self.structures, self.patience, self.repeats = inner_trials, structures, patience, repeats
        self.noise = noise
        structural = {structure.param_name(n) for n in structure.MENU}
        self.numeric = Space(f"{space.name}-numbers", {n: spec for n, spec in space.definition().items()
                                                       if n not in structural})  # fmt: skip
        self.epoch: Epoch | None = None
        self.told: list[TrialRecord] = []  # every trial told, in order
        self.tried: dict[str, StructureSummary] = {}  # structure id -> summary, in the order tried
        self.default_values: list[float] = []  # the default configuration's val_bpb, first run and repeats
        self.stalled = 0
        self.repeats_asked = 0  # reruns of the default handed out (or, on a resume, told)
        self._register(structure.DEFAULT, None)  # the root: the default configuration's structure

    @classmethod
    def study_space(cls, params: Mapping[str, Mapping]) -> dict[str, dict]:
        """The study's space definition with the structural options and knobs added."""
        return structure.with_structure(params)

    # -- asking ------------------------------------------------------------------------------------------------------

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        default = self.space.default()
        if self.noise is None and self.repeats_asked < self.repeats and default not in pending:
            # a rerun of the default under another training seed (one at a time: the same parameters)
            self.repeats_asked += 1
            return Proposal(default, REPEAT, {"train_seed": self.seed + self.repeats_asked,
                                              "hybrid": self._meta(None, "numeric", default)})  # fmt: skip
        if self.epoch is None or self.epoch.started >= self.inner_trials and self.epoch.phase == "explore":
            return self._new_epoch(pending)
        return self._inner_ask(pending)

    def _inner_ask(self, pending: Sequence[Mapping]) -> Proposal:
        e = self.epoch
        # the running trials of this structure, as the inner proposer sees them: each moves to e.trials when told
        mine = [self._project(p, e) for p in pending if structure.id_of(p) == e.structure_id]
        proposal = e.proposer.ask(e.trials, mine)
        params = {**e.start, **proposal.params}
        e.started += 1
        return Proposal(params, self.inner, {**proposal.meta, "hybrid": self._meta(e, "numeric", params)})

    def _new_epoch(self, pending: Sequence[Mapping]) -> Proposal:
        self._close_epoch()
        best_id = self._best_id()
        best = self.tried[best_id]
        done = len(self.tried) - 1 >= self.structures
        if self.stalled >= self.patience or done:
            reason = (f"{self.stalled} structures in a row without an improvement above the noise "
                      f"{self._noise():.4f}" if not done else f"{self.structures} structures explored")  # fmt: skip
            return self._refine(best_id, reason, {}, pending)
        turn, reply = self._outer_turn()
        if reply is not None:
            return self._start(reply.choices, reply.parent, reply.space, STRUCTURE, {"llm_turn": turn})
        untried = next((c for c in structure.one_change_neighbours(best.choices)
                        if structure.structure_id(c) not in self.tried), None)  # fmt: skip
        if untried is None:  # every neighbour of the best tried: nothing left to explore by the rule
            return self._refine(best_id, "every one-change neighbour of the best structure was tried",
                                {"llm_turn": turn}, pending)  # fmt: skip
        return self._start(untried, best_id, self._near(best_id), FALLBACK, {"llm_turn": turn})

    def _outer_turn(self):
        from jaxhpo.proposers.llm import chat_turn, llm_failure, scrubbed

        tried = list(self.tried.values())
        messages = structure_prompt(self.numeric, tried, self._noise() if self.default_values else self.noise)
        completion, turn = chat_turn(self.llm, "hybrid", messages, reply_schema(self.numeric, list(self.tried)),
                                     llm_failure)  # fmt: skip
        if completion is None:
            return scrubbed(self.llm, turn), None
        try:
            reply = parse_structure_reply(completion.text, self.numeric, {s.structure_id: s.choices for s in tried},
                                          self._best_id())  # fmt: skip
        except ReplyError as e:
            turn["fallback"] = one_line(f"unusable reply: {e}")
            return scrubbed(self.llm, turn), None
        turn["parsed"], turn["repairs"] = {"parent": reply.parent, "choices": reply.choices,
                                           "space": reply.space}, reply.repairs  # fmt: skip
        return scrubbed(self.llm, turn), reply

    def _start(self, choices: dict, parent: str, space_def: dict, proposer: str, meta: dict) -> Proposal:
        """A new structure's epoch and its first trial: the parent's best numbers in the new structure."""
        e = self._open(choices, parent, space_def, "explore")
        e.started = 1
        return Proposal(e.start, proposer, {**meta, "hybrid": self._meta(e, "structural", e.start)})

    def _refine(self, best_id: str, reason: str, meta: dict, pending: Sequence[Mapping]) -> Proposal:
        """From here on, the inner method tunes every number of the best structure, knowing its trials so far."""
        log.info("hybrid: refining the numbers of structure %s from here on (%s)", best_id, reason)
        self._open(self.tried[best_id].choices, best_id, self._full_space(), "refine")
        self._seed_refinement()
        proposal = self._inner_ask(pending)
        proposal.meta.update(meta, refine=reason)
        return proposal

    def _open(self, choices: dict, parent: str, space_def: dict, phase: str) -> Epoch:
        numbers = {**self.space.default(), **self.tried[parent].best_params}
        start = {**numbers, **{structure.param_name(k): v for k, v in choices.items()}}
        number = 0 if self.epoch is None else self.epoch.number + 1
        space = Space(f"epoch{number}", self._centred(space_def, start))
        start.update(space.default())  # the parent's numbers, clamped into the sub-space
        self.epoch = self._epoch(number, choices, parent, space, start, phase)
        self._register(choices, parent)
        return self.epoch

    def _epoch(self, number: int, choices: dict, parent: str | None, space: Space, start: dict, phase: str) -> Epoch:
        from jaxhpo.proposers import make_proposer

        inner = make_proposer(self.inner, space, self.seed * 1000 + number, protocol=self.protocol)
        return Epoch(number, dict(choices), parent, space, start, phase, inner)

    @staticmethod
    def _centred(space_def: Mapping[str, Mapping], start: Mapping) -> dict:
        """The sub-space with each default at the epoch's starting value (clamped into its range)."""
        space = Space("sub", space_def)
        return {p.name: {**space_def[p.name], "default": p.clamp(start[p.name])} for p in space.params}

    def _near(self, parent: str) -> dict:
        """The fallback rule's sub-space: every number, within NEAR of the parent's best in unit coordinates. An
        inner method starts with random draws, which over the whole space would rarely beat the parent's tuned
        numbers within one epoch."""
        return self.numeric.around({**self.space.default(), **self.tried[parent].best_params}, NEAR)

    def _full_space(self) -> dict:
        return {n: dict(spec) for n, spec in self.numeric.definition().items()}

    # -- being told --------------------------------------------------------------------------------------------------

    def tell(self, trial: TrialRecord) -> None:
        meta = (trial.meta or {}).get("hybrid")
        sid = structure.id_of(trial.params, meta)
        if meta is None and sid is not None:  # the default configuration (trial 0), or another method's trial
            self._register(structure.of_params(trial.params), None)
        elif meta is not None and meta["epoch"] is not None and (self.epoch is None or meta["epoch"] > self.epoch.number):
            self._replay_epoch(trial, meta)  # a resumed study: the epoch as it ran
        self.told.append(trial)
        if trial.proposer == REPEAT:
            self.repeats_asked = max(self.repeats_asked, int((trial.meta or {}).get("train_seed", 0)) - self.seed)
        if trial.proposer in ("default", REPEAT) and not trial.failed:
            self.default_values.append(trial.val_bpb)
        if sid is None:
            return
        summary = self.tried[sid]
        summary.trials += 1
        summary.failures += trial.failed
        if not trial.failed and (summary.best_val_bpb is None or trial.val_bpb < summary.best_val_bpb):
            summary.best_val_bpb = trial.val_bpb
            summary.best_params = self.numeric.clamp({n: v for n, v in trial.params.items() if n in self.numeric.names})[0]
        e = self.epoch
        if e is not None and sid == e.structure_id:  # every trial of the epoch's structure teaches its inner method
            self._teach(e, trial)
            if meta is not None and meta["epoch"] == e.number:
                e.own += 1
                e.started = max(e.started, e.own)

    def _replay_epoch(self, trial: TrialRecord, meta: Mapping) -> None:
        self._close_epoch()
        choices = structure.check(meta["structure"])
        space = Space(f"epoch{meta['epoch']}", meta["space"])
        self.epoch = self._epoch(meta["epoch"], choices, meta["parent"], space, dict(trial.params), meta["phase"])
        self._register(choices, meta["parent"])
        if meta["phase"] == "refine":
            self._seed_refinement()

    def _seed_refinement(self) -> None:
        """Tell the refinement's inner proposer every earlier trial of its structure."""
        for t in self.told:
            if structure.id_of(t.params, (t.meta or {}).get("hybrid")) == self.epoch.structure_id:
                self._teach(self.epoch, t)

    @staticmethod
    def _project(params: Mapping, e: Epoch) -> dict:
        """A configuration as the epoch's inner proposer sees it: its sub-space's numbers (clamped into it)."""
        return e.space.clamp({n: params[n] for n in e.space.names if n in params})[0]

    def _teach(self, e: Epoch, trial: TrialRecord) -> None:
        projected = dataclasses.replace(trial, params=self._project(trial.params, e))
        e.trials.append(projected)
        e.proposer.tell(projected)

    def _register(self, choices: dict, parent: str | None) -> None:
        sid = structure.structure_id(choices)
        if sid not in self.tried:
            self.tried[sid] = StructureSummary(sid, structure.check(choices), parent)

    def _close_epoch(self) -> None:
        """Count the epoch just ended towards a stall: its best against the best of every other structure."""
        e = self.epoch
        if e is None or e.phase != "explore" or e.closed:
            return
        e.closed = True
        mine = self.tried[e.structure_id].best_val_bpb
        others = [s.best_val_bpb for sid, s in self.tried.items() if sid != e.structure_id and s.best_val_bpb is not None]
        improved = mine is not None and (not others or mine < min(others) - self._noise())
        self.stalled = 0 if improved else self.stalled + 1

    # -- helpers -----------------------------------------------------------------------------------------------------

    def _noise(self) -> float:
        """The noise of one trial: `noise`, or the spread (std) of the default configuration's reruns."""
        if self.noise is not None:
            return float(self.noise)
        return float(np.std(self.default_values, ddof=1)) if len(self.default_values) > 1 else 0.0

    def _best_id(self) -> str:
        scored = [s for s in self.tried.values() if s.best_val_bpb is not None]
        return min(scored, key=lambda s: s.best_val_bpb).structure_id if scored else next(iter(self.tried))

    def _meta(self, e: Epoch | None, change: str, params: Mapping) -> dict:
        choices = structure.of_params(params)
        if e is None:
            return {"epoch": None, "structure": choices, "structure_id": structure.structure_id(choices),
                    "parent": None, "space": None, "space_id": None, "phase": "noise", "change": change}  # fmt: skip
        space = e.space.definition()
        return {"epoch": e.number, "structure": choices, "structure_id": e.structure_id, "parent": e.parent,
                "space": space, "space_id": definition_id(space), "phase": e.phase, "change": change}  # fmt: skip
