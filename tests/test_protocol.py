"""protocol=paper key by key: Optuna's CMA-ES as the study drove it, failures told as 100, the budget charged
training seconds, the log-uniform power-of-two prior, the study's Centaur (turns, prompt, lost trials) and agent;
the paper protocol composed for every method; and whole studies under it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from jaxhpo.config import StudyConfig
from jaxhpo.journal import Journal
from jaxhpo.llm import paper
from jaxhpo.proposers import PROPOSERS, CentaurProposer, LLMProposer, OptunaCMAESProposer, make_proposer
from jaxhpo.proposers.centaur import is_paper_llm_turn
from jaxhpo.protocol import NOT_RUN_PREFIX, ProtocolConfig, charged_seconds
from jaxhpo.space import Space, box_id
from jaxhpo.study import Study
from tests.conftest import REPO, run_cli
from tests.test_centaur import ScriptedLLM, unreachable
from tests.test_proposers import PAPER, SPACE, objective, outcome, record
from tests.test_study import study_args

LOST = "llm→error"
AR_CFG = OmegaConf.load(REPO / "hydra_configs/space/autoresearch.yaml")
del AR_CFG["defaults"]


def box_position(p, value) -> float:
    """Where a raw Optuna value sits in CMA-ES's normalised box: log-scaled for log ints and floats."""
    lo, hi, v = (np.log(p.low), np.log(p.high), np.log(value)) if p.log or p.pow2 else (p.low, p.high, value)
    return float((v - lo) / (hi - lo))


def run(p, n: int, history=None):
    """The study loop on the synthetic objective until n trials (trial 0 the default, told not asked)."""
    history = list(history or [record(0, SPACE.default(), objective(SPACE.default()), "default")])
    for r in history:
        p.tell(r)
    proposals = []
    while len(history) < n:
        prop = p.ask(history)
        proposals.append(prop)
        history.append(outcome(len(history), prop))
        p.tell(history[-1])
    return history, proposals


# -- Optuna's CMA-ES --------------------------------------------------------------------------------------------


def test_optuna_cmaes_is_the_studys_sampler():
    p = make_proposer("cmaes", SPACE, 0, protocol=PAPER)
    assert isinstance(p, OptunaCMAESProposer) and p.name == "cmaes"
    history, proposals = run(p, 1 + 11 + 3)
    trials = p.study.get_trials(deepcopy=False)
    # trial 0 is in Optuna's study but not CMA-ES's: no generation attribute
    assert "cma:generation" not in trials[0].system_attrs and trials[0].params["HEAD_DIM"] == 128
    assert all(t.system_attrs.get("cma:generation") == 0 for t in trials[1:12])
    # generation 0 is centred in the normalised (log-scaled) box, not at the default: WARMUP_RATIO's default is 0
    gen0 = np.array([[box_position(p, prop.meta["optuna_params"][p.name]) for p in SPACE.params if p.type != "categorical"]
                     for prop in proposals[:11]])  # fmt: skip
    assert abs(gen0.mean() - 0.5) < 0.08
    assert 0.12 < gen0.std() < 0.185  # sigma0 = 1/6 of the box: 0.15 here; sigma0 = 0.25 spreads 0.21
    assert gen0[:, SPACE.names.index("WARMUP_RATIO")].mean() > 0.2
    # WINDOW_PATTERN is drawn at random, outside CMA-ES: 13 dimensions
    state = p.paper_state()
    assert len(state["cov"]) == 13 and "WINDOW_PATTERN" not in state["cov_names"]
    assert len({prop.params["WINDOW_PATTERN"] for prop in proposals}) >= 3
    # powers of two snapped as the study snapped them; CMA-ES keeps the raw integers
    for prop in proposals:
        SPACE.check(prop.params)
        assert prop.params == paper.snap_pow2(SPACE, prop.meta["optuna_params"], None)


def test_optuna_tpe_is_univariate_under_the_papers_protocol_and_multivariate_under_jaxhpos():
    assert make_proposer("optuna_tpe", SPACE, 0, protocol=PAPER).sampler._multivariate is False
    assert make_proposer("optuna_tpe", SPACE, 0).sampler._multivariate is True
    assert make_proposer("optuna_tpe", SPACE, 0, multivariate=True, protocol=PAPER).sampler._multivariate is True
    # failures are told as the protocol says; trial 0 is a finished trial TPE learns from
    p = make_proposer("optuna_tpe", SPACE, 0, protocol=PAPER)
    history, _ = run(p, 4)
    prop = p.ask(history)
    p.tell(record(4, prop.params, None, prop.proposer, meta=json.loads(json.dumps(prop.meta))))  # an OOM
    assert [t.value for t in p.study.get_trials()][-1] == 100.0 and p.study.get_trials()[0].params["HEAD_DIM"] == 128


