"""Studies end to end through `python -m jaxhpo`: real trials in subprocesses, a real journal (kill -9 and resume:
tests/faults/test_study_faults.py)."""

import json

import pytest

from jaxhpo.journal import STATUSES, Journal
from jaxhpo.space import Space
from tests.conftest import REPO, run_cli

# Short trials on the tiny model; trial overhead (process start, compile, eval) dominates anyway.
FAST = ["trial.budget=time", "trial.time_budget_s=2", "model.eval_tokens=4096"]
# The tiny space with its shapes capped at the default's: every trial is as cheap as trial 0, for tests about
# scheduling and bookkeeping rather than about what the proposer finds.
SMALL_SHAPES = [
    f"space.params.{name}.high={value}"
    for name, value in [("DEPTH", 2), ("ASPECT_RATIO", 64), ("HEAD_DIM", 64), ("DEVICE_BATCH_SIZE", 16),
                        ("TOTAL_BATCH_SIZE", 4096)]
]  # fmt: skip


def study_args(method: str, run_dir, data_cache, *extra: str) -> list[str]:
    """A study's arguments: fast trials, the session's data cache, and one compilation cache for every study of
    the session (a trial whose shapes some earlier test compiled does not compile again)."""
    return [
        f"+method={method}", *FAST, f"data.cache_dir={data_cache}", f"trial.compile_cache_dir={data_cache}/xla_cache",
        f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip


def tiny_space() -> Space:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "hydra_configs/space/tiny.yaml")
    return Space(cfg.name, OmegaConf.to_container(cfg.params))


def test_study_journals_every_trial_with_provenance(tmp_path, data_cache):
    # One method: what a study journals does not depend on it (each method's own side: tests/test_proposers.py).
    method = "cmaes"
    proc = run_cli("jaxhpo", *study_args(method, tmp_path, data_cache, "study.max_trials=3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    space = tiny_space()
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[0].params == space.default() and trials[0].proposer == "default"
    assert all(t.proposer == method for t in trials[1:])
    for t in trials:
        assert t.method == method and t.space_id == space.space_id and t.status in STATUSES
        space.check(t.params)
        assert (t.val_bpb is not None) == (t.status == "ok")
    assert trials[0].status == "ok"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trials"] == 3 and summary["method"] == method
    assert summary["best_val_bpb"] == min(t.val_bpb for t in trials if t.status == "ok")
    assert (tmp_path / "convergence.png").stat().st_size > 1000
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 4


def test_out_of_memory_trials_are_recorded_and_the_study_goes_on(tmp_path, data_cache):
    # Widths up to 2048 under a 3 GB address-space limit: random draws that cannot fit really OOM.
    wide = [
        "space.params.ASPECT_RATIO.high=2048", "space.params.DEPTH.high=12", "trial.memory_limit_gb=3",
        "study.max_trials=4", "seed=1",
    ]
    proc = run_cli("jaxhpo", *study_args("random", tmp_path, data_cache, *wide))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    assert len(trials) == 4 and trials[0].status == "ok"
    ooms = [t for t in trials if t.status == "oom"]
    assert ooms, [(t.status, t.error) for t in trials]
    # refused by the memory pre-flight after compiling, or XLA's own allocation failure
    assert all(t.result.get("predicted") or "RESOURCE_EXHAUSTED" in t.error for t in ooms), [t.error for t in ooms]
    summary = json.loads((tmp_path / "summary.json").read_text())
    predicted = sum(bool(t.result.get("predicted")) for t in ooms)
    assert (summary["oom_percent"], summary["oom_predicted_percent"]) == (25.0 * len(ooms), 25.0 * predicted)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["+method=sgd"], "unknown method 'sgd'"),
        (["+method=tpe", "model=huge"], "unknown model 'huge'; choose one of: gpt50m, small, tiny"),
        # Hydra's own errors, in one line too
        (["+method=tpe", "study.foo=1"], "Could not override 'study.foo'. To append to your config use +study.foo=1 "
                                         "(Key 'foo' not in 'StudySettings')"),
        (["+method=tpe", "study.max_trials=abc"], "study.max_trials=abc (Value 'abc' of type 'str' could not be"),
        ([], "choose a method with +method=NAME"),
        (["+method=tpe", "space.params.DEPTH.low=30"], "low=30"),
        (["+method=tpe", "study.budget_s=-5"], "study.budget_s"),
        (["+method=tpe", "space=unknown_key"], "FOO sets unknown trainer key 'model.foo'"),
    ],
)
def test_bad_input_gets_one_clear_line(args, needle, tmp_path, in_process):
    """In this process; Hydra's own error also through the real command line, which must print the same line."""
    # A user's own space file, found through --config-dir, naming a parameter the trainer does not have.
    (tmp_path / "conf/space").mkdir(parents=True)
    (tmp_path / "conf/space/unknown_key.yaml").write_text(
        "defaults: [space_schema, _self_]\nname: unknown_key\nparams:\n"
        "  DEPTH: {type: int, key: model.depth, low: 1, high: 4, default: 2}\n"
        "  FOO: {type: float, key: model.foo, low: 0.0, high: 1.0, default: 0.5}\n"
    )
    argv = [*args, f"hydra.run.dir={tmp_path}", f"--config-dir={tmp_path / 'conf'}"]
    code, stderr = in_process(argv)
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error:") and needle in errors[0], stderr
    if "study.foo=1" in args:
        proc = run_cli("jaxhpo", *argv)
        assert proc.returncode == 2 and [x for x in proc.stderr.splitlines() if x.strip()] == errors, proc.stderr
    assert not (tmp_path / "journal.sqlite").exists()


