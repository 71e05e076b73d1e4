"""One trial: a configuration of the space applied to the trainer, run in a fresh subprocess.

The subprocess isolates what a trial can do to the study: it runs under a memory limit (an address-space limit
on CPU, the XLA memory fraction on GPU, both applied by the trainer before JAX allocates anything) and a
wall-clock timeout, and whatever happens to it (out of memory, NaN, a segfault, a hang) becomes an outcome:
`ok`, `oom`, `diverged`, `timeout` or `crashed`. The trainer's `result.json` is the only channel back.

`python -m jaxhpo.trial TRIAL_DIR` is the subprocess: it trains the config.yaml it finds there. It is started
through `jaxhpo.lifeline`, which ties it to the study (Linux's parent-death signal) before it imports anything,
so a study killed with kill -9 leaves no trainer running on behalf of a trial its resume will run again; and it
keeps to the CPU cores named in JAXHPO_CPUS, when its worker was given some (`jaxhpo.workers`). A trial folder
with a `src/` folder runs the trainer found there (an edited copy, `jaxhpo.source`), not the installed package.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf

from jaxhpo import lifeline
from jaxhpo.forkserver import ForkServer, ForkServerError
from jaxhpo.journal import low_on_space
from jaxhpo.source import SOURCE_DIR
from jaxhpo.space import Space, SpaceError
from model import device
from model.config import FIELD_RULES, TrainConfig, load_config, validate

RESULT_FILE = "result.json"
LOG_FILE = "train.log"
CPUS_ENV = "JAXHPO_CPUS"  # comma-separated CPU ids the trainer is pinned to


@dataclass
class SubmititConfig:
    """`trial.submitit`: where a trial job goes when trial.executor=submitit (see jaxhpo.workers)."""

    cluster: Optional[str] = None  # slurm | local | None: slurm where sbatch exists, else local
    partition: Optional[str] = None
    gpus_per_job: int = 0
    cpus_per_job: int = 4
    mem_gb: Optional[float] = None
    parameters: dict[str, Any] = field(default_factory=dict)  # more submitit parameters, e.g. slurm_account


@dataclass
class TrialConfig:
    """The `trial:` node: what every trial of a study gets.

    Every trial's budget is in one unit (`budget`, resolved once per study by `resolve_budget`): training time,
    or a count that fixes each trial's number of steps before it trains (flops, tokens, steps), so that what a trial
    scores does not depend on how busy the machine is while it runs.
    """

    # time | flops | tokens | steps; None = auto: flops on a CPU where budget_flops is set, else time
    budget: Optional[str] = None
    time_budget_s: float = 20.0  # budget=time: training time per trial (compilation excluded); sizes timeout_s
    budget_flops: Optional[float] = None  # budget=flops: training FLOPs per trial (FLOPs per token × tokens)
    budget_tokens: Optional[int] = None  # budget=tokens: training tokens per trial
    budget_steps: Optional[int] = None  # budget=steps: optimizer steps per trial (the trainer's max_steps)
    memory_limit_gb: Optional[float] = 4.0  # per trial; None = no limit
    # GPU: the share of its memory a trial may take, in place of memory_limit_gb's cap there (protocol=paper: the
    # study's 0.543); None = memory_limit_gb's cap, or 0.9 without one. CPU runs ignore it.
    gpu_memory_fraction: Optional[float] = None
    timeout_s: Optional[float] = None  # wall-clock limit; None = 3 × time_budget_s + 300 s
    compute_dtype: str = "auto"
    save_checkpoint: bool = False  # every trial's parameters; at paper scale that is 200 MB a trial
    preflight: bool = True  # a trial XLA's memory analysis says cannot fit ends as oom after compiling only
    compile_cache: bool = True  # persistent XLA compilation cache shared by the study's trials
    compile_cache_dir: Optional[str] = None  # None = <run dir>/xla_cache; point studies at one folder to share
    # The pre-flight's "does not fit" verdicts by shape, kept beside the compiled programs (jaxhpo.footprints): a
    # later trial of a known shape ends as oom at once, and the proposers' failure model avoids it
    footprint_cache: bool = True
    executor: str = "local"  # local: a subprocess of the study; submitit: a submitit job (SLURM, or local)
    # local trials forked from a process that has imported the trainer (jaxhpo.forkserver): ~3 s less per trial
    fork_server: bool = True
    submitit: SubmititConfig = field(default_factory=SubmititConfig)


@dataclass
class Outcome:
    """How a trial ended, as the journal records it."""

    status: str
    val_bpb: float | None
    error: str | None
    wall_seconds: float
    started_at: float
    ended_at: float
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def training_seconds(self) -> float | None:
        return self.result.get("training_seconds")

    @property
    def peak_memory_mb(self) -> float | None:
        return self.result.get("peak_memory_mb")


_MISSING = object()


def check_space_keys(space: Space, base: TrainConfig) -> None:
    """Refuse a space that sets a key the trainer does not have, before any trial runs."""
    cfg = OmegaConf.structured(base)
    for p in space.params:
        if OmegaConf.select(cfg, p.key, default=_MISSING) is _MISSING:
            raise SpaceError(
                f"space parameter {p.name} sets unknown trainer key {p.key!r}; use a key such as "
                "model.depth or optim.matrix_lr"
            )


def check_space_values(space: Space, base: TrainConfig) -> None:
    """Refuse a space parameter that can take a value its trainer key does not accept, before any trial runs: of
    the key's type (OmegaConf converts as a trial's override does: the choice "64" is the integer 64) and within
    the key's own range (FIELD_RULES). Ranges are checked at low, high and the default, categoricals at every
    choice. Rules between keys are not: a HEAD_DIM that does not divide some width refuses that trial only."""
    cfg = OmegaConf.structured(base)
    for p in space.params:
        values = [(f"choice {c!r}", c) for c in p.choices] or [
            (f"{end}={v!r}", v) for end, v in (("low", p.low), ("high", p.high), ("default", p.default))
        ]
        rule = FIELD_RULES.get(p.key)
        for what, value in values:
            try:
                OmegaConf.update(cfg, p.key, value)
            except ValueError:  # OmegaConf's ValidationError: a value of another type
                raise SpaceError(
                    f"space parameter {p.name}: {what} is not a valid {p.key} ({_type_name(_field_type(p.key))})"
                ) from None
            converted = OmegaConf.select(cfg, p.key)
            if rule is not None and not rule.allows(converted):
                raise SpaceError(f"space parameter {p.name}: {what} is not a valid {p.key}: {rule.why}")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               dict: "a mapping"}  # fmt: skip


def _field_type(key: str) -> Any:
    """The annotated type of a dotted TrainConfig key, e.g. Optional[int] for model.width."""
    kind: Any = TrainConfig
    for name in key.split("."):
        kind = get_type_hints(kind)[name]
    return kind


def _type_name(kind: Any) -> str:
    args = get_args(kind)
    if type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    return _TYPE_NAMES.get(get_origin(kind) or kind, getattr(kind, "__name__", str(kind)))


# The trial.* key that sets each of the trainer's budget keys: a refusal names the key to change.
TRIAL_BUDGET_NAMES = {"budget": "trial.budget", "time_budget_s": "trial.time_budget_s",
                      "budget_flops": "trial.budget_flops", "budget_tokens": "trial.budget_tokens",
                      "max_steps": "trial.budget_steps"}  # fmt: skip


@functools.cache
def study_has_gpu() -> bool:
    """Whether the study's machine has a GPU for its trials. Cached: asked once per study process, so that all of its
    trials get one unit (and nvidia-smi runs once)."""
    return device._gpu_memory_bytes() is not None


def resolve_budget(trial: TrialConfig) -> str:
    """The unit of every trial's budget: trial.budget, or for None (auto) time where the trials get a GPU (the
    study's machine has one, or trial.executor=submitit asks one per job) and flops where they run on a CPU, if
    trial.budget_flops is set (time if not)."""
    if trial.budget is not None:
        return trial.budget
    gpu = (trial.executor == "submitit" and trial.submitit.gpus_per_job > 0) or study_has_gpu()
    return "time" if gpu or trial.budget_flops is None else "flops"


def trial_config(base: TrainConfig, space: Space, params: Mapping, trial: TrialConfig) -> tuple[TrainConfig, list[str]]:
    """The trainer config for `params`, with constraints between parameters repaired, and a note per repair.

    Raises ConfigError if the configuration still cannot train: it is refused before a process starts.
    """
    cfg = OmegaConf.structured(base)
    for key, value in space.overrides(params).items():
        OmegaConf.update(cfg, key, value)
    cfg.budget = resolve_budget(trial)
    cfg.time_budget_s = trial.time_budget_s
    cfg.budget_flops = trial.budget_flops
    cfg.budget_tokens = trial.budget_tokens
    cfg.max_steps = trial.budget_steps
    cfg.memory_limit_gb = trial.memory_limit_gb
    cfg.gpu_memory_fraction = trial.gpu_memory_fraction
    cfg.compute_dtype = trial.compute_dtype
    cfg.save_checkpoint = trial.save_checkpoint
    cfg.preflight = trial.preflight
    cfg.compile_cache_dir = trial.compile_cache_dir if trial.compile_cache else None
    cfg: TrainConfig = OmegaConf.to_object(cfg)
    notes = []
    m = cfg.model
    micro = m.device_batch_size * m.seq_len
    if m.total_batch_size < micro or m.total_batch_size % micro:
        # TOTAL_BATCH_SIZE must be a whole number of micro-batches: round up, as the smallest valid change.
        repaired = max(1, -(-m.total_batch_size // micro)) * micro
        notes.append(f"total_batch_size {m.total_batch_size} -> {repaired} (device_batch_size × seq_len = {micro})")
        m.total_batch_size = repaired
    validate(cfg, TRIAL_BUDGET_NAMES)
    return cfg, notes


class TrialCancelled(RuntimeError):
    """The study stopped while the trial ran; its process was killed and it has no outcome."""


class TrialPruned(RuntimeError):
    """The study's pruner stopped the trial at a rung (`report`, from `jaxhpo.pruners.Pruner.watch`)."""

    def __init__(self, report: dict):
        super().__init__(report["reason"])
        self.report = report


