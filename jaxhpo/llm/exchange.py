"""One HTTP exchange with a total deadline, whatever the server does: `exchange(http, method, url, deadline=...)`.

httpx's timeouts bound each connect and each read, not their sum (and not DNS): a server that sends its headers
and then one byte a second is never timed out. So the exchange runs in a daemon thread and the caller waits for
it with the exact time left. At the deadline the exchange is abandoned: its socket is shut down, which ends a
read the thread is blocked in at once, and the thread stops at its next chunk in any case. A reply body over
`max_bytes` is read no further. The httpx client must not keep connections alive (`max_keepalive_connections=0`),
so that each exchange's socket is its own to cut and a half-read connection is never reused.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

MAX_REPLY_BYTES = 4 * 1024 * 1024  # a bigger (or endless) body is a failure; a chat reply is kilobytes
THREAD_NAME = "jaxhpo-llm-request"  # the exchange's worker threads, as threading.enumerate() lists them


class ExchangeFailed(Exception):
    """The exchange got no usable reply; the message is one line."""


class Unreachable(ExchangeFailed):
    """No connection could be made (refused, no route, DNS, connect timeout)."""


class Deadline(ExchangeFailed):
    """The exchange did not finish by its deadline."""


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes


def exchange(http: httpx.Client, method: str, url: str, *, deadline: float, headers: dict, payload: Any = None,
             read_body: bool = True, max_bytes: int = MAX_REPLY_BYTES) -> Reply:  # fmt: skip
    """One request and its whole reply (or only its status and headers, `read_body=False`), by `deadline` on
    time.monotonic()'s clock; ExchangeFailed (Deadline, Unreachable, or another one-line failure) otherwise."""
    state = _State()
    worker = threading.Thread(
        target=_run, args=(state, http, method, url, deadline, headers, payload, read_body, max_bytes),
        name=THREAD_NAME, daemon=True,
    )  # fmt: skip
    worker.start()
    try:
        finished = state.done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        if not state.done.is_set():  # the deadline, or a KeyboardInterrupt in the wait
            state.abandon()
    if not finished:
        raise Deadline("no complete reply by the deadline")
    if state.error is not None:
        raise state.error
    assert state.reply is not None
    return state.reply


def _cut(sock: Any) -> None:
    # socket.socket.shutdown, not the object's own: SSLSocket.shutdown also drops its SSL state, which the
    # worker thread may be using at this very moment; the plain shutdown only makes its blocked read return.
    if isinstance(sock, socket.socket):
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # already closed (fd -1), or never connected
            pass


class _State:
    """What the waiting thread and the worker thread of one exchange share."""

    def __init__(self):
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.abandoned = False
        self.sock: Any = None  # the connection's socket, once connected (from httpcore's trace events)
        self.reply: Reply | None = None
        self.error: ExchangeFailed | None = None

    def trace(self, event: str, info: dict) -> None:
        if not event.endswith(("connect_tcp.complete", "start_tls.complete")):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if hasattr(stream, "get_extra_info") else None
        with self.lock:
            self.sock, abandoned = sock, self.abandoned
        if abandoned:
            _cut(sock)

    def abandon(self) -> None:
        """Give up: the worker stops at its next chunk, and a read it is blocked in returns now."""
        with self.lock:
            self.abandoned, sock = True, self.sock
        _cut(sock)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:120] or type(e).__name__


def _run(state: _State, http: httpx.Client, method: str, url: str, deadline: float, headers: dict, payload: Any,
         read_body: bool, max_bytes: int) -> None:  # fmt: skip
    try:
        state.reply = _transfer(state, http, method, url, deadline, headers, payload, read_body, max_bytes)
    except ExchangeFailed as e:
        state.error = e
    except httpx.ConnectTimeout:
        state.error = Unreachable("cannot connect (connect timeout)")
    except httpx.TimeoutException as e:  # a read or write ran into the deadline before the waiter noticed
        state.error = Deadline(f"no complete reply by the deadline ({type(e).__name__})")
    except httpx.ConnectError as e:
        state.error = Unreachable(f"cannot connect ({_one_line(e)})")
    except httpx.TransportError as e:
        state.error = ExchangeFailed(f"transport error {type(e).__name__}: {_one_line(e)}")
    except Exception as e:  # anything else: still this exchange's one-line failure, never a thread traceback
        state.error = ExchangeFailed(f"{type(e).__name__}: {_one_line(e)}")
    finally:
        state.done.set()


def _transfer(state: _State, http: httpx.Client, method: str, url: str, deadline: float, headers: dict,
              payload: Any, read_body: bool, max_bytes: int) -> Reply | None:  # fmt: skip
    left = deadline - time.monotonic()
    if left <= 0:
        raise Deadline("no time left for the request")
    # Each connect, write and read is also bounded by the time left, so the worker ends by the deadline even where
    # abandon() cannot reach its socket.
    timeout = httpx.Timeout(left, connect=min(left, 10.0))
    with http.stream(method, url, headers=headers, json=payload, timeout=timeout,
                     extensions={"trace": state.trace}) as r:  # fmt: skip
        if not read_body:
            return Reply(r.status_code, r.headers, b"")
        declared = r.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ExchangeFailed(f"reply larger than {max_bytes} bytes (Content-Length {declared})")
        chunks, size = [], 0
        for chunk in r.iter_bytes():
            if state.abandoned:
                return None
            size += len(chunk)
            if size > max_bytes:
                raise ExchangeFailed(f"reply larger than {max_bytes} bytes")
            chunks.append(chunk)
        return Reply(r.status_code, r.headers, b"".join(chunks))
