"""A fake OpenAI-compatible server on loopback that misbehaves on purpose, for the client's fault tests.

Raw HTTP/1.1 on the socket (socketserver, standard library only), so a behaviour controls every byte and every
pause. One connection carries one request (``Connection: close``). Usage::

    with FakeLLM("status_429", "ok") as url:   # http://127.0.0.1:PORT/v1
        LLMClient(LLMConfig(base_url=url, ...)).chat(...)
    fake.requests  # what it received, in order

The script's behaviours are served in order, one per request, the last one repeating. A behaviour is a name,
or a (name, argument) pair:

- ``ok``: a valid chat completion whose content is the argument (default: a small JSON configuration); a GET of
  ``/v1/models`` gets a model list instead.
- ``echo_key``: a valid chat completion that echoes the key of the request's ``Authorization`` header in its
  content (as a JSON key and in prose) and in its ``model``.
- ``reject_format``: HTTP 400 naming ``response_format`` if the request has one, else like ``ok``.
- ``trickle``: status line and headers, then one byte a second until the client goes away.
- ``hang``: read the request, send nothing. ``hang_after_headers``: send the headers (a Content-Length of 100),
  then nothing.
- ``reset``: close the connection with a TCP reset (SO_LINGER 0) right after reading the request.
- ``garbage``: a 200 "application/json" whose body is not JSON. ``html``: a 200 text/html page.
- ``huge``: a 200 whose body (no Content-Length, 64 KiB chunks) goes on for argument MiB (default 64).
  ``huge_declared``: the same with a Content-Length header announcing it.
- ``status_NNN`` (e.g. ``status_401``, ``status_429``, ``status_503``): that HTTP status with a JSON error body
  that quotes the request's key; ``Retry-After: ARG`` when an argument is given (``status_429`` defaults to 1).

Every thread is a daemon thread; leaving the context stops them all (open connections are shut down).
"""

from __future__ import annotations

import json
import select
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONTENT = '{"DEPTH": 3, "WINDOW_PATTERN": "SSSL"}'
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}  # fmt: skip


