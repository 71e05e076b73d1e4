"""`method.options.warmstart=K` (tpe, cmaes, smac, optuna_tpe, optuna_cmaes): before the classical proposer's
first proposal, one LLM call asks for K diverse starting configurations (a conservative one, an aggressive one,
creative ones, as the study's `hybrid/warmstart.py` asked); they run as the trials after the default, tagged
`llm-warmstart`, and every one of them is told to the classical proposer like any trial, so it learns from them.
(The study's code handed its warm starts to Optuna-based backends whose tell dropped them.)

The reply is read by `jaxhpo.llm.prompt.parse_configs`: each configuration repaired like any LLM reply (missing
parameters from the default, numbers clipped and snapped), a configuration already evaluated or listed twice
dropped, extra ones ignored, every change noted in the turn's repairs. When the LLM cannot be reached or nothing in
its reply is usable, the classical proposer starts at once; the turn, with its reason, is journaled with that
trial. The turn is always the first asked trial's (`llm_turns` keys turns by trial).

Replay: every warm-start trial's meta holds the whole list and its index, so a resumed study hands out the rest
without asking the LLM again; a study whose LLM gave nothing records that too (an empty list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from jaxhpo.journal import TrialRecord
from jaxhpo.llm.prompt import ReplyError, parse_configs, warmstart_prompt, warmstart_schema
from jaxhpo.proposers.base import Proposal, Proposer
from jaxhpo.proposers.llm import chat_turn, llm_failure, reply_budget, scrubbed

WARMSTART = "llm-warmstart"

def warmstart_option(method: str, value: Any) -> int:
    """The `warmstart` option checked: an integer >= 0, else ValueError (one line)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{method}: warmstart must be an integer >= 0 (configurations the LLM proposes first), "
                         f"got {value!r}")  # fmt: skip
    return value


class WarmStart(Proposer):
    """`inner` (a classical proposer) after `k` configurations from one LLM call; takes the inner's name."""

    uses_llm = True

    def __init__(self, inner: Proposer, k: int, llm: Any = None):
        super().__init__(inner.space, inner.seed, inner.protocol)
        self.inner, self.k, self.llm = inner, k, llm
        self.name = inner.name
        self.configs: list[dict] | None = None  # the LLM's, once asked or read back from a told trial
        self.handed = 0  # how many of them were handed out

    @property
    def failure_model(self):  # the study lets the inner proposer's failure model read the pre-flight cache
        return self.inner.failure_model

    @property
    def workdir(self) -> Path | None:
        return self.inner.workdir

    @workdir.setter
    def workdir(self, path: Path | None) -> None:
        self.inner.workdir = path

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        meta: dict[str, Any] = {}
        if self.configs is None:
            self.configs, meta["llm_turn"] = self._ask_llm(history)
        running = [dict(p) for p in pending]
        while self.handed < len(self.configs):
            index, self.handed = self.handed, self.handed + 1
            if self.configs[index] not in running:
                return Proposal(dict(self.configs[index]), WARMSTART,
                                {**meta, "warmstart": {"index": index, "configs": self.configs}})  # fmt: skip
        proposal = self.inner.ask(history, pending)
        if meta:  # the LLM gave nothing to run: its turn (and that it was asked) goes with the inner's proposal
            proposal.meta = {**proposal.meta, **meta, "warmstart": {"index": None, "configs": []}}
        return proposal

    def tell(self, trial: TrialRecord) -> None:
        told = trial.meta.get("warmstart")
        if isinstance(told, dict):  # replay: the list, without asking the LLM again
            self.configs = [dict(c) for c in told.get("configs") or []]
            if told.get("index") is not None:
                self.handed = max(self.handed, int(told["index"]) + 1)
        self.inner.tell(trial)

    def _ask_llm(self, history: Sequence[TrialRecord]) -> tuple[list[dict], dict]:
        """The LLM's configurations (none when it fails) and the turn record."""
        messages = warmstart_prompt(self.space, self.k, history, self.objective)
        completion, turn = chat_turn(self.llm, "warmstart", messages, warmstart_schema(self.space, self.k),
                                     llm_failure, reply_budget(self.llm, messages, times=self.k))  # fmt: skip
        configs: list[dict] = []
        if completion is not None:
            try:
                parsed, repairs = parse_configs(completion.text, self.space, self.k)
            except ReplyError as e:
                turn["fallback"] = f"unusable reply: {e}"
            else:
                seen = [dict(t.params) for t in history]
                for i, params in enumerate(parsed, start=1):
                    if params in seen:
                        repairs.append(f"configuration {i} dropped: already evaluated or listed")
                    else:
                        configs.append(params)
                        seen.append(params)
                turn["parsed"], turn["repairs"] = configs, repairs
                if not configs:
                    turn["fallback"] = "every configuration in the reply was already evaluated"
        return configs, scrubbed(self.llm, turn)
