"""method=hybrid: the LLM's structure replies read against the menu, the explore-then-refine loop with its
provenance, resume by replay, one-line refusals, and a study of the real GPT with a scripted LLM on loopback."""

import json

import numpy as np
import pytest

from jaxhpo import structure
from jaxhpo.journal import Journal
from jaxhpo.llm.hybrid import parse_structure_reply
from jaxhpo.llm.prompt import ReplyError
from jaxhpo.proposers import make_proposer, study_space
from jaxhpo.proposers.hybrid import FALLBACK, REPEAT
from jaxhpo.space import Space
from tests.conftest import REPO, run_cli
from tests.llm_server import llm_missing
from tests.test_agent_code import ScriptedServer
from tests.test_proposers import record
from tests.test_study import study_args

TINY = Space.from_file(REPO / "hydra_configs/space/tiny.yaml")
SPACE = Space(TINY.name, study_space("hybrid", TINY.definition()))
ROOT = structure.structure_id({})


def numbers() -> Space:
    return make_proposer("hybrid", SPACE, 0).numeric


def test_the_space_gains_the_menu_and_its_knobs():
    assert {structure.param_name(n) for n in structure.MENU} <= set(SPACE.names)
    assert "MLP_RATIO" in SPACE.names and "MATRIX_LR" in SPACE.names
    # the space's window pattern became the structural choice of the same key
    assert SPACE.names.count("WINDOW_PATTERN") == 1
    assert next(p for p in SPACE.params if p.name == "WINDOW_PATTERN").choices == structure.MENU["window_pattern"].values
    assert structure.of_params(SPACE.default()) == structure.DEFAULT


def test_a_reply_is_read_against_the_menu_and_clamped():
    tried = {ROOT: structure.DEFAULT}
    text = ('Here: {"parent": "nope", "changes": {"mlp": "swiglu", "activation": "x", "softcap": 7}, '
            '"space": {"MATRIX_LR": [0.001, 0.1], "MLP_RATIO": [2, 3], "BOGUS": [1, 2], "DEPTH": [3, 3]}}')  # fmt: skip
    reply = parse_structure_reply(text, numbers(), tried, ROOT)
    assert reply.parent == ROOT and reply.choices == {**structure.DEFAULT, "mlp": "swiglu"}
    assert reply.space["MATRIX_LR"]["low"] == 0.005 and reply.space["MATRIX_LR"]["high"] == 0.1  # clipped to the space
    assert (reply.space["MLP_RATIO"]["low"], reply.space["MLP_RATIO"]["high"]) == (2.0, 3.0)
    assert reply.space["DEPTH"]["low"] == 1  # an empty range: the full one
    notes = " | ".join(reply.repairs)
    for said in ("parent 'nope'", "dropped change activation", "dropped change softcap", "dropped unknown parameter "
                 "BOGUS", "DEPTH [3, 3] is no range"):  # fmt: skip
        assert said in notes, notes
    with pytest.raises(ReplyError, match="already tried"):
        parse_structure_reply('{"parent": "%s", "changes": {}, "space": {}}' % ROOT, numbers(), tried, ROOT)
    with pytest.raises(ReplyError, match="no JSON object"):
        parse_structure_reply("I would use swiglu.", numbers(), tried, ROOT)


def objective(params: dict) -> float:
    """Synthetic: swiglu and sandwich norm help by more than the noise; MATRIX_LR has an optimum."""
    v = 2.0 + 0.05 * (np.log(params["MATRIX_LR"] / 0.08)) ** 2
    return float(v - 0.10 * (params["MLP"] == "swiglu") - 0.05 * (params["NORM"] == "sandwich"))


def run(p, n: int, history=None, value=objective):
    history = list(history or [])
    if not history:
        history.append(record(0, SPACE.default(), value(SPACE.default()), "default"))
        p.tell(history[0])
    while len(history) < n:
        prop = p.ask(history)
        meta = json.loads(json.dumps({k: v for k, v in prop.meta.items() if k != "llm_turn"}))
        r = record(len(history), json.loads(json.dumps(prop.params)), value(prop.params) + 0.001 * len(history) % 0.003,
                   prop.proposer, method="hybrid", meta=meta)  # fmt: skip
        history.append(r)
        p.tell(r)
    return history


