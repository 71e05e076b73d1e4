"""trainer=surrogate: models fitted on the committed table of real trials answer a study's trials; the fit is
scored by `python -m jaxhpo.surrogate fit`; bad data or a study the data does not cover is one line, exit 2."""

import csv
import json
import shutil

import numpy as np
import pytest

from jaxhpo.journal import Journal
from jaxhpo.surrogate.curves import LearningCurves, cross_validate_curves
from jaxhpo.surrogate.data import REPO, base_configs, load_table
from jaxhpo.surrogate.model import Surrogate, features, fitted, measured_noise
from jaxhpo.trial import trial_config
from tests.conftest import run_cli

TABLE = REPO / "benchmarks/data/surrogate_tiny.csv"
CURVES = REPO / "benchmarks/data/surrogate_tiny_curves.csv"


def surrogate_study(run_dir, *extra):
    return run_cli("jaxhpo", "+method=tpe", "trainer=surrogate", "study.budget_s=null", f"hydra.run.dir={run_dir}",
                   *extra)  # fmt: skip


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_a_surrogate_study_is_a_study_and_answers_the_same_configuration_and_seed_the_same(tmp_path):
    proc = surrogate_study(tmp_path / "a", "study.max_trials=30", "surrogate.noise_std=0.05")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "a/journal.sqlite", readonly=True) as journal:
        trials, info = journal.trials(), journal.study_info()
    assert len(trials) == 30 and info["trainer"]["trainer.name"] == "surrogate"
    assert all(t.wall_seconds > 0 for t in trials)  # charged with the predicted cost, not the milliseconds it took
    assert all((t.val_bpb is not None) == (t.status == "ok") for t in trials)
    ok = [t.val_bpb for t in trials if t.status == "ok"]
    assert len(set(ok)) > 10 and all(0 < v < 20 for v in ok)
    assert json.loads((tmp_path / "a/summary.json").read_text())["trials"] == 30
    proc = surrogate_study(tmp_path / "b", "study.max_trials=30", "surrogate.noise_std=0.05")
    with Journal(tmp_path / "b/journal.sqlite", readonly=True) as journal:
        again = journal.trials()
    assert [(t.params, t.val_bpb) for t in again] == [(t.params, t.val_bpb) for t in trials]
    # the noise is drawn per seed: another seed's default configuration scores differently
    proc = surrogate_study(tmp_path / "c", "study.max_trials=1", "surrogate.noise_std=0.05", "seed=1")
    with Journal(tmp_path / "c/journal.sqlite", readonly=True) as journal:
        assert journal.trials()[0].val_bpb != trials[0].val_bpb
    # resuming under other surrogate settings, or other method options, would mix incomparable trials
    proc = surrogate_study(tmp_path / "a", "study.max_trials=31", "surrogate.noise_std=0.1")
    assert proc.returncode == 2 and "surrogate.noise_std=0.05, not 0.1" in proc.stderr, proc.stderr[-2000:]
    proc = surrogate_study(tmp_path / "a", "study.max_trials=31", "surrogate.noise_std=0.05", "method.options.gamma=0.2")
    assert proc.returncode == 2 and "method.options.gamma=0.1, not 0.2" in proc.stderr, proc.stderr[-2000:]
    # a journal written before an option existed ran as the proposer did without it (tpe: no failure model)
    with Journal(tmp_path / "a/journal.sqlite") as journal:
        options = journal.study_info()["method_options"]
        journal.set_study_info({"method_options": {k: v for k, v in options.items() if k != "avoid_failures"}})
    proc = surrogate_study(tmp_path / "a", "study.max_trials=31", "surrogate.noise_std=0.05")
    assert proc.returncode == 2 and "method.options.avoid_failures=False, not True" in proc.stderr, proc.stderr[-2000:]
    proc = surrogate_study(tmp_path / "a", "study.max_trials=31", "surrogate.noise_std=0.05",
                           "method.options.avoid_failures=false")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # one that recorded the option's value before null (the protocol's) became the default resumes under null
    with Journal(tmp_path / "a/journal.sqlite") as journal:
        journal.set_study_info({"method_options": {**options, "avoid_failures": True}})
    proc = surrogate_study(tmp_path / "a", "study.max_trials=32", "surrogate.noise_std=0.05")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_fitted_models_reproduce_the_data_they_were_fitted_on():
    obs = load_table(TABLE)
    surrogate = Surrogate(obs, noise_std=0.0)
    x, rows = features(obs)
    ok = [i for i, r in enumerate(rows) if r["status"] == "ok"]
    base, trial = base_configs(obs.trainer)
    predicted = [surrogate.predict(trial_config(base, obs.space, rows[i]["params"], trial)[0]) for i in ok[:40]]
    real = [rows[i]["val_bpb"] for i in ok[:40]]
    assert np.corrcoef([p["val_bpb"] for p in predicted if p["val_bpb"] is not None],
                       [r for r, p in zip(real, predicted) if p["val_bpb"] is not None])[0, 1] > 0.8  # fmt: skip
    assert sum(p["status"] == "ok" for p in predicted) >= 0.9 * len(predicted)


