"""Shared fixtures: one data cache per test session, the study's command line run in this process (for refusals),
and a helper to run the CLIs as a user would."""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from tests.llm_server import llm_server  # noqa: F401  (the embedded LLM server, once per session)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """Tokenizers and token shards built once per session, outside the user's cache."""
    return str(tmp_path_factory.mktemp("data-cache"))


def run_cli(module: str, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS` from the repository root (extra `env` variables set) and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def in_process(monkeypatch, capsys):
    """Run the CLI in this process: (exit status, stderr) of a refusal; a study about to run trials fails the test
    (a subprocess costs seconds of imports, this a tenth of a second). Whatever main() changes is put back."""
    import jaxhpo.__main__ as cli
    from jaxhpo.study import Study

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    on_term = signal.getsignal(signal.SIGTERM)
    # main() pins JAX to the CPU, which later tests in this process may not want; nothing here needs JAX.
    monkeypatch.setattr(cli, "prepare_process", lambda: __import__("jaxhpo.config"))
    # Hydra's logging set-up closes every handler of the process. absl's (flax imports it) then closes its stream,
    # the sys.stderr of its import -- pytest's capture -- unless that is the current sys.stderr, which under capsys
    # it is not; the process's own stderr it leaves open.
    if (absl := sys.modules.get("absl.logging")) is not None:
        monkeypatch.setattr(absl.get_absl_handler().python_handler, "stream", sys.__stderr__)

    def accepted(self):
        pytest.fail("a bad value was accepted: the study was about to run trials")

    monkeypatch.setattr(Study, "run", accepted)

    def run(args: list[str]) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["jaxhpo", *args])
        try:
            with pytest.raises(SystemExit) as stopped:
                cli.main()
        finally:
            # main() sets it for its own process; the subprocesses of later tests would inherit it. Not monkeypatch:
            # its teardown would put back the value main() set.
            os.environ.pop("HYDRA_FULL_ERROR", None)
        return stopped.value.code, capsys.readouterr().err

    yield run
    for handler in set(root.handlers) - set(handlers):  # Hydra's console and job-log handlers
        handler.close()
    root.handlers[:], root.level = handlers, level
    signal.signal(signal.SIGTERM, on_term)
    GlobalHydra.instance().clear()
