"""Parallel trials: devices per worker, `study.workers=2` for real (overlapping trials, kill -9 and resume), and
`trial.executor=submitit` running trials as real (local) submitit jobs, which a resume cancels when a killed study
left them running."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxhpo.journal import Journal, JournalError
from jaxhpo.workers import WorkerError, slot_envs
from tests.conftest import REPO, run_cli
from tests.test_study import SMALL_SHAPES, study_args


def test_each_worker_gets_one_gpu_or_a_share_of_the_cores():
    assert slot_envs(1, gpus=["0", "1"]) == [{}]  # one worker sees what the study sees
    assert slot_envs(2, gpus=["3", "5"]) == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    assert slot_envs(2, gpus=[], cpus=[0, 1, 2, 3, 4]) == [{"JAXHPO_CPUS": "0,1,2"}, {"JAXHPO_CPUS": "3,4"}]
    assert slot_envs(3, gpus=[], cpus=[6, 7]) == [{"JAXHPO_CPUS": c} for c in ("6", "7", "6")]
    with pytest.raises(WorkerError, match="study.workers=3 but only 2 GPU"):
        slot_envs(3, gpus=["0", "1"])


def pids_running(needle: str) -> list[int]:
    """Processes whose command line contains `needle`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def overlapping(trials) -> bool:
    spans = sorted((t.started_at, t.ended_at) for t in trials)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_two_workers_overlap_and_a_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path, data_cache):
    args = study_args("random", tmp_path, data_cache, "study.workers=2", "study.max_trials=4", *SMALL_SHAPES)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxhpo", *args], cwd=REPO, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    journal_path = tmp_path / "journal.sqlite"
    deadline, finished, pending = time.time() + 400, [], []
    while time.time() < deadline and not (finished and len(pending) == 2):
        time.sleep(0.5)
        with contextlib.suppress(JournalError):  # not there yet, or its schema still being created
            with Journal(journal_path, readonly=True) as journal:
                finished, pending = journal.trials(), journal.pending()
    assert finished and len(pending) == 2, "never saw a finished trial with two more running"
    time.sleep(2)  # the two trainers are running when the kill lands
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with Journal(journal_path, readonly=True) as journal:
        before, interrupted = journal.trials(), journal.pending()
    assert interrupted, "the kill should have caught trials in flight"
    # the trainers die with the study (parent-death signal): nothing trains on for a trial that will rerun
    # (one still starting up when the kill landed exits as soon as it gets that far)
    deadline = time.time() + 60
    while pids_running(str(tmp_path / "trials")) and time.time() < deadline:
        time.sleep(0.5)
    assert pids_running(str(tmp_path / "trials")) == []

    resumed = run_cli("jaxhpo", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"running the {len(interrupted)} interrupted again" in resumed.stderr
    with Journal(journal_path, readonly=True) as journal:
        after, still_pending = journal.trials(), journal.pending()
    assert [t.number for t in after] == [0, 1, 2, 3] and still_pending == []
    by_number = {t.number: t for t in after}
    assert [by_number[t.number] for t in before] == before  # finished trials kept as they were
    for p in interrupted:  # rerun under the same number, with the same configuration and proposer
        assert (by_number[p.number].params, by_number[p.number].proposer) == (p.params, p.proposer)
    assert overlapping(after), [(t.number, t.started_at, t.ended_at) for t in after]


def test_trials_run_as_submitit_jobs_and_resume_cancels_the_jobs_a_killed_study_left(tmp_path, data_cache):
    args = study_args(
        "random", tmp_path, data_cache, "study.max_trials=2", "study.workers=2", "trial.executor=submitit",
        "trial.submitit.cluster=local", *SMALL_SHAPES,
    )  # fmt: skip
    # trials long enough to be still training when the resumed study starts, also on a loaded machine (15 s was not)
    args = [a for a in args if not a.startswith("trial.time_budget_s=")] + ["trial.time_budget_s=40"]
    proc = subprocess.Popen([sys.executable, "-m", "jaxhpo", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    job_files = [tmp_path / f"trials/{n:04d}/submitit_job.json" for n in (0, 1)]
    deadline = time.time() + 300
    trainers = str(tmp_path / "trials")
    # each trial's own processes, not two of one trial's (its job and its trainer) while the other's job starts
    while time.time() < deadline and not (all(f.exists() for f in job_files)
                                          and all(pids_running(f"{trainers}/{n:04d}") for n in (0, 1))):  # fmt: skip
        time.sleep(0.5)
    assert all(f.exists() for f in job_files), "never saw both trials submitted"
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)  # the study alone, as when its login session dies: its jobs live on
    proc.wait()
    controllers = pids_running(f"{tmp_path}/submitit")
    assert controllers, "the jobs should outlive the study"

    resumed = run_cli("jaxhpo", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("left running for") == 2, resumed.stderr[-3000:]
    assert not set(controllers) & set(pids_running(f"{tmp_path}/submitit"))  # the old jobs are gone
    assert pids_running(trainers) == []  # and their trainers with them
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials, pending = journal.trials(), journal.pending()
    assert [t.number for t in trials] == [0, 1] and pending == []
    assert trials[0].status == "ok" and trials[0].val_bpb < 4
    assert overlapping(trials)
    assert len(list((tmp_path / "submitit").glob("*_result.pkl"))) >= 2  # each rerun's job pickled its outcome
    assert (tmp_path / "trials/0000/result.json").exists() and not any(f.exists() for f in job_files)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trial.executor=slurm", "invalid trial.executor='slurm'"), ("study.workers=0", "study.workers=0"),
        ("trial.executor=submitit trial.submitit.cluster=pbs", "invalid trial.submitit.cluster='pbs'"),
    ],
)
def test_bad_worker_settings_get_one_line(override, needle, tmp_path, in_process):
    code, stderr = in_process(["+method=random", *override.split(), f"hydra.run.dir={tmp_path}"])
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and needle in errors[0], stderr
    assert not (tmp_path / "journal.sqlite").exists()