def test_a_fit_is_cached_by_data_and_models_and_fitted_again_when_its_file_is_damaged(tmp_path):
    obs = load_table(TABLE)
    base, trial = base_configs(obs.trainer)
    cfg, _ = trial_config(base, obs.space, obs.space.default(), trial)
    first = fitted(obs, "extra_trees", "extra_trees", 0.0, tmp_path)
    [cached] = list((tmp_path / "surrogate").glob("*.pkl"))
    again = fitted(obs, "extra_trees", "extra_trees", 0.0, tmp_path)
    assert again is not first and again.predict(cfg) == first.predict(cfg)
    assert fitted(obs, "extra_trees", "extra_trees", 0.3, tmp_path).noise_std == 0.3  # the noise is not the fit's
    fitted(obs, "random_forest", "extra_trees", 0.0, tmp_path)
    assert len(list((tmp_path / "surrogate").glob("*.pkl"))) == 2  # other models: another entry
    cached.write_bytes(b"damaged")
    assert fitted(obs, "extra_trees", "extra_trees", 0.0, tmp_path).predict(cfg) == first.predict(cfg)
    assert cached.read_bytes() != b"damaged"


def test_measured_noise_pools_the_spread_of_repeated_configurations():
    x = np.array([[0.1], [0.1], [0.1], [0.5], [0.5], [0.9]])
    rows = [{"status": "ok", "seed": s, "val_bpb": v} for s, v in [(0, 1.0), (1, 1.2), (2, 1.4), (0, 2.0), (1, 2.2),
                                                                   (0, 3.0)]]  # fmt: skip
    std, groups = measured_noise(x, rows)
    assert groups == 2 and std == pytest.approx(np.sqrt((2 * 0.04 + 1 * 0.02) / 3))
    assert measured_noise(x[:1], rows[:1]) == (0.0, 0)


