"""Every proposer in PROPOSERS against the same contract: valid, reproducible, resumable by replay, robust to
failures and to trials it did not propose, and (except random) better than random on a cheap synthetic
objective over the real 14-D autoresearch space. Then CMA-ES's generations, injection and state summary, and
TPE's startup phase.

The LLM methods run here offline: their client points at a closed loopback port, so every LLM turn falls back
(llm to its random draw, Centaur to CMA-ES's suggestion) -- the contract must hold on that path too. Their LLM
turns proper are tested in test_centaur.py.

Methods run under protocol=paper too ("cmaes/paper": Optuna's CMA-ES; "centaur/paper" and "llm/paper": the study's
Centaur and agent, whose unreachable LLM loses every LLM turn as a trial that never runs; "smac/paper": SMAC as the
study ran it, whose intensifier runs some configurations again)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hyperopt import tpe
from omegaconf import OmegaConf

from jaxhpo.journal import TrialRecord
from jaxhpo.llm.client import LLMClient, LLMConfig
from jaxhpo.proposers import (PROPOSERS, CMAESProposer, TPEProposer, make_proposer, penalized_values, proposer_options,
                              study_space)
from jaxhpo.proposers.cmaes import default_population_size, injection_bound
from jaxhpo.protocol import NOT_RUN_PREFIX, ProtocolConfig
from jaxhpo.space import Space

REPO = Path(__file__).resolve().parents[1]
PAPER = ProtocolConfig(**OmegaConf.to_container(OmegaConf.load(REPO / "hydra_configs/protocol/paper.yaml"))["protocol"])
NAMES = list(PROPOSERS) + ["cmaes/paper", "centaur/paper", "llm/paper", "smac/paper"]  # method/protocol
# Offline, llm, llambo and agent_code are random search, and the study's Centaur loses every trial from its first LLM turn (12) on. (The
# study's SMAC learns as smac does, with a few repeats: three more minutes of the suite to show it again.)
# Offline, hybrid's fallback rule picks its structures in menu order, and this objective rewards none of them (its
# one structural term, the window pattern, is 8th on the menu and held at SSSL, +0.3, while the others search it):
# its first 35 of 60 trials go to 2 reruns of the default and 4 structures, and its best was 1.155 against random's
# 1.044 (24 seeds). Its learning with a real LLM is measured by studies, not here (tests/test_hybrid.py).
LEARNERS = [n for n in NAMES if n not in ("random", "sobol", "llm", "llm/paper", "centaur/paper", "smac/paper",
                                         "llambo", "agent_code", "hybrid")]  # fmt: skip
# The proposer tags each method may hand out when its LLM is unreachable (only "default" besides, for trial 0).
TAGS = {"llm": {"llm→fallback"}, "centaur": {"cmaes", "llm→fallback"}, "cmaes/paper": {"cmaes"},
        "centaur/paper": {"cmaes", "llm→error"}, "llm/paper": {"llm→error"}, "smac/paper": {"smac"},
        "llambo": {"llambo→fallback"}, "agent_code": {"agent_code→fallback"},
        "hybrid": {"repeat", "llm-structure→fallback", "tpe"}}


@functools.lru_cache(maxsize=None)
def unreachable_llm() -> LLMClient:
    """A client for a loopback port nothing listens on, without retries: every chat fails at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return LLMClient(LLMConfig(provider="openai", base_url=f"http://127.0.0.1:{port}/v1", retries=0, timeout_s=5))


def new_proposer(name: str, seed: int, **options):
    """make_proposer for "method" or "method/paper", with the unreachable client for methods that use an LLM (as
    the study passes its own)."""
    method, _, protocol = name.partition("/")
    if PROPOSERS[method].uses_llm:
        options["llm"] = unreachable_llm()
    return make_proposer(method, space_of(name), seed, protocol=PAPER if protocol else None, **options)


def space_of(name: str) -> Space:
    """The space a method's study searches: SPACE, with the model's structure added for hybrid."""
    method, _, protocol = name.partition("/")
    params = study_space(method, SPACE.definition(), PAPER if protocol else None)
    return SPACE if params == SPACE.definition() else Space(SPACE.name, params)


