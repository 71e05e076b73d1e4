"""A small OpenAI-compatible chat-completions client, and the `llm/` config group's schema.

Why httpx and not the `openai` SDK: it is one small, pure-Python dependency; timeouts, retries and error
messages are explicit here rather than hidden in an SDK's defaults (the SDK retries on its own, and its
exceptions carry multi-line bodies); and the same few hundred lines work with any server that speaks the
`/v1/chat/completions` API — the embedded llama.cpp server, vLLM, SGLang, or a hosted endpoint.

Structured output (`json_mode`):

- ``"schema"``: constrain the reply to a JSON schema. The request shape depends on the server
  (``schema_style``, by default chosen by ``provider``):
  ``"llama_cpp"`` (provider ``local``) sends ``{"type": "json_object", "schema": SCHEMA}``, llama-cpp-python's
  server form, which it compiles to a grammar; ``"openai"`` (provider ``openai``) sends
  ``{"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": false}}``, the form
  OpenAI, vLLM and SGLang accept.
- ``"object"``: ``{"type": "json_object"}`` without a schema (any JSON object).
- ``"none"``: no ``response_format``; the reply is plain text.

A request whose prompt asks for a format of its own (LLAMBO's ``## ... ##``, agent_code's Python block) passes
``schema=TEXT`` and is sent without ``response_format`` whatever ``json_mode`` says: under a JSON grammar such a
reply cannot be written at all.

If a server answers HTTP 400 with a message that mentions ``response_format`` (or 422, FastAPI's validation
error, or 500, which llama-cpp-python's server answers for the json_schema form), the request is sent once more
without it and the client remembers that for the rest of its life. Replies are therefore read with
:func:`jaxhpo.llm.prompt.extract_object`, which copes with prose, code fences and small models' JSON mistakes.

Grammars constrain shape, not numeric bounds: clamp numbers to the search space after parsing.

Time limits. ``timeout_s`` is the total time of one attempt -- connect, send, and the whole reply, the re-send
without ``response_format`` included -- whatever the server does (silent after connecting or after its headers,
one byte a second, a body that never ends): each request is a bounded exchange (:mod:`jaxhpo.llm.exchange`, a
daemon thread the caller waits for with the exact time left and abandons at the deadline), and a reply body over
``exchange.MAX_REPLY_BYTES`` is read no further.
Both are retryable failures, as are connection errors, HTTP 408/409/425/429/5xx and a 200 whose body is not a
chat completion; other 4xx fail at once. Before retry k the client sleeps ``backoff_s * 2**(k-1)``, or what a
429/503's ``Retry-After`` asks (if that is over ``timeout_s`` it gives up and says so). So ``chat()`` returns or
raises within ``(retries + 1) * timeout_s`` plus the sleeps, each at most ``max(backoff_s * 2**(k-1), timeout_s)``.
:meth:`LLMClient.check` is a start-up probe (``GET /models``) bounded the same way by ``min(timeout_s, 10)``.

The API key is read from ``os.environ[cfg.api_key_env]`` at request time and never stored on the client;
it is scrubbed from every error message and from the reply's text (:meth:`LLMClient.scrub`, which
:func:`jaxhpo.proposers.llm.llm_turn` also applies to every text of an LLM turn it records), and neither the
config nor the client shows it in its repr.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping, Optional

import httpx
from hydra.core.config_store import ConfigStore

from jaxhpo.llm.exchange import Deadline, ExchangeFailed, Reply, Unreachable, exchange

PROVIDERS = ("local", "openai")
JSON_MODES = ("schema", "object", "none")
SCHEMA_STYLES = ("llama_cpp", "openai")
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}  # worth another attempt; other 4xx fail at once
CHECK_TIMEOUT_S = 10.0  # the most LLMClient.check() waits for an answer
TEXT = "text"  # as a request's schema: a plain-text reply, no response_format (see the module docstring)


@dataclass
class LLMConfig:
    """The `llm/` config group (hydra_configs/llm/): which chat model to ask, and how."""

    provider: str = "local"  # "local": jaxhpo serves the embedded SmolLM2 itself when base_url is null;
    # "openai": any OpenAI-compatible endpoint at base_url
    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, llama.cpp), https://api.openai.com/v1
    model: str = "SmolLM2-135M-Instruct"
    api_key_env: Optional[str] = None  # the NAME of the environment variable holding the key, never the key
    temperature: float = 0.7
    max_tokens: int = 400
    timeout_s: float = 300.0  # total seconds per attempt (connect, send, the whole reply): a CPU is slow
    retries: int = 2  # extra attempts after the first, with exponential backoff
    backoff_s: float = 1.0  # sleep before retry k (1-based): backoff_s * 2**(k-1)
    json_mode: str = "schema"  # "schema" | "object" | "none" (see the module docstring)
    schema_style: Optional[str] = None  # "llama_cpp" | "openai"; None: llama_cpp for local, openai for openai
    n_ctx: int = 8192  # local server context
    n_threads: Optional[int] = None  # local server threads, generating and reading the prompt (None: llama.cpp's defaults)
    flash_attn: bool = True  # local server: llama.cpp's flash attention (reads a 5k-token prompt ~1.5x faster on a CPU)
    startup_timeout_s: float = 120.0  # local server: how long to wait for it to answer


ConfigStore.instance().store(group="llm", name="llm_schema", node=LLMConfig)


class LLMError(RuntimeError):
    """Any failure to get a usable reply from the LLM; the message is one line and never holds the API key."""


@dataclass
class Completion:
    """One chat completion: the reply's text and what it cost."""

    text: str
    latency_s: float  # wall time of the successful attempt
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    attempts: int  # attempts made, the successful one included
    finish_reason: str | None = None  # "stop", or "length" when max_tokens cut the reply short


