"""method.options.warmstart=K: the LLM's K configurations run first, are told to the classical proposer (which
learns from them), survive a resume without a second LLM call, and an unusable reply or a dead LLM leaves the
classical proposer in charge; with the real SmolLM2 server in a surrogate study, and with scripted replies."""

import json

import pytest

from jaxhpo.journal import Journal
from jaxhpo.llm.prompt import parse_configs
from jaxhpo.proposers import make_proposer
from jaxhpo.proposers.warmstart import WARMSTART
from jaxhpo.report import load_study
from tests.conftest import run_cli
from tests.test_centaur import ScriptedLLM, unreachable
from tests.test_proposers import SPACE, objective, record
from tests.test_study_llm import llm_missing


def configs(n: int, seed: int = 0) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [SPACE.sample(rng) for _ in range(n)]


def reply(items) -> str:
    return "Here you are:\n```json\n" + json.dumps({"configurations": items}) + "\n```"


def run(p, n: int, history=()):
    """Trial 0 the default (told), then ask/tell on the synthetic objective until n trials; meta through JSON."""
    history = list(history)
    if not history:
        history.append(record(0, SPACE.default(), objective(SPACE.default()), "default"))
        p.tell(history[0])
    proposals = []
    while len(history) < n:
        prop = p.ask(history)
        proposals.append(prop)
        meta = json.loads(json.dumps({k: v for k, v in prop.meta.items() if k != "llm_turn"}))
        history.append(record(len(history), prop.params, objective(prop.params), prop.proposer, meta=meta))
        p.tell(history[-1])
    return history, proposals


@pytest.mark.parametrize("method", ["tpe", "cmaes", "smac", "optuna_tpe", "optuna_cmaes"])
def test_warm_starts_run_first_and_are_told_to_the_classical_proposer(method):
    wanted = configs(3)
    llm = ScriptedLLM(reply(wanted + [SPACE.default()]))  # one too many, and the default again
    p = make_proposer(method, SPACE, 0, llm=llm, warmstart=3)
    assert p.name == method and p.uses_llm
    history, proposals = run(p, 8)
    assert len(llm.prompts) == 1  # one LLM call for the whole study
    assert [q.params for q in proposals[:3]] == wanted and {q.proposer for q in proposals[:3]} == {WARMSTART}
    assert {q.proposer for q in proposals[3:]} == {method}
    turn = proposals[0].meta["llm_turn"]
    assert turn["kind"] == "warmstart" and turn["parsed"] == wanted and turn["fallback"] is None
    assert any("beyond the 3 asked for" in r for r in turn["repairs"])
    assert all("llm_turn" not in q.meta for q in proposals[1:])
    # the classical proposer was told the warm starts: its state counts them
    inner = p.inner
    if method == "cmaes":
        assert inner.state_summary()["told_in_generation"] == 8  # the default, 3 warm starts, 4 of its own
    elif method == "smac":
        assert len(inner._optimizer().runhistory) == 8
    elif method.startswith("optuna"):
        assert len(inner.study.trials) == 8
    else:  # hyperopt's TPE learns from the history it is handed: the warm starts are in it
        assert [r.params for r in history[1:4]] == wanted


def test_a_resumed_study_hands_out_the_rest_without_asking_again():
    wanted = configs(4, seed=1)
    p = make_proposer("tpe", SPACE, 0, llm=ScriptedLLM(reply(wanted)), warmstart=4)
    history, proposals = run(p, 10)
    for k in (2, 3, 6):  # killed after trial k-1: the warm starts left, then TPE, exactly as before
        dead = ScriptedLLM(RuntimeError("the LLM must not be asked on resume"))
        q = make_proposer("tpe", SPACE, 0, llm=dead, warmstart=4)
        for r in history[:k]:
            q.tell(r)
        _, rest = run(q, 10, history[:k])
        assert [x.params for x in rest] == [x.params for x in proposals[k - 1 :]] and not dead.prompts


@pytest.mark.parametrize("llm, why", [
    (ScriptedLLM("I would suggest a deeper model."), "unusable reply: no usable configuration"),
    (ScriptedLLM(reply([SPACE.default()])), "every configuration in the reply was already evaluated"),
    (unreachable(), "LLM request to"),
    (None, "no LLM client configured"),
])  # fmt: skip
def test_without_usable_configurations_the_classical_proposer_starts_at_once(llm, why):
    p = make_proposer("cmaes", SPACE, 0, llm=llm, warmstart=3)
    _, proposals = run(p, 5)
    plain = make_proposer("cmaes", SPACE, 0)
    _, expected = run(plain, 5)
    assert [q.params for q in proposals] == [q.params for q in expected]
    assert {q.proposer for q in proposals} == {"cmaes"}
    turn = proposals[0].meta["llm_turn"]
    assert turn["kind"] == "warmstart" and why in turn["fallback"], turn["fallback"]
    assert proposals[0].meta["warmstart"] == {"index": None, "configs": []}  # a resume will not ask again


def test_parse_configs_reads_what_small_models_write():
    a, b = configs(2, seed=3)
    assert parse_configs(json.dumps([a, b]), SPACE, 5)[0] == [a, b]  # a bare array
    assert parse_configs(json.dumps({"configs": [a, b]}), SPACE, 1) == ([a], ["ignored 1 configuration(s) beyond "
                                                                            "the 1 asked for"])  # fmt: skip
    cut = json.dumps({"configurations": [a, b]})[:-30]  # cut short at max_tokens: the complete one is kept
    assert parse_configs(cut, SPACE, 5)[0] == [a]
    params, notes = parse_configs(json.dumps([{"depth": 99}, {"colour": "red"}]), SPACE, 5)
    assert params[0]["DEPTH"] == 24 and "configuration 2 dropped: the reply names none" in notes[-1]


def test_the_option_is_checked_and_offered_only_where_it_applies():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError) as e:
            make_proposer("tpe", SPACE, 0, warmstart=bad)
        assert str(e.value).startswith("tpe: warmstart must be an integer >= 0") and "\n" not in str(e.value)
    for method in ("random", "llm", "centaur"):
        with pytest.raises(ValueError, match="unknown option 'warmstart'"):
            make_proposer(method, SPACE, 0, warmstart=2)
    assert type(make_proposer("tpe", SPACE, 0, warmstart=0)).__name__ == "TPEProposer"


@pytest.mark.skipif(llm_missing() is not None, reason=str(llm_missing()))
def test_a_surrogate_study_warm_started_by_the_embedded_llm(tmp_path):
    proc = run_cli("jaxhpo", "+method=tpe", "method.options.warmstart=3", "trainer=surrogate", "study.budget_s=null",
                   "study.max_trials=8", "llm.n_ctx=4096", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials, turns = journal.trials(), journal.llm_turns()
    assert len(trials) == 8 and len(turns) == 1 and turns[0]["kind"] == "warmstart" and turns[0]["trial_number"] == 1
    warm = [t for t in trials if t.proposer == WARMSTART]
    print(f"warm starts run: {len(warm)}; fallback: {turns[0]['fallback']}; repairs: {turns[0]['repairs']}")
    # SmolLM2-135M's reply may be poor: either its configurations ran first, or the turn says why none did
    assert [t.number for t in warm] == list(range(1, len(warm) + 1))
    assert warm or turns[0]["fallback"]
    assert {t.proposer for t in trials[len(warm) + 1 :]} == {"tpe"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["llm_turns"] == 1
    assert load_study(tmp_path / "journal.sqlite").label == "tpe (warmstart=3)"  # a row of its own in a report