def stable_meta(meta: dict) -> dict:
    """A proposal's meta without what varies from run to run: the seconds an LLM call took to fail."""
    turn = meta.get("llm_turn")
    if turn is not None:  # one call's record, or a list of them (llambo)
        calls = [{k: v for k, v in c.items() if k != "latency_s"} for c in (turn if isinstance(turn, list) else [turn])]
        meta = meta | {"llm_turn": calls, "llambo": {k: v for k, v in meta.get("llambo", {}).items()
                                                     if k != "llm_seconds"}}  # fmt: skip
    return meta


@functools.lru_cache(maxsize=None)
def autoresearch() -> Space:
    return Space.from_file(REPO / "hydra_configs/space/autoresearch.yaml")


SPACE = autoresearch()
I_DEPTH, I_ASPECT = SPACE.names.index("DEPTH"), SPACE.names.index("ASPECT_RATIO")
# The synthetic objective: a shifted quadratic in the unit encoding, DEPTH and ASPECT_RATIO weighted 3x (model
# size matters most), plus a per-pattern penalty; it "OOMs" when DEPTH and ASPECT_RATIO are both in their top
# third (1/9 of the cube, next to the optimum's DEPTH = ASPECT_RATIO = 0.5).
CENTER = np.random.default_rng(2026).uniform(0.15, 0.85, SPACE.dim)
CENTER[[I_DEPTH, I_ASPECT]] = 0.5
WEIGHT = np.ones(SPACE.dim)
WEIGHT[[I_DEPTH, I_ASPECT]] = 3.0
PATTERN = {"SSSL": 0.3, "SSLL": 0.0, "SLSL": 0.2, "LLLL": 0.4, "SSSS": 0.5, "LSSL": 0.25}


def objective(params: dict) -> float | None:
    """The synthetic val_bpb, or None for an OOM. A structure's parameters (hybrid's space) do not change it; a
    window pattern that SPACE lacks (hybrid's menu) is scored as SPACE's default and its own penalty."""
    u = np.array([p.to_unit(params[p.name] if p.contains(params[p.name]) else p.default) for p in SPACE.params])
    if u[I_DEPTH] > 2 / 3 and u[I_ASPECT] > 2 / 3:
        return None
    return float(np.sum(WEIGHT * (u - CENTER) ** 2) + PATTERN.get(params["WINDOW_PATTERN"], 0.5))


def record(number: int, params: dict, value: float | None, proposer: str = "test", status: str | None = None,
           method: str = "test", meta: dict | None = None) -> TrialRecord:  # fmt: skip
    status = status or ("ok" if value is not None else "oom")
    return TrialRecord(
        number=number, params=dict(params), space_id=SPACE.space_id, method=method, proposer=proposer,
        status=status, val_bpb=value if status == "ok" else None, error=None if status == "ok" else status,
        wall_seconds=1.0, training_seconds=1.0, peak_memory_mb=None, started_at=0.0, ended_at=1.0, seed=0,
        meta=meta or {},
    )  # fmt: skip


def outcome(number: int, prop, method: str = "test") -> TrialRecord:
    """The record the study journals for proposal `prop` under the synthetic objective: meta as the journal keeps
    it (JSON, without the LLM turn), and a proposal lost to its LLM call (`not_run`) crashed without running."""
    meta = json.loads(json.dumps({k: v for k, v in prop.meta.items() if k != "llm_turn"}))
    params = json.loads(json.dumps(prop.params))
    if "not_run" in meta:
        error = NOT_RUN_PREFIX + meta.pop("not_run")
        return dataclasses.replace(record(number, params, None, prop.proposer, "crashed", method, meta), error=error)
    return record(number, params, objective(params), prop.proposer, method=method, meta=meta)


def study(name: str, seed: int, n: int, replay: list[TrialRecord] = (), **options):
    """The study loop: trial 0 is the default (told, not asked), then ask/tell with the synthetic objective.
    With `replay`, a fresh proposer is first told those records (a resume), and the loop continues from there.
    Returns (proposer, records, proposals asked in this call)."""
    p = new_proposer(name, seed, **options)
    history, proposals = [], []
    for r in replay:
        p.tell(r)
        history.append(r)
    if not history:
        default = space_of(name).default()
        r = record(0, default, objective(default), "default")
        p.tell(r)
        history.append(r)
    while len(history) < n:
        prop = p.ask(history)
        proposals.append(prop)
        # JSON round trip, as through the journal: the proposer must recognise its own proposals afterwards
        r = outcome(len(history), prop, method=name)
        history.append(r)
        p.tell(r)
    return p, history, proposals