def run_trial(cfg: TrainConfig, trial_dir: Path, timeout_s: float | None = None, env: Mapping[str, str] | None = None,
              cancel: threading.Event | None = None, watch: Callable[[], dict | None] | None = None,
              forks: ForkServer | None = None) -> Outcome:  # fmt: skip
    """Train `cfg` in a fresh subprocess in `trial_dir` (with `env` added to its environment) and classify how it
    ended: a child of `forks` where given (the installed trainer only), else a new interpreter. Setting `cancel`
    kills the subprocess and raises TrialCancelled; `watch` (a pruner's, polled while it runs) returning a report
    kills it and makes it `pruned`."""
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / RESULT_FILE).unlink(missing_ok=True)  # a rerun after a crash must not read the old result
    (trial_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    timeout_s = timeout_s or 3 * cfg.time_budget_s + 300
    src = source_path(trial_dir)
    command = lifeline.command("jaxhpo.trial", str(trial_dir), path=src)
    spawn = None
    if forks is not None and src is None:  # an edited trainer is not what the fork server imported
        spawn = functools.partial(forks.spawn, str(trial_dir), str(trial_dir / LOG_FILE))
    started = time.time()
    try:
        returncode, started, ended = run_process(command, trial_dir / LOG_FILE, timeout_s, env, cancel, watch=watch,
                                                 spawn=spawn)  # fmt: skip
    except TrialPruned as e:
        return pruned(e.report, started, time.time())
    return unless_disk_full(_classify(trial_dir, returncode, timeout_s, started, ended), trial_dir)


def run_process(command: list[str], log_path: Path, timeout_s: float, env: Mapping[str, str] | None = None,
                cancel: threading.Event | None = None, cwd: str | None = None,
                watch: Callable[[], dict | None] | None = None,
                spawn: Callable[[dict], Any] | None = None) -> tuple[int | None, float, float]:  # fmt: skip
    """Run a trial's process, its output into `log_path`, tied to this one (`lifeline`): (its exit code, or None when
    it was killed at the timeout; start and end time). `spawn(environment)` starts it in place of `command` (a fork
    server's child; `command` if the server is gone). Setting `cancel` kills it and raises TrialCancelled; a report
    from `watch` kills it and raises TrialPruned."""
    started = time.time()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", lifeline.PARENT_ENV: str(os.getpid()), **(env or {})}
    with open(log_path, "w") as log:
        proc = None
        if spawn is not None:
            with contextlib.suppress(ForkServerError):
                proc = spawn(environment)
        if proc is None:  # a session of its own, so a timeout kills the trainer and any child it started
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                    env=environment)  # fmt: skip
        try:
            returncode = _wait(proc, started + timeout_s, cancel, watch)
        except BaseException:  # Ctrl-C, a kill of the study, or a cancel: take the trial down with it
            _kill(proc)
            raise
        if returncode is None:
            _kill(proc)
    return returncode, started, time.time()


