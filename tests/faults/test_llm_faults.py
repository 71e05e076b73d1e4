"""The LLM client against a server that misbehaves (tests/faults/fake_llm.py): every failure is a one-line
LLMError without the API key, within the deadline arithmetic; retries, Retry-After and the start-up check do
what they say. No JAX, no trials, no real model: seconds in all.

Timings are asserted with generous slack (the machine is shared): an upper bound from the deadlines plus 5 s,
and a lower bound only where a wait must really have happened (a deadline, a Retry-After)."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from jaxhpo.llm.client import LLMClient, LLMConfig, LLMError, retry_after_seconds
from jaxhpo.llm.exchange import MAX_REPLY_BYTES, THREAD_NAME
from jaxhpo.proposers.llm import llm_turn
from jaxhpo.space import Space
from tests.faults.fake_llm import FakeLLM

SECRET = "sk-faults-3b9e0c4d7a1f4e2b8c6d-never-store-me"
KEY_ENV = "JAXHPO_FAULTS_KEY"
TIMEOUT = 2.0
BACKOFF = 0.1
SLACK = 5.0
PROMPT = [{"role": "user", "content": "Propose DEPTH and WINDOW_PATTERN as JSON."}]
SCHEMA = {"type": "object", "properties": {"DEPTH": {"type": "integer"}}, "required": ["DEPTH"]}
SPACE = Space("faults", {
    "DEPTH": {"type": "int", "key": "model.depth", "low": 1, "high": 8, "default": 4},
    "WINDOW_PATTERN": {"type": "categorical", "key": "model.window_pattern", "choices": ["SSSL", "LLLL"]},
})  # fmt: skip


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def make_client(url: str, **overrides) -> LLMClient:
    cfg = dict(provider="openai", base_url=url, model="fake-model", api_key_env=KEY_ENV, timeout_s=TIMEOUT,
               retries=0, backoff_s=BACKOFF)  # fmt: skip
    return LLMClient(LLMConfig(**{**cfg, **overrides}))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def assert_clean(msg: str) -> None:
    assert "\n" not in msg and SECRET not in msg and SECRET[:16] not in msg, msg


def backoffs(retries: int) -> float:
    return sum(BACKOFF * 2**k for k in range(retries))


# name: (script, retries, what the message must say, requests the fake must see, attempts made, whether each
# attempt waits out its deadline)
FAILURES = {
    "trickle": (["trickle"], 1, "timeout: no complete reply within 2 s", 2, 2, True),
    "hang": (["hang"], 1, "timeout: no complete reply within 2 s", 2, 2, True),
    "hang_after_headers": (["hang_after_headers"], 1, "timeout: no complete reply within 2 s", 2, 2, True),
    "reset": (["reset"], 1, "transport error", 2, 2, False),
    "garbage": (["garbage"], 1, "malformed response (application/json): this is not JSON", 2, 2, False),
    "html": (["html"], 1, "malformed response (text/html; charset=utf-8): <!DOCTYPE html>", 2, 2, False),
    "huge": (["huge"], 1, f"reply larger than {MAX_REPLY_BYTES} bytes", 2, 2, False),
    "huge_declared": (["huge_declared"], 0, f"reply larger than {MAX_REPLY_BYTES} bytes (Content-Length", 1, 1,
                      False),
    "status_401": (["status_401"], 1, "HTTP 401: ", 1, 1, False),  # not retried; its body quotes the key
    "status_503": (["status_503"], 2, "failed after 3 attempt(s): HTTP 503", 3, 3, False),
    # the re-send without response_format shares the attempt's deadline
    "reject_then_hang": (["reject_format", "hang"], 0, "timeout: no complete reply within 2 s", 2, 1, True),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FAILURES))
def test_misbehaving_server_gives_one_line_error_in_time(name):
    script, retries, says, n_requests, attempts, waits = FAILURES[name]
    fake = FakeLLM(*script)
    with fake as url, make_client(url, retries=retries) as client:
        t0 = time.monotonic()
        with pytest.raises(LLMError) as err:
            client.chat(PROMPT, SCHEMA)
        elapsed = time.monotonic() - t0
        # The abandoned attempt's thread ends with it (its socket is cut), not a read or a trickle later.
        end = time.monotonic() + 2.0
        while request_threads() and time.monotonic() < end:
            time.sleep(0.05)
        assert not request_threads()
    msg = str(err.value)
    assert_clean(msg)
    assert says in msg and url in msg, msg
    assert elapsed < attempts * TIMEOUT + backoffs(attempts - 1) + SLACK, (elapsed, msg)
    if waits:  # the deadline is total, and not early: each attempt had its full timeout_s
        assert elapsed >= attempts * TIMEOUT - 0.1, elapsed
    assert len(fake.requests) == n_requests, [r.behaviour for r in fake.requests]
    assert all(r.key == SECRET for r in fake.requests)  # the key did go to the server, and only there
    assert not fake.alive_threads()


def test_reset_then_ok_succeeds_on_retry():
    fake = FakeLLM("reset", "ok")
    with fake as url, make_client(url, retries=1) as client:
        reply = client.chat(PROMPT, SCHEMA)
    assert reply.attempts == 2 and json.loads(reply.text)["DEPTH"] == 3
    assert len(fake.requests) == 2


def test_429_retry_after_is_honoured():
    fake = FakeLLM("status_429", "ok")
    with fake as url, make_client(url, retries=1) as client:
        t0 = time.monotonic()
        reply = client.chat(PROMPT, SCHEMA)
        elapsed = time.monotonic() - t0
    first, second = fake.requests
    assert reply.attempts == 2 and reply.text
    assert second.t - first.t >= 0.95, "Retry-After: 1 must beat the 0.1 s backoff"
    assert elapsed < 1 + 2 * TIMEOUT + SLACK


def test_503_then_ok_backs_off_and_succeeds():
    fake = FakeLLM("status_503", "ok")
    with fake as url, make_client(url, retries=1) as client:
        reply = client.chat(PROMPT, SCHEMA)
    first, second = fake.requests
    assert reply.attempts == 2 and second.t - first.t >= BACKOFF * 0.9


def test_503_with_retry_after_date_form():
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3), usegmt=True)
    fake = FakeLLM(("status_503", soon), "ok")
    with fake as url, make_client(url, retries=1, timeout_s=5.0) as client:
        reply = client.chat(PROMPT, SCHEMA)
    first, second = fake.requests
    # An HTTP date has whole seconds: "3 s from now" is 2 to 3 s after it was written, and the first request
    # came soon after that (a loaded machine may take a few tenths to start the fake and the client).
    assert reply.attempts == 2 and second.t - first.t >= 1.5


def test_retry_after_longer_than_timeout_gives_up_at_once():
    fake = FakeLLM(("status_429", 120), "ok")
    with fake as url, make_client(url, retries=2) as client:
        t0 = time.monotonic()
        with pytest.raises(LLMError) as err:
            client.chat(PROMPT, SCHEMA)
        elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert_clean(msg)
    assert "HTTP 429" in msg and "asked to wait 120 s" in msg and "llm.timeout_s=2 s" in msg, msg
    assert len(fake.requests) == 1 and elapsed < SLACK


def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds("-4") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None and retry_after_seconds("inf") is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_seconds(later) <= 30
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_rejected_response_format_is_resent_without_it():
    fake = FakeLLM("reject_format", "ok")
    with fake as url, make_client(url) as client:
        reply = client.chat(PROMPT, SCHEMA)
        assert reply.attempts == 1 and client.response_format_supported is False
    first, second = fake.requests
    assert "response_format" in first.json() and "response_format" not in second.json()


def test_echoed_key_never_reaches_the_reply_or_the_turn_record():
    fake = FakeLLM("echo_key")
    with fake as url, make_client(url, json_mode="none") as client:
        reply = client.chat(PROMPT)
        params, turn = llm_turn(client, "llm", PROMPT, SPACE, None, None)
    assert fake.requests[0].key == SECRET  # the fake did see it, and echoed it
    assert SECRET not in reply.text and "***" in reply.text and SECRET not in reply.model
    assert params == {"DEPTH": 3, "WINDOW_PATTERN": "SSSL"}
    stored = json.dumps(turn, ensure_ascii=False)
    assert SECRET not in stored and SECRET[:16] not in stored, stored
    assert "***" in turn["reply"] and turn["fallback"] is None
    assert any("***" in r for r in turn["repairs"])  # the echoed key was a JSON key: dropped, and scrubbed


def test_scrub():
    with make_client("http://127.0.0.1:9/v1") as client:
        assert client.scrub(f"a {SECRET} b {SECRET}") == "a *** b ***"
        assert client.scrub(None) is None and client.scrub(3) == 3
    with make_client("http://127.0.0.1:9/v1", api_key_env=None) as client:
        assert client.scrub(f"x {SECRET}") == f"x {SECRET}"  # no key configured: nothing to hide


def test_check_unreachable_is_a_reason_fast():
    port = closed_port()
    with make_client(f"http://127.0.0.1:{port}/v1") as client:
        t0 = time.monotonic()
        reason = client.check()
        elapsed = time.monotonic() - t0
    assert reason and reason.startswith(f"cannot connect to http://127.0.0.1:{port}/v1 (") and elapsed < SLACK
    assert_clean(reason)


def test_check_reachable_server():
    fake = FakeLLM("ok")
    with fake as url, make_client(url) as client:
        assert client.check() is None
    (req,) = fake.requests
    assert (req.method, req.path, req.key) == ("GET", "/v1/models", SECRET)
    for reachable in ("status_404", "status_401"):
        with FakeLLM(reachable) as url, make_client(url) as client:
            assert client.check() is None, reachable
    with FakeLLM("status_503") as url, make_client(url) as client:
        reason = client.check()
    assert reason == f"{url}/models answered HTTP 503"


def test_check_silent_server_is_a_reason_at_the_deadline():
    with FakeLLM("hang") as url, make_client(url, timeout_s=1.0) as client:
        t0 = time.monotonic()
        reason = client.check()
        elapsed = time.monotonic() - t0
    assert reason == f"no answer from {url}/models within 1 s"
    assert 0.9 <= elapsed < 1 + SLACK


def test_check_unset_key_variable_raises(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with make_client("http://127.0.0.1:9/v1") as client:
        with pytest.raises(LLMError) as err:
            client.check()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"llm.api_key_env={KEY_ENV} but the environment variable")
        assert "llm.api_key_env=null" in msg
        with pytest.raises(LLMError, match=KEY_ENV):
            client.chat(PROMPT)
    monkeypatch.setenv(KEY_ENV, "")
    with make_client("http://127.0.0.1:9/v1") as client, pytest.raises(LLMError, match="is not set"):
        client.check()