# -- the shared contract -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_proposals_are_valid_and_tagged(name):
    _, history, proposals = study(name, seed=0, n=30)
    assert len(proposals) == 29
    for prop in proposals:
        space_of(name).check(prop.params)
        assert prop.proposer in TAGS.get(name, {name})
        json.dumps(prop.params)
        json.dumps(prop.meta)
        # plain JSON scalars, never NumPy's (hybrid's structural options are also true/false and null)
        assert all(type(v) in (int, float, str, bool, type(None)) for v in prop.params.values())
    repeats = 6 if name == "smac/paper" else 3  # the study's SMAC runs some configurations again, by design
    assert len({json.dumps(p.params, sort_keys=True) for p in proposals}) >= 29 - repeats  # not stuck on one point


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_for_a_seed_and_different_across_seeds(name):
    a = [p.params for p in study(name, seed=3, n=25)[2]]
    b = [p.params for p in study(name, seed=3, n=25)[2]]
    c = [p.params for p in study(name, seed=4, n=25)[2]]
    assert a == b
    assert sum(x != y for x, y in zip(a, c)) >= 20


@pytest.mark.parametrize("name", NAMES)
def test_resume_by_replay_gives_the_same_proposals(name):
    n = 30
    _, history, proposals = study(name, seed=1, n=n)
    assert [r.params for r in history[1:]] == [json.loads(json.dumps(p.params)) for p in proposals]
    # k = 1: just the default; 12: right after CMA-ES's first generation (11 + the default); others mid-way
    for k in (1, 5, 12, 13, 23):
        _, resumed, rest = study(name, seed=1, n=n, replay=history[:k])
        assert [p.params for p in rest] == [p.params for p in proposals[k - 1 :]], f"resume after {k} trials"
        assert [stable_meta(p.meta) for p in rest] == [stable_meta(p.meta) for p in proposals[k - 1 :]]
        assert [r.val_bpb for r in resumed] == [r.val_bpb for r in history]


@pytest.mark.parametrize("name", NAMES)
def test_parallel_asks_never_repeat_a_running_configuration(name):
    """Three workers: each ask sees the configurations running; trials finish out of order."""
    p = new_proposer(name, seed=2)
    rng = np.random.default_rng(0)
    default = space_of(name).default()
    history = [record(0, default, objective(default), "default")]
    p.tell(history[0])
    running: list = []
    number = 1
    while number < 40:
        while len(running) < 3:
            prop = p.ask(history, [q.params for q in running])
            space_of(name).check(prop.params)
            assert prop.params not in [q.params for q in running], f"trial {number} repeats a running one"
            assert prop.proposer in TAGS.get(name, {name})
            running.append(prop)
            number += 1
        done = running.pop(int(rng.integers(len(running))))  # whichever finishes first
        history.append(outcome(len(history), done))
        p.tell(history[-1])


@pytest.mark.parametrize("name", NAMES)
def test_failures_and_foreign_trials_are_accepted(name):
    p = new_proposer(name, seed=0)
    rng = np.random.default_rng(0)
    history = []
    # first everything fails (no success to rank against), then foreign configurations arrive: an LLM's, the
    # cube's far corners, an invalid-for-this-space value the journal should never hold but must not crash us
    for status in ("oom", "oom", "timeout", "diverged", "crashed", "pruned"):
        history.append(record(len(history), SPACE.sample(rng), None, "llm", status=status))
        p.tell(history[-1])
    for u in (np.zeros(SPACE.dim), np.ones(SPACE.dim), rng.random(SPACE.dim)):
        params = SPACE.from_unit(u)
        history.append(record(len(history), params, 1.0 + float(rng.random()), "llm"))
        p.tell(history[-1])
    odd = SPACE.default() | {"DEPTH": 99, "WINDOW_PATTERN": "XXXX"}
    history.append(record(len(history), odd, 5.0, "llm"))
    p.tell(history[-1])
    for _ in range(30):  # and it keeps working, with its own trials failing now and then
        prop = p.ask(history)
        space_of(name).check(prop.params)
        history.append(outcome(len(history), prop))
        p.tell(history[-1])
        if len(history) % 4 == 0:  # an LLM's proposal interleaved, as in Centaur
            params = SPACE.sample(rng)
            history.append(record(len(history), params, objective(params), "llm"))
            p.tell(history[-1])
    cmaes = getattr(p, "cmaes", p)
    if isinstance(cmaes, CMAESProposer):
        s = cmaes.state_summary()
        assert math.isfinite(s["sigma"]) and np.all(np.isfinite(s["covariance"]))
    if hasattr(cmaes, "paper_state"):
        s = cmaes.paper_state()
        assert math.isfinite(s["sigma"]) and np.all(np.isfinite(s["cov"])) and len(s["top"]) == 5