def test_the_loop_explores_structures_then_refines_with_provenance():
    p = make_proposer("hybrid", SPACE, 0, inner="random", inner_trials=3, structures=3, patience=5, repeats=2)
    history = run(p, 20)
    tags = [r.proposer for r in history]
    assert tags[:3] == ["default", REPEAT, REPEAT]
    assert [r.meta["train_seed"] for r in history[1:3]] == [1, 2] and history[1].params == history[0].params
    epochs = [r.meta["hybrid"] for r in history[3:]]
    # three structures of three trials each, each started by the fallback rule (no LLM here), then refinement
    assert tags[3:12] == [FALLBACK, "random", "random"] * 3 and set(tags[12:]) == {"random"}
    assert [e["epoch"] for e in epochs] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 8
    assert [e["change"] for e in epochs[:3]] == ["structural", "numeric", "numeric"]
    assert {e["phase"] for e in epochs[9:]} == {"refine"} and history[12].meta["refine"] == "3 structures explored"
    ids = [epochs[i]["structure_id"] for i in (0, 3, 6)]
    assert len(set(ids) | {ROOT}) == 4  # each epoch a new structure, none the default's
    for r in history[3:]:  # every trial builds the structure its meta names
        assert structure.structure_id(structure.of_params(r.params)) == r.meta["hybrid"]["structure_id"]
    first = history[3]  # the parent's best numbers (the default's) in the new structure
    assert {n: first.params[n] for n in p.numeric.names} == {n: history[0].params[n] for n in p.numeric.names}
    assert structure.changes(structure.DEFAULT, first.meta["hybrid"]["structure"]) == {"mlp": "gelu"}


def test_the_fallback_rule_tunes_the_numbers_near_the_parents_best():
    p = make_proposer("hybrid", SPACE, 0, inner="random", inner_trials=3, structures=2, patience=5, repeats=1)
    history = run(p, 8)
    sub = history[2].meta["hybrid"]["space"]
    assert history[2].proposer == FALLBACK and set(sub) == set(p.numeric.names)
    default = p.numeric.default()
    lr = sub["MATRIX_LR"]  # log range 0.005-0.2 (40x): a factor of 40^0.15 = 1.74 either side of the default
    assert lr["low"] == pytest.approx(default["MATRIX_LR"] / 40**0.15) and lr["high"] == pytest.approx(
        default["MATRIX_LR"] * 40**0.15)  # fmt: skip
    for name, spec in sub.items():  # every range narrower than the whole, around the parent's value
        whole = next(q for q in p.numeric.params if q.name == name)
        if whole.type != "categorical":
            assert whole.low <= spec["low"] <= default[name] <= spec["high"] <= whole.high, name
            assert (spec["low"], spec["high"]) != (whole.low, whole.high) or len(whole.levels or ()) <= 3, name
    for r in history[3:5]:  # the epoch's trials stay inside it
        assert Space("sub", sub).clamp({n: r.params[n] for n in sub})[1] == []


def test_stalled_structures_hand_the_budget_to_refinement():
    flat = lambda params: 2.0  # noqa: E731  nothing any structure does helps
    p = make_proposer("hybrid", SPACE, 0, inner="random", inner_trials=2, structures=10, patience=2, noise=0.01)
    history = run(p, 10, value=flat)
    phases = [r.meta["hybrid"]["phase"] for r in history[1:]]
    assert phases[:4] == ["explore"] * 4 and set(phases[4:]) == {"refine"}  # two structures, then refinement
    assert history[5].meta["refine"] == "2 structures in a row without an improvement above the noise 0.0100"


@pytest.mark.parametrize("k", [3, 4, 8, 13, 16])
def test_resume_by_replay_gives_the_same_proposals(k):
    def fresh():
        return make_proposer("hybrid", SPACE, 7, inner="tpe", inner_trials=3, structures=3, patience=5)

    history = run(fresh(), 22)
    replayed = fresh()
    for r in history[:k]:
        replayed.tell(r)
    assert [r.params for r in run(replayed, 22, history[:k])] == [r.params for r in history]


@pytest.mark.parametrize(
    "options, says",
    [({"inner": "llm"}, "inner='llm' is not a classical method"), ({"inner": "nope"}, "inner='nope'"),
     ({"patience": 0}, "patience=0 must be an integer >= 1"), ({"noise": -1.0}, "noise=-1.0 must be >= 0"),
     ({"repeats": 0}, "set repeats >= 1 or a noise")],  # fmt: skip
)
def test_bad_options_are_refused_in_one_line(options, says):
    with pytest.raises(ValueError) as err:
        make_proposer("hybrid", SPACE, 0, **options)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_study_refuses_a_bad_option_with_exit_2(tmp_path, in_process):
    code, stderr = in_process(["+method=hybrid", "method.options.inner=nope", f"hydra.run.dir={tmp_path}"])
    assert code == 2 and "Traceback" not in stderr
    assert "hybrid: inner='nope' is not a classical method" in stderr


