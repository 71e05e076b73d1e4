"""A child process's lifeline to the study that started it: `python -m jaxhpo.lifeline [--path DIR] MODULE ARGS...`.

A trial's trainer must never outlive its study: a study killed with kill -9 is resumed, and the resume runs the
interrupted trial again in the same folder. Linux's parent-death signal ties the child to its parent, but only
once armed, and arming it after the trainer's imports (JAX, Flax: seconds) left a child alive, importing, while
its study was already dead. So the link is made here, before anything else runs: arm the signal, check the
parent is still the one that started us (it may have died before the signal was armed), and only then run
MODULE as `__main__`. This module imports nothing but the standard library on purpose.

`--path DIR` puts DIR first on the import path before MODULE runs, so that a trainer's edited copy in a trial
folder (`jaxhpo.source`) is imported instead of the installed package. `--run-path SCRIPT ARGS...` runs a script
as `python SCRIPT ARGS` would (trainer=script); the module is then run by its file path, so that an interpreter
without jaxhpo installed can run it.

On other systems than Linux the module is run without the link.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PARENT_ENV = "JAXHPO_PARENT_PID"  # the pid of the process the child must die with
MEMORY_ENV = "JAXHPO_RLIMIT_AS"  # --run-path: the address-space limit, in bytes, to run the script under
_PR_SET_PDEATHSIG = 1


def command(module: str, *args: str, path: str | None = None) -> list[str]:
    """The argv that runs `python -m module args...` tied to this process (set PARENT_ENV=os.getpid() too), with
    `path` first on its import path if given."""
    return [sys.executable, "-m", "jaxhpo.lifeline", *(["--path", path] if path else []), module, *args]


def arm() -> None:
    """Have the kernel SIGKILL this process when its parent dies; exit at once if it already has."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        os._exit(1)  # the parent died before the signal was armed: we were re-parented, do nothing


def _main(argv: list[str]) -> None:
    arm()
    if argv[:1] == ["--run-path"] and len(argv) > 1:  # a script (trainer=script), as `python SCRIPT ARGS` runs it
        if os.environ.get(MEMORY_ENV):  # here, not in a pre-exec hook: forking a threaded study must not run code
            import resource

            limit = int(os.environ.pop(MEMORY_ENV))
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.argv = argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(argv[1]))  # not this file's folder: jaxhpo's own modules
        runpy.run_path(argv[1], run_name="__main__")
        return
    if argv[:1] == ["--path"] and len(argv) > 1:
        sys.path.insert(0, argv[1])
        argv = argv[2:]
    if not argv:
        sys.exit("usage: python -m jaxhpo.lifeline [--path DIR] MODULE [ARGS...]")
    sys.argv = argv  # as `python -m MODULE ARGS` would see them (argv[0] is replaced by run_module)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
