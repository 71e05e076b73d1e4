"""method=llm, the study's "agent, 14 HPs": on every trial an LLM sees the search space, the last 20 evaluations
(with failure reasons) and the best configuration so far, and answers with a JSON configuration.

The reply is parsed and repaired by `jaxhpo.llm.prompt.parse_reply` (missing parameters are filled from the best
configuration so far). When there is no LLM, the call fails (unreachable server, timeout, HTTP error, empty reply
after the client's retries) or the reply holds no usable JSON object, the trial falls back to a seeded uniform
random draw -- what `random` would propose for that trial -- tagged "llm→fallback", and the one-line reason is
recorded. A study never stops because of its LLM.

Predicted to fail (`avoid_failures`; null: protocol.avoid_failures, on under jaxhpo's protocol). The study's
failure model (jaxhpo.feasibility, fitted on the told trials) judges the LLM's configuration; when it predicts a
failure, the LLM is told so in the same conversation -- its reply, then "The configuration you proposed, {...},
is predicted to fail (p=...)" (`jaxhpo.llm.prompt.predicted_to_fail_message`) -- and asked once more
(`reask_if_predicted_to_fail`). The second configuration runs unless it is unusable or more likely to fail than the first; a configuration still predicted to fail carries
`p_fail` in the meta. The conversation is one turn of the journal (prompt: every message, reply: the last,
latency and tokens summed, a repair line saying it was asked again). Centaur does the same with its CMA-ES's
failure model. The random fallback draws again while the model predicts failure, as `random` does.

Every proposal carries `meta["llm_turn"]`, a plain dict the study stores in the journal's `llm_turns` table:
kind, prompt (the chat messages as JSON text), reply (raw text or None), parsed (the configuration or None),
repairs (one line per change made to the reply), fallback (the reason, or None), latency_s (the seconds the
study waited for the LLM: every attempt and back-off included, whether it succeeded or not), prompt_tokens,
completion_tokens, model, attempts.

In a parallel study the prompt also lists the configurations still running, so the LLM does not propose them
again.

Replay: the proposer keeps no state (tell is ignored); a resumed study asks the LLM afresh for the next trial.

Under `protocol.agent=paper` the prompt is the study's (`jaxhpo.llm.paper.agent_prompt`), sent without a JSON
schema, and its reply handled as the study did: missing parameters from the space's defaults, numbers clipped, an
unusable reply falls back to a random draw, and an LLM that cannot be reached makes a trial that never runs
(proposer "llm→error", journaled as crashed in 0 s, as the study's runner logged it).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxhpo.feasibility import FailureModel, avoid_failures_option
from jaxhpo.journal import TrialRecord
from jaxhpo.llm import paper
from jaxhpo.llm.client import LLMError, one_line
from jaxhpo.llm.prompt import (MAX_PROMPT_TOKENS, ReplyError, best_trial, estimate_tokens, json_schema, llm_prompt,
                               parse_reply, predicted_to_fail_message)
from jaxhpo.proposers.base import Proposal, Proposer, trial_index
from jaxhpo.protocol import NOT_RUN_PREFIX, ProtocolConfig
from jaxhpo.space import Space

FALLBACK = "llm→fallback"
LLM_ERROR = "llm→error"  # protocol=paper: the LLM call failed and, as in the study, the trial never runs


def reply_budget(llm: Any, messages: list[dict], wanted: int | None = None, times: int = 1) -> int | None:
    """max_tokens for a reply longer than llm.max_tokens (several configurations, a whole source): `wanted` tokens
    (or `times` llm.max_tokens), within what a local server's context leaves after the prompt and a margin, never
    below llm.max_tokens; None (the client's own) without a config."""
    cfg = getattr(llm, "cfg", None)
    if cfg is None or not getattr(cfg, "max_tokens", None):
        return None
    wanted = wanted or times * int(cfg.max_tokens)
    if getattr(cfg, "provider", None) == "local" and getattr(cfg, "n_ctx", None):
        wanted = min(wanted, int(cfg.n_ctx) - estimate_tokens(messages) - 300)
    return max(int(cfg.max_tokens), wanted)


def prompt_budget(llm: Any) -> int:
    """Estimated prompt tokens to aim for: MAX_PROMPT_TOKENS, less for a local server whose context (n_ctx) must
    also hold the reply (max_tokens) and a margin for the estimate's error."""
    cfg = getattr(llm, "cfg", None)
    if cfg is None or getattr(cfg, "provider", None) != "local" or not getattr(cfg, "n_ctx", None):
        return MAX_PROMPT_TOKENS
    return max(1000, min(MAX_PROMPT_TOKENS, int(cfg.n_ctx) - int(cfg.max_tokens) - 300))


def llm_turn(llm: Any, kind: str, messages: list[dict], space: Space, fallback: Mapping | None,
             fallback_label: str) -> tuple[dict | None, dict]:  # fmt: skip
    """Ask `llm` for a configuration: (params or None, the turn record). Never raises for an LLM or reply
    failure: params is None and turn["fallback"] says why. Every text in the record has passed through
    `llm.scrub` (the API key replaced by ***) when the client has one: the record is stored in the journal."""
    params, turn = _llm_turn(llm, kind, messages, space, fallback, fallback_label)
    return params, scrubbed(llm, turn)


def scrubbed(llm: Any, turn: dict) -> dict:
    scrub = getattr(llm, "scrub", None)
    if not callable(scrub):
        return turn

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value)
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, tuple):
            return tuple(clean(v) for v in value)
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        return value

    return {key: clean(value) for key, value in turn.items()}


