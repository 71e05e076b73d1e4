"""Grids of studies through `python -m jaxhpo -m`: Hydra's joblib and submitit launchers, and the paper configs."""

import csv
import json
import statistics

import pytest
from omegaconf import OmegaConf

from jaxhpo.journal import Journal
from tests.conftest import REPO, run_cli
from tests.test_study import SMALL_SHAPES

# Two short trials a study on the tiny model, shapes capped at the default's (cheap, and compiled once a session).
FAST = ["trial.budget=time", "trial.time_budget_s=2", "model.eval_tokens=4096", "study.max_trials=2", *SMALL_SHAPES]


def grid_args(sweep_dir, data_cache, *extra: str) -> list[str]:
    """A grid's arguments: fast trials, the session's data cache and compilation cache (see tests/test_study.py)."""
    return [
        "-m", *FAST, f"data.cache_dir={data_cache}", f"trial.compile_cache_dir={data_cache}/xla_cache",
        f"hydra.sweep.dir={sweep_dir}", *extra,
    ]  # fmt: skip


def tried_other_platforms(folder) -> bool:
    """Whether the job's study process looked for a TPU or GPU: JAX logs it unless pinned to the CPU."""
    return "Unable to initialize backend" in (folder / "__main__.log").read_text()


def journal_trials(folder):
    with Journal(folder / "journal.sqlite", readonly=True) as journal:
        return journal.trials()


