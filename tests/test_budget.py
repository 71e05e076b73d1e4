"""Budgets in FLOPs, tokens and steps: a number of optimizer steps fixed before training, whatever the machine's load,
and the study's choice of unit. Real runs of model=tiny, a few steps each."""

import os

import numpy as np
import pytest
from omegaconf import OmegaConf

import jaxhpo.trial as trial_module
from jaxhpo.space import Space
from jaxhpo.trial import CPUS_ENV, TrialConfig, resolve_budget, run_trial, trial_config
from model import device
from model import train as train_module
from model.config import ConfigError, TrainConfig, budget_steps, flops_per_step
from model.gpt import flops_per_token
from model.train import schedule_progress, train
from tests.conftest import REPO, run_cli
from tests.test_train import tiny_config

STEP_FLOPS = flops_per_step(tiny_config("unused").model)  # model=tiny's default configuration
TOKENS_PER_STEP = tiny_config("unused").model.total_batch_size


def flops_run(data_cache: str, budget_flops: float, **overrides) -> TrainConfig:
    return tiny_config(data_cache, budget="flops", budget_flops=budget_flops, save_checkpoint=False, **overrides)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to compare one XLA thread with two")
def test_a_flops_budget_trains_the_same_steps_and_score_on_one_cpu_or_two(tmp_path, data_cache):
    # The study's own way to give a trainer fewer cores: JAXHPO_CPUS pins it (sched_setaffinity) before JAX starts,
    # and XLA:CPU sizes its thread pools by the cores it may run on (17 threads on two cores, 13 on one).
    # XLA_FLAGS=--xla_cpu_multi_thread_eigen=false leaves the pools as they are.
    first, second = sorted(os.sched_getaffinity(0))[:2]
    cfg = flops_run(data_cache, 3.5 * STEP_FLOPS)
    runs = [run_trial(cfg, tmp_path / name, env={CPUS_ENV: cpus})
            for name, cpus in (("one", f"{first}"), ("two", f"{first},{second}"))]  # fmt: skip
    assert all(r.status == "ok" for r in runs), [(r.status, r.error) for r in runs]
    assert [r.result["num_steps"] for r in runs] == [3, 3]
    assert [r.result["budget_steps"] for r in runs] == [3, 3]
    # Reductions may add up in another order with another number of threads: equal to 1e-4, not to the bit.
    assert runs[0].val_bpb == pytest.approx(runs[1].val_bpb, abs=1e-4)