def test_fit_scores_every_candidate_on_held_out_trials(tmp_path):
    # on the table's first 120 trials: the whole table's 20 Gaussian-process fits take minutes
    proc = run_cli("jaxhpo.surrogate", "fit", "--table", str(_copy_table(tmp_path, rows=120)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("extra_trees", "random_forest", "lightgbm", "gp", "Spearman", "OOM boundary", "OOMs found", "(commonest)", "seed-to-seed noise"):
        assert name in proc.stdout
    assert "best: surrogate.regressor=" in proc.stdout


def _copy_table(tmp_path, rows=None, sidecar=True):
    table = tmp_path / "t.csv"
    shutil.copy(TABLE, table)
    if sidecar:
        shutil.copy(TABLE.with_suffix(".json"), table.with_suffix(".json"))
    if rows is not None:
        with open(TABLE, newline="") as f:
            reader = csv.DictReader(f)
            kept = [r for r in reader][:rows]
        with open(table, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(kept)
    return table


@pytest.mark.parametrize("case", ["missing", "corrupt", "no_sidecar", "few_successes", "space", "model", "budget",
                                  "journal_without_successes", "no_curves", "rung_outside_curves"])  # fmt: skip
def test_bad_surrogate_input_is_one_line_and_exit_2(case, tmp_path, in_process):
    """In this process (the command line's own exit and output: the "missing" case, also as a subprocess)."""
    args = {
        "missing": lambda: [f"surrogate.table={tmp_path / 'none.csv'}"],
        "no_sidecar": lambda: [f"surrogate.table={_copy_table(tmp_path, sidecar=False)}"],
        "few_successes": lambda: [f"surrogate.table={_copy_table(tmp_path, rows=5)}"],
        "space": lambda: ["space.params.DEPTH.high=8"],
        "model": lambda: ["model.seq_len=512"],
        "budget": lambda: ["trial.budget=hours"],
        "no_curves": lambda: ["study.pruner=asha", f"surrogate.curves={TABLE}"],  # a table of final values only
        "rung_outside_curves": lambda: ["study.pruner=median", "study.pruner_rungs=[0.01,0.5]"],
    }.get(case, list)()
    if case == "corrupt":
        table = _copy_table(tmp_path)
        table.write_text(table.read_text()[:40] + "\n\x00garbage,1,2\n" + "x" * 50)
        args = [f"surrogate.table={table}"]
    if case == "journal_without_successes":
        with Journal(tmp_path / "j.sqlite") as journal:
            journal.set_study_info({"space": load_table(TABLE).space.definition(), "trainer": {}})
        args = [f"surrogate.journals=[{tmp_path / 'j.sqlite'}]"]
    expected = {"missing": "not found", "corrupt": "is corrupt", "no_sidecar": "has no sidecar",
                "few_successes": "successful trials", "space": "outside what", "model": "model.seq_len=256, not 512",
                "budget": "trial.budget", "journal_without_successes": "0 successful trials",
                "no_curves": "0 learning curves", "rung_outside_curves": "rung 0.01 is outside the fractions"}[case]  # fmt: skip
    code, stderr = in_process(["+method=tpe", "trainer=surrogate", "study.budget_s=null",
                               f"hydra.run.dir={tmp_path / 'run'}", "study.max_trials=2", *args])  # fmt: skip
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and expected in lines[0], stderr[-2000:]
    if case == "missing":
        proc = surrogate_study(tmp_path / "run", "study.max_trials=2", *args)
        assert proc.returncode == 2 and error_lines(proc) == lines, proc.stderr[-2000:]
    assert not (tmp_path / "run/journal.sqlite").exists()


def test_a_surrogate_study_answers_in_process_whatever_the_executor(tmp_path):
    proc = surrogate_study(tmp_path, "study.max_trials=3", "trial.executor=submitit", "trial.submitit.cluster=local")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        assert len(journal.trials()) == 3
    assert not (tmp_path / "submitit").exists()


def test_a_cmaes_study_keeps_its_own_programs_in_the_shared_compilation_cache(tmp_path):
    """The study process's evosax programs go to trial.compile_cache_dir (a surrogate's trials compile nothing)."""
    cache = tmp_path / "xla_cache"
    proc = run_cli("jaxhpo", "+method=cmaes", "trainer=surrogate", "study.budget_s=null", "study.max_trials=3",
                   f"trial.compile_cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(cache.iterdir())) >= 2  # CMA-ES's init and its ask/tell, at least


def test_learning_curves_fall_toward_the_final_value_as_the_budget_is_spent():
    """Fitted on the committed curves: the default configuration's held-out bpb early in its budget is well above
    its value late, which ends near the final val_bpb."""
    curves = LearningCurves(load_table(CURVES))
    assert curves.curves >= 10
    base, trial = base_configs(curves.obs.trainer)
    cfg, _ = trial_config(base, curves.obs.space, curves.obs.space.default(), trial)
    early, late = curves.values(cfg, [0.0556, 0.9], final=2.0)
    assert early > late + 0.3 and abs(late - 2.0) < 0.5, (early, late)
    assert curves.values(cfg, [0.0556, 0.9], final=2.0) == [early, late]  # the same trial reports the same curve
    # held out, the surrogate's early rungs order trials about as loosely as the real ones did
    rows = cross_validate_curves(curves.obs)
    assert [r["fraction"] for r in rows] == sorted(r["fraction"] for r in rows) and len(rows) >= 5
    assert all(abs(r["spearman_drawn"] - r["spearman_real"]) < 0.3 and r["mae"] < 0.5 for r in rows), rows
    proc = run_cli("jaxhpo.surrogate", "curves")
    assert proc.returncode == 0 and "ρ drawn" in proc.stdout, proc.stderr[-2000:]


def test_a_pruned_surrogate_study_stops_trials_at_rungs_and_charges_only_what_they_ran(tmp_path):
    """The same random study (same configurations) with and without asha: a pruned trial is charged less than its
    full run, an ok one scores exactly what it scores unpruned; the rung values are the curve's, and a rerun is
    pruned alike."""
    runs = {}
    for name, pruner in (("none", "none"), ("asha", "asha"), ("again", "asha")):
        proc = run_cli("jaxhpo", "+method=random", "trainer=surrogate", "study.budget_s=null", "study.max_trials=30",
                       f"study.pruner={pruner}", f"hydra.run.dir={tmp_path / name}")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        with Journal(tmp_path / name / "journal.sqlite", readonly=True) as journal:
            runs[name] = journal.trials()
    plain, pruned = runs["none"], runs["asha"]
    assert [t.params for t in plain] == [t.params for t in pruned]
    stopped = [(a, b) for a, b in zip(plain, pruned) if b.status == "pruned"]
    assert 3 <= len(stopped) <= 25
    for a, b in stopped:
        assert a.status == "ok" and b.wall_seconds < a.wall_seconds
        assert b.result["pruned"]["fraction"] in (1 / 9, 1 / 3) and "held-out bpb" in b.error
    finished = [(a, b) for a, b in zip(plain, pruned) if b.status == "ok"]
    assert finished and all(a.val_bpb == b.val_bpb and len(b.result["rungs"]) == 2 for a, b in finished)
    assert sum(t.wall_seconds for t in pruned) < sum(t.wall_seconds for t in plain)
    assert [(t.status, t.wall_seconds) for t in runs["again"]] == [(t.status, t.wall_seconds) for t in pruned]