@functools.lru_cache(maxsize=None)
def learning_curve(name: str, seeds: int) -> tuple[float, float]:
    """(mean over seeds of the best value in 60 trials, failure share of the last 30 trials over all seeds)."""
    best, failed = [], []
    for seed in range(seeds):
        _, history, _ = study(name, seed=seed, n=60)
        best.append(min(r.val_bpb for r in history if not r.failed))
        failed += [r.failed for r in history[-30:]]
    return float(np.mean(best)), float(np.mean(failed))


@pytest.mark.parametrize("name", LEARNERS)
def test_learns_faster_than_random(name):
    # CMA-ES (float32 on XLA) and TPE (hyperopt on NumPy's SIMD exp/log) take other paths on another CPU, so the
    # proposer's seeds are in effect fresh draws there; random search is NumPy's generator alone (the same
    # everywhere). Per seed, best in 60 trials: random 1.04 ± 0.14, tpe 0.83 ± 0.15 (0.74 over 24 seeds since its
    # Optuna-style split), cmaes 0.84 ± 0.15 (40 seeds each, on two CPUs for cmaes). A mean of 4 seeds missed 0.85 × random's about one run in five; 24 seeds
    # against 0.9 × random miss about one in 5,000, and a learner no better than random (~1.04) still fails.
    # (A CMA-ES that never updates its distribution: best 1.40.)
    # SMAC (0.3 s an ask after its 25 Sobol points) gets 12 seeds and a bar at random's own mean: 0.90 ± 0.17 per
    # seed over 20 seeds, so its mean of 12 misses 1.04 about one run in 800; 24 would add two minutes to the suite.
    seeds, bar = (12, 1.0) if name == "smac" else (24, 0.9)
    best, failed = learning_curve(name, seeds)
    random_best, random_failed = learning_curve("random", 16)
    if name == "smac":  # no failure model (avoid_failures): it must learn where trials fail from their told costs
        random_failed = learning_curve("random/paper", 16)[1]
    print(f"{name}: best {best:.3f} vs random {random_best:.3f}; failures {failed:.3f} vs random {random_failed:.3f}")
    assert best < bar * random_best, f"{name} best {best:.3f} is not clearly below random's {random_best:.3f}"
    assert failed < random_failed, f"{name} fails {failed:.3f} of its late trials, random {random_failed:.3f}"


# -- make_proposer and the method configs -----------------------------------------------------------------------


def test_make_proposer_rejects_unknown_methods_and_options():
    with pytest.raises(ValueError) as e:
        make_proposer("x", SPACE, 0)
    assert str(e.value) == "unknown method 'x'; choose one of: random, tpe, cmaes, llm, centaur, sobol, optuna_tpe, optuna_cmaes, smac, llambo, agent_code, hybrid"
    for name in PROPOSERS:
        with pytest.raises(ValueError) as e:
            make_proposer(name, SPACE, 0, bogus=1)
        assert "'bogus'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="population_size"):
        make_proposer("cmaes", SPACE, 0, population_size=1)
    with pytest.raises(ValueError, match="n_startup_trials"):
        make_proposer("tpe", SPACE, 0, n_startup_trials=-1)
    for bad in ({"n_startup_trials": None}, {"n_ei_candidates": 0}, {"multivariate": "yes"}):
        with pytest.raises(ValueError, match=f"optuna_tpe: {next(iter(bad))}"):
            make_proposer("optuna_tpe", SPACE, 0, **bad)
    with pytest.raises(ValueError, match="optuna_cmaes: population_size"):
        make_proposer("optuna_cmaes", SPACE, 0, population_size=1)


