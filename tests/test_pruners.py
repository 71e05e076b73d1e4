"""Pruning (jaxhpo.pruners): the rules on known values, the rung reports of a real training, and a real study whose
trials are stopped, journaled as `pruned`, and decided again the same way after a resume."""

import json

import pytest

from jaxhpo.journal import Journal, TrialRecord
from jaxhpo.pruners import Pruner, asha_rungs
from model.progress import RUNGS_FILE
from tests.conftest import run_cli
from tests.test_study import SMALL_SHAPES, study_args, tiny_space


def finished(number: int, status: str, values: list[float]) -> TrialRecord:
    rungs = [{"rung": i, "fraction": 0.5, "step": 1, "value": v} for i, v in enumerate(values)]
    return TrialRecord(number, {}, "s", "random", "random", status, 1.0 if status == "ok" else None,
                       None if status == "ok" else "x", 1.0, None, None, 0.0, 1.0, 0, {}, {"rungs": rungs})  # fmt: skip


def test_median_waits_for_min_trials_then_stops_what_is_worse_than_the_median():
    pruner = Pruner("median", min_trials=3)
    assert pruner.rungs == (0.25, 0.5, 0.75)
    for n, v in enumerate([2.0, 3.0]):
        pruner.tell(finished(n, "ok", [v]))
    assert pruner.report(9, 0, 99.0) is None  # two finished trials: too few to judge
    pruner.tell(finished(2, "ok", [4.0]))
    pruner.tell(finished(3, "pruned", [0.5]))  # only trials that finished ok make the median
    assert pruner.report(10, 0, 2.9) is None
    why = pruner.report(11, 0, 3.1)
    assert why == "worse than the median 3.0000 of 3 finished trials there"
    assert pruner.report(12, 1, 99.0) is None  # nothing finished has reported at rung 1


def test_asha_keeps_the_best_1_over_eta_of_everything_that_reached_the_rung():
    pruner = Pruner("asha", min_trials=2, eta=2)
    assert pruner.rungs == asha_rungs(2) == (0.25, 0.5)
    assert pruner.report(0, 0, 2.0) is None  # alone at the rung
    assert pruner.report(1, 0, 2.5) == "not among the best 1 of the 2 trials that reached it"
    assert pruner.report(2, 0, 1.5) is None  # the best of 3
    assert pruner.report(3, 0, 1.9) is None  # best 2 of 4: 1.5, 1.9
    assert pruner.report(4, 0, 2.1) is not None  # best 2 of 5: 1.5, 1.9
    assert Pruner("none").rungs == () and not Pruner("none").active
    assert Pruner("median", rungs=[0.1]).rungs == (0.1,)


def test_watch_reads_whole_lines_only(tmp_path):
    pruner = Pruner("asha", rungs=[0.2, 0.4], min_trials=2, eta=2)
    pruner.tell(finished(0, "ok", [1.0, 0.9]))
    check = pruner.watch(1, tmp_path)
    assert check() is None  # no file yet
    line = {"rung": 0, "fraction": 0.2, "step": 2, "value": 0.8, "train_loss": 5.0, "training_seconds": 1.0}
    (tmp_path / RUNGS_FILE).write_text(json.dumps(line) + "\n" + '{"rung": 1, "fra')  # the next line half-written
    assert check() is None  # 0.8 beats 1.0
    worse = {**line, "rung": 1, "fraction": 0.4, "step": 4, "value": 0.95}
    (tmp_path / RUNGS_FILE).write_text(json.dumps(line) + "\n" + json.dumps(worse) + "\n")
    report = check()
    assert report["rung"] == 1 and report["rungs"] == [line, worse]
    assert report["reason"].startswith("pruned at rung 1 (40% of the budget, step 4): held-out bpb 0.9500")


def test_a_real_training_reports_at_its_rungs(tmp_path, data_cache):
    from model.train import train
    from tests.test_train import tiny_config

    result = train(tiny_config(data_cache, max_steps=8, time_budget_s=600.0, rungs=[0.25, 0.5]), tmp_path)
    assert result["status"] == "ok", result
    lines = [json.loads(x) for x in (tmp_path / RUNGS_FILE).read_text().splitlines()]
    assert [(r["rung"], r["fraction"], r["step"]) for r in lines] == [(0, 0.25, 2), (1, 0.5, 4)]
    assert result["rungs"] == lines and result["num_steps"] == 8
    # A quarter of the evaluation set after 2 and 4 steps: a finite bpb, which falls as the model learns
    assert all(0 < r["value"] < 20 for r in lines) and lines[1]["value"] < lines[0]["value"]


