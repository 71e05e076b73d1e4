"""The LLM client and the embedded server, against the real SmolLM2 server on loopback (no mocks)."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxhpo.llm import TEXT, LLMClient, LLMConfig, LLMError, LocalServer, as_llm_config, llm_session
from jaxhpo.llm.client import JSON_MODES
from tests.llm_server import llm_missing

SCHEMA = {
    "type": "object",
    "properties": {
        "DEPTH": {"type": "integer"},
        "MATRIX_LR": {"type": "number"},
        "WINDOW_PATTERN": {"type": "string", "enum": ["SSSL", "LLLL"]},
    },
    "required": ["DEPTH", "MATRIX_LR", "WINDOW_PATTERN"],
}
PROMPT = [
    {"role": "system", "content": "You tune a small GPT. Reply with JSON only."},
    {"role": "user", "content": "Propose DEPTH (1-6), MATRIX_LR (0.005-0.2) and WINDOW_PATTERN (SSSL or LLLL)."},
]
SECRET = "sk-jaxhpo-test-7f3a9c1e-do-not-leak"
needs_llm = pytest.mark.skipif(llm_missing() is not None, reason=llm_missing() or "")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return True


def check_reply(data) -> None:
    assert set(SCHEMA["required"]) <= set(data)
    assert isinstance(data["DEPTH"], int) and not isinstance(data["DEPTH"], bool)
    assert isinstance(data["MATRIX_LR"], (int, float))
    assert data["WINDOW_PATTERN"] in ("SSSL", "LLLL")


def test_schema_reply_parses_and_validates(llm_server):
    with LLMClient(LLMConfig(temperature=0.0, max_tokens=200), base_url=llm_server) as client:
        reply = client.chat(PROMPT, schema=SCHEMA)
    check_reply(json.loads(reply.text))
    assert reply.latency_s > 0 and reply.attempts == 1
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    assert reply.model


def test_n_replies_from_a_server_that_ignores_n(llm_server):
    # llama-cpp-python's server drops the API's `n` and answers one choice: the client asks again for the rest.
    with LLMClient(LLMConfig(max_tokens=60), base_url=llm_server) as client:
        replies = client.chat_n(PROMPT, 3, schema=SCHEMA, temperature=1.0)
    assert len(replies) == 3
    for reply in replies:
        check_reply(json.loads(reply.text))
        assert reply.latency_s > 0 and reply.prompt_tokens > 0  # three requests, each its own cost


def test_rejected_response_format_falls_back_to_plain_text(llm_server):
    # llama-cpp-python's server does not take OpenAI's json_schema form: the client asks again without it.
    cfg = LLMConfig(temperature=0.0, max_tokens=60, schema_style="openai", retries=0)
    with LLMClient(cfg, base_url=llm_server) as client:
        reply = client.chat(PROMPT, schema=SCHEMA)
        assert reply.text.strip()
        assert client.response_format_supported is False
        assert client.response_format(SCHEMA) is None  # remembered for the session


def test_closed_port_fails_after_retries_in_one_line():
    port = closed_port()
    cfg = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", retries=1, backoff_s=0.05, timeout_s=5)
    t0 = time.perf_counter()
    with LLMClient(cfg) as client, pytest.raises(LLMError) as err:
        client.chat(PROMPT, schema=SCHEMA)
    msg = str(err.value)
    assert "\n" not in msg and "2 attempt" in msg and "connect" in msg and str(port) in msg
    assert time.perf_counter() - t0 < 5


def test_timeout_is_an_llm_error(llm_server):
    cfg = LLMConfig(timeout_s=0.05, max_tokens=40, retries=0, json_mode="none")  # ~2 s of work
    long = [{"role": "user", "content": "Write a long essay about the history of optimization algorithms."}]
    with LLMClient(cfg, base_url=llm_server) as client, pytest.raises(LLMError) as err:
        client.chat(long)
    msg = str(err.value)
    assert "timeout" in msg.lower() and "\n" not in msg


def test_api_key_never_shown(monkeypatch):
    monkeypatch.setenv("JAXHPO_TEST_KEY", SECRET)
    cfg = LLMConfig(provider="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key_env="JAXHPO_TEST_KEY",
                    retries=0)
    client = LLMClient(cfg)
    with pytest.raises(LLMError) as err:
        client.chat(PROMPT)
    for shown in (str(err.value), repr(err.value), repr(client), repr(cfg), str(vars(client))):
        assert SECRET not in shown
    client.close()

    monkeypatch.delenv("JAXHPO_TEST_KEY")
    with LLMClient(cfg) as client, pytest.raises(LLMError) as err:
        client.chat(PROMPT)
    assert "JAXHPO_TEST_KEY" in str(err.value) and "\n" not in str(err.value)


def test_config_checks_and_hydra_group():
    with pytest.raises(LLMError, match=r"invalid llm.json_mode='yaml': choose one of"):
        as_llm_config({"json_mode": "yaml"})
    with pytest.raises(LLMError, match="unknown llm config key"):
        as_llm_config({"api_key": "x"})
    with pytest.raises(LLMError, match="provider openai needs the endpoint"):
        with llm_session(LLMConfig(provider="openai")):
            pass

    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="hydra_configs", version_base=None):
        local = as_llm_config(compose(config_name="llm/local").llm)
        remote = as_llm_config(compose(config_name="llm/openai").llm)
    assert local == LLMConfig()
    assert (remote.provider, remote.base_url, remote.model, remote.api_key_env) == (
        "openai", "https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY"
    )
    assert LLMClient(remote).response_format(SCHEMA)["type"] == "json_schema"
    assert LLMClient(local, base_url="http://x/v1").response_format(SCHEMA) == {"type": "json_object", "schema": SCHEMA}
    # A prompt with a reply format of its own is never put under a JSON grammar, whatever the mode.
    for mode in JSON_MODES:
        for cfg in (local, remote):
            client = LLMClient(dataclasses.replace(cfg, json_mode=mode), base_url="http://x/v1")
            assert client.response_format(TEXT) is None and "response_format" not in client._payload([], TEXT)


@needs_llm
def test_local_server_lifecycle(tmp_path):
    log = tmp_path / "server.log"
    server = LocalServer(n_ctx=1024, n_threads=1, log_path=log).start()
    try:
        port, pid = server.port, server.pid
        assert server.running and accepts(port) and server.startup_seconds > 0
        # n_threads bounds reading the prompt too (llama_cpp.server would have refused an unknown flag)
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert args[args.index(b"--n_threads_batch") + 1] == b"1" and args[args.index(b"--n_threads") + 1] == b"1"
        assert args[args.index(b"--flash_attn") + 1] == b"true"
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
    finally:
        server.stop()
    assert not accepts(port) and not pid_alive(pid) and not server.running
    assert log.stat().st_size > 0
    server.stop()  # idempotent


@needs_llm
def test_exception_in_session_stops_server(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with llm_session(LLMConfig(n_ctx=1024), log_path=tmp_path / "s.log") as client:
            port, pid = client.server.port, client.server.pid
            assert client.startup_seconds > 0 and accepts(port)
            raise RuntimeError("boom")
    assert not accepts(port) and not pid_alive(pid)


@needs_llm
def test_killed_parent_leaves_no_orphan(tmp_path):
    # The study process dies without cleaning up (SIGKILL): the server's watchdog must still stop it.
    code = (
        "import os, sys; from jaxhpo.llm import LocalServer; "
        f"s = LocalServer(n_ctx=1024, log_path={str(tmp_path / 'o.log')!r}).start(); "
        "print(s.pid, s.port, flush=True); os.kill(os.getpid(), 9)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    pid, port = map(int, out.stdout.split())
    # The leader thread shows as a zombie while the others still exit holding the socket: wait for both.
    deadline = time.time() + 10
    while (pid_alive(pid) or accepts(port)) and time.time() < deadline:
        time.sleep(0.2)
    assert not pid_alive(pid) and not accepts(port)


@needs_llm
def test_server_start_failures_are_clear(tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a gguf file")
    server = LocalServer(bad, log_path=tmp_path / "bad.log")
    with pytest.raises(LLMError, match=r"exited with code .*log .*bad\.log: ") as err:
        server.start()
    assert "\n" not in str(err.value) and not server.running

    slow = LocalServer(n_ctx=1024, log_path=tmp_path / "slow.log", startup_timeout_s=0.01)
    with pytest.raises(LLMError, match=r"did not answer .* within 0.01 s"):
        slow.start()
    assert not slow.running