def unless_disk_full(outcome: Outcome, trial_dir: Path) -> Outcome:
    """`outcome`, unless the trial failed on a full disk, which says nothing about its configuration: then no
    outcome (OSError ENOSPC), the trial stays pending, and the study stops (a resume runs it again once there is
    room)."""
    if outcome.status != "ok" and (free := low_on_space(trial_dir)) is not None:
        raise OSError(errno.ENOSPC, f"No space left on device ({free // 1024} KiB free) while the trial ran",
                      str(trial_dir))  # fmt: skip
    return outcome


def source_path(trial_dir: Path) -> str | None:
    """The folder of the trainer's edited copy a trial runs (`jaxhpo.source`), None to run the installed one."""
    src = Path(trial_dir) / SOURCE_DIR
    return str(src.resolve()) if src.is_dir() else None


def _wait(proc: subprocess.Popen, deadline: float, cancel: threading.Event | None,
          watch: Callable[[], dict | None] | None = None) -> int | None:  # fmt: skip
    """The exit code, or None at the deadline; raises TrialCancelled once `cancel` is set, TrialPruned once `watch`
    returns a report."""
    poll = 0.25 if watch is not None else 1.0  # a pruned trial trains on until the next look
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(poll, deadline - time.time())))
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                raise TrialCancelled("the study stopped") from None
            if watch is not None and (report := watch()) is not None:
                raise TrialPruned(report) from None
            if time.time() >= deadline:
                return None


