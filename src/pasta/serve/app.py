"""The OpenAI-compatible HTTP application: /v1/models, /v1/completions, /v1/chat/completions, /health.

    from pasta.serve.app import create_app
    app = create_app(Interpreter.from_pretrained(), ServeConfig())

Bodies are parsed by hand (not by FastAPI's signature magic) so that every bad input gets an OpenAI-style error
body with status 400, and the route code reads top to bottom.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat import prompt_ids
from ..engine import Engine, EngineConfig
from ..interpreter import Interpreter
from ..sampling import SamplingParams
from ..threads import ThreadGovernor
from .config import ServeConfig
from .scheduler import EngineDown, Job, QueueFull, Scheduler
from .schemas import APIError, ChatRequest, CompletionRequest, Message, validation_error

OWNER = "pasta"  # /v1/models `owned_by`: lets a client (the remote backend) recognise a Pasta server


def chat_prompt_ids(tokenizer, messages: list[Message]) -> list[int]:
    """The prompt through `pasta.chat`: the same ids SFT trained on (template, or the transcript fallback)."""
    return prompt_ids(tokenizer, [{"role": m.role, "content": m.text()} for m in messages])


def create_app(interpreter: Interpreter, config: ServeConfig | None = None, *,
               threads: ThreadGovernor | None = None) -> FastAPI:
    """The app; `threads` (from `--threads`) is re-checked by the worker between steps."""
    config = config or ServeConfig()
    engine = Engine(interpreter.model, EngineConfig(max_batch=config.max_batch, prefill_chunk=config.prefill_chunk,
                                                    batch_invariant=config.batch_invariant), runner=interpreter.runner)
    scheduler = Scheduler(engine, max_queue=config.max_queue, stuck_after_s=config.stuck_after_s, threads=threads)
    model_name = config.served_model_name or interpreter.name
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop(timeout=config.shutdown_timeout_s)

    app = FastAPI(title="pasta serve", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.config = config

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body(),
                            status_code=500)

    # -- routes ------------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        stats = scheduler.stats()
        body = {"status": stats["engine"], "model": model_name, **stats}
        if scheduler.fatal is not None:
            body["error"] = repr(scheduler.fatal)
        return JSONResponse(body, status_code=200 if stats["engine"] == "ok" else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": OWNER}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = interpreter.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            vocab = _vocab_size(interpreter)
            if any(not 0 <= t < vocab for t in prompt):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            ids = list(prompt)
        return await _serve(request, body, ids, body.max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, ChatRequest)
        try:
            ids = chat_prompt_ids(interpreter.tokenizer, body.messages)
        except Exception as exc:
            raise APIError(400, f"could not apply the chat template: {exc}", param="messages") from exc
        return await _serve(request, body, ids, body.limit(), chat=True)

    # -- helpers -----------------------------------------------------------------------------------------------
    async def _parse(request: Request, schema):
        media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise APIError(415, f"unsupported Content-Type {media!r}: send the body as JSON with "
                                "'Content-Type: application/json'", code="unsupported_media_type")
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from exc
        except RecursionError as exc:
            raise APIError(400, "We could not parse the JSON body of your request: it is nested too deeply",
                           code="invalid_json") from exc
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        where = _lone_surrogate(data)
        if where is not None:
            raise APIError(400, f"Invalid value for '{where}': the string contains a lone UTF-16 surrogate, which is "
                                "not text (it cannot be encoded as UTF-8)", param=where, code="invalid_value")
        try:
            body = schema.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        if body.model not in (model_name, "default", interpreter.name):
            raise APIError(404, f"The model '{body.model}' does not exist; this server serves '{model_name}'",
                           type="not_found_error", param="model", code="model_not_found")
        return body

    def _job(body, ids: list[int], max_tokens: int | None) -> Job:
        max_tokens = config.default_max_tokens if max_tokens is None else max_tokens
        if max_tokens > config.max_tokens_limit:
            raise APIError(400, f"max_tokens is too large: {max_tokens}; this server allows at most "
                                f"{config.max_tokens_limit}", param="max_tokens", code="invalid_value")
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(ids) > config.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens; this server allows at most "
                                f"{config.max_prompt_tokens}", param="prompt", code="context_length_exceeded")
        mode = body.pasta.mode or ("sequential" if config.sequential else "async")
        limits = config.limits(max_tokens)
        for name in ("presence_penalty", "frequency_penalty"):  # a request's own value wins over the server's
            if getattr(body, name) is not None:
                limits = replace(limits, **{name: getattr(body, name)})
        decoding = interpreter.start(ids, limits=limits, mode=mode)
        sampling = SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=body.seed)
        return Job(decoding=decoding, sampling=sampling, loop=asyncio.get_running_loop(), stops=body.stops(),
                   annotated=body.pasta.annotated)

    async def _serve(request: Request, body, ids: list[int], max_tokens: int | None, *, chat: bool):
        job = _job(body, ids, max_tokens)
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            raise APIError(429, str(exc), type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from exc
        except EngineDown as exc:
            raise APIError(503, str(exc), type="server_error", code="engine_unavailable") from exc
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            include_usage = body.stream_options.include_usage if body.stream_options else True
            return StreamingResponse(_stream(request, job, rid, chat, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text: list[str] = []
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(job.events.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        scheduler.cancel(job)
                        return JSONResponse({}, status_code=499)
                    continue
                if kind == "delta":
                    text.append(payload)
                elif kind == "error":
                    raise APIError(500, f"decoding failed: {payload}", type="server_error")
                elif kind in ("cancelled", "unavailable"):
                    raise APIError(503, payload or "the request was cancelled", type="server_error")
                else:
                    return _response(rid, chat, payload)
        except asyncio.CancelledError:
            scheduler.cancel(job)
            raise

    def _response(rid: str, chat: bool, done: dict[str, Any]) -> dict[str, Any]:
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": done["text"]},
                      "finish_reason": done["finish_reason"], "stop_reason": done["stop_reason"], "logprobs": None}
        else:
            choice = {"index": 0, "text": done["text"], "finish_reason": done["finish_reason"],
                      "stop_reason": done["stop_reason"], "logprobs": None}
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name, "choices": [choice], "usage": done["usage"], "pasta": done["pasta"]}

    async def _stream(request: Request, job: Job, rid: str, chat: bool, include_usage: bool):
        created_at = int(time.time())
        kind_name = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None = None, first: bool = False, **extra) -> str:
            if chat:
                d: dict[str, Any] = {}
                if first:
                    d["role"] = "assistant"
                if delta is not None:
                    d["content"] = delta
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            obj = {"id": rid, "object": kind_name, "created": created_at, "model": model_name, "choices": [choice],
                   **extra}
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            if chat:
                yield chunk("", first=True)
            while True:
                kind, payload = await job.events.get()
                if kind == "delta":
                    yield chunk(payload)
                elif kind == "done":
                    extra = {"pasta": payload["pasta"]}
                    if include_usage:
                        extra["usage"] = payload["usage"]
                    yield chunk(None if chat else "", finish=payload["finish_reason"], **extra)
                    break
                else:
                    message = f"decoding failed: {payload}" if kind == "error" else payload or "the request was cancelled"
                    yield f"data: {json.dumps(APIError(500, message, type='server_error').body())}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not job.finished:  # the client went away (or the server is shutting down): free its threads now
                scheduler.cancel(job)

    return app


def _lone_surrogate(data: Any) -> str | None:
    """The dotted path of the first string holding a lone surrogate ("\\ud800" is valid JSON, not text).
    Iterative: the body may be nested as deep as the JSON parser allows."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or None
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))
    return None


def _vocab_size(interpreter: Interpreter) -> int:
    size = getattr(interpreter.model.config, "vocab_size", None)
    return int(size) if size else len(interpreter.tokenizer)
