"""Where a study's trials run: `study.workers` slots, each with a device of its own, executing trials locally or
as submitit jobs, while the study process only asks, tells and journals.

Devices. With one worker a trial sees what the study sees. With N > 1, worker k gets the k-th visible GPU
(`CUDA_VISIBLE_DEVICES`, so its trainer sees exactly one device) or, without GPUs, the k-th of N equal shares of
the study's CPU cores (`jaxhpo.trial` pins its trainer to them before JAX starts, and XLA sizes its thread pools
by them). Asking for more workers than GPUs is refused: two trainers on one GPU would each claim its memory
fraction and fail each other with OOMs no single trial causes.

Executors (`trial.executor`). `local` runs `jaxhpo.trial.run_trial` in a worker thread: a subprocess under the
trial's memory limit and timeout, forked from the pool's fork server (`jaxhpo.forkserver`, trial.fork_server),
which has imported the trainer once for all of them. `submitit` submits the same `run_trial` as a submitit job -- a SLURM job on a
cluster (`trial.submitit.cluster=slurm`, one GPU per job with `gpus_per_job=1`), or a local submitit process
(`cluster=local`, what the tests use) -- and waits for its outcome; inside the job the trainer is still a
subprocess, so an OOM or a crash is classified exactly as locally. A job that dies without an outcome (preempted,
cancelled, out of the job's own memory) is a `crashed` trial with submitit's reason.

A trial's wall time is measured where it runs, from its process start to its end: queueing for a SLURM node is
not charged to the study's budget.

A submitit job outlives a study killed with kill -9 (a SLURM job does not know its submitter died), and would go
on training beside the rerun of its trial, in the same folder. So each job is recorded in its trial's folder while
it runs (`submitit_job.json`), and `WorkerPool.cancel_stale` cancels a recorded job before its trial runs again.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping

import numpy as np

from jaxhpo.forkserver import ForkServer
from jaxhpo.trial import CPUS_ENV, Outcome, SubmititConfig, TrialCancelled, TrialConfig, run_trial
from model.config import TrainConfig

EXECUTORS = ("local", "submitit")
JOB_FILE = "submitit_job.json"  # in a trial's folder while its submitit job runs


class WorkerError(ValueError):
    """Workers that cannot be set up as configured; the message is one line."""


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES if set, else those `nvidia-smi -L` lists."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() not in ("", "-1")]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def slot_envs(workers: int, gpus: list[str] | None = None, cpus: list[int] | None = None) -> list[dict[str, str]]:
    """The environment each of `workers` slots adds to its trainer: one GPU each, or an equal share of the CPU
    cores (cores are shared round-robin when there are more workers than cores)."""
    if workers == 1:
        return [{}]
    gpus = visible_gpus() if gpus is None else gpus
    if gpus:
        if workers > len(gpus):
            raise WorkerError(
                f"study.workers={workers} but only {len(gpus)} GPU(s) are visible: one trial per GPU; lower "
                "study.workers, or use trial.executor=submitit to run trials on cluster nodes"
            )
        return [{"CUDA_VISIBLE_DEVICES": g} for g in gpus[:workers]]
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
    shares = np.array_split(cpus, workers) if workers <= len(cpus) else [[cpus[k % len(cpus)]] for k in range(workers)]
    return [{CPUS_ENV: ",".join(str(int(c)) for c in share)} for share in shares]


class WorkerPool:
    """`workers` slots running trials concurrently: `start(key, cfg, trial_dir)` takes a free slot, `wait()`
    returns the (key, Outcome) pairs of trials that finished. `run` is what runs a local trial: `run_trial`, or a
    surrogate's. Leaving the `with` block while trials run (an
    error, Ctrl-C) kills them."""

    def __init__(self, workers: int, trial: TrialConfig, run_dir: str | Path, run: Callable[..., Outcome] = run_trial):
        if trial.executor not in EXECUTORS:
            raise WorkerError(f"unknown trial.executor={trial.executor!r}; choose one of: {', '.join(EXECUTORS)}")
        if workers < 1:
            raise WorkerError(f"study.workers={workers} must be at least 1")
        self.trial, self.run_dir, self._run_local = trial, Path(run_dir), run
        # SLURM gives each job its own devices; only local processes need a share of this machine's.
        on_cluster = trial.executor == "submitit" and _cluster(trial.submitit) != "local"
        self._envs = [{}] * workers if on_cluster else slot_envs(workers)
        self._free = list(range(workers))
        self._threads = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial")
        # Started here, on the study's thread, which it must not outlive; its imports run while the study prepares.
        local_trainer = trial.executor == "local" and run is run_trial
        self._forks = ForkServer() if trial.fork_server and local_trainer else None
        self._futures: dict[cf.Future, tuple[Hashable, int]] = {}
        self._cancel = threading.Event()

    @property
    def free(self) -> int:
        """How many more trials can start now."""
        return len(self._free)

    @property
    def running(self) -> int:
        return len(self._futures)

    def start(self, key: Hashable, cfg: TrainConfig, trial_dir: str | Path, timeout_s: float | None,
              watch: Callable[[], dict | None] | None = None) -> None:  # fmt: skip
        """Run a trial on a free slot; its outcome comes back from `wait` under `key`. `watch`: a pruner's check
        of a local trial (`run_trial`)."""
        slot = self._free.pop(0)
        future = self._threads.submit(self._run, cfg, Path(trial_dir), timeout_s, self._envs[slot], watch)
        self._futures[future] = (key, slot)

    def wait(self) -> list[tuple[Hashable, Outcome]]:
        """Block until at least one running trial finishes; its (key, Outcome), and any other finished ones."""
        done, _ = cf.wait(self._futures, return_when=cf.FIRST_COMPLETED)
        finished = []
        for future in done:
            key, slot = self._futures.pop(future)
            self._free.append(slot)
            finished.append((key, future.result()))
        self._free.sort()
        return finished

    def cancel_stale(self, trial_dir: str | Path) -> str | None:
        """Cancel the submitit job an interrupted study left running for the trial in `trial_dir`; a line saying
        so, or None if there was none. (A local trainer needs none of this: it dies with its study.)"""
        record_path = Path(trial_dir) / JOB_FILE
        if not record_path.exists():
            return None
        record = json.loads(record_path.read_text())
        cancelled = False  # other clusters (submitit's in-process "debug") died with the study
        if record["cluster"] == "local":
            cancelled = _stop_local_job(record["job_id"], record["folder"])
        elif record["cluster"] == "slurm":
            import submitit

            job = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])
            if cancelled := not job.done():
                job.cancel(check=False)  # scancel
        record_path.unlink()
        if not cancelled:
            return None
        return (f"cancelled submitit job {record['job_id']}, left running for trial {Path(trial_dir).name} by the "
                "interrupted study")  # fmt: skip

    def _run(self, cfg: TrainConfig, trial_dir: Path, timeout_s: float | None, env: dict,
             watch: Callable[[], dict | None] | None) -> Outcome:  # fmt: skip
        started = time.time()
        try:
            if self.trial.executor == "submitit":
                return _run_submitit(self.trial.submitit, self.run_dir, cfg, trial_dir, timeout_s, env, self._cancel)
            extra = {k: v for k, v in (("watch", watch), ("forks", self._forks)) if v is not None}
            return self._run_local(cfg, trial_dir, timeout_s, env=env, cancel=self._cancel, **extra)
        except TrialCancelled:
            raise
        except OSError as e:
            if e.errno == errno.ENOSPC:  # the machine's fault, not the trial's: stop the study, keep the trial pending
                raise
            return self._executor_failed(e, started)
        except Exception as e:  # a bug or an executor failure must cost one trial, never the study
            return self._executor_failed(e, started)

    @staticmethod
    def _executor_failed(e: Exception, started: float) -> Outcome:
        now = time.time()
        return Outcome("crashed", None, f"executor failed: {type(e).__name__}: {e}".splitlines()[0],
                       now - started, started, now)  # fmt: skip

    def close(self) -> None:
        """Kill the trials still running and wait for their threads."""
        self._cancel.set()
        self._threads.shutdown(wait=True)
        if self._forks is not None:
            self._forks.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cluster(cfg: SubmititConfig) -> str:
    """The submitit cluster trials go to; WorkerError for one submitit does not know."""
    import submitit
    from submitit.core.plugins import get_executors

    known = sorted(get_executors())
    if cfg.cluster is not None and cfg.cluster not in known:
        raise WorkerError(f"unknown trial.submitit.cluster={cfg.cluster!r}; choose one of: {', '.join(known)}")
    return cfg.cluster or submitit.AutoExecutor.which()


def _run_submitit(cfg: SubmititConfig, run_dir: Path, train_cfg: TrainConfig, trial_dir: Path,
                  timeout_s: float | None, env: Mapping[str, str], cancel: threading.Event) -> Outcome:  # fmt: skip
    """Run `run_trial` as a submitit job and wait for its Outcome (a `crashed` one if the job itself failed)."""
    import submitit

    timeout_s = timeout_s or 3 * train_cfg.time_budget_s + 300
    executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster=_cluster(cfg))
    params: dict[str, Any] = {
        "name": f"jaxhpo-{run_dir.name}-{trial_dir.name}",
        "timeout_min": math.ceil(timeout_s / 60) + 5,  # the trial's own timeout fires first
        "cpus_per_task": cfg.cpus_per_job,
        "gpus_per_node": cfg.gpus_per_job,
        "tasks_per_node": 1,
    }
    if cfg.mem_gb is not None:
        params["mem_gb"] = cfg.mem_gb
    if cfg.partition is not None:
        params["slurm_partition"] = cfg.partition
    executor.update_parameters(**{**params, **cfg.parameters})
    started = time.time()
    job = executor.submit(run_trial, train_cfg, trial_dir, timeout_s, dict(env))
    # the folder as the local job's command line has it (absolute, not resolved), for cancel_stale to match
    record = {"job_id": job.job_id, "cluster": executor.cluster, "folder": str(executor.folder)}
    trial_dir.mkdir(parents=True, exist_ok=True)
    partial = trial_dir / f".{JOB_FILE}.tmp"  # renamed into place: a kill never leaves half a record to resume on
    partial.write_text(json.dumps(record) + "\n")
    os.replace(partial, trial_dir / JOB_FILE)
    while not job.done():
        if cancel.wait(2.0):
            job.cancel(check=False)
            raise TrialCancelled("the study stopped")
    (trial_dir / JOB_FILE).unlink(missing_ok=True)
    try:
        return job.result()
    except Exception as e:  # submitit's FailedJobError and friends: the job ended without an outcome
        now = time.time()
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        return Outcome("crashed", None, f"submitit job {job.job_id} failed: {reason}"[:500], now - started,
                       started, now)  # fmt: skip


def _stop_local_job(job_id: str, folder: str, grace_s: float = 30.0) -> bool:
    """Stop a local submitit job by its controller's pid (its job id) as submitit's own cancel does, with SIGINT,
    which the controller passes on to the task and the task to its trainer; True if it was running. The command
    line is checked first, so a pid reused by another process since is left alone."""
    pid = int(job_id)

    def alive() -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return False
        return b"submitit.local._local" in cmdline and folder.encode() in cmdline  # a zombie's is empty

    if not alive():
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.time() + grace_s
    while alive() and time.time() < deadline:
        time.sleep(0.2)
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True