def test_optuna_cmaes_is_not_ready_before_its_first_generation_and_starts_at_sigma_one_sixth():
    p = make_proposer("cmaes", SPACE, 0, protocol=PAPER)
    run(p, 1 + 11)
    assert p.paper_state() is None  # the study's prompt then says "still initializing"
    p.ask([])  # the first ask of generation 1 updates CMA-ES on generation 0 and stores it
    state = p.paper_state()
    assert state is not None and 0.05 < state["sigma"] < 1 / 6 * 1.5


@pytest.mark.parametrize("failure_value, told", [(100.0, 100.0), (None, "worst + 1")])
def test_failures_are_told_as_the_protocol_says(failure_value, told):
    protocol = ProtocolConfig(cmaes="optuna", failure_value=failure_value)
    p = make_proposer("cmaes", SPACE, 0, protocol=protocol)
    history = [record(0, SPACE.default(), 1.5, "default")]
    p.tell(history[0])
    for n in range(1, 5):
        prop = p.ask(history)
        failed = n % 2 == 0
        history.append(record(n, prop.params, None if failed else 1.0 + n, prop.proposer, meta=prop.meta))
        p.tell(history[-1])
    values = [t.value for t in p.study.get_trials(deepcopy=False)]
    expected = 100.0 if told == 100.0 else None
    assert values[2] == (expected or max(1.5, 2.0) + 1) and values[4] == (expected or max(1.5, 2.0, 4.0) + 1)


def test_penalized_values_for_tpe_and_evosax_follow_the_failure_value():
    from jaxhpo.proposers.base import penalized_values

    trials = [record(0, SPACE.default(), 1.2), record(1, SPACE.default(), None), record(2, SPACE.default(), 0.9)]
    assert list(penalized_values(trials)) == [1.2, 2.2, 0.9]
    assert list(penalized_values(trials, 100.0)) == [1.2, 100.0, 0.9]


# -- budget and prior -------------------------------------------------------------------------------------------


def test_budget_charge():
    ok = record(1, SPACE.default(), 1.0)
    ok = type(ok)(**{**ok.__dict__, "wall_seconds": 40.0, "training_seconds": 30.0})
    failed = type(ok)(**{**ok.__dict__, "status": "oom", "val_bpb": None, "error": "oom", "wall_seconds": 12.0})
    assert charged_seconds(ok, "wall") == 40.0 and charged_seconds(ok, "training") == 30.0
    assert charged_seconds(failed, "wall") == charged_seconds(failed, "training") == 12.0


def test_log_snap_prior_gives_configspaces_shares_and_leaves_the_uniform_space_alone():
    uniform, snapped = Space.from_config(AR_CFG), Space.from_config(AR_CFG, "log_snap")
    assert uniform.space_id == SPACE.space_id != snapped.space_id
    # one box under both priors: the report compares the two protocols' studies as on one space
    assert box_id(snapped.definition()) == box_id(uniform.definition()) == uniform.space_id
    head = snapped.params[snapped.names.index("HEAD_DIM")]
    widths = np.diff(head.edges)
    # shares of a log-uniform integer over [63.5, 256.5] that snaps to 64 (64..96), 128 (97..192), 256 (193..256)
    logs = np.log([63.5, 96.5, 192.5, 256.5])
    assert np.allclose(widths, np.diff(logs) / (logs[-1] - logs[0]))
    for p in snapped.params:
        if p.pow2:
            assert [p.from_unit(p.to_unit(v)) for v in p.levels] == list(p.levels)
    # drawn by random search, ConfigSpace's sampler followed by the study's snap has the same shares
    from ConfigSpace import ConfigurationSpace, Integer

    cs = ConfigurationSpace(seed=0)
    cs.add(Integer("HEAD_DIM", bounds=(64, 256), log=True, default=128))
    theirs = [paper.snap_pow2(snapped, dict(c), None)["HEAD_DIM"] for c in cs.sample_configuration(4000)]
    ours = [snapped.sample(np.random.default_rng(i))["HEAD_DIM"] for i in range(4000)]
    for v in (64, 128, 256):
        assert abs(theirs.count(v) - ours.count(v)) < 4000 * 0.05
    assert abs(ours.count(128) / 4000 - 0.495) < 0.05  # uniform would be 1/3
    with pytest.raises(ValueError, match="pow2 prior"):
        Space.from_config(AR_CFG, "bogus")


# -- the study's Centaur ----------------------------------------------------------------------------------------


