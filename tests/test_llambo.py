"""method=llambo: the target score, the sampler's and the scorer's prompts and how their replies are read, expected
improvement choosing the candidate, failures in the prompt, every LLM call a journal row, the fallback; with
scripted replies, and a surrogate study with the real SmolLM2 server. (The shared contract: test_proposers.py.)"""

import json

import numpy as np
import pytest

from jaxhpo.journal import Journal
from jaxhpo.llm import llambo
from jaxhpo.llm.client import TEXT, Completion
from jaxhpo.objective import Objective
from jaxhpo.proposers import make_proposer
from jaxhpo.proposers.llambo import FALLBACK
from jaxhpo.report import load_study
from tests.conftest import run_cli
from tests.test_proposers import SPACE, objective, record
from tests.test_study_llm import llm_missing


class ScriptedN:
    """A stand-in client for chat_n: `reply(messages, i)` gives the i-th completion's text."""

    cfg = None

    def __init__(self, reply):
        self.reply, self.requests = reply, []

    def chat_n(self, messages, n, schema=None, max_tokens=None, temperature=None):
        assert schema == TEXT  # LLAMBO's replies are `## ... ##` lines, which a JSON grammar cannot write
        self.requests.append((messages, n, temperature))
        return [Completion(text=self.reply(messages, i), latency_s=0.01, prompt_tokens=100, completion_tokens=10,
                           model="scripted", attempts=1) for i in range(n)]  # fmt: skip


def block(params: dict) -> str:
    return f"## {llambo.fmt_config(SPACE, params)} ##"


def sampler_or_scorer(candidates: list[dict], scores: dict):
    """Sampler completions give `candidates` in turn, across requests; a scorer request for candidate k gets
    scores[k] (a list per completion, cycled)."""
    sampled = []

    def reply(messages, i):
        text = messages[-1]["content"]
        if text.endswith("Hyperparameter configuration:"):
            sampled.append(1)
            return block(candidates[(len(sampled) - 1) % len(candidates)])
        for k, c in enumerate(candidates):
            if text.endswith(f"Hyperparameter configuration: {llambo.fmt_config(SPACE, c, ' is ')}\nPerformance: "):
                return f"## {scores[k][i % len(scores[k])]:.4f} ##"
        raise AssertionError("a prompt neither the sampler's nor a candidate's scorer's")

    return reply


def told(p, *values):
    """Trial 0 (the default) and more trials told with `values` (None: an OOM)."""
    rng = np.random.default_rng(7)
    history = []
    for i, v in enumerate(values):
        params = SPACE.default() if i == 0 else SPACE.sample(rng)
        history.append(record(i, params, v, "default" if i == 0 else "llambo"))
        p.tell(history[-1])
    return history


def test_expected_improvement_picks_the_candidate_and_every_call_is_recorded():
    rng = np.random.default_rng(1)
    cands = [llambo.parse_candidate(block(SPACE.sample(rng)), SPACE) for _ in range(3)]  # as written: rounded
    # candidate 1: the lowest mean; candidate 2: higher mean but very uncertain; 0: high and sure
    scores = {0: [1.9, 1.9], 1: [0.95, 0.97], 2: [0.5, 2.5]}
    llm = ScriptedN(sampler_or_scorer(cands, scores))
    p = make_proposer("llambo", SPACE, 0, llm=llm, candidates=3, samples=2)
    history = told(p, 1.0, None)
    prop = p.ask(history)
    calls = prop.meta["llm_turn"]
    assert [c["kind"] for c in calls] == ["llambo-sampler"] * 2 + ["llambo-scorer"] * 3  # 2 replies per call, 3 wanted
    assert [n for _, n, _ in llm.requests] == [2] * 5 and [t for *_, t in llm.requests] == [0.8, 0.8] + [0.7] * 3
    mean, std = np.array([1.9, 0.96, 1.5]), np.array([1e-5, 0.01, 1.0])
    from scipy.stats import norm

    z = (1.0 - mean) / std
    ei = (1.0 - mean) * norm.cdf(z) + std * norm.pdf(z)
    assert prop.params == cands[int(np.argmax(ei))] and prop.proposer == "llambo"
    meta = prop.meta["llambo"]
    assert meta["candidates"] == 3 and meta["padded"] == 0 and meta["mean"] == pytest.approx(mean[meta["chosen"]])
    assert calls[2]["parsed"] == [1.9, 1.9] and json.loads(calls[2]["reply"]) == ["## 1.9000 ##"] * 2
    # the failure was told as the worst success + 0.5; target = best + 0.2 * range = 1.0 + 0.2 * 0.5
    sampler = json.loads(calls[0]["prompt"])[1]["content"]
    assert sampler.endswith("Performance: 1.100000\nHyperparameter configuration:")
    assert "Performance: 1.500000 (failed: oom; scored as the worst success + 0.5)" in sampler
    scorer = json.loads(calls[2]["prompt"])[1]["content"]
    assert "Performance: ## 1.500000 ##" in scorer and "failed" not in scorer


