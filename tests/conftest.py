"""Shared fixtures: one data cache per test session, and a helper to run the CLIs as a user would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
