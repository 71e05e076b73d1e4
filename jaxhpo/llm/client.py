"""A small OpenAI-compatible chat-completions client, and the `llm/` config group's schema.

Why httpx and not the `openai` SDK: it is one small, pure-Python dependency; timeouts, retries and error
messages are explicit here rather than hidden in an SDK's defaults (the SDK retries on its own, and its
exceptions carry multi-line bodies); and the same 100 lines work with any server that speaks the
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

If a server answers HTTP 400 with a message that mentions ``response_format`` (or 422, FastAPI's validation
error, or 500, which llama-cpp-python's server answers for the json_schema form), the request is sent once more
without it and the client remembers that for the rest of its life. Replies are therefore read with
:func:`jaxhpo.llm.prompt.extract_object`, which copes with prose, code fences and small models' JSON mistakes.

Grammars constrain shape, not numeric bounds: clamp numbers to the search space after parsing.

The API key is read from ``os.environ[cfg.api_key_env]`` at request time and never stored on the client;
it is scrubbed from every error message, and neither the config nor the client shows it in its repr.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

import httpx
from hydra.core.config_store import ConfigStore

PROVIDERS = ("local", "openai")
JSON_MODES = ("schema", "object", "none")
SCHEMA_STYLES = ("llama_cpp", "openai")
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}  # worth another attempt; other 4xx fail at once


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
    timeout_s: float = 300.0  # per request (connect, and the wait for the whole reply): a CPU is slow
    retries: int = 2  # extra attempts after the first, with exponential backoff
    backoff_s: float = 1.0  # sleep before retry k (1-based): backoff_s * 2**(k-1)
    json_mode: str = "schema"  # "schema" | "object" | "none" (see the module docstring)
    schema_style: Optional[str] = None  # "llama_cpp" | "openai"; None: llama_cpp for local, openai for openai
    n_ctx: int = 8192  # local server context
    n_threads: Optional[int] = None  # local server threads (None: llama.cpp's default)
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


class _Retryable(Exception):
    """An attempt failed in a way another attempt might not."""


class _Fatal(Exception):
    """An attempt failed in a way no retry will fix."""


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
        timeout = httpx.Timeout(self.cfg.timeout_s, connect=min(self.cfg.timeout_s, 10.0))
        # Proxy variables (HTTPS_PROXY, ...) apply to remote endpoints only, never to a loopback server.
        loopback = httpx.URL(self.base_url).host in ("127.0.0.1", "localhost", "::1")
        self._http = httpx.Client(timeout=timeout, trust_env=not loopback)

    def __repr__(self) -> str:
        return f"LLMClient(provider={self.cfg.provider!r}, base_url={self.base_url!r}, model={self.cfg.model!r})"

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- request building -------------------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        name = self.cfg.api_key_env
        if not name:
            return None
        key = os.environ.get(name)
        if not key:
            raise LLMError(f"the API key variable {name} is not set (llm.api_key_env={name})")
        return key

    def response_format(self, schema: dict | None) -> dict | None:
        """The `response_format` this client sends for `schema` (None: none is sent)."""
        mode = self.cfg.json_mode
        if mode == "none" or not self.response_format_supported:
            return None
        if mode == "object" or schema is None:
            return {"type": "json_object"}
        if self.schema_style == "llama_cpp":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": False}}

    def _payload(self, messages: list[dict], schema: dict | None) -> dict:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": list(messages),
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        fmt = self.response_format(schema)
        if fmt is not None:
            body["response_format"] = fmt
        return body

    # -- the call ---------------------------------------------------------------------------------------------

    def chat(self, messages: list[dict], schema: dict | None = None) -> Completion:
        """Send `messages` and return the reply; LLMError (one line) once every attempt has failed."""
        key = self._api_key()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        attempts, last = 0, "no attempt made"
        total = self.cfg.retries + 1
        while attempts < total:
            if attempts:
                time.sleep(self.cfg.backoff_s * 2 ** (attempts - 1))
            attempts += 1
            try:
                return self._attempt(url, headers, messages, schema, attempts)
            except _Retryable as e:
                last = str(e)
            except _Fatal as e:
                raise LLMError(self._scrub(f"LLM request to {url} failed: {e}", key)) from None
        raise LLMError(self._scrub(f"LLM request to {url} failed after {attempts} attempt(s): {last}", key))

    def _attempt(self, url: str, headers: dict, messages: list[dict], schema: dict | None, attempts: int):
        body = self._payload(messages, schema)
        t0 = time.perf_counter()
        try:
            r = self._http.post(url, json=body, headers=headers)
            if r.status_code in (400, 422, 500) and "response_format" in body and "response_format" in r.text:
                # The server does not take this response_format: ask once more without, and keep it off.
                self.response_format_supported = False
                body.pop("response_format")
                t0 = time.perf_counter()
                r = self._http.post(url, json=body, headers=headers)
        except httpx.TimeoutException as e:
            raise _Retryable(f"timeout after {self.cfg.timeout_s:g} s ({type(e).__name__})") from None
        except httpx.ConnectError as e:
            raise _Retryable(f"cannot connect ({one_line(e, 120) or type(e).__name__})") from None
        except httpx.TransportError as e:
            raise _Retryable(f"transport error {type(e).__name__}: {one_line(e, 120)}") from None
        latency = time.perf_counter() - t0
        if r.status_code != 200:
            msg = f"HTTP {r.status_code}: {one_line(r.text, 200)}"
            raise (_Retryable if r.status_code in RETRY_STATUSES else _Fatal)(msg)
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed response: {one_line(r.text, 200)}") from None
        if not isinstance(text, str) or not text.strip():
            raise _Retryable(f"empty content (finish_reason={choice.get('finish_reason')!r})")
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            latency_s=latency,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            model=str(data.get("model") or self.cfg.model),
            attempts=attempts,
            finish_reason=choice.get("finish_reason"),
        )

    @staticmethod
    def _scrub(message: str, key: str | None) -> str:
        message = one_line(message, 500)
        if key:
            message = message.replace(key, "***")
        return message