def test_a_maximized_metric_is_shown_and_read_as_its_own_values():
    """The proposer is told accuracy negated (as a study tells it); the LLM reads and writes accuracy itself."""
    rng = np.random.default_rng(1)
    cands = [llambo.parse_candidate(block(SPACE.sample(rng)), SPACE) for _ in range(2)]
    llm = ScriptedN(sampler_or_scorer(cands, {0: [0.70], 1: [0.95]}))  # candidate 1: the higher accuracy
    p = make_proposer("llambo", SPACE, 0, llm=llm, candidates=2, samples=1)
    p.objective = Objective("accuracy", "maximize", "We tune a script. Each trial runs it")
    prop = p.ask(told(p, -0.80, -0.90))
    assert prop.params == cands[1] and prop.meta["llambo"]["mean"] == pytest.approx(-0.95)
    sampler = json.loads(prop.meta["llm_turn"][0]["prompt"])[1]["content"]
    assert "reports accuracy: higher is better" in sampler and "measured in accuracy" in sampler
    assert "Performance: 0.900000" in sampler and "-0.9" not in sampler
    # the study's alpha -0.2: a target 20 % of the range worse than the best, 0.9 - 0.2 * (0.9 - 0.8)
    assert sampler.endswith("Performance: 0.880000\nHyperparameter configuration:")


def test_too_few_candidates_are_padded_and_unusable_replies_fall_back():
    one = SPACE.sample(np.random.default_rng(2))
    llm = ScriptedN(lambda m, i: block(one) if m[-1]["content"].endswith("configuration:") else "## 1.2 ##")
    p = make_proposer("llambo", SPACE, 0, llm=llm, candidates=4, samples=3)
    history = told(p, 1.0)
    prop = p.ask(history)
    kinds = [c["kind"] for c in prop.meta["llm_turn"]]
    assert kinds == ["llambo-sampler"] * 4 + ["llambo-scorer"] * 4  # 4 tries for 4 candidates, 1 new in all
    assert prop.meta["llambo"]["padded"] == 3
    assert prop.meta["llm_turn"][1]["fallback"] == "no new valid configuration in 3 replies"
    # nothing usable: a seeded random draw, tagged, the same on every try
    junk = ScriptedN(lambda m, i: "I think a deeper model would do better.")
    for _ in range(2):
        q = make_proposer("llambo", SPACE, 0, llm=junk, candidates=4, samples=3)
        fallback = q.ask(told(q, 1.0))
        assert fallback.proposer == FALLBACK and fallback.params == make_proposer("llambo", SPACE, 0).ask(
            told(make_proposer("llambo", SPACE, 0), 1.0)).params  # fmt: skip
        assert len(fallback.meta["llm_turn"]) == 4
        assert all(c["fallback"] == "no new valid configuration in 3 replies" for c in fallback.meta["llm_turn"])


def test_replies_are_read_as_the_study_read_them():
    p = {n: SPACE.default()[n] for n in SPACE.names}
    assert llambo.parse_candidate("Sure! " + block(p) + " hope it helps", SPACE) == p
    assert llambo.parse_candidate(block({**p, "DEPTH": 6.0}), SPACE)["DEPTH"] == 6
    assert llambo.parse_candidate(block({**p, "HEAD_DIM": 100}), SPACE)["HEAD_DIM"] == 128  # snapped, as the study
    for bad in ({**p, "DEPTH": 6.5}, {**p, "DEPTH": 99}, {**p, "WINDOW_PATTERN": "XYZW"}):
        assert llambo.parse_candidate(block(bad), SPACE) is None
    assert llambo.parse_candidate(block(p).replace("DEPTH: ", "LAYERS: "), SPACE) is None  # every name, exactly
    assert llambo.parse_candidate("no block here", SPACE) is None
    assert llambo.parse_score("## 1.25 ##") == 1.25 and np.isnan(llambo.parse_score("## 1.2 ## or ## 1.3 ##"))
    assert np.isnan(llambo.parse_score("about 1.2"))
    by_name = {q.name: q for q in SPACE.params}
    assert llambo.decimals(by_name["UNEMBEDDING_LR"]) == 4 and llambo.decimals(by_name["WEIGHT_DECAY"]) == 2


def test_options_are_checked():
    for bad, line in (({"candidates": 0}, "llambo: candidates must be an integer >= 1, got 0"),
                      ({"samples": 2.5}, "llambo: samples must be an integer >= 1, got 2.5"),
                      ({"alpha": 0}, "llambo: alpha must be a number in [-1, 1] other than 0, got 0")):  # fmt: skip
        with pytest.raises(ValueError) as e:
            make_proposer("llambo", SPACE, 0, **bad)
        assert str(e.value) == line


@pytest.mark.skipif(llm_missing() is not None, reason=str(llm_missing()))
def test_a_surrogate_study_with_the_embedded_llm(tmp_path):
    # Replies are plain text (the model writes until max_tokens or its end): 160 tokens hold a 14-parameter line.
    proc = run_cli("jaxhpo", "+method=llambo", "method.options.candidates=2", "method.options.samples=2",
                   "trainer=surrogate", "study.budget_s=null", "study.max_trials=2", "llm.n_ctx=4096",
                   "llm.max_tokens=160", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials, calls = journal.trials(), journal.llm_turns()
    assert len(trials) == 2 and trials[1].proposer in ("llambo", FALLBACK)
    for t in trials[1:]:
        mine = [c for c in calls if c["trial_number"] == t.number]
        kinds = [c["kind"] for c in mine]
        print(t.number, t.proposer, kinds, [c["fallback"] for c in mine], f"{sum(c['latency_s'] for c in mine):.1f}s")
        assert [c["call"] for c in mine] == list(range(len(mine))) and 1 <= kinds.count("llambo-sampler") <= 4
        # SmolLM2-135M's replies may be poor: scored candidates ran, or every sampler call says why not
        assert kinds.count("llambo-scorer") == (2 if t.proposer == "llambo" else 0)
        assert t.proposer == "llambo" or all(c["fallback"] for c in mine)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["llm_turns"] == 1 and summary["llm_calls"] == len(calls) and summary["llm_seconds_per_turn"] > 0
    assert load_study(tmp_path / "journal.sqlite").llm_turns == calls