@pytest.mark.parametrize("name", list(PROPOSERS))
def test_method_config_lists_the_proposers_options(name):
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / f"hydra_configs/method/{name}.yaml"))
    assert cfg == {"name": name, "options": proposer_options(name)}
    p = make_proposer(cfg["name"], SPACE, 0, **cfg["options"])
    assert isinstance(p, PROPOSERS[name]) and p.name == name


# -- CMA-ES ------------------------------------------------------------------------------------------------------


def test_cmaes_generations():
    lam = default_population_size(SPACE.dim)
    assert lam == 11
    p = CMAESProposer(SPACE, seed=0)
    assert p.population_size == lam
    s = p.state_summary()
    assert s["generation"] == 0 and s["sigma"] == pytest.approx(0.25)
    assert s["mean"] == pytest.approx(dict(zip(SPACE.names, SPACE.to_unit(SPACE.default()))), abs=1e-6)
    history = [record(0, SPACE.default(), 1.0, "default")]
    p.tell(history[0])  # the default is an injected solution: one of generation 0's 11 told solutions
    assert p.state_summary()["told_in_generation"] == 1
    members = []
    for i in range(1, lam):
        prop = p.ask(history)
        assert prop.meta["generation"] == 0 and prop.meta["member"] == i - 1  # handed out in order
        members.append(prop.params)
        history.append(record(i, prop.params, objective(prop.params), "cmaes"))
        p.tell(history[-1])
    s = p.state_summary()  # 11 told: evosax's tell ran, generation 1 is sampled
    assert s["generation"] == 1 and s["told_in_generation"] == 0
    assert s["mean"] != pytest.approx(dict(zip(SPACE.names, SPACE.to_unit(SPACE.default()))))
    prop = p.ask(history)
    assert prop.meta == {"generation": 1, "member": 0, "sigma": s["sigma"]}
    assert prop.params not in members
    # asks while members are running (a parallel study) skip the running ones; asking changes nothing
    second = p.ask(history, [prop.params])
    third = p.ask(history, [prop.params, second.params])
    assert second.meta["member"] == 1 and third.meta["member"] == 2
    assert p.ask(history).meta["member"] == 0
    # a member told back (even out of order) is consumed; the others stay open
    p.tell(record(len(history), second.params, 1.5, "cmaes"))
    running = []
    for _ in range(3):
        running.append(p.ask(history, [q.params for q in running]))
    assert [q.meta["member"] for q in running] == [0, 2, 3]


def test_cmaes_draws_extra_points_when_the_whole_generation_is_running():
    p = CMAESProposer(SPACE, seed=0, population_size=4)
    history = [record(0, SPACE.default(), 1.0, "default")]
    p.tell(history[0])  # injected: generation 0 needs 3 more, and all 4 members are open
    running = []
    for _ in range(6):
        running.append(p.ask(history, [q.params for q in running]))
    assert [q.meta["member"] for q in running] == [0, 1, 2, 3, None, None]
    extras = [q.params for q in running[4:]]
    assert extras[0] != extras[1] and all(e not in [q.params for q in running[:4]] for e in extras)
    assert p.ask(history, [q.params for q in running[:5]]).params == extras[1]  # seeded: the same draw again
    # an extra point and two members finish: with the default, generation 0 is complete and updated
    for i, q in enumerate([running[4], running[0], running[1]], start=1):
        p.tell(record(i, q.params, objective(q.params), "cmaes"))
    s = p.state_summary()
    assert s["generation"] == 1 and s["told_in_generation"] == 0
    # generation 0's members still running finish later: told to generation 1 as injected solutions
    p.tell(record(4, running[2].params, objective(running[2].params), "cmaes"))
    s = p.state_summary()
    assert s["told_in_generation"] == 1 and s["injected_in_generation"] == 1


def test_cmaes_population_size_option():
    p, _, proposals = study("cmaes", seed=0, n=14, population_size=6)
    assert p.state_summary()["generation"] == 2  # the default + 13 proposals: 2 generations + 2
    assert [q.meta["member"] for q in proposals] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0, 1]


def _run_with_injection(inject: dict | None, value: float, seed: int = 0, generations: int = 4):
    """CMA-ES on the synthetic objective; if `inject`, that configuration is told as the first trial of
    generation 1 with val_bpb `value`. Returns the proposer after `generations` updates."""
    p = CMAESProposer(SPACE, seed=seed)
    history = [record(0, SPACE.default(), objective(SPACE.default()), "default")]
    p.tell(history[0])
    injected = False
    while p.state_summary()["generation"] < generations:
        if inject is not None and not injected and p.state_summary()["generation"] == 1:
            injected = True
            history.append(record(len(history), inject, value, "llm"))
        else:
            prop = p.ask(history)
            history.append(record(len(history), prop.params, objective(prop.params), "cmaes"))
        p.tell(history[-1])
    return p


