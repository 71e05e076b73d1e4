"""Centaur and the LLM proposer: the LLM-turn rule, fallback to CMA-ES (or random) whenever the LLM fails, CMA-ES told
every trial and staying sane when an LLM configuration lands far from its mean, replay after a resume -- with
scripted and unreachable clients -- and one real turn of each method against the embedded SmolLM2 server."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from jaxhpo.llm.client import Completion, LLMClient, LLMConfig, LLMError
from jaxhpo.llm.prompt import REPLY_INSTRUCTION
from jaxhpo.proposers import CentaurProposer, CMAESProposer, LLMProposer, make_proposer
from jaxhpo.proposers.centaur import is_llm_turn
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space
from tests.test_proposers import SPACE, objective, record

FALLBACK = "llm→fallback"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable() -> LLMClient:
    cfg = LLMConfig(provider="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1", retries=0, timeout_s=5)
    return LLMClient(cfg)


class ScriptedLLM:
    """A stand-in client: replies from a list (or a function of the messages); an exception in the list is raised."""

    cfg = None

    def __init__(self, *replies):
        self.replies, self.prompts = list(replies), []

    def chat(self, messages, schema=None):
        self.prompts.append(messages)
        r = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        r = r(messages) if callable(r) else r
        if isinstance(r, Exception):
            raise r
        return Completion(text=r, latency_s=0.01, prompt_tokens=1000, completion_tokens=100, model="scripted",
                          attempts=1)  # fmt: skip


def run(p, n: int, history=None, states=None):
    """The study loop on the synthetic objective (trial 0 the default, told not asked) until n trials; `states`
    collects the proposer's state_summary() before each ask."""
    history = list(history or [])
    proposals = []
    if not history:
        history.append(record(0, SPACE.default(), objective(SPACE.default()), "default", method=p.name))
        p.tell(history[0])
    while len(history) < n:
        if states is not None:
            states.append(p.state_summary())
        prop = p.ask(history)
        proposals.append(prop)
        json.dumps(prop.meta)
        params = json.loads(json.dumps(prop.params))
        history.append(record(len(history), params, objective(params), prop.proposer, method=p.name))
        p.tell(history[-1])
    return history, proposals


# -- the rule ---------------------------------------------------------------------------------------------------


def test_llm_turn_rule():
    assert [t for t in range(30) if is_llm_turn(t, 10, 0.3)] == [10, 13, 16, 19, 22, 25, 28]
    assert [t for t in range(16) if is_llm_turn(t, 10, 0.5)] == [10, 12, 14]
    assert [t for t in range(14) if is_llm_turn(t, 10, 1.0)] == [10, 11, 12, 13]
    assert [t for t in range(10) if is_llm_turn(t, 0, 0.3)] == [0, 3, 6, 9]  # trial 0 is never asked anyway
    assert [t for t in range(20) if is_llm_turn(t, 5, 0.25)] == [5, 9, 13, 17]
    assert [t for t in range(20) if is_llm_turn(t, 10, 0.1)] == [10]
    share = np.mean([is_llm_turn(t, 10, 0.3) for t in range(10, 1010)])
    assert share == pytest.approx(1 / 3, abs=1e-3)  # 1 / round(1 / ratio)