def test_paper_llm_turns_fall_on_12_15_18():
    assert [t for t in range(30) if is_paper_llm_turn(t, 10, 0.3)] == [12, 15, 18, 21, 24, 27]


def llm_reply(messages) -> str:
    """A usable reply: the default configuration with DEPTH 6 and an unsnapped HEAD_DIM."""
    return json.dumps(SPACE.default() | {"DEPTH": 6, "HEAD_DIM": 100})


def test_paper_centaur_turns_prompt_and_told_configuration():
    llm = ScriptedLLM(llm_reply)
    p = CentaurProposer(SPACE, 0, llm=llm, protocol=PAPER)
    history, proposals = run(p, 20)
    turns = [t.number for t in history if t.proposer == "llm"]
    assert turns == [12, 15, 18]
    prompt = llm.prompts[0]
    assert len(prompt) == 1 and prompt[0]["role"] == "user"
    text = prompt[0]["content"]
    assert text.startswith("You are optimizing hyperparameters for a GPT-2 scale transformer")
    assert "GPU: H200 with ~76GB available." in text and "Row/column order: 0=ASPECT_RATIO" in text
    assert "mean:" not in text.lower() and "mean (" not in text.lower()  # the study never printed its mean
    assert "Top 5 configs found by CMA-ES:" in text and "Previous evaluations (last 20):" in text
    # the LLM's configuration runs snapped (HEAD_DIM 100 -> 128), and Optuna's trial holds the raw values it sent
    llm_trial = history[12]
    assert llm_trial.params["DEPTH"] == 6 and llm_trial.params["HEAD_DIM"] == 128
    optuna_trial = p.cmaes.study.get_trials(deepcopy=False)[12]
    assert optuna_trial.params["DEPTH"] == 6 and optuna_trial.params["HEAD_DIM"] == 100
    assert optuna_trial.value == llm_trial.val_bpb


@pytest.mark.parametrize("failure", [RuntimeError("server down"), "I think DEPTH should be 12."])
def test_paper_centaur_loses_the_trial_on_an_llm_error_and_retries_next(failure):
    llm = ScriptedLLM(*([failure] + [llm_reply] * 10))
    p = CentaurProposer(SPACE, 0, llm=llm, protocol=PAPER)
    history, _ = run(p, 20)
    assert [t.proposer for t in history[12:14]] == [LOST, "llm"]  # the counter did not move: 13 is the retry
    lost = history[12]
    assert lost.status == "crashed" and lost.error.startswith(NOT_RUN_PREFIX)
    assert [t.number for t in history if t.proposer == "llm"] == [13, 16, 19]
    optuna_trial = p.cmaes.study.get_trials(deepcopy=False)[12]
    assert optuna_trial.value == 100.0  # CMA-ES told 100 for its own sample, which never ran
    assert optuna_trial.params["HEAD_DIM"] == lost.meta["optuna_params"]["HEAD_DIM"]
    # the next prompt shows the lost trial as the study's history did
    assert "  {} → CRASHED (" in llm.prompts[1][0]["content"]


def test_paper_centaur_replays_a_lost_trial():
    llm = ScriptedLLM(RuntimeError("down"), llm_reply)
    history, proposals = run(CentaurProposer(SPACE, 1, llm=llm, protocol=PAPER), 22)
    fresh = CentaurProposer(SPACE, 1, llm=ScriptedLLM(llm_reply), protocol=PAPER)
    _, rest = run(fresh, 22, history[:15])
    assert history[12].proposer == LOST
    assert [p.params for p in rest] == [p.params for p in proposals[14:]]


def test_paper_centaur_needs_the_paper_turns_with_optuna():
    with pytest.raises(ValueError, match="protocol.cmaes=evosax"):
        CentaurProposer(SPACE, 0, protocol=ProtocolConfig(cmaes="optuna"))
    # the study's Centaur over jaxhpo's CMA-ES (one key ablated) works
    p = CentaurProposer(SPACE, 0, llm=ScriptedLLM(llm_reply), protocol=ProtocolConfig(centaur="paper"))
    history, _ = run(p, 16)
    assert [t.number for t in history if t.proposer == "llm"] == [12, 15]


# -- the study's agent ------------------------------------------------------------------------------------------