def test_cmaes_far_injected_solution_stays_sane():
    # The far corner from the mean, told as by far the best trial: the worst case for step size and covariance.
    p0 = _run_with_injection(None, 0.0)
    mean = np.array(list(p0.state_summary()["mean"].values()))
    far = SPACE.from_unit((mean < 0.5).astype(float))
    for value in (-100.0, 1e6):  # best by far, and worst
        p1 = _run_with_injection(far, value)
        s0, s1 = p0.state_summary(), p1.state_summary()
        C0, C1 = np.array(s0["covariance"]), np.array(s1["covariance"])
        assert math.isfinite(s1["sigma"]) and np.all(np.isfinite(C1))
        assert 1 / 3 < s1["sigma"] / s0["sigma"] < 3
        ev0, ev1 = np.linalg.eigvalsh(C0), np.linalg.eigvalsh(C1)
        assert ev1.min() > 0 and ev1.max() / ev0.max() < 3 and ev1.min() / ev0.min() > 1 / 3
        assert np.all(np.abs(np.array(list(s1["mean"].values()))) < 2)


def test_cmaes_injection_is_clipped_to_hansens_bound():
    p = CMAESProposer(SPACE, seed=0)
    d, bound = SPACE.dim, injection_bound(SPACE.dim)
    assert bound == pytest.approx(math.sqrt(14) + 28 / 16)
    mean, sigma = np.array(list(p.state_summary()["mean"].values())), p.state_summary()["sigma"]
    far = (mean < 0.5).astype(float)
    x = p._bounded(far)
    C = np.array(p.state_summary()["covariance"])
    w, B = np.linalg.eigh(C)
    inv_sqrt = B @ np.diag(w**-0.5) @ B.T
    y_far, y = (far - mean) / sigma, (x - mean) / sigma
    assert np.linalg.norm(inv_sqrt @ y_far) > bound  # it needed clipping ...
    assert np.linalg.norm(inv_sqrt @ y) == pytest.approx(bound, rel=1e-3)  # ... to the bound,
    assert np.allclose(y / np.linalg.norm(y), y_far / np.linalg.norm(y_far))  # along the same direction
    near = mean + 0.1 * sigma * np.ones(d) / math.sqrt(d)
    assert np.array_equal(p._bounded(near), near)  # a near point is left alone


def test_cmaes_state_summary():
    p, history, _ = study("cmaes", seed=2, n=17)
    s = p.state_summary()
    assert {"mean", "sigma", "covariance", "next_suggestion", "generation", "names"} <= set(s)
    assert s["names"] == list(SPACE.names) and list(s["mean"]) == list(SPACE.names)
    C = np.array(s["covariance"])
    assert C.shape == (SPACE.dim, SPACE.dim) and np.allclose(C, C.T, atol=1e-6)
    assert s["generation"] == 1 and s["told_in_generation"] == 17 - 11
    assert s["sigma"] > 0
    json.dumps(s)
    SPACE.check(s["next_suggestion"])
    assert p.ask(history).params == s["next_suggestion"]  # it is what ask hands out next
    assert p.state_summary() == s | {"next_suggestion": p.state_summary()["next_suggestion"]}  # read-only


# -- TPE ---------------------------------------------------------------------------------------------------------


def test_tpe_startup_then_model():
    p = TPEProposer(SPACE, seed=0, n_startup_trials=5)
    history = [record(0, SPACE.default(), 1.0, "default")]
    phases = []
    for i in range(1, 9):
        prop = p.ask(history)
        phases.append(prop.meta["phase"])
        history.append(record(i, prop.params, objective(prop.params), "tpe"))
    # the told default counts: 1 + 4 startup proposals reach 5 trials, then TPE proper
    assert phases == ["startup"] * 4 + ["tpe"] * 4