def test_a_larger_model_gets_fewer_steps_in_proportion_to_its_flops_per_token(tmp_path, data_cache):
    small, large = tiny_config(data_cache, model={"depth": 1}).model, tiny_config(data_cache).model
    budget = 2.5 * flops_per_step(large)
    results = [train(flops_run(data_cache, budget, model={"depth": m.depth}), tmp_path / f"depth{m.depth}")
               for m in (small, large)]  # fmt: skip
    assert all(r["status"] == "ok" for r in results), results
    steps = [r["num_steps"] for r in results]
    # The most whole steps of each model's FLOPs per token × tokens per step that fit in the same budget.
    assert steps == [int(budget // (flops_per_token(m) * m.total_batch_size)) for m in (small, large)]
    assert steps[1] == 2 and steps[0] > steps[1]
    for r in results:
        assert (r["budget"], r["budget_value"], r["budget_steps"]) == ("flops", budget, r["num_steps"])
        assert r["total_tokens"] == r["num_steps"] * TOKENS_PER_STEP


def test_the_number_of_steps_is_the_most_that_fit_in_the_budget():
    cfg = tiny_config("unused", budget="flops")
    for n in (1, 3, 7):
        cfg.budget_flops = n * STEP_FLOPS
        assert budget_steps(cfg) == n
        cfg.budget_flops = n * STEP_FLOPS - 1
        assert budget_steps(cfg) == n - 1
    tokens = tiny_config("unused", budget="tokens", budget_tokens=5 * TOKENS_PER_STEP)
    assert budget_steps(tokens) == 5
    tokens.budget_tokens -= 1
    assert budget_steps(tokens) == 4


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_schedule_progress_reaches_one_exactly_when_the_last_step_is_done(steps):
    progress = [schedule_progress(step, steps, training_seconds=123.0, time_budget_s=1.0) for step in range(steps + 1)]
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert all(a < b for a, b in zip(progress, progress[1:]))
    assert max(progress[:-1]) < 1.0  # no step trains past the end of the schedule


def test_the_trainer_steps_through_the_schedule_in_the_budget_unit(tmp_path, data_cache, monkeypatch):
    seen = []

    def recorded(step, steps, training_seconds, time_budget_s):
        seen.append((step, steps))
        return schedule_progress(step, steps, training_seconds, time_budget_s)

    monkeypatch.setattr(train_module, "schedule_progress", recorded)
    cfg = tiny_config(data_cache, budget="tokens", budget_tokens=3 * TOKENS_PER_STEP + 7, save_checkpoint=False)
    result = train(cfg, tmp_path)
    assert result["status"] == "ok" and result["num_steps"] == 3, result
    assert seen == [(0, 3), (1, 3), (2, 3)]


@pytest.mark.parametrize(
    "overrides, line",
    [
        ({"budget": "flops", "budget_flops": 1e9},
         f"invalid budget_flops=1000000000.0: smaller than one step of this configuration ({STEP_FLOPS:.2g} FLOPs); "
         "raise it or use a smaller model"),
        ({"budget": "tokens", "budget_tokens": 100},
         f"invalid budget_tokens=100: smaller than one step of this configuration ({TOKENS_PER_STEP} tokens); raise "
         "it or lower model.total_batch_size"),
        ({"budget": "joules"}, "invalid budget='joules': choose one of: time, flops, tokens, steps"),
        ({"budget": "flops"}, "invalid budget_flops=None: a budget in flops needs it; set budget_flops"),
        ({"budget": "steps"}, "invalid max_steps=None: a budget in steps needs it; set max_steps"),
        ({"budget": "flops", "budget_flops": 1e12, "max_steps": 5},
         "invalid max_steps=5: a budget in flops fixes the number of steps; leave it null, or set budget=steps"),
        ({"budget_flops": -1.0}, "invalid budget_flops=-1.0: must be > 0 FLOPs, or null unless budget=flops"),
    ],
)  # fmt: skip
def test_a_budget_that_cannot_train_is_refused_in_one_line(tmp_path, data_cache, overrides, line):
    result = train(tiny_config(data_cache, **overrides), tmp_path)
    assert (result["status"], result["error"]) == ("invalid", line)


def test_the_command_line_refuses_a_budget_too_small_for_one_step(tmp_path):
    proc = run_cli("model.train", "budget=flops", "budget_flops=1e9", f"hydra.run.dir={tmp_path}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("error: invalid budget_flops=1000000000.0: smaller than one step")


@pytest.fixture
def gpu(monkeypatch):
    """Set whether the study's machine has a GPU (`gpu(True)`), counting how often nvidia-smi is asked."""
    asked = []

    def set_gpu(present: bool) -> list:
        trial_module.study_has_gpu.cache_clear()
        monkeypatch.setattr(device, "_gpu_memory_bytes", lambda: asked.append(1) or (80 << 30 if present else None))
        return asked

    yield set_gpu
    trial_module.study_has_gpu.cache_clear()  # the next caller asks the real machine


def test_the_study_budgets_in_flops_on_a_cpu_and_in_time_on_a_gpu(gpu):
    asked = gpu(False)
    assert resolve_budget(TrialConfig(budget_flops=1e12)) == "flops"
    assert resolve_budget(TrialConfig()) == "time"  # no FLOPs budget to count
    assert resolve_budget(TrialConfig(budget="tokens")) == "tokens"
    submitit_gpus = TrialConfig(budget_flops=1e12, executor="submitit")
    submitit_gpus.submitit.gpus_per_job = 1
    assert resolve_budget(submitit_gpus) == "time"  # the trials run where the jobs do
    assert len(asked) == 1  # once per study process: every trial gets the same unit
    gpu(True)
    assert resolve_budget(TrialConfig(budget_flops=1e12)) == "time"


def test_trial_config_passes_the_budget_through_and_names_the_trial_keys(gpu):
    gpu(False)
    space = Space("s", {"DEPTH": {"type": "int", "key": "model.depth", "low": 1, "high": 4, "default": 2}})
    base = tiny_config("unused")
    cfg, _ = trial_config(base, space, space.default(), TrialConfig(budget="tokens", budget_tokens=4 * TOKENS_PER_STEP))
    assert (cfg.budget, cfg.budget_tokens, budget_steps(cfg)) == ("tokens", 4 * TOKENS_PER_STEP, 4)
    cfg, _ = trial_config(base, space, space.default(), TrialConfig(budget_steps=6))
    assert (cfg.budget, cfg.max_steps, budget_steps(cfg)) == ("time", 6, 6)
    with pytest.raises(ConfigError) as refused:
        trial_config(base, space, {"DEPTH": 4}, TrialConfig(budget_flops=1e9))
    assert str(refused.value).startswith("invalid trial.budget_flops=1000000000.0: smaller than one step")
    with pytest.raises(ConfigError, match=r"^invalid trial.budget_flops=None: a budget in flops needs it; set "
                                          r"trial.budget_flops$"):  # fmt: skip
        trial_config(base, space, space.default(), TrialConfig(budget="flops"))


def test_the_default_study_trains_24_steps_of_its_default_in_flops_and_most_of_space_tiny_takes_a_step(gpu):
    gpu(False)
    trial = TrialConfig(**OmegaConf.to_container(OmegaConf.load(REPO / "hydra_configs/config.yaml").trial))
    space_cfg = OmegaConf.load(REPO / "hydra_configs/space/tiny.yaml")
    space = Space(space_cfg.name, OmegaConf.to_container(space_cfg.params))
    cfg, _ = trial_config(tiny_config("unused"), space, space.default(), trial)
    assert cfg.budget == "flops" and budget_steps(cfg) == 24
    # The space is sized for the budget (the README's reason for its ranges): few random configurations are
    # refused for not fitting one step, and the median one takes several.
    rng, steps = np.random.default_rng(0), []
    for _ in range(500):
        try:
            steps.append(budget_steps(trial_config(tiny_config("unused"), space, space.sample(rng), trial)[0]))
        except ConfigError:
            steps.append(0)
    assert np.mean(np.array(steps) == 0) < 0.1 and np.median(steps) >= 4