def test_paper_agent_prompt_and_replies():
    llm = ScriptedLLM('```json\n{"DEPTH": 5}\n```', "no json here", RuntimeError("down"))
    p = LLMProposer(SPACE, 0, llm=llm, protocol=PAPER)
    history = [record(0, SPACE.default(), 1.3, "default")]
    first = p.ask(history)
    text = llm.prompts[0][0]["content"]
    assert "Be creative but principled" in text and "may cause OOM (out of memory) crashes" in text
    assert first.proposer == "llm" and first.params == SPACE.default() | {"DEPTH": 5}  # missing keys: defaults
    second = p.ask(history)
    assert second.proposer == "llm→fallback" and "not_run" not in second.meta  # a bad reply: a random draw
    third = p.ask(history)
    assert third.proposer == LOST and third.meta["not_run"].startswith("RuntimeError: down")


# -- the protocol group: composition, validation, whole studies --------------------------------------------------


@pytest.mark.parametrize("method", list(PROPOSERS))
def test_the_paper_protocol_composes_for_every_method(method, tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "hydra_configs"), version_base=None):
        cfg = compose("config", overrides=[f"+method={method}", "protocol=paper"])
    assert cfg.protocol.name == "paper" and cfg.trial.gpu_memory_fraction == 0.543 and cfg.llm.json_mode == "none"
    study = Study(OmegaConf.to_object(cfg), tmp_path)
    assert study.proposer.protocol.cmaes == "optuna"
    assert any(p.prior == "log_snap" for p in study.space.params if p.pow2)
    with initialize_config_dir(config_dir=str(REPO / "hydra_configs"), version_base=None):
        default = compose("config", overrides=[f"+method={method}"])
    assert OmegaConf.to_object(default.protocol) == ProtocolConfig()
    assert isinstance(OmegaConf.to_object(default), StudyConfig)


@pytest.mark.parametrize("args, message", [
    (["protocol=bogus"], "unknown protocol 'bogus'; choose one of: jaxhpo, paper"),
    (["protocol.cmaes=cma"], "protocol.cmaes"),
    (["protocol=paper", "protocol.budget_charge=cpu"], "protocol.budget_charge"),
])  # fmt: skip
def test_bad_protocol_values_are_refused_in_one_line(args, message, tmp_path, in_process):
    code, stderr = in_process(["+method=random", f"hydra.run.dir={tmp_path}", *args])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], stderr


def test_a_paper_study_charges_training_seconds_and_resumes_only_under_the_same_protocol(tmp_path, data_cache):
    args = study_args("cmaes", tmp_path, data_cache, "protocol=paper", "study.max_trials=2")
    proc = run_cli("jaxhpo", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials, info = journal.trials(), journal.study_info()
    assert info["protocol"]["name"] == "paper" and "optuna_params" in trials[1].meta
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["budget_charge"] == "training"
    assert summary["charged_seconds"] == pytest.approx(sum(charged_seconds(t, "training") for t in trials), abs=0.1)
    assert summary["charged_seconds"] < summary["trial_seconds"]
    proc = run_cli("jaxhpo", *args[:-1], "study.max_trials=3", "protocol.budget_charge=wall")
    assert proc.returncode == 2 and "protocol.budget_charge='training', not 'wall'" in proc.stderr, proc.stderr[-2000:]


def test_a_paper_agent_study_stops_when_its_llm_loses_every_trial(tmp_path, data_cache):
    args = study_args("llm", tmp_path, data_cache, "protocol=paper", "llm=openai",
                      f"llm.base_url={unreachable().base_url}", "llm.retries=0", "llm.api_key_env=null",
                      "study.max_trials=20", "study.max_consecutive_refusals=3")  # fmt: skip
    proc = run_cli("jaxhpo", *args)
    assert proc.returncode == 2 and "consecutive trials were lost to their LLM call" in proc.stderr, proc.stderr[-2000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    assert [t.proposer for t in trials] == ["default", LOST, LOST, LOST]
    assert all(t.wall_seconds == 0 and t.error.startswith(NOT_RUN_PREFIX) for t in trials[1:])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lost_to_llm"] == 3 and summary["failed_percent"] == (0.0 if trials[0].status == "ok" else 100.0)



@pytest.mark.parametrize("method", ["optuna_tpe", "optuna_cmaes"])
def test_an_optuna_study_resumed_from_its_journal_proposes_what_an_uninterrupted_one_does(method, tmp_path):
    def study(folder, trials):  # on the surrogate: the same trials in seconds
        proc = run_cli("jaxhpo", f"+method={method}", "protocol=paper", "trainer=surrogate", "study.budget_s=null",
                       f"study.max_trials={trials}", f"hydra.run.dir={tmp_path / folder}")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        with Journal(tmp_path / folder / "journal.sqlite", readonly=True) as journal:
            return [(t.proposer, t.params, t.val_bpb) for t in journal.trials()]

    study("resumed", 9)
    assert study("resumed", 16) == study("whole", 16)
