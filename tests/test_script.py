"""trainer=script: constants injected by syntax tree, the metric read from the output, every way a run ends
classified, and studies of real scripts end to end: the example, an OOM under the memory limit, a crash, a
missing metric, kill -9 and resume, and one-line refusals."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from jaxhpo import script
from jaxhpo.journal import Journal, JournalError
from tests.conftest import REPO, run_cli

SOURCE = '''"""A script."""
import math

LEARNING_RATE = 3e-4  # the step
DEPTH: int = 2**3
USE_BIAS = True
NAME = "adam"


def f():
    LEARNING_RATE = 1  # not module level
    return LEARNING_RATE
'''


def test_constants_are_set_by_syntax_tree_and_nothing_else_changes():
    out = script.inject(SOURCE, {"LEARNING_RATE": 0.01, "DEPTH": 4, "USE_BIAS": False, "NAME": "sgd"})
    assert out == (SOURCE.replace("3e-4", "0.01").replace("2**3", "4").replace("USE_BIAS = True", "USE_BIAS = False")
                   .replace('"adam"', "'sgd'"))  # fmt: skip
    assert script.inject(SOURCE, {"LEARNING_RATE": 3e-4, "NAME": "adam"}) == SOURCE  # unchanged values stay as written
    assert "    LEARNING_RATE = 1  # not module level" in out
    with pytest.raises(script.ScriptError, match="defines no constant WIDTH"):
        script.inject(SOURCE, {"WIDTH": 3})
    with pytest.raises(script.ScriptError, match="A and B share one assignment"):
        script.inject("A = B = 1\n", {"A": 2, "B": 3})


@pytest.mark.parametrize(
    "output, metric, value",
    [("step 1\nval_bpb: 1.5\nval_bpb: 1.25\n", "val_bpb", 1.25), ("val_bpb:  0.97  \n", "val_bpb", 0.97),
     ("loss=2.5e-1 acc=0.9\n", "re:loss=(\\S+)", 0.25), ("val_bpb: nan\n", "val_bpb", float("nan")),
     ("my_val_bpb: 1.0\n", "val_bpb", None), ("nothing\n", "val_bpb", None)],  # fmt: skip
)
def test_the_metric_is_read_from_the_output(output, metric, value):
    got = script.read_metric(output, metric)
    assert (got is None and value is None) or (got == value or (got != got and value != value))


@pytest.mark.parametrize(
    "returncode, output, status, says",
    [(0, "training_seconds: 2.5\nval_bpb: 1.1\n", "ok", None),
     (1, "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory\n", "oom", "RESOURCE_EXHAUSTED"),
     (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n", "oom", "CUDA out of memory"),
     (1, "MemoryError\n", "oom", "MemoryError"),
     (1, "INTERNAL: Out of memory allocating 4294967296 bytes.\n", "oom", "Out of memory allocating"),
     (-signal.SIGABRT, "terminate called after throwing an instance of 'std::bad_alloc'\n", "oom", "std::bad_alloc"),
     (-signal.SIGKILL, "step 3\n", "oom", "kernel's OOM killer"),
     (2, "Traceback\nValueError: bad\n", "crashed", "exit code 2: Traceback | ValueError: bad"),
     (-signal.SIGSEGV, "", "crashed", "killed by SIGSEGV"),
     (0, "done\n", "crashed", "no val_bpb in the output: done"),
     (0, "val_bpb: inf\n", "diverged", "val_bpb is inf")],  # fmt: skip
)
def test_every_way_a_run_ends_is_classified(returncode, output, status, says):
    got = script.classify(returncode, output, "val_bpb")
    assert got.status == status
    assert (got.error is None) if says is None else (says in got.error)
    if status == "ok":
        assert got.value == 1.1 and got.result["training_seconds"] == 2.5


TOY = ["trainer=script", f"trainer.path={REPO / 'examples/toy/train.py'}", "study.metric=val_loss",
       f"--config-dir={REPO / 'examples/toy'}", "space=toy"]  # fmt: skip


def toy_study(tmp_path, method: str, trainer: list[str], n: int) -> list:
    """A study of the toy's n trials; every one trained (a learning rate near 1 with relu diverges: an outcome)."""
    proc = run_cli("jaxhpo", f"+method={method}", *trainer, f"study.max_trials={n}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    assert len(trials) == n and {t.status for t in trials} <= {"ok", "diverged"}, [t.error for t in trials]
    return trials


def test_the_example_is_tuned_end_to_end(tmp_path):
    trials = toy_study(tmp_path, "tpe", TOY, 12)
    assert min(t.val_bpb for t in trials if t.status == "ok") < trials[0].val_bpb  # better than the default found
    copy = (tmp_path / "trials/0003/train.py").read_text()
    assert f"LEARNING_RATE = {trials[3].params['LEARNING_RATE']!r}" in copy
    assert trials[3].result["training_seconds"] > 0
    assert (REPO / "examples/toy/train.py").read_text().count("LEARNING_RATE = 0.01") == 1  # never edited


def write(tmp_path, body: str, space: dict) -> list[str]:
    (tmp_path / "train.py").write_text(body)
    (tmp_path / "space").mkdir(exist_ok=True)
    (tmp_path / "space" / "s.yaml").write_text(json.dumps({"name": "s", "params": space}))
    return ["trainer=script", f"trainer.path={tmp_path / 'train.py'}", f"--config-dir={tmp_path}", "space=s"]


FAILING = '''import sys, time
MODE = "ok"
ALLOC_MB = 1
if MODE == "crash":
    raise ValueError("a bug in the script")
blob = bytearray(ALLOC_MB * 2**20)
print("val_bpb: 1.0" if MODE != "silent" else "trained, but said nothing")
'''


def test_oom_crash_and_missing_metric_are_outcomes(tmp_path):
    args = write(tmp_path, FAILING, {
        "MODE": {"type": "categorical", "key": "script.MODE", "choices": ["ok", "crash", "silent", "big"],
                 "default": "ok"},
        "ALLOC_MB": {"type": "int", "key": "script.ALLOC_MB", "low": 1, "high": 4096, "default": 1}})  # fmt: skip
    proc = run_cli("jaxhpo", "+method=random", *args, "study.max_trials=30", "trial.memory_limit_gb=1",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "run/journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    by = {}
    for t in trials:
        by.setdefault((t.params["MODE"], t.status), t)
    assert trials[0].status == "ok" and trials[0].val_bpb == 1.0
    assert "exit code 1" in by[("crash", "crashed")].error and "a bug in the script" in by[("crash", "crashed")].error
    assert by[("silent", "crashed")].error == "no val_bpb in the output: trained, but said nothing"
    big = [t for t in trials if t.params["MODE"] != "crash" and t.params["ALLOC_MB"] > 1100]
    assert big and all(t.status == "oom" and "MemoryError" in t.error for t in big)  # past the 1 GB limit


SLOW = '''import time
X = 0.5
time.sleep(1.5)
print(f"val_bpb: {(X - 0.3) ** 2}")
'''


def test_kill_9_then_resume(tmp_path):
    args = write(tmp_path, SLOW, {"X": {"type": "float", "key": "script.X", "low": 0.0, "high": 1.0, "default": 0.5}})
    cmd = [sys.executable, "-m", "jaxhpo", "+method=random", *args, "study.max_trials=5",
           f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    study = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    journal = tmp_path / "run/journal.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with Journal(journal, readonly=True) as j:
                if len(j.trials()) >= 2 and j.pending():
                    break
        except JournalError:  # not there yet, or still an empty file while the study creates it
            pass
        time.sleep(0.2)
    study.kill()
    study.wait()
    time.sleep(1.0)
    orphans = subprocess.run(["pgrep", "-f", str(tmp_path / "run/trials")], capture_output=True, text=True).stdout
    assert not orphans.strip(), f"a trial outlived its study: {orphans}"
    proc = run_cli("jaxhpo", *cmd[3:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming:" in proc.stderr and "interrupted again" in proc.stderr
    with Journal(journal, readonly=True) as j:
        trials = j.trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4] and all(t.status == "ok" for t in trials)


@pytest.mark.parametrize(
    "extra, says",
    [(["trainer.path=/nope/train.py"], "trainer.path=/nope/train.py: no such file"),
     (["space.params.X.key=script.Y"], "train.py defines no constant Y"),
     (["space.params.X.key=model.depth"], "under trainer=script a key is script.NAME"),
     (["trainer.metric=re:loss"], "trainer.metric regex needs a group"),
     (["trainer.python=/no/python"], "trainer.python=/no/python: no such interpreter"),
     (["+method=agent_code"], "edits the built-in trainer's source"),
     (["+method=llm", "protocol=paper", "study.metric=acc"], "protocol.agent=paper sends the study's own prompts")],  # fmt: skip
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, says, in_process):
    """In this process; the first case also through the real command line, which must print the same line."""
    args = write(tmp_path, SLOW, {"X": {"type": "float", "key": "script.X", "low": 0.0, "high": 1.0, "default": 0.5}})
    method = [] if any(e.startswith("+method") for e in extra) else ["+method=random"]
    argv = [*method, *args, *extra, f"hydra.run.dir={tmp_path / 'run'}"]
    code, stderr = in_process(argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and says in lines[0], stderr[-2000:]
    if extra == ["trainer.path=/nope/train.py"]:
        proc = run_cli("jaxhpo", *argv)
        assert proc.returncode == 2 and [x for x in proc.stderr.splitlines() if x.strip()] == lines, proc.stderr
    assert not (tmp_path / "run/journal.sqlite").exists()


PYTHON = ["trainer=python", "trainer.target=examples.toy.train:fit", "study.metric=val_loss",
          f"--config-dir={REPO / 'examples/toy'}", "space=toy_python"]  # fmt: skip


def test_a_function_is_tuned_end_to_end(tmp_path):
    """trainer=python: the same toy as a function, called in each trial's subprocess with its config."""
    trials = toy_study(tmp_path, "random", PYTHON, 5)
    assert trials[0].status == "ok" and trials[0].val_bpb == pytest.approx(0.0441, abs=0.002)  # the script's default
    runner = (tmp_path / "trials/0002/train.py").read_text()
    assert f"'LEARNING_RATE': {trials[2].params['LEARNING_RATE']!r}" in runner and "'unit': 'flops'" in runner


def test_a_failing_function_is_a_crashed_trial_and_bad_targets_are_refused(tmp_path):
    (tmp_path / "mine.py").write_text("def train(config, budget):\n    raise RuntimeError('no data here')\n"
                                      "NOT_A_FUNCTION = 3\n")  # fmt: skip
    (tmp_path / "space").mkdir()
    (tmp_path / "space/s.yaml").write_text(json.dumps({"name": "s", "params": {
        "X": {"type": "float", "key": "config.X", "low": 0.0, "high": 1.0, "default": 0.5}}}))  # fmt: skip
    base = ["+method=random", "trainer=python", f"--config-dir={tmp_path}", "space=s", "study.max_trials=1"]
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_cli("jaxhpo", *base, "trainer.target=mine:train", f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "run/journal.sqlite", readonly=True) as journal:
        (trial,) = journal.trials()
    assert trial.status == "crashed" and "RuntimeError: no data here" in trial.error
    for target, says in (("nowhere:train", "trainer.target=nowhere:train: cannot import it (ModuleNotFoundError"),
                         ("mine", "give package.module:function"), ("mine:NOT_A_FUNCTION", "is not a function")):
        proc = run_cli("jaxhpo", *base, f"trainer.target={target}", f"hydra.run.dir={tmp_path / target}", env=env)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


MAXIMIZE = '''X = 0.5
print(f"accuracy: {1 - (X - 0.8) ** 2}")
'''


def test_a_metric_to_maximize(tmp_path):
    """study.direction=maximize: the proposers climb the metric (told it negated), the journal, summary and report
    keep its own values."""
    from jaxhpo.report import main as report

    args = write(tmp_path, MAXIMIZE, {"X": {"type": "float", "key": "script.X", "low": 0.0, "high": 1.0, "default": 0.5}})
    proc = run_cli("jaxhpo", "+method=tpe", *args, "study.metric=accuracy", "study.direction=maximize",
                   "study.max_trials=25", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy  0.9100" in proc.stderr  # the default's own value, X = 0.5
    with Journal(tmp_path / "run/journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    values = [t.val_bpb for t in trials]
    assert all(0 <= v <= 1 for v in values)  # as the script printed them
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["best_val_bpb"] == max(values) > 0.99 and summary["direction"] == "maximize"
    assert summary["best_trial"] == values.index(max(values))
    assert report([str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report/report.md").read_text()
    assert "These studies score accuracy (maximized)" in text and "higher is better" in text
    assert "best accuracy (mean ± std)" in text and re.search(r"\bval_bpb\b", text) is None  # headers name it
    studies_table = text[text.index("## Studies"):]
    assert f"{max(values):.4f}" in studies_table and f"{-max(values):.4f}" not in text  # its own values, not negated