def chat_turn(llm: Any, kind: str, messages: list[dict], schema: dict | None,
              describe: Callable[[Exception], str], max_tokens: int | None = None, n: int | None = None,
              temperature: float | None = None) -> tuple[Any, dict]:  # fmt: skip
    """One chat request as a turn record: (the completion -- or, with `n`, the list of n sampled completions
    (`chat_n`), the turn's reply their texts as a JSON list -- or None with turn["fallback"] saying why; the turn).
    Anything the client raises is recorded (`describe` words it) and the study goes on."""
    turn: dict[str, Any] = {
        "kind": kind, "prompt": json.dumps(messages, ensure_ascii=False), "reply": None, "parsed": None,
        "repairs": [], "fallback": None, "latency_s": None, "prompt_tokens": None, "completion_tokens": None,
        "model": None, "attempts": None,
    }  # fmt: skip
    if llm is None:
        turn["fallback"] = "no LLM client configured"
        return None, turn
    extra = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None}
    t0 = time.perf_counter()
    try:
        got = llm.chat(messages, schema, **extra) if n is None else llm.chat_n(messages, n, schema, **extra)
    except Exception as e:
        turn["latency_s"], turn["fallback"] = time.perf_counter() - t0, describe(e)
        return None, turn
    replies = [got] if n is None else got
    turn.update(
        reply=got.text if n is None else json.dumps([c.text for c in replies], ensure_ascii=False),
        latency_s=time.perf_counter() - t0, prompt_tokens=_total(c.prompt_tokens for c in replies),
        completion_tokens=_total(c.completion_tokens for c in replies), model=replies[0].model,
        attempts=_total(c.attempts for c in replies),
    )  # fmt: skip
    return got, turn


def _total(values) -> int | None:
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def _named(e: Exception) -> str:
    return one_line(f"{type(e).__name__}: {e}")


def llm_failure(e: Exception) -> str:
    """A failed chat in one line: the client's own message, or the exception's type and message."""
    return one_line(e) if isinstance(e, LLMError) else _named(e)


def _llm_turn(llm: Any, kind: str, messages: list[dict], space: Space, fallback: Mapping | None,
              fallback_label: str) -> tuple[dict | None, dict]:  # fmt: skip
    completion, turn = chat_turn(llm, kind, messages, json_schema(space), llm_failure)
    if completion is None:
        return None, turn
    try:
        params, repairs = parse_reply(completion.text, space, fallback, fallback_label)
    except ReplyError as e:
        turn["fallback"] = one_line(f"unusable reply: {e}")
        if getattr(completion, "finish_reason", None) == "length":
            turn["fallback"] += " (cut at max_tokens)"
        return None, turn
    if getattr(completion, "finish_reason", None) == "length":
        repairs = ["reply cut at max_tokens (finish_reason=length)"] + repairs
    turn["parsed"], turn["repairs"] = params, repairs
    return params, turn


def reask_if_predicted_to_fail(llm: Any, kind: str, messages: list[dict], space: Space, fallback: Mapping | None,
                               fallback_label: str | None,
                               model: FailureModel | None) -> tuple[dict | None, dict, float]:  # fmt: skip
    """`llm_turn`, and when the fitted failure `model` predicts the reply's configuration fails, once more in the
    same conversation, saying so: (params or None, the turn record covering both calls, p_fail of the params
    returned: 0 when not judged). The second reply is kept unless it is unusable or more likely to fail."""
    params, turn = llm_turn(llm, kind, messages, space, fallback, fallback_label)
    if params is None or model is None:
        return params, turn, 0.0
    p = float(model.p_fail([params])[0])
    if p <= model.threshold:
        return params, turn, p
    follow = [*messages, {"role": "assistant", "content": turn["reply"]},
              {"role": "user", "content": predicted_to_fail_message(params, p, space)}]  # fmt: skip
    params2, turn2 = llm_turn(llm, kind, follow, space, fallback, fallback_label)
    p2 = float(model.p_fail([params2])[0]) if params2 is not None else float("inf")
    kept = params2 is not None and p2 <= p
    why = turn2["fallback"] if params2 is None else f"p={p2:.2f}"
    merged = dict(
        turn2, latency_s=_sum(turn["latency_s"], turn2["latency_s"]), attempts=_sum(turn["attempts"], turn2["attempts"]),
        prompt_tokens=_sum(turn["prompt_tokens"], turn2["prompt_tokens"]),
        completion_tokens=_sum(turn["completion_tokens"], turn2["completion_tokens"]), fallback=None,
        parsed=params2 if kept else params,
        repairs=[*turn["repairs"], f"predicted to fail (p={p:.2f}): asked again",
                 *(turn2["repairs"] if kept else [f"kept the first configuration: the second {why}"])],
    )  # fmt: skip
    return (params2, merged, p2) if kept else (params, merged, p)


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