LRS = ("defaults:\n  - space_schema\n  - _self_\n\nname: lrs\nparams:\n"
       "  MATRIX_LR: {type: float, key: optim.matrix_lr, low: 0.0005, high: 0.5, log: true, default: 0.04}\n"
       "  EMBEDDING_LR: {type: float, key: optim.embedding_lr, low: 0.005, high: 5.0, log: true, default: 0.6}\n")


def test_a_study_prunes_hopeless_trials_and_decides_alike_after_a_resume(tmp_path, data_cache):
    # Learning rates only (one shape: compiled once), 16 steps a trial, one rung at step 4: the trial trains on
    # for 12 more steps, so the study sees every report while the trial runs.
    (tmp_path / "conf/space").mkdir(parents=True)
    (tmp_path / "conf/space/lrs.yaml").write_text(LRS)
    run_dir = tmp_path / "run"
    args = [f"--config-dir={tmp_path}/conf", "space=lrs", *study_args("random", run_dir, data_cache),
            "trial.budget=steps", "trial.budget_steps=16", "study.pruner=asha", "study.pruner_eta=2",
            "study.pruner_min_trials=2", "study.pruner_rungs=[0.25]"]  # fmt: skip
    first = run_cli("jaxhpo", *args, "study.max_trials=4")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("jaxhpo", *args, "study.max_trials=6")  # the pruner's rung values come back from the journal
    assert second.returncode == 0 and "resuming: 4 finished trials" in second.stderr, second.stderr[-3000:]
    with Journal(run_dir / "journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    assert [t.status for t in trials if t.status not in ("ok", "pruned")] == []
    # Every decision is the rule's on the values in the journal, replayed in the order the trials ran.
    replay = Pruner("asha", [0.25], min_trials=2, eta=2)
    for t in trials:
        [report] = t.result["rungs"]
        assert report["step"] == 4
        assert (replay.report(t.number, 0, report["value"]) is not None) == (t.status == "pruned"), t.number
        replay.tell(t)
    pruned = [t for t in trials if t.status == "pruned"]
    assert pruned, [(t.params, t.result["rungs"]) for t in trials]
    for t in pruned:
        assert t.error.startswith("pruned at rung 0 (25% of the budget, step 4): held-out bpb"), t.error
        assert t.result["pruned"]["value"] == t.result["rungs"][0]["value"] and t.training_seconds > 0
        assert not (run_dir / f"trials/{t.number:04d}/result.json").exists()  # killed before it finished
    assert "pruned" in second.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status_counts"]["pruned"] == len(pruned)
    # The same folder under another pruner would mix trials judged by two rules.
    third = run_cli("jaxhpo", *args, "study.pruner=median", "study.max_trials=7")
    assert third.returncode != 0 and "study.pruner='asha', not 'median'" in third.stderr, third.stderr[-2000:]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["study.pruner=hyperband"], "invalid study.pruner='hyperband': choose one of: none, median, asha"),
        (["study.pruner=asha", "study.pruner_eta=1"], "invalid study.pruner_eta=1: must be at least 2"),
        (["study.pruner=median", "study.pruner_rungs=[0.5,0.25]"], "invalid study.pruner_rungs=[0.5, 0.25]"),
        (["study.pruner=median", "study.pruner_min_trials=0"], "invalid study.pruner_min_trials=0"),
        (["study.pruner=asha", "protocol=paper"], "study.pruner=asha: protocol=paper runs every trial to its end"),
        (["study.pruner=median", "trainer=script"], "study.pruner=median: trainer=script reports no rungs"),
        (["study.pruner=median", "study.metric=final_train_loss"], "prunes studies of val_bpb, not final_train_loss"),
    ],
)
def test_bad_pruner_settings_get_one_line(args, needle, tmp_path, in_process):
    code, stderr = in_process(["+method=random", f"hydra.run.dir={tmp_path}", *args])
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and needle in errors[0], stderr
