"""trainer=script: any training script as the trainer, as the 2026 study ran autoresearch's train.py.

A space parameter with key `script.NAME` sets the script's module-level constant NAME (`python -m jaxhpo.extract
--trainer script train.py` drafts such a space). Each trial writes a copy of the script into its folder with the
trial's values put into those constants -- by syntax tree: only the assigned expression of `NAME = ...` changes,
the rest of the file stays as written, and the original is never touched -- and runs the copy in the trial
subprocess with the same isolation as the built-in trainer: its own process group, tied to the study
(`jaxhpo.lifeline`, run by file path so any interpreter can run it), a timeout, and on a machine without a GPU an
address-space limit of `trial.memory_limit_gb`. The script's own folder is its working directory (`trainer.cwd`
otherwise) and first on its import path, so that its sibling modules import as they do when you run it.

The metric is read from the output (`trainer.metric`): a name printed as `name: value` -- autoresearch's format,
the last such line wins -- or `re:<regex>` whose first group is the value. How a run ended:
- out of memory (`oom`): XLA's RESOURCE_EXHAUSTED or "Out of memory allocating", C++'s std::bad_alloc, PyTorch's
  OutOfMemoryError / "CUDA out of memory", Python's MemoryError, or a SIGKILL (the kernel's OOM killer);
- `diverged`: the metric printed as NaN or infinite;
- `crashed`: a non-zero exit, or no metric in the output, with the last lines of output as the error;
- `timeout`: no exit within the timeout; `ok` otherwise. `training_seconds: X` and `peak_vram_mb: X` lines, when
  the script prints them (autoresearch does), are recorded too.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import importlib
import math
import os
import re
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from jaxhpo import lifeline
from jaxhpo.extract import assignments, literal_value
from jaxhpo.space import Space
from jaxhpo.trial import Outcome, run_process, unless_disk_full
from model import device

KEY_PREFIX = "script."
CONFIG_PREFIX = "config."  # trainer=python: a key of the config dict the target is called with
SCRIPT_FILE = "train.py"
OUTPUT_FILE = "train.log"
OOM_MARKERS = (*device.OOM_LOG_MESSAGES, "OutOfMemoryError", "CUDA out of memory", "MemoryError")
_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|NaN|Inf|infinity)"


class ScriptError(ValueError):
    """A script, space or metric the script trainer cannot use; the message is one line."""


@dataclass(frozen=True)
class ScriptJob:
    """What one trial runs: the script (its text, where it lives), its arguments and the constants to set."""

    path: str  # the original script
    text: str  # its contents, read once per study
    values: dict  # constant name -> value
    args: tuple = ()
    python: str = sys.executable
    cwd: str | None = None
    metric: str = "val_bpb"
    memory_limit_gb: float | None = None  # an address-space limit (applied where there is no GPU)
    timeout_s: float = 360.0
    home: str | None = None  # first on its import path, and the default working directory; None: the script's folder
    calls: bool = False  # trainer=python: the text is a runner that calls the target with CONFIG
    bools: frozenset = frozenset()  # constants the script holds as true/false

    def with_values(self, space: Space, params: Mapping[str, Any]) -> "ScriptJob":
        """This job for one configuration of `space` (whose keys are script.NAME); a "true"/"false" choice of a
        constant the script holds as a bool is that bool (a space file's choices are strings)."""
        if self.calls:
            config = {p.key[len(CONFIG_PREFIX):]: params[p.name] for p in space.params}
            return dataclasses.replace(self, values={"CONFIG": config})
        values = {}
        for p in space.params:
            name, value = p.key[len(KEY_PREFIX):], params[p.name]
            if name in self.bools and isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            values[name] = value
        return dataclasses.replace(self, values=values)


def study_job(trainer: Any, space: Space, trial: Any, budget: Mapping[str, Any], no_gpu: bool,
              metric: str = "val_bpb") -> ScriptJob:  # fmt: skip
    """A study's job (`trainer`: its TrainerConfig, `trial`: its TrialConfig, `budget`: what trainer=python's target
    is given): the script read and checked against the space (every key script.NAME, every NAME a constant of the
    script), or the target checked importable (every key config.NAME); the metric checked; ScriptError (one line)
    otherwise. The memory limit applies only with `no_gpu`: an address-space limit breaks CUDA's reservations."""
    job = _python_job(trainer.target, space, budget) if trainer.name == "python" else _script_job(trainer.path, space)
    metric = trainer.metric or metric  # how to read it, or the study's metric by its name
    check_metric(metric)
    if trainer.python is not None and not shutil.which(trainer.python):
        raise ScriptError(f"trainer.python={trainer.python}: no such interpreter")
    if trainer.cwd is not None and not Path(trainer.cwd).is_dir():
        raise ScriptError(f"trainer.cwd={trainer.cwd}: no such folder")
    return dataclasses.replace(
        job, args=tuple(trainer.args), python=trainer.python or sys.executable, cwd=trainer.cwd, metric=metric,
        memory_limit_gb=trial.memory_limit_gb if no_gpu else None,
        timeout_s=trial.timeout_s or 3 * trial.time_budget_s + 300,  # the built-in trainer's rule
    )  # fmt: skip


def _script_job(path: str | None, space: Space) -> ScriptJob:
    if not path:
        raise ScriptError("trainer=script needs the script: trainer.path=train.py")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ScriptError(f"trainer.path={path}: no such file")
    text = file.read_text(errors="replace")
    defined = constants(text, str(path))
    for p in space.params:
        if not p.key.startswith(KEY_PREFIX):
            raise ScriptError(f"space parameter {p.name} sets {p.key}; under trainer=script a key is script.NAME, "
                              f"NAME a constant of {file.name} (python -m jaxhpo.extract --trainer script drafts them)")
        name = p.key[len(KEY_PREFIX):]
        if name not in defined:
            raise ScriptError(f"space parameter {p.name} sets {p.key}, and {file.name} defines no constant {name} "
                              "(a module-level `NAME = <literal>`)")  # fmt: skip
    bools = frozenset(name for name, value in literals(text).items() if isinstance(value, bool))
    return ScriptJob(str(file), text, {}, home=str(file.resolve().parent), bools=bools)


# trainer=python's trial program: calls the target with the trial's configuration and the budget, prints its metrics.
RUNNER = '''"""jaxhpo trainer=python: calls {target} with this trial's configuration."""
import importlib

CONFIG = {{}}
BUDGET = {budget!r}
module, _, name = {target!r}.partition(":")
metrics = getattr(importlib.import_module(module), name)(CONFIG, BUDGET)
for key, value in dict(metrics).items():
    print(f"{{key}}: {{value}}")
'''


def _python_job(target: str | None, space: Space, budget: Mapping[str, Any]) -> ScriptJob:
    module, _, name = (target or "").partition(":")
    if not module or not name:
        raise ScriptError(f"trainer.target={target!r}: give package.module:function (trainer=python)")
    home = os.getcwd()  # where the study runs: the target imports from there, as it does here
    try:
        sys.path.insert(0, home)
        function = getattr(importlib.import_module(module), name)
    except Exception as e:  # the user's module: any error while importing it is its own
        raise ScriptError(f"trainer.target={target}: cannot import it ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None  # fmt: skip
    finally:
        sys.path.remove(home)
    if not callable(function):
        raise ScriptError(f"trainer.target={target}: {name} is not a function")
    for p in space.params:
        if not p.key.startswith(CONFIG_PREFIX):
            raise ScriptError(f"space parameter {p.name} sets {p.key}; under trainer=python a key is config.NAME, "
                              "NAME the key of the config dict the target receives")  # fmt: skip
    text = RUNNER.format(target=target, budget=dict(budget))
    return ScriptJob(f"{home}/{SCRIPT_FILE}", text, {}, home=home, calls=True)


@dataclass
class ScriptOutcome:
    status: str
    value: float | None
    error: str | None
    result: dict = field(default_factory=dict)


def constants(text: str, path: str = "the script") -> dict[str, int]:
    """The script's module-level UPPER_CASE constants that hold literals: name -> line."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise ScriptError(f"{path} does not parse: {e.msg} (line {e.lineno})") from None
    return {name: line for name, _, line in assignments(tree)}


def literals(text: str) -> dict[str, Any]:
    """The script's constants that hold plain literals, with their values."""
    out = {}
    for name, node, _ in assignments(ast.parse(text)):
        with contextlib.suppress(ValueError, TypeError):
            out[name] = literal_value(node)
    return out


def inject(text: str, values: Mapping[str, Any]) -> str:
    """`text` with each constant in `values` assigned the value's Python literal instead; nothing else changes."""
    nodes = {name: node for name, node, _ in assignments(ast.parse(text))}
    missing = sorted(set(values) - set(nodes))
    if missing:
        raise ScriptError(f"the script defines no constant {missing[0]} (a module-level `{missing[0]} = <literal>`)")
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    data = text.encode()
    shared = [n for n in values if sum(nodes[m] is nodes[n] for m in values) > 1]
    if shared:
        raise ScriptError(f"the constants {' and '.join(shared)} share one assignment; give each its own line")
    edits = sorted(((nodes[n], values[n]) for n in values), key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True)
    for node, value in edits:  # from the end, so that earlier offsets stay valid
        with contextlib.suppress(ValueError, TypeError):
            if (old := literal_value(node)) == value and type(old) is type(value):
                continue  # unchanged: the line stays as written
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        data = data[:start] + repr(value).encode() + data[end:]
    return data.decode()


def read_metric(output: str, metric: str) -> float | None:
    """The metric's last value in `output`: `name: value` lines, or `re:<regex>` whose first group is the value."""
    if metric.startswith("re:"):
        found = re.findall(metric[3:], output, flags=re.MULTILINE)
    else:
        found = re.findall(rf"^\s*{re.escape(metric)}\s*[:=]\s*({_NUMBER})\s*$", output, flags=re.MULTILINE)
    if not found:
        return None
    last = found[-1][0] if isinstance(found[-1], tuple) else found[-1]
    try:
        return float(last)
    except ValueError:
        return None


def check_metric(metric: str) -> None:
    """Refuse an empty metric name or a regex that does not compile or has no group, in one line."""
    if not metric or not metric.strip():
        raise ScriptError("the metric is empty: name the one the script prints (study.metric), e.g. val_bpb")
    if metric.startswith("re:"):
        try:
            pattern = re.compile(metric[3:])
        except re.error as e:
            raise ScriptError(f"trainer.metric regex does not compile: {e}") from None
        if pattern.groups < 1:
            raise ScriptError("trainer.metric regex needs a group around the value, e.g. re:loss=(\\S+)")


def classify(returncode: int, output: str, metric: str) -> ScriptOutcome:
    """How a finished run ended (see the module docstring), from its exit status and its output."""
    value = read_metric(output, metric)
    extras = {k: v for k in ("training_seconds", "peak_vram_mb") if (v := read_metric(output, k)) is not None}
    result = {"metric": metric, **({"value": value} if value is not None else {}), **extras}
    if "peak_vram_mb" in extras:
        result["peak_memory_mb"] = extras["peak_vram_mb"]
    tail = _tail(output)
    if any(marker in output for marker in OOM_MARKERS) or returncode == -signal.SIGKILL:
        why = "killed by SIGKILL (the kernel's OOM killer)" if returncode == -signal.SIGKILL else tail
        return ScriptOutcome("oom", None, f"out of memory: {why}", result)
    if returncode != 0:
        what = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        return ScriptOutcome("crashed", None, f"{what}: {tail}", result)
    if value is None:
        return ScriptOutcome("crashed", None, f"no {metric} in the output: {tail}", result)
    if not math.isfinite(value):
        return ScriptOutcome("diverged", None, f"{metric} is {value}", result)
    return ScriptOutcome("ok", value, None, result)


def _tail(output: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in output.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-500:] or "no output"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run(job: ScriptJob, trial_dir: Path, timeout_s: float | None = None, env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None):  # fmt: skip
    """Write the trial's copy of the script, run it, and classify how it ended: an Outcome (jaxhpo.trial)."""
    trial_dir, timeout_s = Path(trial_dir), timeout_s or job.timeout_s
    trial_dir.mkdir(parents=True, exist_ok=True)
    script = trial_dir / SCRIPT_FILE
    script.write_text(inject(job.text, job.values))
    home = job.home or str(Path(job.path).resolve().parent)
    path = os.pathsep.join([home, *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [job.python, lifeline.__file__, "--run-path", str(script), *job.args]
    limit = {lifeline.MEMORY_ENV: str(int(job.memory_limit_gb * 2**30))} if job.memory_limit_gb else {}
    env = {"PYTHONPATH": path, **limit, **(env or {})}
    returncode, started, ended = run_process(command, trial_dir / OUTPUT_FILE, timeout_s, env, cancel, job.cwd or home)
    if returncode is None:
        return Outcome("timeout", None, f"no exit after {timeout_s:.0f}s; killed", ended - started, started, ended)
    outcome = classify(returncode, (trial_dir / OUTPUT_FILE).read_text(errors="replace"), job.metric)
    return unless_disk_full(Outcome(outcome.status, outcome.value, outcome.error, ended - started, started, ended,
                                    outcome.result), trial_dir)  # fmt: skip
