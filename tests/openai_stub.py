"""A real OpenAI-compatible HTTP server on loopback whose replies the test programs.

    with OpenAIStub(lambda req: chat_reply("hello")) as stub:
        client = OpenAIClient(stub.base_url)
        ...
        assert stub.requests[0].json["model"] == "m"

The handler gets a `StubRequest` and returns one of:
- a `Reply` (status, JSON or raw body, headers, delay, or `drop=True` to close the socket unanswered),
- a dict (sent as 200 JSON),
- None (the stub's default answer for that endpoint: model list, or an echo of the prompt).
Instead of a callable, a list of replies is served in order (then the default answers).
A handler that raises gets a 500 with the exception text, so a test bug shows up as a visible failure.

Built on http.server (stdlib): starts and stops in milliseconds, no event loop to share with the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OpenAIStub", "StubRequest", "Reply", "chat_reply", "completion_reply", "echo_handler"]


@dataclass
class StubRequest:
    method: str
    path: str  # e.g. "/v1/chat/completions"
    headers: dict[str, str]
    body: bytes
    json: Any = None  # decoded body, None when absent or not JSON

    @property
    def endpoint(self) -> str:
        """The path without the version prefix: 'chat/completions', 'completions', 'models'."""
        path = self.path.split("?", 1)[0].strip("/")
        return path[3:] if path.startswith("v1/") else path

    @property
    def messages(self) -> list[dict[str, Any]]:
        return (self.json or {}).get("messages", [])

    @property
    def last_user_text(self) -> str:
        users = [m.get("content", "") for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | str | None = None  # raw body; wins over `json` (for malformed JSON)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection without any response

    @classmethod
    def error(cls, status: int, message: str = "stub error", **kw: Any) -> Reply:
        return cls(status=status, json={"error": {"message": message, "type": "stub", "code": status}}, **kw)

    @classmethod
    def malformed(cls) -> Reply:
        return cls(status=200, body=b'{"choices": [ {"message": ')


Handler = Callable[[StubRequest], "Reply | dict | None"]


def chat_reply(content: str, *, model: str = "stub-model", logprobs: Any = None,
               finish_reason: str = "stop") -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(content.split()), "total_tokens": 1}}


def completion_reply(text: str, *, model: str = "stub-model", logprobs: Any = None,
                     finish_reason: str = "stop") -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
    return {"id": "cmpl-stub", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()),
                                           "total_tokens": 1}}


def echo_handler(req: StubRequest) -> Reply | dict | None:
    """Default answers: the model list, and an echo of the last user message / the prompt."""
    if req.endpoint == "models":
        return {"object": "list", "data": [{"id": "stub-model", "object": "model", "owned_by": "stub"}]}
    if req.endpoint == "chat/completions":
        return chat_reply(f"echo: {req.last_user_text}")
    if req.endpoint == "completions":
        return completion_reply(f"echo: {(req.json or {}).get('prompt', '')}")
    return Reply.error(404, f"no route {req.path}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a test that injected a long delay must not hang the teardown
    allow_reuse_address = True


class OpenAIStub:
    """Context manager: a loopback server on a free port, served from a background thread."""

    def __init__(self, handler: Handler | Iterable[Reply | dict | None] | None = None) -> None:
        self._queue: deque | None = None
        self._handler: Handler | None = None
        if handler is None or callable(handler):
            self._handler = handler
        else:
            self._queue = deque(handler)
        self.requests: list[StubRequest] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "stub not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests_to(self, endpoint: str) -> list[StubRequest]:
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def start(self) -> OpenAIStub:
        stub = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as clients with connection pools expect

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    decoded = json.loads(body) if body else None
                except ValueError:
                    decoded = None
                req = StubRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  body, decoded)
                with stub._lock:
                    stub.requests.append(req)
                try:
                    reply = stub._reply_for(req)
                except Exception as exc:  # surface handler bugs as a 500 the test will notice
                    reply = Reply.error(500, f"stub handler raised {type(exc).__name__}: {exc}")
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.body is not None:
                    payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
                else:
                    payload = json.dumps(reply.json).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout test): not an error

        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _reply_for(self, req: StubRequest) -> Reply:
        reply: Reply | dict | None = None
        if self._queue is not None:
            with self._lock:
                reply = self._queue.popleft() if self._queue else None
        elif self._handler is not None:
            reply = self._handler(req)
        if reply is None:
            reply = echo_handler(req)
        if isinstance(reply, dict):
            reply = Reply(json=reply)
        if not isinstance(reply, Reply):
            raise TypeError(f"handler returned {type(reply).__name__}, expected Reply, dict or None")
        return reply
