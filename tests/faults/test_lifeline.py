"""A trial's process dies with its study, and does nothing at all when the study died before it started: the
parent-death link is armed before the trainer's first import (jaxhpo.lifeline)."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import REPO

# The "study": starts a child through the lifeline, waits for a file to appear (or not), then dies at once.
STUDY = textwrap.dedent("""
    import os, subprocess, sys, time
    from jaxhpo import lifeline
    stderr, wait_for, child_argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    proc = subprocess.Popen(child_argv, env={**os.environ, lifeline.PARENT_ENV: str(os.getpid())},
                            stderr=open(stderr, "w"))
    print(proc.pid, flush=True)
    while wait_for != "-" and not os.path.exists(wait_for):
        time.sleep(0.05)
    os._exit(0)
""")


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by init, does not count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def start_study(child_argv: list[str], wait_for: str, stderr: Path) -> int:
    """Run the dying study (it waits for the file `wait_for` unless that is "-"); the pid of the child it left
    behind, whose stderr goes to `stderr`."""
    out = subprocess.run([sys.executable, "-c", STUDY, str(stderr), wait_for, *child_argv], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return int(out.stdout.split()[0])


def wait_gone(pid: int, seconds: float = 30.0) -> bool:
    deadline = time.time() + seconds
    while alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def test_a_trainer_started_as_its_study_dies_imports_nothing(tmp_path):
    # The study dies right after starting the trial's process, before that process could arm anything: the
    # trainer must not import its first module, let alone open its trial folder. -X importtime lists every
    # module the child imported, on any CPU and however slow the machine.
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    argv = [sys.executable, "-X", "importtime", "-m", "jaxhpo.lifeline", "jaxhpo.trial", str(trial_dir)]
    pid = start_study(argv, "-", tmp_path / "stderr")
    assert wait_gone(pid)
    imported = (tmp_path / "stderr").read_text()
    names = {line.rsplit("|", 1)[-1].strip() for line in imported.splitlines() if line.startswith("import time:")}
    assert {"jaxhpo", "ctypes"} <= names, imported[-2000:]  # the lifeline ran (it is __main__, not listed)
    assert not {"jaxhpo.trial", "omegaconf", "jax", "numpy"} & names, sorted(names)
    assert list(trial_dir.iterdir()) == []


def test_a_running_trainer_dies_with_its_study(tmp_path):
    marker = tmp_path / "started"
    argv = [sys.executable, "-m", "jaxhpo.lifeline", "tests.faults.linger", str(marker)]
    pid = start_study(argv, str(marker), tmp_path / "stderr")
    assert int(marker.read_text()) == pid  # it was running its module when the study died
    assert wait_gone(pid)  # killed by the parent-death signal, not after its 60 s sleep