def as_llm_config(cfg: Any) -> LLMConfig:
    """An LLMConfig from an LLMConfig, an OmegaConf node or a mapping; checked, LLMError if invalid."""
    if isinstance(cfg, LLMConfig):
        out = cfg
    else:
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover - hydra-core brings omegaconf
            pass
        if not isinstance(cfg, Mapping):
            raise LLMError(f"invalid llm config of type {type(cfg).__name__}: expected a mapping")
        names = {f.name for f in fields(LLMConfig)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise LLMError(f"unknown llm config key(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        out = LLMConfig(**dict(cfg))
    check_llm_config(out)
    return out


def check_llm_config(cfg: LLMConfig) -> None:
    """Raise a one-line LLMError for the first invalid value in cfg."""

    def bad(key: str, value: Any, why: str) -> LLMError:
        return LLMError(f"invalid llm.{key}={value!r}: {why}")

    if cfg.provider not in PROVIDERS:
        raise bad("provider", cfg.provider, f"choose one of: {', '.join(PROVIDERS)}")
    if cfg.json_mode not in JSON_MODES:
        raise bad("json_mode", cfg.json_mode, f"choose one of: {', '.join(JSON_MODES)}")
    if cfg.schema_style is not None and cfg.schema_style not in SCHEMA_STYLES:
        raise bad("schema_style", cfg.schema_style, f"choose one of: {', '.join(SCHEMA_STYLES)}, or null")
    if cfg.base_url is not None and not re.match(r"^https?://", str(cfg.base_url)):
        raise bad("base_url", cfg.base_url, "must start with http:// or https://")
    if not cfg.model:
        raise bad("model", cfg.model, "must be a non-empty model name")
    if not cfg.temperature >= 0:
        raise bad("temperature", cfg.temperature, "must be >= 0")
    if not cfg.max_tokens > 0:
        raise bad("max_tokens", cfg.max_tokens, "must be > 0")
    if not cfg.timeout_s > 0:
        raise bad("timeout_s", cfg.timeout_s, "must be > 0 seconds")
    if not cfg.retries >= 0:
        raise bad("retries", cfg.retries, "must be >= 0")
    if not cfg.backoff_s >= 0:
        raise bad("backoff_s", cfg.backoff_s, "must be >= 0 seconds")
    if not cfg.n_ctx > 0:
        raise bad("n_ctx", cfg.n_ctx, "must be > 0 tokens")
    if cfg.n_threads is not None and not cfg.n_threads > 0:
        raise bad("n_threads", cfg.n_threads, "must be > 0, or null for llama.cpp's default")
    if not cfg.startup_timeout_s > 0:
        raise bad("startup_timeout_s", cfg.startup_timeout_s, "must be > 0 seconds")


def one_line(text: Any, limit: int = 300) -> str:
    """Whitespace collapsed to single spaces, cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _excerpt(text: str, limit: int = 200) -> str:
    # A body may hold NULs or terminal escapes: they have no place in a one-line log message.
    head = text[: 4 * limit]
    return one_line("".join(c if c.isprintable() or c.isspace() else "?" for c in head), limit)


class _Retryable(Exception):
    """An attempt failed in a way another attempt might not; `retry_after`: the wait the server asked for."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """An attempt failed in a way no retry will fix."""


def retry_after_seconds(value: str | None) -> float | None:
    """The wait a `Retry-After` header asks for, in seconds (delta-seconds or HTTP-date form); None if absent or
    unreadable. A date in the past is 0."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class LLMClient:
    """A synchronous chat-completions client for one OpenAI-compatible endpoint.

    `base_url` (e.g. the embedded server's URL) overrides `cfg.base_url`. `startup_seconds` is the time it took
    to start a local server for this client (set by :func:`jaxhpo.llm.llm_session`; 0 for a remote endpoint).
    """

    def __init__(self, cfg: LLMConfig | Mapping[str, Any], base_url: str | None = None):
        self.cfg = as_llm_config(cfg)
        url = base_url if base_url is not None else self.cfg.base_url
        if not url:
            raise LLMError("no LLM endpoint: set llm.base_url, or use provider local to start the embedded server")
        self.base_url = str(url).rstrip("/")
        self.startup_seconds = 0.0
        self.server = None  # the LocalServer behind this client, when llm_session started one
        self.schema_style = self.cfg.schema_style or ("llama_cpp" if self.cfg.provider == "local" else "openai")
        self.response_format_supported = True  # set False after a server rejects response_format
        # Proxy variables (HTTPS_PROXY, ...) apply to remote endpoints only, never to a loopback server.
        loopback = httpx.URL(self.base_url).host in ("127.0.0.1", "localhost", "::1")
        # No keep-alive: every exchange opens its own connection, so the trace hook always sees the socket that
        # abandon() must cut, and a connection a misbehaving server left half-read is never reused. A connect
        # costs milliseconds next to a completion's seconds.
        self._http = httpx.Client(
            timeout=self.cfg.timeout_s, trust_env=not loopback, limits=httpx.Limits(max_keepalive_connections=0)
        )

    def __repr__(self) -> str:
        return f"LLMClient(provider={self.cfg.provider!r}, base_url={self.base_url!r}, model={self.cfg.model!r})"

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the API key ------------------------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        name = self.cfg.api_key_env
        if not name:
            return None
        key = os.environ.get(name)
        if not key:
            raise LLMError(
                f"llm.api_key_env={name} but the environment variable {name} is not set; export it, "
                "or set llm.api_key_env=null for a server without a key"
            )
        return key

    def scrub(self, text: Any) -> Any:
        """`text` with the API key (when one is configured and set) replaced by ``***``; non-strings as given."""
        name = self.cfg.api_key_env
        key = os.environ.get(name) if name else None
        if key and isinstance(text, str):
            return text.replace(key, "***")
        return text

    def _message(self, text: str) -> str:
        # Scrub before cutting to one line: a cut through the key would leave a prefix the scrub cannot see.
        return one_line(self.scrub(text), 500)

    @staticmethod
    def _headers(key: str | None, **extra: str) -> dict:
        headers = {"Accept": "application/json", **extra}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    # -- request building -------------------------------------------------------------------------------------

    def response_format(self, schema: dict | str | None) -> dict | None:
        """The `response_format` this client sends for `schema` (None: none is sent; TEXT: never one)."""
        mode = self.cfg.json_mode
        if mode == "none" or schema == TEXT or not self.response_format_supported:
            return None
        if mode == "object" or schema is None:
            return {"type": "json_object"}
        if self.schema_style == "llama_cpp":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": False}}

    def _payload(self, messages: list[dict], schema: dict | str | None, max_tokens: int | None = None,
                 temperature: float | None = None, n: int = 1) -> dict:  # fmt: skip
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": list(messages),
            "temperature": self.cfg.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.cfg.max_tokens,
        }
        if n > 1:
            body["n"] = n
        fmt = self.response_format(schema)
        if fmt is not None:
            body["response_format"] = fmt
        return body

    # -- one bounded HTTP exchange ----------------------------------------------------------------------------

    def _exchange(self, method: str, url: str, deadline: float, limit_s: float, headers: dict,
                  payload: Any = None) -> Reply:  # fmt: skip
        """One bounded exchange (jaxhpo.llm.exchange) on this client's connections; its failures are retryable."""
        try:
            return exchange(self._http, method, url, deadline=deadline, headers=headers, payload=payload)
        except Deadline:
            raise _Retryable(f"timeout: no complete reply within {limit_s:g} s") from None
        except ExchangeFailed as e:
            raise _Retryable(str(e)) from None


    # -- the calls --------------------------------------------------------------------------------------------

    def chat(self, messages: list[dict], schema: dict | str | None = None, max_tokens: int | None = None,
             temperature: float | None = None) -> Completion:  # fmt: skip
        """Send `messages` and return the reply (API key scrubbed from its text); LLMError (one line) once every
        attempt has failed, or at once for a failure no retry fixes (HTTP 4xx but 408/409/425/429). `max_tokens`
        and `temperature` replace llm.max_tokens and llm.temperature for this request (a method's own values)."""
        return self._request(messages, schema, max_tokens, temperature, 1)[0]

    def chat_n(self, messages: list[dict], n: int, schema: dict | str | None = None, max_tokens: int | None = None,
               temperature: float | None = None) -> list[Completion]:  # fmt: skip
        """`n` sampled replies to the same messages (the API's `n`). A server that returns fewer choices than asked
        (llama-cpp-python's ignores `n`) is asked again for the rest; a request's cost is on its first reply."""
        replies: list[Completion] = []
        while len(replies) < n:
            replies += self._request(messages, schema, max_tokens, temperature, n - len(replies))
        return replies[:n]

    def _request(self, messages: list[dict], schema: dict | str | None, max_tokens: int | None, temperature: float | None,
                 n: int) -> list[Completion]:  # fmt: skip
        key = self._api_key()
        headers = self._headers(key, **{"Content-Type": "application/json"})
        url = f"{self.base_url}/chat/completions"
        total, last = self.cfg.retries + 1, "no attempt made"
        for attempt in range(1, total + 1):
            try:
                done = self._attempt(url, headers, messages, schema, attempt, max_tokens, temperature, n)
            except _Fatal as e:
                raise LLMError(self._message(f"LLM request to {url} failed: {e}")) from None
            except _Retryable as e:
                last = str(e)
                if attempt == total:
                    break
                wait = self.cfg.backoff_s * 2 ** (attempt - 1)
                if e.retry_after is not None:
                    if e.retry_after > self.cfg.timeout_s:
                        raise LLMError(self._message(
                            f"LLM request to {url} failed: {e}; the server asked to wait {round(e.retry_after, 1):g} s "
                            f"before retrying, more than llm.timeout_s={self.cfg.timeout_s:g} s"
                        )) from None  # fmt: skip
                    wait = e.retry_after
                time.sleep(wait)
                continue
            for c in done:
                c.text, c.model = self.scrub(c.text), self.scrub(c.model)
            return done
        raise LLMError(self._message(f"LLM request to {url} failed after {total} attempt(s): {last}"))

    def _attempt(self, url: str, headers: dict, messages: list[dict], schema: dict | str | None, attempts: int,
                 max_tokens: int | None, temperature: float | None, n: int) -> list[Completion]:  # fmt: skip
        body = self._payload(messages, schema, max_tokens, temperature, n)
        limit = self.cfg.timeout_s
        deadline = time.monotonic() + limit
        t0 = time.perf_counter()
        r = self._exchange("POST", url, deadline, limit, headers, body)
        text = self.scrub(r.body.decode("utf-8", errors="replace"))
        if r.status in (400, 422, 500) and "response_format" in body and "response_format" in text:
            # The server does not take this response_format: ask once more without, and keep it off. The second
            # request shares the attempt's deadline, so an attempt never takes longer than timeout_s.
            self.response_format_supported = False
            body.pop("response_format")
            t0 = time.perf_counter()
            r = self._exchange("POST", url, deadline, limit, headers, body)
            text = self.scrub(r.body.decode("utf-8", errors="replace"))
        latency = time.perf_counter() - t0
        if r.status != 200:
            msg = f"HTTP {r.status}: {_excerpt(text)}"
            if r.status not in RETRY_STATUSES:
                raise _Fatal(msg)
            wait = retry_after_seconds(r.headers.get("retry-after")) if r.status in (429, 503) else None
            raise _Retryable(msg, retry_after=wait)
        try:
            data = json.loads(r.body)
            choices = list(data["choices"][:n])
            contents = [choice["message"]["content"] for choice in choices]
            choice = choices[0]
        except (ValueError, KeyError, IndexError, TypeError):
            kind = r.headers.get("content-type") or "no content-type"
            raise _Retryable(f"malformed response ({one_line(kind, 60)}): {_excerpt(text)}") from None
        kept = [(c, t) for c, t in zip(choices, contents) if isinstance(t, str) and t.strip()]
        if not kept:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            raise _Retryable(f"empty content (finish_reason={reason!r})")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        model = str(data.get("model") or self.cfg.model)
        first = {"latency_s": latency, "prompt_tokens": usage.get("prompt_tokens"),
                 "completion_tokens": usage.get("completion_tokens")}  # fmt: skip
        rest = {"latency_s": 0.0, "prompt_tokens": 0 if usage else None, "completion_tokens": 0 if usage else None}
        return [
            Completion(text=t, model=model, attempts=attempts, finish_reason=c.get("finish_reason"),
                       **(first if i == 0 else rest))  # fmt: skip
            for i, (c, t) in enumerate(kept)
        ]

    def check(self) -> str | None:
        """A cheap start-up check: None if the endpoint answers, else a one-line reason why not.

        LLMError (one line) when `llm.api_key_env` names an unset variable. Otherwise one ``GET {base_url}/models``
        within min(timeout_s, 10) s: any HTTP status below 500 counts as an answer (some servers have no /models,
        and a 401 still proves the server is there); never raises for an unreachable or failing endpoint.
        """
        key = self._api_key()
        url = f"{self.base_url}/models"
        limit = min(self.cfg.timeout_s, CHECK_TIMEOUT_S)
        try:
            r = exchange(self._http, "GET", url, deadline=time.monotonic() + limit, headers=self._headers(key),
                         read_body=False)  # fmt: skip
        except Unreachable as e:
            detail = str(e).removeprefix("cannot connect").strip(" ()") or "no connection"
            return self._message(f"cannot connect to {self.base_url} ({detail})")
        except Deadline:
            return self._message(f"no answer from {url} within {limit:g} s")
        except ExchangeFailed as e:
            return self._message(f"{url}: {e}")
        if r.status >= 500:
            return self._message(f"{url} answered HTTP {r.status}")
        return None
