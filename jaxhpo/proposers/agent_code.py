"""method=agent_code, the study's "Karpathy Agent (Code)": the LLM edits the trainer's source and each edit runs.

The LLM is shown the best source so far -- the training constants (the 14 hyperparameters as UPPER_CASE
assignments, as autoresearch's train.py has them) and the model file `model/gpt.py` (`jaxhpo.source`) -- the last 15
experiments (each edit's one-line description and its val_bpb, KEPT or REVERTED, or the error a failed one ended
with) and the best val_bpb, and returns `DESCRIPTION: ...` and the complete edited source in a ```python block. The
constants become the trial's configuration (clamped to the space; missing ones from the best), the model file its
trainer: the trial runs a copy of the `model` package in its own folder with that file in it, after a check that
it imports and builds on abstract shapes (`jaxhpo.study`). The search hill-climbs: an edit whose trial beats the
best becomes the source the next prompt shows, as the study's agent kept improvements and reverted the rest.

Every proposal's meta["agent"] holds the description, the edited model file (`text`), its sha256 and its unified
diff against the installed file; the journal keeps it, so a resumed study rebuilds the best source from the
journal alone. A reply without a usable source (no code block, a lost marker line, a syntax error) is a trial
that ends `crashed` without running, its reason shown to the next prompt; when the LLM cannot be reached the
trial runs the best source with a seeded random configuration, tagged `agent_code→fallback`. (The study's agent
reran the best source after a syntax error and stopped the study on an unreachable LLM.)

Only the built-in trainer (trainer=gpt) has a source to edit: a study with trainer=surrogate refuses this method.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxhpo import source
from jaxhpo.journal import TrialRecord
from jaxhpo.llm import TEXT
from jaxhpo.proposers.base import Proposal, Proposer, trial_index
from jaxhpo.proposers.llm import chat_turn, llm_failure, reply_budget, scrubbed
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space

FALLBACK = "agent_code→fallback"
RECENT = 15  # experiments shown (the study's agent showed its last 15)
HOSTED_MAX_TOKENS = 8192  # the study's reply limit (a local server: what its context leaves, which is less)
_FENCE = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", re.S)


def _prompt(text: str, experiments: Sequence[str], best: float | None) -> list[dict]:
    rules = "\n".join([
        "- Change anything in the source: the training constants (hyperparameters), the architecture, the model's "
        "formulas. Keep the two marker lines that start with '# ----'.",
        "- Every trial trains for the same fixed budget of compute; a larger model sees fewer tokens.",
        "- A configuration that needs too much memory fails with oom: mind DEPTH, ASPECT_RATIO, DEVICE_BATCH_SIZE.",
        "- Keep GPT, GPTConfig, param_count, flops_per_token and token_losses with their signatures: the trainer "
        "calls them.",
        "- Simplicity wins: a small gain from deleting code beats a large gain from added complexity.",
        "- Learn from the experiments: what was kept, what was reverted, what crashed and why.",
    ])  # fmt: skip
    user = "\n\n".join([
        "You are an autonomous ML researcher. Goal: the lowest val_bpb (validation bits per byte) of a small GPT "
        "language model trained for a fixed budget.",
        "The source that reached the best result so far:\n```python\n" + text + "```",
        "Previous experiments:\n" + ("\n".join(experiments) if experiments else "(none yet beyond the baseline)"),
        f"Best val_bpb so far: {best:.4f}" if best is not None else "No successful trial yet.",
        "Rules:\n" + rules,
        "Reply in exactly this format:\nDESCRIPTION: <one line: what you changed and why>\n```python\n<the complete "
        "edited source, both parts>\n```",
    ])  # fmt: skip
    return [{"role": "user", "content": user}]


def parse_reply(text: str) -> tuple[str, str]:
    """(the one-line description, the edited source) of a reply; SourceError (one line) without a code block."""
    m = re.search(r"DESCRIPTION:\s*(.+)", text or "")
    description = m.group(1).strip()[:200] if m else "(no description)"
    blocks = [b for b in _FENCE.findall(text or "") if b.strip()]
    if not blocks:
        raise source.SourceError("the reply holds no ```python code block")
    return description, max(blocks, key=len)


class AgentCodeProposer(Proposer):
    """The LLM edits the trainer's source (hyperparameters and model file); hill-climbing from the best edit."""

    name = "agent_code"
    uses_llm = True
    edits_source = True

    def __init__(self, space: Space, seed: int, llm: Any = None, protocol: ProtocolConfig | None = None):
        super().__init__(space, seed, protocol)
        self.llm = llm
        self.base = source.base_model_text()
        self.best: tuple[dict, str, float] | None = None  # (params, model file, val_bpb) of the best trial
        self.experiments: list[str] = []

    def tell(self, trial: TrialRecord) -> None:
        edit = trial.meta.get("agent") or {}
        text = edit.get("text", self.base)
        description = edit.get("description", "baseline: the installed source" if trial.number == 0 else
                                "(proposed by another method)")  # fmt: skip
        if trial.failed:
            self.experiments.append(f"[CRASHED] {description} -> {trial.status}: {(trial.error or '')[:160]}")
            return
        kept = self.best is None or trial.val_bpb < self.best[2]
        if kept:
            self.best = (self.space.clamp(trial.params)[0], text, float(trial.val_bpb))
        self.experiments.append(f"[{'KEPT' if kept else 'REVERTED'}] {description} -> val_bpb={trial.val_bpb:.4f}")

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        params, text, score = self.best if self.best else (self.space.default(), self.base, None)
        messages = _prompt(source.editable(self.space, params, text), self.experiments[-RECENT:], score)
        budget = reply_budget(self.llm, messages, HOSTED_MAX_TOKENS)  # room for the whole source again
        completion, turn = chat_turn(self.llm, "agent_code", messages, TEXT, llm_failure, budget)
        if completion is None:  # no LLM: the best source, a seeded random configuration
            rng = np.random.default_rng([self.seed, trial_index(history, pending)])
            meta = {"llm_turn": scrubbed(self.llm, turn), "agent": self._edit(text, "fallback: the best source, "
                                                                               "a random configuration")}  # fmt: skip
            return Proposal(self.space.sample(rng), FALLBACK, meta)
        description = "(no description)"
        try:
            description, edited = parse_reply(completion.text)
            given, model_text = source.split(edited, self.space)
        except source.SourceError as e:
            turn["fallback"] = f"unusable source: {e}"
            edit = {**self._edit(text, description), "error": str(e)}
            return Proposal(dict(params), self.name, {"llm_turn": scrubbed(self.llm, turn), "agent": edit})
        proposed, repairs = self.space.clamp({**params, **given})
        turn["parsed"], turn["repairs"] = proposed, repairs
        return Proposal(proposed, self.name, {"llm_turn": scrubbed(self.llm, turn),
                                              "agent": self._edit(model_text, description)})  # fmt: skip

    def _edit(self, model_text: str, description: str) -> dict:
        return {"description": description, "text": model_text, **source.describe(model_text, self.base)}
