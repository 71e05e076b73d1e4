"""A process that has imported the trainer and forks one child per trial: a fresh process's isolation without its
imports.

A trial started as a new interpreter spends about 3 s importing JAX, Flax and Optax before it does anything
(`benchmarks/trial_overhead.py`). The fork server imports `jaxhpo.trial` and `model.train` once -- no JAX backend
is initialised by that, so no device or XLA thread exists that a fork could not copy -- and forks each trial. The
child is what a trial's subprocess was: a session of its own, its output into the trial's log, the worker's
environment added, the title `python -m jaxhpo.trial DIR` (what ps and /proc show), killed with the server as the
server is with the study (`jaxhpo.lifeline`'s parent-death signal on both links). The memory limit, the CPU
share and the backend are set up by the child itself, as before.

Protocol, JSON lines: the server's first line is {"ready": true}; the study writes {"id", "trial_dir", "log",
"env"} to its stdin and gets {"id", "pid"} at once and {"id", "exit"} when the child ends (`exit` as subprocess's
returncode: negative for a signal). Closing the server's stdin stops it, and its children with it.

`jaxhpo.workers.WorkerPool` starts one for a study's local trials (`trial.fork_server`, on by default); a trial
with an edited trainer (its own `src/`) or a script starts a fresh interpreter as before.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from typing import Mapping

from jaxhpo import lifeline

READY_TIMEOUT_S = 300.0  # the server's imports, on a machine busy with other trials


class ForkServerError(RuntimeError):
    """The fork server did not start, or died; the message is one line."""


class Child:
    """A forked trial, as much of `subprocess.Popen` as `jaxhpo.trial.run_process` uses: pid, wait, returncode."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None
        self._done = threading.Event()

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"trial process {self.pid}", timeout)
        return self.returncode

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()


class ForkServer:
    """The study's side: starts the server (from the calling thread, which it must outlive: the server dies with
    it), hands out children, and reads their exits on a thread of its own."""

    def __init__(self):
        self._proc = subprocess.Popen(
            lifeline.command("jaxhpo.forkserver"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True, env={**os.environ, lifeline.PARENT_ENV: str(os.getpid())},
        )  # fmt: skip
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, tuple[threading.Event, list]] = {}  # id -> (forked, [its Child])
        self._children: dict[int, Child] = {}  # id -> its child, until it exits
        self._ready = threading.Event()
        self._dead: str | None = None
        threading.Thread(target=self._read, name="fork-server", daemon=True).start()

    def spawn(self, trial_dir: str, log_path: str, env: Mapping[str, str]) -> Child:
        """Fork a child that runs `python -m jaxhpo.trial trial_dir`, its output into `log_path`, with `env` as its
        whole environment. ForkServerError if the server is not there."""
        if not self._ready.wait(READY_TIMEOUT_S) or self._dead:
            raise ForkServerError(self._dead or f"the fork server was not ready within {READY_TIMEOUT_S:.0f} s")
        with self._lock:
            key, known, child = next(self._ids), threading.Event(), []
            self._pending[key] = (known, child)
            line = json.dumps({"id": key, "trial_dir": trial_dir, "log": log_path, "env": dict(env)}) + "\n"
            try:
                self._proc.stdin.write(line.encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise ForkServerError(self._dead or "the fork server is gone") from None
        known.wait()
        if not child:
            raise ForkServerError(self._dead or "the fork server is gone")
        return child[0]

    @property
    def alive(self) -> bool:
        return self._dead is None and self._proc.poll() is None

    def close(self) -> None:
        """Stop the server (its children die with it) and wait for it. One still importing has forked nothing and
        would read the closed pipe only after its imports: it is killed."""
        if not self._ready.is_set():
            self._proc.kill()
        with contextlib.suppress(OSError, ValueError):
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _read(self) -> None:
        for raw in self._proc.stdout:
            message = json.loads(raw)
            if message.get("ready"):
                self._ready.set()
            elif "pid" in message:
                forked = Child(message["pid"])
                with self._lock:
                    known, child = self._pending.pop(message["id"])
                    self._children[message["id"]] = forked
                child.append(forked)
                known.set()
            else:
                with self._lock:
                    child = self._children.pop(message["id"])
                child._exited(message["exit"])
        # EOF: the server is gone, and its children with it (parent-death signal)
        self._dead = f"the fork server exited ({self._proc.wait()})"
        self._ready.set()
        with self._lock:
            for known, _ in self._pending.values():
                known.set()
            for child in self._children.values():
                child._exited(-signal.SIGKILL)
            self._pending.clear()
            self._children.clear()


# -- the server process --------------------------------------------------------------------------------------------


def _serve() -> None:
    import jaxhpo.trial  # noqa: F401 - the imports every trial would make
    import model.train  # noqa: F401

    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the server itself prints goes to its stderr, never into the protocol
    channel.write(json.dumps({"ready": True}) + "\n")
    children: dict[int, int] = {}  # pid -> request id
    buffer = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        if readable:
            data = os.read(0, 1 << 16)
            if not data:
                return  # the study closed the pipe: stop; the children die with this process
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = _fork(request, channel)
                children[pid] = request["id"]
                channel.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            channel.write(json.dumps({"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)}) + "\n")


def _fork(request: dict, channel) -> int:
    """Fork the trial's process; the parent gets its pid, the child never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    server = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        import setproctitle  # before the environment changes: it finds the title's memory through it

        setproctitle.setproctitle(f"{sys.executable} -m jaxhpo.trial {request['trial_dir']}")
        os.environ.clear()
        os.environ.update(request["env"])  # the study's environment as of this trial, as a subprocess gets it
        os.environ[lifeline.PARENT_ENV] = str(server)
        lifeline.arm()  # dies with the server, which dies with the study
        channel.close()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        from jaxhpo.trial import _main

        code = _main(request["trial_dir"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    _serve()