def _kill(proc: subprocess.Popen) -> None:
    # The trainer runs in a session of its own: kill it and any child it started. A forked child may not have made
    # its session yet, so the process itself too (it is not reaped before its exit is reported: its pid is its own).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def pruned(report: dict, started: float, ended: float) -> Outcome:
    """The outcome of a trial its pruner stopped: the rung's report, every report before it, and the training
    seconds it had run (what budget_charge=training would charge an ok trial)."""
    result = {"status": "pruned", "pruned": {k: report[k] for k in ("rung", "fraction", "step", "value")},
              "rungs": report["rungs"], "training_seconds": report["training_seconds"]}  # fmt: skip
    return Outcome("pruned", None, report["reason"], ended - started, started, ended, result)


def refused(error: str, at: float) -> Outcome:
    """The outcome of a configuration refused before it ran."""
    return Outcome("crashed", None, f"refused: {error}", 0.0, at, at)


def _classify(trial_dir: Path, returncode: int | None, timeout_s: float, started: float, ended: float) -> Outcome:
    wall = ended - started
    if returncode is None:
        return Outcome("timeout", None, f"no result after {timeout_s:.0f}s; killed", wall, started, ended)
    result_path = trial_dir / RESULT_FILE
    if returncode < 0 or not result_path.exists():
        how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        tail = _log_tail(trial_dir)
        if device.oom_in_log(tail):  # refused memory and died before it could say so in result.json
            return Outcome("oom", None, f"out of memory: {how}: {tail}", wall, started, ended, result)
        return Outcome("crashed", None, f"{how}: {tail}", wall, started, ended, result)
    result = json.loads(result_path.read_text())
    status = result.get("status", "crashed")
    if status == "ok":
        return Outcome("ok", result["val_bpb"], None, wall, started, ended, result)
    if status not in ("oom", "diverged"):
        status = "crashed"
    return Outcome(status, None, result.get("error") or "no error message", wall, started, ended, result)


def _log_tail(trial_dir: Path, lines: int = 3) -> str:
    log = trial_dir / LOG_FILE
    tail = log.read_text(errors="replace").strip().splitlines()[-lines:] if log.exists() else []
    return " | ".join(tail)[-500:] or "no output"


def _main(trial_dir: str) -> int:
    if os.environ.get(CPUS_ENV):
        # Before JAX starts: XLA sizes its CPU thread pools by the cores this process may run on.
        os.sched_setaffinity(0, {int(c) for c in os.environ[CPUS_ENV].split(",")})
    from model.train import train

    result = train(load_config(Path(trial_dir) / "config.yaml"), trial_dir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
