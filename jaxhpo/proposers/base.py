"""The interface every proposer implements: ask for the next configuration, be told how a trial went.

A proposer's state is a function of the trials it was told about, in order: the study rebuilds it after a crash
by telling it the journal's trials again. Failed trials are told too; each proposer decides what a failure
teaches it (see `penalized_values`).

Parallel studies ask while other trials are still running: `ask(history, pending)` gets their configurations,
and must not hand one of them out again. What else a running trial means is the proposer's choice (TPE treats
it as a poor result, CMA-ES as a member of its generation, the LLM is shown the list). `trial_index(history,
pending)` is the number of the trial being asked for, the same whether or not the study ran in parallel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxhpo.journal import TrialRecord
from jaxhpo.objective import VAL_BPB, Objective
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space


@dataclass
class Proposal:
    """A configuration to run, the component that proposed it, and anything it wants recorded."""

    params: dict[str, Any]
    proposer: str
    meta: dict[str, Any] = field(default_factory=dict)


class Proposer(ABC):
    """ask(history, pending) -> Proposal; tell(trial). Subclasses set `name`; those that ask an LLM set `uses_llm`, take
    an `llm` argument (an LLMClient or None) and read `self.llm` at every ask, so a study may also assign it. Every
    proposer takes a `protocol` (jaxhpo.protocol.ProtocolConfig) and reads the keys that concern it."""

    name: str = "?"
    uses_llm: bool = False
    # Whether the method edits the trainer's source (meta["agent"]: jaxhpo.proposers.agent_code): the study runs each
    # such trial on its own copy of the trainer, after checking the edit.
    edits_source: bool = False
    # Whether the method takes `warmstart` (configurations from one LLM call run first; jaxhpo.proposers.warmstart).
    supports_warmstart: bool = False
    # Options added since journals record a study's method options, each with the value that does what the
    # proposer did before it existed: a journal without the key ran with that value (checked on resume).
    options_added: dict[str, Any] = {}
    # Options whose null means "as the protocol says", each with its protocol key (a resume compares what ran).
    protocol_defaults: dict[str, str] = {}
    # The proposer's model of where trials fail (jaxhpo.feasibility.FailureModel), if it has one: the study lets it
    # read what the memory pre-flight already knows (jaxhpo.footprints).
    failure_model: Any = None
    # What the trials score, as an LLM prompt names it (jaxhpo.objective): the study sets it before the first ask.
    objective: Objective = VAL_BPB
    # A folder of the proposer's own inside the run folder, for a library that writes files (SMAC): the study sets
    # it before the first tell; None outside a study.
    workdir: Path | None = None

    @classmethod
    def study_space(cls, params: Mapping[str, Mapping]) -> dict[str, dict]:
        """The space definition the study's trials are configurations of, given the space file's: the same, unless
        the method searches more than numbers (hybrid adds the model's structure)."""
        return {name: dict(spec) for name, spec in params.items()}

    def __init__(self, space: Space, seed: int, protocol: ProtocolConfig | None = None):
        self.space, self.seed = space, seed
        self.protocol = protocol or ProtocolConfig()  # the study's rules (jaxhpo.protocol), e.g. failure_value

    @abstractmethod
    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        """The next configuration to evaluate, given every finished trial so far and the configurations of
        the trials still running."""

    def tell(self, trial: TrialRecord) -> None:
        """Learn from a finished trial (whoever proposed it). Stateless proposers ignore it."""


def trial_index(history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> int:
    """The number of the trial being asked for: every finished and every running trial came before it."""
    return len(history) + len(pending)


def told_value(trial: TrialRecord, ok: Sequence[float], failure_value: float | None = None) -> float:
    """The value a proposer that models values is told for `trial`: its val_bpb; for a failure
    `failure_value` (protocol.failure_value), or when null just behind the worst of the successes `ok` so far."""
    if not trial.failed:
        return trial.val_bpb
    if failure_value is not None:
        return float(failure_value)
    return (max(ok) if ok else 0.0) + 1.0


def penalized_values(trials: Sequence[TrialRecord], failure_value: float | None = None) -> np.ndarray:
    """Objective values to minimize, with failures ranked just behind the worst success (or told as
    `failure_value`, protocol.failure_value: the study's 100).

    TPE and CMA-ES use only the ranks of values, so a failure told as "a bit worse than anything that worked"
    steers them away from its region without inventing a magnitude (the original study's val_bpb = 100 would
    be harmless to ranks too, but would wreck any model of the values themselves).
    """
    ok = [t.val_bpb for t in trials if not t.failed]
    if failure_value is None:
        failure_value = (max(ok) if ok else 0.0) + 1.0
    return np.array([failure_value if t.failed else t.val_bpb for t in trials], dtype=float)
