"""The HTTP face of `pseudocot serve`: FastAPI routes over a `Batcher`.

    GET  /                      the chat page (static, no build step)
    GET  /health                200 when the models are loaded, 503 while loading or shutting down
    GET  /v1/models             pseudocot, pseudocot-router, -always, -never, -depth (those this run has)
    POST /v1/chat/completions   OpenAI chat completions, streamed (SSE) or not

With an API key, `/v1/*` needs `Authorization: Bearer KEY`. Every error is OpenAI's JSON error object
`{"error": {"message", "type", "param", "code"}}` with a 4xx status for anything the client can fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from pseudocot.config.schema import ServeConfig
from pseudocot.errors import RequestError
from pseudocot.serve import protocol
from pseudocot.serve.batcher import Batcher, Job

log = logging.getLogger("pseudocot.serve")


POLL_SECONDS = 0.5
"""How often a non-streaming request checks that its client is still there."""


def is_loopback(host: str | None) -> bool:
    """Whether a host name or address is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (host or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorize(request: Request, api_key: str | None) -> None:
    """Let a request through: with a key, only one that sends it; without, only one addressed to a loopback name."""
    if api_key is None:
        # No key: only this machine may call. A Host that is not loopback means a web page reached here
        # through a DNS name it controls (DNS rebinding), so it is refused.
        if not is_loopback(request.url.hostname):
            raise RequestError(f"without an API key this server answers only requests to localhost, not to "
                               f"'{request.url.hostname}'; set an API key to serve other names.", status=403, code="host_not_allowed",
                               type="permission_error")
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise RequestError("a valid API key is required: send the header 'Authorization: Bearer KEY'.",
                           status=401, code="invalid_api_key", type="authentication_error",
                           headers={"WWW-Authenticate": "Bearer"})


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 once it passes `max_bytes` (before reading it all when Content-Length says so)."""
    too_big = RequestError(f"the request body is larger than {max_bytes} bytes (serve.max_body_bytes); send a shorter conversation.",
                           status=413, code="body_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise too_big
    return bytes(body)


def create_app(batcher: Batcher, modes: Sequence[str], default_mode: str, limits: ServeConfig,
               api_key: str | None) -> FastAPI:
    """The app; its lifespan starts the batcher's worker and, at shutdown, lets it finish what it accepted."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        # uvicorn has already waited (up to the grace time) for the open requests; the worker is then
        # idle or answering requests nobody waits for any more, so only a short wait here.
        batcher.drain()
        await asyncio.to_thread(batcher.join, min(5.0, limits.shutdown_grace_seconds))

    app = FastAPI(title="pseudocot", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        what = {404: f"there is no {request.url.path} here; the API is under /v1 (see GET /v1/models).",
                405: f"{request.method} is not allowed on {request.url.path}."}.get(e.status_code, str(e.detail))
        return error_response(RequestError(what, status=e.status_code, code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(RequestError("the server failed to answer this request; its log has the details.", status=500,
                                            type="server_error", code="internal_error"))

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("pseudocot.serve").joinpath("static/index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": batcher.state, "waiting": batcher.waiting, "running": batcher.running, **batcher.stats}
        if batcher.draining:
            body["status"] = "shutting_down"
        if body["status"] != "ready":
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request, api_key)
        data = [{"id": protocol.MODEL, "object": "model", "created": 0, "owned_by": "pseudocot",
                 "pseudocot": {"mode": default_mode}}]
        data += [{"id": protocol.model_id(m), "object": "model", "created": 0, "owned_by": "pseudocot",
                  "pseudocot": {"mode": m}} for m in modes]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        authorize(request, api_key)
        # JSON only: a web page can send text/plain across origins without asking first, never application/json.
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise RequestError("send the request body as JSON with the header 'Content-Type: application/json'.", status=415,
                               code="unsupported_media_type")
        raw = await read_body(request, limits.max_body_bytes)
        req = protocol.parse_chat_request(protocol.parse_json(raw), modes, default_mode, limits)
        job = Job(req, protocol.new_id(), asyncio.get_running_loop(), asyncio.Queue())
        batcher.submit(job)
        if req.stream:
            return StreamingResponse(_stream(batcher, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _wait(batcher, job, request)

    return app


async def _wait(batcher: Batcher, job: Job, request: Request) -> JSONResponse:
    created = protocol.now()
    try:
        while True:
            try:
                kind, payload = await asyncio.wait_for(job.events.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    batcher.cancel(job)
                    return JSONResponse({}, status_code=499)  # nobody reads it
                continue
            if kind == "done":
                return JSONResponse(protocol.completion(job.id, created, payload, job.queue_seconds, job.batch_size))
            if kind == "error":
                return error_response(payload)
    except asyncio.CancelledError:
        batcher.cancel(job)
        raise


async def _stream(batcher: Batcher, job: Job) -> AsyncIterator[str]:
    """SSE chunks as the question advances: router scores and intermediate answers as `pseudocot` events,
    thoughts as `reasoning_content`, the answer as `content` (token by token as the base model writes it where the loop
    knows it is the one returned; else whole once the loop ends), the finish chunk, usage, [DONE]."""
    req, created, cid = job.request, protocol.now(), job.id
    finished, sent = False, ""
    try:
        yield protocol.sse(protocol.chunk(cid, created, req.model, {"role": "assistant", "content": ""}))
        while True:
            kind, payload = await job.events.get()
            if kind in ("answer", "router"):
                yield protocol.sse(protocol.chunk(cid, created, req.model, {}, extra=payload))
            elif kind == "thought":
                text = payload["text"] + "\n"
                yield protocol.sse(protocol.chunk(cid, created, req.model, {"reasoning_content": text, "reasoning": text}, extra=payload))
            elif kind == "content":  # the answer the loop returns, token by token as the base model writes it
                sent += payload
                yield protocol.sse(protocol.chunk(cid, created, req.model, {"content": payload}))
            elif kind == "done":
                trace = payload
                if not trace.final_text.startswith(sent):  # cannot happen: the deltas add up to the answer's text
                    log.error("streamed %r, but the answer returned is %r", sent, trace.final_text)
                rest = trace.final_text[len(sent):] if trace.final_text.startswith(sent) else ""
                if rest or not sent:
                    yield protocol.sse(protocol.chunk(cid, created, req.model, {"content": rest}))
                info = {"event": "done", **protocol.summary(trace, job.queue_seconds, job.batch_size)}
                yield protocol.sse(protocol.chunk(cid, created, req.model, {}, protocol.finish_reason(trace), extra=info))
                if req.include_usage:
                    yield protocol.sse(protocol.usage_chunk(cid, created, req.model, trace))
                break
            elif kind == "error":
                yield protocol.sse(payload.body())
                break
        yield protocol.sse("[DONE]")
        finished = True
    finally:
        if not finished:  # the client went away mid-stream: free its place in the batch
            batcher.cancel(job)