@pytest.fixture(scope="module")
def joblib_grid(tmp_path_factory, data_cache):
    """The sweep folder of random,tpe × seed=0,1, run once in two joblib worker processes."""
    sweep = tmp_path_factory.mktemp("joblib-grid")
    args = grid_args(sweep, data_cache, "+method=random,tpe", "seed=0,1", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2")
    proc = run_cli("jaxhpo", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_joblib_grid_runs_one_study_per_job_in_its_own_folder(joblib_grid):
    folders = sorted(p.parent for p in joblib_grid.glob("*/*/journal.sqlite"))
    assert [f.relative_to(joblib_grid).as_posix() for f in folders] == [
        "random/seed0", "random/seed1", "tpe/seed0", "tpe/seed1"
    ]
    for folder in folders:
        method, seed = folder.parent.name, int(folder.name.removeprefix("seed"))
        trials = journal_trials(folder)
        assert [t.proposer for t in trials] == ["default", method]
        assert all(t.method == method and t.seed == seed for t in trials)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["method"] == method and summary["trials"] == 2
        assert not tried_other_platforms(folder)
    # Each seed draws its own configuration.
    random_params = [journal_trials(joblib_grid / "random" / f"seed{k}")[1].params for k in (0, 1)]
    assert random_params[0] != random_params[1]


def test_the_report_of_a_grid_has_one_row_per_method_with_a_std(joblib_grid):
    proc = run_cli("jaxhpo.report", str(joblib_grid))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(joblib_grid / "report.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["random", "tpe"]
    for method, row in rows.items():
        bests = [min(t.val_bpb for t in journal_trials(joblib_grid / method / f"seed{k}") if not t.failed)
                 for k in (0, 1)]  # fmt: skip
        # report.csv holds 6 significant digits
        assert row["studies"] == "2"
        assert float(row["best_val_bpb_mean"]) == pytest.approx(statistics.mean(bests), abs=1e-5)
        assert float(row["best_val_bpb_std"]) == pytest.approx(statistics.stdev(bests), abs=1e-5)
        assert f"| {method} " in proc.stdout  # the Markdown table on the terminal
    assert (joblib_grid / "convergence.png").stat().st_size > 1000 and (joblib_grid / "failures.png").exists()


def test_study_process_in_a_worker_leaves_the_gpu_to_trials(tmp_path, data_cache):
    # A loky worker unpickles the task function without running main(): the task function itself must pin the
    # study's JAX (CMA-ES asks through evosax) to the CPU. The environment asks for CUDA: the study process must
    # ignore it, while the trials inherit it and, without a GPU here, fail to start JAX.
    args = grid_args(tmp_path, data_cache, "+method=cmaes", "hydra/launcher=joblib")
    proc = run_cli("jaxhpo", *args, env={"JAX_PLATFORMS": "cuda"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = tmp_path / "cmaes/seed0"
    trials = journal_trials(study)
    assert [t.proposer for t in trials] == ["default", "cmaes"]
    assert all(t.status == "crashed" for t in trials)
    assert "xla_bridge" in (study / "trials/0001/train.log").read_text()


def test_submitit_local_runs_a_study_as_a_job(tmp_path, data_cache):
    # timeout_min bounds a hung job (submitit's local default is 60 min); `--multirun` is `-m` spelled out.
    args = grid_args(tmp_path, data_cache, "+method=tpe", "seed=3", "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=10")
    args[0] = "--multirun"
    proc = run_cli("jaxhpo", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = journal_trials(tmp_path / "tpe/seed3")
    assert [t.proposer for t in trials] == ["default", "tpe"] and trials[0].status == "ok"
    assert all(t.seed == 3 for t in trials)
    assert (tmp_path / "tpe/seed3/summary.json").exists()
    assert not tried_other_platforms(tmp_path / "tpe/seed3")
    # What the study prints goes to the job's log in submitit's folder, not to the command's output.
    (job_log,) = tmp_path.glob(".submitit/*/*_0_log.out")
    assert "best val_bpb" in job_log.read_text() and "best val_bpb" not in proc.stdout


def test_a_failing_job_is_one_error_line_and_the_grid_goes_on(tmp_path):
    proc = run_cli("jaxhpo", "-m", "+method=random,tpe", "study.budget_s=-5", "hydra/launcher=joblib",
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: invalid study.budget_s=-5.0: must be > 0 seconds, or null for no budget"], proc.stderr
    assert "Traceback" not in proc.stderr
    for method in ("random", "tpe"):  # both jobs ran, and each says why it stopped in its own log
        assert errors[0] in (tmp_path / method / "seed0" / "__main__.log").read_text()


@pytest.mark.parametrize("argv", [["-m", "+method=random,sgd"], ["--multirun", "+method=choice(tpe,sgd)"]])
def test_unknown_method_in_a_grid_is_refused_before_anything_runs(argv, tmp_path):
    proc = run_cli("jaxhpo", *argv, "seed=0,1", "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown method 'sgd'; choose one of: agent_code, centaur, cmaes, hybrid, llambo, llm, optuna_cmaes, "
        "optuna_tpe, random, smac, sobol, tpe"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("launcher", ["slurm_h100", "slurm_h200"])
def test_paper_configs_compose_for_slurm_without_submitting(launcher):
    proc = run_cli(
        "jaxhpo", "--config-dir", str(REPO / "launch"), "+experiment=paper", "+method=centaur",
        f"hydra/launcher={launcher}", "--cfg", "all", "--resolve",
        env={"JAXHPO_LLM_URL": "http://llm-node:8000/v1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = OmegaConf.create(proc.stdout)
    launch = cfg.hydra.launcher
    assert launch._target_.endswith("SlurmLauncher")
    assert (launch.gpus_per_node, launch.tasks_per_node, launch.nodes) == (1, 1, 1)
    assert launch.timeout_min > 24 * 60 and launch.max_num_timeout > 0
    assert (cfg.model.depth, cfg.model.seq_len, cfg.model.vocab_size) == (8, 2048, 8192)
    assert cfg.space.name == "autoresearch" and len(cfg.space.params) == 14 and cfg.data.source == "parquet"
    assert (cfg.study.budget_s, cfg.trial.time_budget_s, cfg.trial.memory_limit_gb) == (86400, 300, 76)
    assert cfg.study.max_trials >= 1000
    assert (cfg.llm.provider, cfg.llm.base_url) == ("openai", "http://llm-node:8000/v1")