@pytest.mark.parametrize("options, message", [
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"warmup": 2.5}, "warmup must be an integer >= 0"),
    ({"warmup": True}, "warmup must be an integer >= 0"),
    ({"ratio": 0}, "ratio must be a number in (0, 1]"),
    ({"ratio": 1.5}, "ratio must be a number in (0, 1]"),
    ({"ratio": "often"}, "ratio must be a number in (0, 1]"),
    ({"sigma0": -1}, "sigma0"),
    ({"population_size": 1}, "population_size"),
])  # fmt: skip
def test_options_are_validated(options, message):
    with pytest.raises(ValueError) as e:
        make_proposer("centaur", SPACE, 0, **options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_make_proposer_passes_the_llm_only_where_it_is_used():
    llm = ScriptedLLM("{}")
    assert make_proposer("centaur", SPACE, 0, llm=llm, warmup=3).llm is llm
    assert make_proposer("llm", SPACE, 0, llm=llm).llm is llm
    assert make_proposer("cmaes", SPACE, 0, llm=llm).name == "cmaes"  # ignored
    assert CentaurProposer.uses_llm and LLMProposer.uses_llm and not CMAESProposer.uses_llm
    with pytest.raises(ValueError, match="unknown option 'llm_url'"):
        make_proposer("centaur", SPACE, 0, llm_url="x")


# -- fallback ---------------------------------------------------------------------------------------------------


def test_unreachable_llm_falls_back_to_cmaes_on_exactly_the_rule_trials():
    p = CentaurProposer(SPACE, seed=0, llm=unreachable())
    history, proposals = run(p, 26)
    turns = [t for t in range(1, 26) if is_llm_turn(t, 10, 0.3)]
    assert turns == [10, 13, 16, 19, 22, 25]
    for t, prop in zip(range(1, 26), proposals):
        if t in turns:
            assert prop.proposer == FALLBACK
            turn = prop.meta["llm_turn"]
            assert turn["kind"] == "centaur" and turn["reply"] is None and turn["parsed"] is None
            assert "cannot connect" in turn["fallback"] and "\n" not in turn["fallback"]
            assert json.loads(turn["prompt"])[-1]["content"].endswith(REPLY_INSTRUCTION)
            assert turn["latency_s"] >= 0
        else:
            assert prop.proposer == "cmaes" and "llm_turn" not in prop.meta
        assert {"generation", "member", "sigma"} <= set(prop.meta)
    # with every LLM turn falling back, Centaur is CMA-ES: the same proposals
    _, plain = run(CMAESProposer(SPACE, seed=0), 26)
    assert [p.params for p in proposals] == [p.params for p in plain]
    s = p.state_summary()
    assert s["generation"] == 2 and math.isfinite(s["sigma"]) and np.all(np.isfinite(s["covariance"]))


def test_no_client_and_unusable_replies_fall_back():
    p = CentaurProposer(SPACE, seed=1, warmup=1, ratio=1.0)  # every trial an LLM turn
    history, proposals = run(p, 2)
    assert proposals[0].proposer == FALLBACK and proposals[0].meta["llm_turn"]["fallback"] == "no LLM client configured"
    p.llm = ScriptedLLM("I would increase the depth.", "[1, 2]", LLMError("HTTP 500: boom"), RuntimeError("bug"))
    history, more = run(p, 6, history)
    reasons = [q.meta["llm_turn"]["fallback"] for q in more]
    assert [q.proposer for q in more] == [FALLBACK] * 4
    assert reasons[0].startswith("unusable reply: no JSON object in the reply")
    assert reasons[1].startswith("unusable reply: the reply's JSON is a list")
    assert reasons[2] == "HTTP 500: boom" and reasons[3] == "RuntimeError: bug"
    assert more[0].meta["llm_turn"]["reply"] == "I would increase the depth."
    assert more[2].meta["llm_turn"]["reply"] is None
    # every fallback ran CMA-ES's suggestion: the same trials as CMA-ES alone
    _, plain = run(CMAESProposer(SPACE, seed=1), 6)
    assert [q.params for q in proposals + more] == [q.params for q in plain]


def test_llm_proposer_falls_back_to_the_random_draw():
    p = LLMProposer(SPACE, seed=3, llm=unreachable())
    history, proposals = run(p, 6)
    rand = make_proposer("random", SPACE, 3)
    for i, prop in enumerate(proposals, start=1):
        assert prop.proposer == FALLBACK and "cannot connect" in prop.meta["llm_turn"]["fallback"]
        assert prop.meta["llm_turn"]["kind"] == "llm"
        assert prop.params == rand.ask(history[:i]).params


# -- LLM configurations told to CMA-ES --------------------------------------------------------------------------


def test_llm_configurations_run_and_are_told_as_injected_solutions():
    far = SPACE.from_unit(np.ones(SPACE.dim))  # a corner, far from the default's mean
    llm = ScriptedLLM(json.dumps(far))
    # without the failure model, which would send the corner (an OOM here) back to the LLM: told as it ran
    p = CentaurProposer(SPACE, seed=0, llm=llm, warmup=5, ratio=0.5, protocol=ProtocolConfig(avoid_failures=False))
    history, proposals = run(p, 60)  # 5 generations of 11
    asked = [prop for prop in proposals if "llm_turn" in prop.meta]
    assert len(asked) == len([t for t in range(1, 60) if is_llm_turn(t, 5, 0.5)]) == len(llm.prompts) == 28
    for prop in asked:
        assert prop.proposer == "llm" and prop.params == far
        turn = prop.meta["llm_turn"]
        assert turn["parsed"] == far and turn["repairs"] == [] and turn["fallback"] is None
        assert turn["model"] == "scripted" and turn["prompt_tokens"] == 1000 and turn["attempts"] == 1
        assert set(turn) == {"kind", "prompt", "reply", "parsed", "repairs", "fallback", "latency_s",
                             "prompt_tokens", "completion_tokens", "model", "attempts"}  # fmt: skip
        assert prop.meta["changed"] and set(prop.meta["changed"]) <= set(SPACE.names)
    # the suggestion an LLM configuration replaced is handed out next: CMA-ES loses no sample
    i = next(i for i, prop in enumerate(proposals) if prop.proposer == "llm")
    assert proposals[i + 1].meta["member"] == proposals[i].meta["member"]
    # CMA-ES was told all 60 trials and, despite a far corner told as every other trial, stays sane
    s = p.state_summary()
    _, _ = run(base := CMAESProposer(SPACE, seed=0, avoid_failures=False), 60)
    s0 = base.state_summary()
    assert s["generation"] == s0["generation"] == 5
    C, C0 = np.array(s["covariance"]), np.array(s0["covariance"])
    assert math.isfinite(s["sigma"]) and np.all(np.isfinite(C)) and 1 / 3 < s["sigma"] / s0["sigma"] < 3
    assert np.linalg.eigvalsh(C).min() > 0 and np.linalg.eigvalsh(C).max() / np.linalg.eigvalsh(C0).max() < 5
    assert np.all(np.abs(np.array(list(s["mean"].values()))) < 2)
    # and the prompt showed it CMA-ES's state: mean, sigma, covariance and the suggestion it replaced
    text = llm.prompts[-1][1]["content"]
    assert "Mean of the search distribution" in text and "sigma = " in text and "Covariance matrix C" in text
    assert "CMA-ES's next suggestion:\n{" in text


def test_llm_turns_are_what_the_journal_stores(tmp_path):
    from jaxhpo.journal import Journal

    reply = "Here you go: " + json.dumps(SPACE.default() | {"DEPTH": 99, "BOGUS": 1})
    p = CentaurProposer(SPACE, seed=0, llm=ScriptedLLM(reply, "no idea"), warmup=1, ratio=1.0)
    with Journal(tmp_path / "journal.sqlite") as journal:
        history = [record(0, SPACE.default(), objective(SPACE.default()), "default", method="centaur")]
        journal.append(history[0])
        p.tell(history[0])
        for _ in range(2):
            prop = p.ask(history)
            meta = dict(prop.meta)
            turn = meta.pop("llm_turn")  # what the study does
            r = dataclasses.replace(record(len(history), prop.params, objective(prop.params), prop.proposer,
                                           method="centaur"), meta=meta)  # fmt: skip
            journal.append(r, llm_turn=turn)
            history.append(r)
            p.tell(r)
        turns = journal.llm_turns()
    assert [t["trial_number"] for t in turns] == [1, 2]
    assert [r.proposer for r in history] == ["default", "llm", FALLBACK]
    assert turns[0]["parsed"] == history[1].params and history[1].params["DEPTH"] == 24
    assert turns[0]["repairs"] == ["dropped unknown parameter 'BOGUS'", "DEPTH: 99 -> 24 (outside [4, 24])"]
    assert turns[1]["parsed"] is None and turns[1]["reply"] == "no idea"
    assert turns[1]["fallback"].startswith("unusable reply: no JSON object")
    assert json.loads(turns[0]["prompt"])[0]["role"] == "system"


def test_replay_resumes_with_the_same_cmaes_state():
    llm = ScriptedLLM(lambda m: json.dumps(SPACE.sample(np.random.default_rng(len(m[1]["content"])))))
    p = CentaurProposer(SPACE, seed=4, llm=llm, warmup=3, ratio=0.5)
    states = []
    history, proposals = run(p, 30, states=states)
    assert sum(q.proposer == "llm" for q in proposals) == 14
    for k in (1, 3, 11, 12, 17, 29):
        fresh = CentaurProposer(SPACE, seed=4, warmup=3, ratio=0.5)  # no LLM: past turns are not asked again
        for r in history[:k]:
            fresh.tell(r)
        assert fresh.state_summary() == states[k - 1]
        nxt = fresh.ask(history[:k])
        if is_llm_turn(k, 3, 0.5):  # (it falls back to) the suggestion the original's LLM saw
            assert nxt.proposer == FALLBACK and nxt.params == states[k - 1]["next_suggestion"]
        else:
            assert nxt.proposer == "cmaes" and nxt.params == proposals[k - 1].params


# -- against the embedded SmolLM2 server ---------------------------------------------------------------------------
# On a 2-core CPU SmolLM2 reads a prompt at ~30-300 tokens/s (a full 14-D Centaur prompt is ~5k tokens: minutes),
# so these run on a 4-parameter slice of the space (one int, one log float, one power of two, one categorical):
# the whole path -- server, schema grammar, parse, repair, space check, record -- with a prompt of ~1k tokens.

SMALL = Space("probe", {n: SPACE.definition()[n] for n in ("DEPTH", "MATRIX_LR", "HEAD_DIM", "WINDOW_PATTERN")})


def small_objective(params: dict) -> float:
    u = SMALL.to_unit(params)
    return float(np.sum((u - 0.4) ** 2))


@pytest.fixture(scope="module")
def smollm(llm_server):
    cfg = LLMConfig(provider="local", base_url=llm_server, n_ctx=4096, max_tokens=400, retries=1, timeout_s=120)
    with LLMClient(cfg) as client:
        yield client


def check_real_turn(prop, kind):
    turn = prop.meta["llm_turn"]
    print(f"{kind}: {prop.proposer} in {turn['latency_s']:.1f}s, {turn['prompt_tokens']} prompt tokens, "
          f"{turn['completion_tokens']} completion tokens, repairs {turn['repairs']}, fallback {turn['fallback']}")
    print("reply:", turn["reply"])
    assert turn["kind"] == kind and json.loads(turn["prompt"])[1]["content"].endswith(REPLY_INSTRUCTION)
    assert turn["reply"], turn["fallback"]
    assert prop.proposer == "llm", turn["fallback"]
    SMALL.check(prop.params)
    assert turn["parsed"] == prop.params and turn["model"] and turn["attempts"] >= 1
    assert turn["prompt_tokens"] and turn["prompt_tokens"] < 4096 - 400


def small_run(p, n):
    history = [record(0, SMALL.default(), small_objective(SMALL.default()), "default", method=p.name)]
    p.tell(history[0])
    while len(history) < n:
        prop = p.ask(history)
        assert "llm_turn" not in prop.meta
        history.append(record(len(history), prop.params, small_objective(prop.params), prop.proposer, method=p.name))
        p.tell(history[-1])
    return [dataclasses.replace(r, space_id=SMALL.space_id) for r in history]


def test_centaur_turn_with_the_real_llm(smollm):
    p = CentaurProposer(SMALL, seed=0, llm=smollm, warmup=4, ratio=0.5)
    history = small_run(p, 4)  # trials 0-3: the warm-up, CMA-ES alone
    suggestion = p.state_summary()["next_suggestion"]
    prop = p.ask(history)  # trial 4: the first LLM turn
    check_real_turn(prop, "centaur")
    prompt = json.loads(prop.meta["llm_turn"]["prompt"])[1]["content"]
    assert f"CMA-ES's next suggestion:\n{{\"DEPTH\": {suggestion['DEPTH']}," in prompt
    # told back, CMA-ES goes on; a replayed proposer, without the LLM, is in the same state and asks the same
    history.append(record(4, prop.params, small_objective(prop.params), prop.proposer, method="centaur"))
    p.tell(history[-1])
    replayed = CentaurProposer(SMALL, seed=0, warmup=4, ratio=0.5)
    for r in history:
        replayed.tell(r)
    assert replayed.state_summary() == p.state_summary()
    assert replayed.ask(history).params == p.ask(history).params


def test_llm_proposer_turn_with_the_real_llm(smollm):
    history = small_run(CMAESProposer(SMALL, seed=1), 4)
    prop = LLMProposer(SMALL, seed=1, llm=smollm).ask(history)
    check_real_turn(prop, "llm")