def test_resuming_with_another_method_is_refused(tmp_path, data_cache):
    first = run_cli("jaxhpo", *study_args("random", tmp_path, data_cache, "study.max_trials=1"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("jaxhpo", *study_args("tpe", tmp_path, data_cache, "study.max_trials=2"))
    assert second.returncode == 2 and "method='random'" in second.stderr
    # a grid over the model whose jobs share a folder must not mix their trials
    other_model = study_args("random", tmp_path, data_cache, "study.max_trials=2", "model.eval_tokens=8192")
    third = run_cli("jaxhpo", *other_model)
    assert third.returncode == 2 and "model.eval_tokens=4096, not 8192" in third.stderr, third.stderr[-2000:]
    # a journal written before optim.muon existed ran optax's Muon: today's default would mix the two
    with Journal(tmp_path / "journal.sqlite") as journal:
        trainer = journal.study_info()["trainer"]
        del trainer["optim.muon"]
        journal.set_study_info({"trainer": trainer})
    fourth = run_cli("jaxhpo", *study_args("random", tmp_path, data_cache, "study.max_trials=1"))
    assert fourth.returncode == 2 and "optim.muon='optax', not 'autoresearch'" in fourth.stderr, fourth.stderr[-2000:]
    fifth = run_cli("jaxhpo", *study_args("random", tmp_path, data_cache, "study.max_trials=1", "optim.muon=optax"))
    assert fifth.returncode == 0, fifth.stderr[-2000:]


def test_batch_constraint_is_repaired_before_the_trial_starts():
    from jaxhpo.trial import TrialConfig, trial_config
    from model.config import ModelConfig, TrainConfig

    space = tiny_space()
    params = {**space.default(), "DEVICE_BATCH_SIZE": 64, "TOTAL_BATCH_SIZE": 1024}  # 1024 < 64 × 256 tokens
    cfg, notes = trial_config(TrainConfig(model=ModelConfig(seq_len=256)), space, params, TrialConfig())
    assert cfg.model.total_batch_size == 64 * 256 and cfg.model.device_batch_size == 64
    assert notes == ["total_batch_size 1024 -> 16384 (device_batch_size × seq_len = 16384)"]
    untouched, none = trial_config(TrainConfig(model=ModelConfig(seq_len=256)), space, space.default(), TrialConfig())
    assert none == [] and untouched.model.total_batch_size == 4096


def test_a_study_scores_another_key_of_the_trainers_result(tmp_path, data_cache):
    """study.metric names a key of the built-in trainer's result; one it lacks makes a crashed trial that says so."""
    proc = run_cli("jaxhpo", *study_args("random", tmp_path / "a", data_cache, "study.max_trials=2",
                                         "study.metric=final_train_loss"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "a/journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    ok = [t for t in trials if t.status == "ok"]
    assert ok[0].number == 0 and [t.val_bpb for t in ok] == [t.result["final_train_loss"] for t in ok]
    assert any(line.startswith("trial   0") and " final_train_loss " in line for line in proc.stderr.splitlines())
    proc = run_cli("jaxhpo", *study_args("random", tmp_path / "b", data_cache, "study.max_trials=1",
                                         "study.metric=nonsense"))  # fmt: skip
    with Journal(tmp_path / "b/journal.sqlite", readonly=True) as journal:
        (trial,) = journal.trials()
    assert trial.status == "crashed" and trial.error == "the trainer's result has no number nonsense"
