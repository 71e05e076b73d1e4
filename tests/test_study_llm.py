"""LLM studies end to end through `python -m jaxhpo`: the embedded SmolLM2 server started by jaxhpo itself,
and an unreachable endpoint that every LLM turn must survive."""

import json
import socket

import pytest

from jaxhpo.journal import Journal
from tests.conftest import run_cli
from tests.llm_server import llm_missing
from tests.test_study import study_args

SECRET = "sk-test-7d41c0ffee-never-write-me"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(run_dir):
    with Journal(run_dir / "journal.sqlite", readonly=True) as journal:
        return journal.trials(), journal.llm_turns()


@pytest.mark.skipif(llm_missing() is not None, reason=str(llm_missing()))
def test_centaur_with_the_embedded_llm_asks_on_exactly_the_rule_trials(tmp_path, data_cache):
    # warmup 2, ratio 0.5: LLM turns on trials 2, 4, 6, ... (every round(1/0.5) = 2nd trial after the warm-up);
    # a 3-trial study has exactly one, on trial 2. (The rule itself is tested on many numbers in test_centaur.)
    args = study_args(
        "centaur", tmp_path, data_cache, "study.max_trials=3", "method.options.warmup=2", "method.options.ratio=0.5",
    )
    proc = run_cli("jaxhpo", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials, turns = read(tmp_path)
    assert [t["trial_number"] for t in turns] == [2]
    assert [t.proposer for t in trials if t.number != 2] == ["default", "cmaes"]
    for turn in turns:
        trial = trials[turn["trial_number"]]
        assert trial.proposer in ("llm", "llm→fallback")
        prompt = turn["prompt"]
        for needle in ("Mean of the search distribution", "step size sigma =", "Covariance matrix C",
                       "CMA-ES's next suggestion", "Reply with JSON only"):
            assert needle in prompt, needle
        if trial.proposer == "llm":
            assert turn["reply"] and turn["parsed"] == trial.params and turn["fallback"] is None
            assert turn["latency_s"] > 0 and turn["completion_tokens"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["llm_turns"] == 1 and summary["proposer_counts"]["cmaes"] == 1
    assert summary["llm_seconds"] > 0
    assert not (tmp_path / "llm_server.log").read_text().count("Traceback")


@pytest.mark.skipif(llm_missing() is not None, reason=str(llm_missing()))
def test_llm_method_proposes_every_trial_after_the_default(tmp_path, data_cache):
    proc = run_cli("jaxhpo", *study_args("llm", tmp_path, data_cache, "study.max_trials=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials, turns = read(tmp_path)
    assert [t["trial_number"] for t in turns] == [1]
    assert all(t.proposer in ("llm", "llm→fallback") for t in trials[1:])
    assert all(turn["prompt"] and turn["kind"] == "llm" for turn in turns)


def test_centaur_with_an_unreachable_llm_completes_on_cmaes_and_never_writes_the_key(tmp_path, data_cache):
    args = study_args(
        "centaur", tmp_path, data_cache, "study.max_trials=3", "method.options.warmup=1", "method.options.ratio=1",
        "llm=openai", f"llm.base_url=http://127.0.0.1:{closed_port()}/v1", "llm.api_key_env=JAXHPO_TEST_KEY",
        "llm.retries=0",
    )
    proc = run_cli("jaxhpo", *args, env={"JAXHPO_TEST_KEY": SECRET})
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials, turns = read(tmp_path)
    assert len(trials) == 3
    assert [t["trial_number"] for t in turns] == [1, 2]
    assert all(t["fallback"] for t in turns)
    assert [t.proposer for t in trials] == ["default", "llm→fallback", "llm→fallback"]
    # said once at start-up, before any trial, and once at the first fallback, however many turns fall back
    assert proc.stderr.count("warning: the LLM endpoint does not answer (cannot connect to") == 1
    assert proc.stderr.index("does not answer") < proc.stderr.index("trial   0")
    assert proc.stderr.count("warning:") == 2
    assert SECRET not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