def test_tpe_follows_the_good_trials():
    # 40 told random trials whose loss is lowest for WINDOW_PATTERN=LLLL and a deep model: TPE's proposals
    # (12 seeds, same history) should mostly be LLLL and deep, where random draws would be 1/6 and 1/3
    rng = np.random.default_rng(0)
    history = []
    for i in range(40):
        params = SPACE.sample(rng)
        loss = (params["WINDOW_PATTERN"] != "LLLL") + (24 - params["DEPTH"]) / 20 + 0.1 * rng.random()
        history.append(record(i, params, float(loss), "llm"))
    proposals = [TPEProposer(SPACE, seed=seed).ask(history).params for seed in range(12)]
    llll = np.mean([q["WINDOW_PATTERN"] == "LLLL" for q in proposals])
    deep = np.mean([q["DEPTH"] >= 18 for q in proposals])
    assert llll > 0.5 and deep > 0.5, (llll, deep)


def hyperopt_suggestion(p: TPEProposer, history: list, pending: list, seed: int) -> dict:
    """hyperopt's own `tpe.suggest` on a Trials holding `history` (and `pending` as the constant liar), decoded."""
    from hyperopt import Trials
    from hyperopt.base import JOB_STATE_DONE, STATUS_OK

    trials = Trials()
    configs = [t.params for t in history] + pending
    losses = list(penalized_values(history)) + [max(penalized_values(history))] * len(pending)
    tids = trials.new_trial_ids(len(configs))
    miscs = [{"tid": tid, "cmd": p._domain.cmd, "workdir": p._domain.workdir, "idxs": {k: [tid] for k in vals},
              "vals": {k: [v] for k, v in vals.items()}} for tid, vals in zip(tids, map(p._vals_of, configs))]
    docs = trials.new_trial_docs(tids, [None] * len(tids), [{"status": STATUS_OK, "loss": x} for x in losses], miscs)
    for doc in docs:
        doc["state"] = JOB_STATE_DONE
    trials.insert_trial_docs(docs)
    trials.refresh()
    (doc,) = tpe.suggest(trials.new_trial_ids(1), p._domain, trials, seed, prior_weight=p.prior_weight,
                         n_startup_jobs=p.n_startup_trials, n_EI_candidates=p.n_ei_candidates,
                         gamma=p._gamma(len(configs)), verbose=False)  # fmt: skip
    unit = np.array([p._to_unit(q, doc["misc"]["vals"][q.name][0]) for q in SPACE.params])
    return SPACE.from_unit(unit)


@pytest.mark.parametrize("options", [{}, {"split": "linear", "gamma": 0.1}, {"n_ei_candidates": 50, "prior_weight": 0.5}])
def test_tpe_proposes_what_hyperopts_own_suggest_does(options):
    """The posterior built once and the trials encoded once change nothing hyperopt's tpe.suggest would propose."""
    _, history, _ = study("random", seed=0, n=70)
    for n, pending in ((5, []), (11, []), (30, [history[40].params]), (70, [])):
        for seed in (0, 7):
            p = TPEProposer(SPACE, seed=seed, avoid_failures=False, **options)  # hyperopt has no failure model
            seed_used = int(np.random.default_rng([seed, n + len(pending)]).integers(2**31 - 1))
            assert p.ask(history[:n], pending).params == hyperopt_suggestion(p, history[:n], pending, seed_used)


def test_tpe_needs_no_tell_and_ignores_what_it_is_told():
    _, history, proposals = study("tpe", seed=0, n=15)
    fresh = TPEProposer(SPACE, seed=0)  # never told anything: ask depends on the history alone
    assert fresh.ask(history[:14]).params == proposals[-1].params


# -- Sobol -------------------------------------------------------------------------------------------------------


def test_sobol_covers_the_cube_more_evenly_than_random():
    from scipy.stats import qmc

    sobol = make_proposer("sobol", SPACE, 0)
    units = {"sobol": [], "random": []}
    history = [record(0, SPACE.default(), 1.0, "default")]
    for t in range(1, 65):
        for name, p in (("sobol", sobol), ("random", make_proposer("random", SPACE, 0))):
            x = p.ask(history)
            units[name].append(SPACE.to_unit(x.params))
        history.append(record(t, x.params, 1.0))
    # the decoded grid (13 of 14 parameters are continuous or fine) keeps most of Sobol's evenness
    d = {name: qmc.discrepancy(np.array(u)) for name, u in units.items()}
    assert d["sobol"] < 0.8 * d["random"], d