@dataclass
class Request:
    """One request the fake received; `t` is its arrival on time.monotonic()'s clock."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    t: float
    behaviour: str = ""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def key(self) -> str:
        """The bearer token the client sent ('' if none)."""
        return self.headers.get("authorization", "").removeprefix("Bearer ").strip()


@dataclass
class _Conn:
    sock: socket.socket
    thread: threading.Thread = field(default_factory=threading.current_thread)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False  # FakeLLM joins its own threads, with a bound

    def __init__(self, fake: "FakeLLM"):
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.fake._serve(self.request)


class FakeLLM:
    """The fake server; a context manager that yields its base URL (``http://127.0.0.1:PORT/v1``)."""

    def __init__(self, *script: str | tuple[str, Any]):
        if not script:
            raise ValueError("a FakeLLM needs at least one behaviour")
        self.script = [s if isinstance(s, tuple) else (s, None) for s in script]
        for name, _ in self.script:
            if not (name.startswith("status_") and name[7:].isdigit()) and not hasattr(self, f"_do_{name}"):
                raise ValueError(f"unknown behaviour {name!r}")
        self.requests: list[Request] = []
        self.url = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[_Conn] = []
        self._server: _Server | None = None
        self._loop: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def __enter__(self) -> str:
        self._server = _Server(self)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self._loop = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name="fake-llm-accept", daemon=True)  # fmt: skip
        self._loop.start()
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting, end every connection, and wait (a few seconds at most) for the threads to finish."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for c in conns:
            c.thread.join(5.0)
        if self._loop is not None:
            self._loop.join(5.0)

    def alive_threads(self) -> list[threading.Thread]:
        """The fake's threads still running (none after stop())."""
        with self._lock:
            threads = [c.thread for c in self._conns]
        return [t for t in threads + [self._loop] if t is not None and t.is_alive()]

    # -- one connection ---------------------------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        conn = _Conn(sock)
        with self._lock:
            self._conns.append(conn)
        try:
            req = self._read_request(sock)
            if req is None:
                return
            with self._lock:
                name, arg = self.script[min(len(self.requests), len(self.script) - 1)]
                req.behaviour = name
                self.requests.append(req)
            if name.startswith("status_"):
                self._status(sock, req, int(name[7:]), arg)
            else:
                getattr(self, f"_do_{name}")(sock, req, arg)
        except OSError:  # the client went away: that is the point of most behaviours
            pass

    def _read_request(self, sock: socket.socket) -> Request | None:
        sock.settimeout(5.0)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        sock.settimeout(None)
        return Request(method, path, headers, body, time.monotonic())

    def _wait_gone(self, sock: socket.socket) -> None:
        """Block until the client closes the connection or the fake stops."""
        while not self._stop.is_set():
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and not sock.recv(65536):
                return

    @staticmethod
    def _head(status: int, content_type: str | None = "application/json", length: int | None = None,
              extra: dict | None = None) -> bytes:  # fmt: skip
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Connection: close"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, sock: socket.socket, status: int, body: bytes | str, content_type: str = "application/json",
              extra: dict | None = None) -> None:  # fmt: skip
        body = body.encode() if isinstance(body, str) else body
        sock.sendall(self._head(status, content_type, len(body), extra) + body)

    @staticmethod
    def completion(content: str, model: str = "fake-model") -> str:
        """A chat-completions reply body with `content`."""
        return json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        })  # fmt: skip

    # -- behaviours -------------------------------------------------------------------------------------------

    def _do_ok(self, sock, req: Request, content: str | None) -> None:
        if req.method == "GET" and req.path.rstrip("/").endswith("/models"):
            self._send(sock, 200, json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}))
        else:
            self._send(sock, 200, self.completion(DEFAULT_CONTENT if content is None else content))

    def _do_echo_key(self, sock, req: Request, _arg) -> None:
        key = req.key
        content = json.dumps({"DEPTH": 3, "WINDOW_PATTERN": "SSSL", key: 1}) + f" (you sent the key {key})"
        self._send(sock, 200, self.completion(content, model=f"model-for-{key}"))

    def _do_reject_format(self, sock, req: Request, content: str | None) -> None:
        if "response_format" in (req.json() or {}):
            self._send(sock, 400, json.dumps({"error": {"message": "response_format is not supported"}}))
        else:
            self._do_ok(sock, req, content)

    def _do_trickle(self, sock, req: Request, _arg) -> None:
        sock.sendall(self._head(200))
        while not self._stop.wait(1.0):
            sock.sendall(b" ")

    def _do_hang(self, sock, req: Request, _arg) -> None:
        self._wait_gone(sock)

    def _do_hang_after_headers(self, sock, req: Request, _arg) -> None:
        sock.sendall(self._head(200, length=100))
        self._wait_gone(sock)

    def _do_reset(self, sock, req: Request, _arg) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _do_garbage(self, sock, req: Request, _arg) -> None:
        self._send(sock, 200, b"this is not JSON {{{ ]] \x00\xff")

    def _do_html(self, sock, req: Request, _arg) -> None:
        page = ("<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n<body><h1>Please sign in</h1>\n"
                "<p>This captive portal needs you to log in.</p></body></html>\n")  # fmt: skip
        self._send(sock, 200, page, content_type="text/html; charset=utf-8")

    def _huge(self, sock, mib: int | None, declared: bool) -> None:
        size = (mib or 64) * 1024 * 1024
        sock.sendall(self._head(200, length=size if declared else None))
        chunk = b"x" * 65536
        sent = 0
        while sent < size and not self._stop.is_set():
            sock.sendall(chunk)
            sent += len(chunk)

    def _do_huge(self, sock, req: Request, mib: int | None) -> None:
        self._huge(sock, mib, declared=False)

    def _do_huge_declared(self, sock, req: Request, mib: int | None) -> None:
        self._huge(sock, mib, declared=True)

    def _status(self, sock, req: Request, status: int, retry_after: Any) -> None:
        if retry_after is None and status == 429:
            retry_after = 1
        extra = {"Retry-After": str(retry_after)} if retry_after is not None else None
        body = json.dumps({"error": {"message": f"fake status {status} for key {req.key or '(none)'}",
                                     "type": "fake_error"}})  # fmt: skip
        self._send(sock, status, body, extra=extra)