def test_a_study_of_the_real_gpt_changes_its_structure_and_resumes_without_asking_again(tmp_path, data_cache):
    swiglu = json.dumps({"parent": ROOT, "changes": {"mlp": "swiglu"},
                         "space": {"MATRIX_LR": [0.01, 0.1], "MLP_RATIO": [2.0, 3.0]}})  # fmt: skip
    args = ["method.options.inner_trials=2", "method.options.repeats=1", "llm=openai", "llm.model=scripted",
            "llm.api_key_env=null"]  # fmt: skip
    with ScriptedServer([swiglu]) as server:
        first = run_cli("jaxhpo", *study_args("hybrid", tmp_path, data_cache, "study.max_trials=5",
                                              f"llm.base_url={server.url}", *args))  # fmt: skip
        assert first.returncode == 0, first.stderr[-3000:]
        asked = len(server.prompts)
        again = run_cli("jaxhpo", *study_args("hybrid", tmp_path, data_cache, "study.max_trials=6",
                                              f"llm.base_url={server.url}", *args))  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(server.prompts) == asked == 2  # epochs 0 and 1 began with a turn; the resume asked none
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials, turns, info = journal.trials(), journal.llm_turns(), journal.study_info()
    as_stored = lambda space: json.loads(json.dumps(space.definition()))  # noqa: E731  (tuples are lists there)
    assert info["base_space"] == as_stored(TINY) and info["space"] == as_stored(SPACE)  # compared on tiny's
    assert [t.proposer for t in trials] == ["default", REPEAT, "llm-structure", "tpe", FALLBACK, "tpe"]
    assert all(t.status == "ok" for t in trials), [t.error for t in trials]
    assert trials[1].val_bpb != trials[0].val_bpb  # another training seed, the same configuration
    epoch0 = trials[2].meta["hybrid"]
    assert epoch0["structure"]["mlp"] == "swiglu" and epoch0["change"] == "structural"
    assert set(epoch0["space"]) == {"MATRIX_LR", "MLP_RATIO"} and epoch0["space_id"]
    assert 2.0 <= trials[3].params["MLP_RATIO"] <= 3.0 and trials[3].params["MLP"] == "swiglu"
    # the trial trained that structure: its config says so, and its parameter count is swiglu's
    config = (tmp_path / "trials/0002/config.yaml").read_text()
    assert "mlp: swiglu" in config
    assert trials[2].result["num_params"] != trials[0].result["num_params"]
    # the second turn proposed swiglu again, already tried: the fallback rule's one-change neighbour ran
    assert "already tried" in turns[-1]["fallback"] and trials[4].meta["hybrid"]["parent"] in (ROOT, epoch0["structure_id"])
    assert "Architectures tried so far" in server.prompts[1] and epoch0["structure_id"] in server.prompts[1]


@pytest.mark.skipif(llm_missing() is not None, reason=str(llm_missing()))
def test_a_study_with_the_embedded_llm(tmp_path, data_cache, llm_server):
    """SmolLM2-135M's reply, held to the schema by llama.cpp's grammar: a structure that ran, or a fallback whose
    turn says why."""
    proc = run_cli("jaxhpo", *study_args("hybrid", tmp_path, data_cache, "study.max_trials=4",
                                         "method.options.repeats=1", f"llm.base_url={llm_server}"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials, turns = journal.trials(), journal.llm_turns()
    first = trials[2]
    print(first.proposer, first.meta["hybrid"]["structure"], turns[0]["fallback"], f"{turns[0]['latency_s']:.0f}s")
    assert len(turns) == 1 and turns[0]["kind"] == "hybrid" and turns[0]["trial_number"] == 2
    assert first.proposer in ("llm-structure", FALLBACK) and first.meta["hybrid"]["change"] == "structural"
    assert (turns[0]["fallback"] is None) == (first.proposer == "llm-structure")
    assert first.meta["hybrid"]["structure_id"] != ROOT and all(t.status == "ok" for t in trials)