class LLMProposer(Proposer):
    """An LLM proposes every trial; a seeded random draw when it cannot."""

    name = "llm"
    uses_llm = True
    options_added = {"avoid_failures": False}
    protocol_defaults = {"avoid_failures": "avoid_failures"}

    def __init__(self, space: Space, seed: int, llm: Any = None, avoid_failures: bool | None = None,
                 protocol: ProtocolConfig | None = None):  # fmt: skip
        super().__init__(space, seed, protocol)
        self.llm = llm  # an LLMClient (jaxhpo.llm.client) or None; a study may set it after construction
        on = avoid_failures_option(self.name, avoid_failures, self.protocol)
        if avoid_failures and self.protocol.agent == "paper":
            raise ValueError("llm: avoid_failures needs protocol.agent=jaxhpo (the study's agent had no model of "
                             "failure); set it to null or false")
        self.failure_model = FailureModel(space, seed) if on and self.protocol.agent == "jaxhpo" else None

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        if self.protocol.agent == "paper":
            return self._ask_paper(history, pending)
        if self.failure_model is not None:
            self.failure_model.fit(history)
        best = best_trial(history)
        messages = llm_prompt(self.space, history, best, pending=pending, max_tokens=prompt_budget(self.llm),
                              objective=self.objective)  # fmt: skip
        fallback, label = (best.params, "the best configuration") if best else (None, None)
        params, turn, p_fail = reask_if_predicted_to_fail(self.llm, "llm", messages, self.space, fallback, label,
                                                          self.failure_model)  # fmt: skip
        if params is not None:
            judged = self.failure_model.meta(0, p_fail) if self.failure_model is not None else {}
            return Proposal(params, self.name, {"llm_turn": turn, **judged})
        if self.failure_model is None:
            return Proposal(self._random(history, pending), FALLBACK, {"llm_turn": turn})
        rng = np.random.default_rng([self.seed, trial_index(history, pending)])  # as _random: the same first draw
        params, rejected, p_fail = self.failure_model.pick(lambda _: self.space.sample(rng))
        return Proposal(params, FALLBACK, {"llm_turn": turn, **self.failure_model.meta(rejected, p_fail)})

    def _ask_paper(self, history: Sequence[TrialRecord], pending: Sequence[Mapping]) -> Proposal:
        prompt = paper.agent_prompt(self.space, paper_rows(history), self.protocol.available_vram)
        params, _, turn, unreachable = paper_llm_turn(self.llm, "llm", prompt, self.space)
        if params is not None:
            return Proposal(params, self.name, {"llm_turn": turn})
        meta = {"llm_turn": turn}
        if unreachable:
            meta["not_run"] = turn["fallback"]
        return Proposal(self._random(history, pending), LLM_ERROR if unreachable else FALLBACK, meta)

    def _random(self, history: Sequence[TrialRecord], pending: Sequence[Mapping]) -> dict:
        # RandomProposer's first draw for this trial: seeded by (seed, trial number), so replay-stable
        return self.space.sample(np.random.default_rng([self.seed, trial_index(history, pending)]))


def paper_rows(history: Sequence[TrialRecord]) -> list[paper.PaperRow]:
    """The study's view of the history: each trial's configuration and val_bpb or error; a trial that never ran
    because its LLM call failed as the study's runner recorded it, `{}` and the error."""
    rows = []
    for t in history:
        if t.proposer == LLM_ERROR:
            rows.append(paper.PaperRow({}, None, (t.error or "").removeprefix(NOT_RUN_PREFIX)))
        else:
            config = {name: t.params[name] for name in sorted(t.params)}  # the study's (ConfigSpace's) order
            rows.append(paper.PaperRow(config, t.val_bpb, t.error if t.failed else None))
    return rows


def paper_llm_turn(llm: Any, kind: str, prompt: str, space: Space) -> tuple[dict | None, dict | None, dict, bool]:
    """Ask `llm` as the study did (one user message, no response_format schema): (params or None, the reply's
    values before snapping, the turn record, whether the LLM could not be reached). The reply is read by `paper.parse_reply`, repaired by
    `paper.clamp` (missing parameters from the defaults) and `paper.snap_pow2`, then made valid by
    `Space.clamp` (a category the space lacks becomes the default; the study passed it on to crash)."""
    # The study named every client error by its type (its runner logged f"{type}: {e}") and lost the trial.
    completion, turn = chat_turn(llm, kind, [{"role": "user", "content": prompt}], None, _named)
    if completion is None:
        return None, None, scrubbed(llm, turn), True
    try:
        raw = paper.clamp(space, paper.parse_reply(completion.text))
    except Exception as e:  # whatever the study's parsing and clamping raised (ValueError, TypeError, OverflowError)
        turn["fallback"] = _named(e)
        return None, None, scrubbed(llm, turn), False
    params, repairs = space.clamp(paper.snap_pow2(space, raw, None))
    turn["parsed"], turn["repairs"] = params, repairs
    return params, raw, scrubbed(llm, turn), False
