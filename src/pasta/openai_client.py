"""A small client for any OpenAI-compatible HTTP endpoint (vLLM, SGLang, llama.cpp server, hosted APIs).

Only what the project needs: `/chat/completions`, `/completions` and `/models`, sync and async, with
retries. Extra request fields (logprobs, top_logprobs, stop, seed, ...) pass straight through, so the
same client serves the annotator, the judge and the remote decoding backend.

`base_url` follows the OpenAI SDK convention: it already contains the version prefix
(`http://localhost:8000/v1`). A bare host (`http://localhost:8000`) gets `/v1` appended, because that
is what every local server uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = [
    "OpenAIClient",
    "OpenAIError",
    "RetryPolicy",
    "message_text",
    "completion_text",
]

# 408/409 are "try again" by nature (request timeout, conflict); 429 and 5xx are the usual transient ones.
RETRYABLE_STATUS = frozenset({408, 409, 429})


class OpenAIError(RuntimeError):
    """A request that failed for good (after retries, or at once for a client error).

    `status` is the HTTP status (None when no response came back), `body` the response text (truncated)."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "", url: str = "",
                 retryable: bool = False) -> None:
        self.status = status
        self.body = body
        self.url = url
        self.retryable = retryable
        detail = f"{message} [status={status}, url={url}]"
        if body:
            detail += f": {body[:500]}"
        super().__init__(detail)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: delay_k = min(max_backoff, backoff * 2**k), then half of it is random.

    A server's `Retry-After` (seconds) wins when it is longer, up to `max_retry_after`."""

    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 20.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("backoff, max_backoff and max_retry_after must be >= 0")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        base = min(self.max_backoff, self.backoff * (2**attempt))
        # "Equal jitter": never less than half the base, so retries still back off, but clients spread out.
        delay = base / 2 + random.uniform(0, base / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


def _normalize_base_url(base_url: str) -> str:
    base_url = base_url.strip().rstrip("/")
    if not base_url:
        raise ValueError("base_url is empty")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must look like http(s)://host[:port][/v1], got {base_url!r}")
    if parts.path in ("", "/"):
        base_url += "/v1"
    return base_url


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from these servers; fall back to our own backoff


def _drop_none(params: dict[str, Any]) -> dict[str, Any]:
    # Lets callers write `max_tokens=cfg.max_tokens` without sending JSON nulls that some servers reject.
    return {k: v for k, v in params.items() if v is not None}


class OpenAIClient:
    """Sync and async access to one OpenAI-compatible server.

    >>> client = OpenAIClient("http://localhost:8000/v1")
    >>> reply = client.chat([{"role": "user", "content": "Hi"}], model="my-model", max_tokens=16)
    >>> message_text(reply)
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.base_url = _normalize_base_url(base_url)
        # Local servers need no key; hosted ones read it from the environment so it never lands in configs.
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env) or None
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, max_backoff=max_backoff)
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never print the key
        return f"OpenAIClient(base_url={self.base_url!r}, timeout={self.timeout}, retry={self.retry})"

    # ---- public API -------------------------------------------------------------------------------

    def chat(self, messages: list[dict[str, Any]], model: str, **params: Any) -> dict[str, Any]:
        """POST /chat/completions; extra keyword arguments become fields of the request body."""
        return self.request("POST", "chat/completions", {"model": model, "messages": messages, **_drop_none(params)})

    def completions(self, prompt: str | list[str] | list[int], model: str, **params: Any) -> dict[str, Any]:
        """POST /completions (raw prompt, no chat template); extra keyword arguments pass through."""
        return self.request("POST", "completions", {"model": model, "prompt": prompt, **_drop_none(params)})

    def models(self) -> list[str]:
        """The ids the server serves (GET /models)."""
        return [m.get("id", "") for m in self.request("GET", "models").get("data", [])]

    async def achat(self, messages: list[dict[str, Any]], model: str, **params: Any) -> dict[str, Any]:
        return await self.arequest("POST", "chat/completions",
                                   {"model": model, "messages": messages, **_drop_none(params)})

    async def acompletions(self, prompt: str | list[str] | list[int], model: str, **params: Any) -> dict[str, Any]:
        return await self.arequest("POST", "completions", {"model": model, "prompt": prompt, **_drop_none(params)})

    async def amodels(self) -> list[str]:
        return [m.get("id", "") for m in (await self.arequest("GET", "models")).get("data", [])]

    # ---- generic request with retries --------------------------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self._url(path)
        client = self._sync_client()
        for attempt in range(self.retry.max_retries + 1):
            try:
                decoded, error, retry_after = self._check(client.request(method, url, json=body), url)
            except httpx.TransportError as exc:  # connect/read errors, timeouts, dropped connections
                decoded, error, retry_after = None, self._transport_error(exc, url), None
            if decoded is not None:
                return decoded
            assert error is not None
            if not error.retryable or attempt == self.retry.max_retries:
                raise error
            time.sleep(self.retry.delay(attempt, retry_after))
        raise AssertionError("unreachable")

    async def arequest(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self._url(path)
        client = self._async_client()
        for attempt in range(self.retry.max_retries + 1):
            try:
                response = await client.request(method, url, json=body)
                decoded, error, retry_after = self._check(response, url)
            except httpx.TransportError as exc:
                decoded, error, retry_after = None, self._transport_error(exc, url), None
            if decoded is not None:
                return decoded
            assert error is not None
            if not error.retryable or attempt == self.retry.max_retries:
                raise error
            await asyncio.sleep(self.retry.delay(attempt, retry_after))
        raise AssertionError("unreachable")

    # ---- lifecycle -----------------------------------------------------------------------------------

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
            self._aloop = None

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- internals -----------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _sync_client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, headers=self._headers)
        return self._client

    def _async_client(self) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to the loop that made them; each asyncio.run() needs a new one.
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            self._aclient = httpx.AsyncClient(timeout=self.timeout, headers=self._headers, limits=limits)
            self._aloop = loop
        return self._aclient

    @staticmethod
    def _check(response: httpx.Response, url: str) -> tuple[dict[str, Any] | None, OpenAIError | None, float | None]:
        """(decoded, None, None) on success, else (None, error, server-suggested delay)."""
        status = response.status_code
        if status >= 400:
            retryable = status >= 500 or status in RETRYABLE_STATUS
            message = f"HTTP {status} from server"
            return (None, OpenAIError(message, status=status, body=response.text, url=url, retryable=retryable),
                    _retry_after_seconds(response))
        try:
            decoded = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            # A 2xx with a broken body is usually a proxy or a server cut short: worth another try.
            return (None, OpenAIError("response is not valid JSON", status=status, body=response.text, url=url,
                                      retryable=True), None)
        if not isinstance(decoded, dict):
            return (None, OpenAIError("response JSON is not an object", status=status, body=response.text[:500],
                                      url=url, retryable=False), None)
        return decoded, None, None

    @staticmethod
    def _transport_error(exc: httpx.TransportError, url: str) -> OpenAIError:
        return OpenAIError(f"{type(exc).__name__}: {exc}", status=None, url=url, retryable=True)


def message_text(response: dict[str, Any], index: int = 0) -> str:
    """The assistant text of choice `index` of a chat completion ('' when the server sent null content)."""
    try:
        return response["choices"][index]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise OpenAIError(f"unexpected chat completion shape ({exc!r})", body=json.dumps(response)[:500]) from exc


def completion_text(response: dict[str, Any], index: int = 0) -> str:
    """The text of choice `index` of a (non-chat) completion."""
    try:
        return response["choices"][index].get("text") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise OpenAIError(f"unexpected completion shape ({exc!r})", body=json.dumps(response)[:500]) from exc
