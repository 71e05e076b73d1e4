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
- out of memory (`oom`): XLA's RESOURCE_EXHAUSTED, PyTorch's OutOfMemoryError / "CUDA out of memory", Python's
  MemoryError, or a SIGKILL (the kernel's OOM killer);
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
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from jaxhpo import lifeline
from jaxhpo.extract import assignments, literal_value
from jaxhpo.space import Space
from jaxhpo.trial import Outcome, _kill, _wait

KEY_PREFIX = "script."
SCRIPT_FILE = "train.py"
OUTPUT_FILE = "train.log"
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "OutOfMemoryError", "CUDA out of memory", "MemoryError")
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
    memory_limit_gb: float | None = None


    timeout_s: float = 360.0

    def with_values(self, space: Space, params: Mapping[str, Any]) -> "ScriptJob":
        """This job for one configuration of `space` (whose keys are script.NAME); a "true"/"false" choice of a
        constant the script holds as a bool is that bool (a space file's choices are strings)."""
        originals = literals(self.text)
        values = {}
        for p in space.params:
            name, value = p.key[len(KEY_PREFIX):], params[p.name]
            if isinstance(originals.get(name), bool) and isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            values[name] = value
        return dataclasses.replace(self, values=values)


def study_job(path: str | None, space: Space, args, python: str | None, cwd: str | None, metric: str, trial: Any,
              no_gpu: bool) -> ScriptJob:  # fmt: skip
    """A study's job (`trial`: its TrialConfig): the script read and checked against the space (every key
    script.NAME, every NAME a constant of the script), the metric checked; ScriptError (one line) otherwise. The
    memory limit applies only with `no_gpu`: an address-space limit breaks CUDA's reservations."""
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
    check_metric(metric)
    if python is not None and not shutil.which(python):
        raise ScriptError(f"trainer.python={python}: no such interpreter")
    if cwd is not None and not Path(cwd).is_dir():
        raise ScriptError(f"trainer.cwd={cwd}: no such folder")
    timeout = trial.timeout_s or 3 * trial.time_budget_s + 300  # the built-in trainer's rule
    return ScriptJob(str(file), text, {}, tuple(args), python or sys.executable, cwd, metric,
                     trial.memory_limit_gb if no_gpu else None, timeout)  # fmt: skip


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
            if type(literal_value(node)) is type(value) and literal_value(node) == value:
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
        raise ScriptError("trainer.metric is empty: name the metric the script prints, e.g. val_bpb")
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
    home = str(Path(job.path).resolve().parent)
    path = os.pathsep.join([home, *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [job.python, lifeline.__file__, "--run-path", str(script), *job.args]
    started = time.time()
    with open(trial_dir / OUTPUT_FILE, "w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=job.cwd or home, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, lifeline.PARENT_ENV: str(os.getpid()),
                 **({lifeline.MEMORY_ENV: str(int(job.memory_limit_gb * 2**30))} if job.memory_limit_gb else {}),
                 **(env or {})},
        )  # fmt: skip
        try:
            returncode = _wait(proc, started + timeout_s, cancel)
        except BaseException:
            _kill(proc)
            raise
        if returncode is None:
            _kill(proc)
    ended = time.time()
    if returncode is None:
        return Outcome("timeout", None, f"no exit after {timeout_s:.0f}s; killed", ended - started, started, ended)
    outcome = classify(returncode, (trial_dir / OUTPUT_FILE).read_text(errors="replace"), job.metric)
    return Outcome(outcome.status, outcome.value, outcome.error, ended - started, started, ended, outcome.result)
