"""`pseudocot models serve FOLDER`: one model folder behind OpenAI's legacy `/v1/completions`, a small inference
engine for a CPU or a test, spoken to as vLLM, SGLang or llama.cpp are (`pipeline.base: {base_url, model, tokenizer}`).

    pseudocot models serve runs/demo/base --port 8001
    POST /v1/completions  {"model": "base", "prompt": "...", "max_tokens": 32, "stop": ["\\n"], "logprobs": 1}

- **Batching**: requests that arrive within `batch_wait_ms` of each other and ask the same settings are decoded as one
  batch (the batch shrinks as rows finish: `generate.sessions.decode`).
- **Automatic prefix caching**: each prompt continues the stored keys/values of the earlier prompt it shares the most
  leading tokens with (least recently used ones dropped past `cache_tokens`), as vLLM's does; the response says how
  many prompt tokens were read from the cache in `usage.prompt_tokens_details.cached_tokens`.
- **The answer**: vLLM's fields: `choices[0].text`, `finish_reason` (stop or length), `stop_reason` (the stop string
  met, or null at the end of sequence), `logprobs.token_logprobs` (and `top_logprobs`, the `logprobs` likeliest tokens
  per position) when asked; the usage object.
- **The prompt** is encoded as given: special tokens are added only when the request leaves `add_special_tokens`
  true (vLLM's default) and the tokenizer adds a BOS; a rendered chat prompt says false.

Greedy answers equal the local `HFGenerator`'s with sessions: the same decode loop on the same weights. Binds
127.0.0.1 unless told otherwise; another address needs an API key. Streams (`stream: true`) as it writes; one choice per request (`n: 1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from pseudocot.errors import RequestError
from pseudocot.generate.base import Completion, GenerationParams
from pseudocot.generate.sessions import common_prefix

log = logging.getLogger("pseudocot.engine")

@dataclass
class EngineRequest:
    prompt: str
    params: GenerationParams
    add_special_tokens: bool
    stream: bool = False
    include_usage: bool = False
    future: Future[Completion] = field(default_factory=Future)
    push: Callable[[str | None], None] | None = None
    """Streaming: hands each text delta to the response as it is written, then None when the completion is over."""

    def group(self) -> Hashable:
        p = self.params
        return (p.max_new_tokens, p.temperature, p.top_p, tuple(p.stop), p.seed, p.logprobs, p.top_logprobs)


def parse_request(body: Any, model: str, max_tokens_limit: int) -> EngineRequest:
    """A checked `/v1/completions` body; each wrong field a 400 naming it."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.")

    def bad(name: str, what: str) -> RequestError:
        return RequestError(f"'{name}' {what}.", param=name)

    if body.get("model") not in (None, model):
        raise RequestError(f"this server serves the model '{model}', not '{body.get('model')}'.", status=404,
                           param="model", code="model_not_found")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt", "must be a non-empty string (one prompt per request)")
    if body.get("echo"):
        raise bad("echo", "is not supported by this server; leave it false")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream", "must be true or false")
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    if body.get("n", 1) != 1 or body.get("best_of", 1) not in (None, 1):
        raise bad("n", "must be 1 here: send one request per completion")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= max_tokens_limit:
        raise bad("max_tokens", f"must be an integer from 1 to {max_tokens_limit}")
    temperature, top_p = body.get("temperature", 1.0), body.get("top_p", 1.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise bad("temperature", "must be a number from 0 to 2")
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise bad("top_p", "must be a number above 0 and at most 1")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 8:
        raise bad("stop", "must be a non-empty string or a list of at most 8")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise bad("seed", "must be an integer")
    logprobs = body.get("logprobs")
    if logprobs is not None and not (isinstance(logprobs, int) and 0 <= logprobs <= 20):
        raise bad("logprobs", "must be a whole number from 0 to 20 (how many of the likeliest tokens to list per position)")
    add_special = body.get("add_special_tokens", True)
    if not isinstance(add_special, bool):
        raise bad("add_special_tokens", "must be true or false")
    params = GenerationParams(max_new_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), stop=stop,
                              seed=seed, logprobs=bool(logprobs), top_logprobs=int(logprobs or 0))
    return EngineRequest(prompt, params, add_special, stream=stream, include_usage=include_usage)


class PrefixCache:
    """Which stored prefix each prompt continues: session keys of the generator's `PrefixStore`, least recently used
    first, with the tokens each holds; past `max_tokens` stored tokens the oldest are dropped."""

    def __init__(self, generator: Any, max_tokens: int) -> None:
        self.gen, self.max_tokens = generator, max_tokens
        self.entries: OrderedDict[Hashable, list[int]] = OrderedDict()
        self._keys = itertools.count()

    def assign(self, batch: list[list[int]]) -> list[Hashable]:
        """A fresh session key per prompt, seeded with the stored prefix it shares the most tokens with (each stored
        prefix stays as it was: a conversation's next prompt may still continue it)."""
        keys = []
        for ids in batch:
            best, n = None, 0
            for key, stored in self.entries.items():
                m = common_prefix(stored, ids)
                if m > n:
                    best, n = key, m
            key = ("engine", next(self._keys))
            if best is not None:
                self.entries.move_to_end(best)
                self.gen.prefixes.copy(best, key)
            keys.append(key)
        return keys

    def stored(self, keys: list[Hashable]) -> None:
        """Record what the generator now holds under `keys`, then drop the oldest past the budget."""
        for key in keys:
            ids = self.gen.prefixes.ids(key)
            if ids is None:
                continue
            self.entries[key] = ids
        total = sum(len(v) for v in self.entries.values())
        while self.entries and total > self.max_tokens:
            key, ids = self.entries.popitem(last=False)
            total -= len(ids)
            self.gen.end_sessions([key])


class Engine:
    """A worker thread that batches requests and answers them with an `HFGenerator`."""

    def __init__(self, generator: Any, max_batch: int = 32, batch_wait_ms: float = 5.0, cache_tokens: int = 65536) -> None:
        self.gen, self.max_batch, self.wait = generator, max_batch, batch_wait_ms / 1000
        self.cache = PrefixCache(generator, cache_tokens)
        self.bos = self._bos_text(generator.tokenizer)
        self.jobs: queue.Queue[EngineRequest | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="engine", daemon=True)
        self.requests = 0
        self.cached_tokens = 0

    @staticmethod
    def _bos_text(tokenizer: Any) -> str:
        """The text of what the tokenizer adds before a prompt with special tokens on (nothing for most chat models)."""
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        return tokenizer.decode(full[: len(full) - len(plain)]) if full[-len(plain):] == plain else ""

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def submit(self, req: EngineRequest) -> Future[Completion]:
        self.jobs.put(req)
        return req.future

    def _work(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch, deadline = [first], time.monotonic() + self.wait
            while len(batch) < self.max_batch:
                try:
                    nxt = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.jobs.put(None)
                    break
                batch.append(nxt)
            groups: dict[Hashable, list[EngineRequest]] = {}
            for r in batch:
                groups.setdefault(r.group(), []).append(r)
            for reqs in groups.values():
                self._answer(reqs)

    def _answer(self, reqs: list[EngineRequest]) -> None:
        def on_text(i: int, delta: str) -> None:
            if reqs[i].push is not None:
                reqs[i].push(delta)

        try:
            prompts = [(self.bos if r.add_special_tokens else "") + r.prompt for r in reqs]
            ids = self.gen.tokenizer(prompts, add_special_tokens=False)["input_ids"]
            keys = self.cache.assign(ids)
            streamed = any(r.push is not None for r in reqs)
            params = dataclasses.replace(reqs[0].params, on_text=on_text if streamed else None)
            outs = self.gen.generate(prompts, params, sessions=keys)
            self.cache.stored(keys)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the worker goes on
            log.exception("generation failed")
            for r in reqs:
                r.future.set_exception(e)
                if r.push is not None:
                    r.push(None)
            return
        for r, c in zip(reqs, outs):
            self.requests += 1
            self.cached_tokens += c.cached_tokens
            r.future.set_result(c)
            if r.push is not None:
                r.push(None)


def usage(c: Completion) -> dict[str, Any]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens, "prompt_tokens_details": {"cached_tokens": c.cached_tokens}}


def completion_body(c: Completion, model: str, logprobs: bool, cid: str | None = None, text: str | None = None,
                    with_usage: bool = True) -> dict[str, Any]:
    """A completion in the legacy `text_completion` format, with vLLM's `stop_reason` and cached-token usage (`text`:
    another text in its place, as the last chunk of a stream carries none)."""
    choice: dict[str, Any] = {"index": 0, "text": c.text if text is None else text, "finish_reason": c.finish_reason,
                              "stop_reason": c.stop_string, "logprobs": None}
    if logprobs:
        choice["logprobs"] = {"tokens": None, "token_logprobs": c.token_logprobs or [], "top_logprobs": c.top_logprobs,
                              "text_offset": None}
    body = {"id": cid or f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice]}
    if with_usage:
        body["usage"] = usage(c)
    return body


async def stream_events(engine: Engine, req: EngineRequest, model: str) -> AsyncIterator[str]:
    """The completion as server-sent events: a chunk per text delta as the model writes it, a last chunk with the
    finish and stop fields (and the log-probabilities), the usage when `stream_options.include_usage`, then [DONE]."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[str | None] = asyncio.Queue()
    req.push = lambda d: loop.call_soon_threadsafe(deltas.put_nowait, d)
    future = engine.submit(req)
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    while (delta := await deltas.get()) is not None:
        chunk = {"id": cid, "object": "text_completion", "created": created, "model": model,
                 "choices": [{"index": 0, "text": delta, "finish_reason": None, "stop_reason": None, "logprobs": None}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    try:
        c = await asyncio.wrap_future(future)
    except Exception:  # noqa: BLE001 - the worker logged it; the client gets OpenAI's error object
        yield f"data: {json.dumps({'error': {'message': 'the engine failed to write this completion.', 'type': 'server_error'}})}\n\n"
        return
    yield f"data: {json.dumps(completion_body(c, model, req.params.logprobs, cid, text='', with_usage=False))}\n\n"
    if req.include_usage:
        last = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage(c)}
        yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"


def create_engine_app(engine: Engine, model: str, api_key: str | None, max_tokens: int = 2048,
                      max_body_bytes: int = 4_000_000) -> FastAPI:
    """The app: GET /health, GET /v1/models, POST /v1/completions (`authorize` as `pseudocot serve` does)."""
    from pseudocot.serve.app import authorize, error_response, read_body

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)

    app = FastAPI(title="pseudocot engine", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error_response(RequestError(f"there is no {request.method} {request.url.path} here; the API is "
                                           "POST /v1/completions.", status=e.status_code))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ready", "model": model, "requests": engine.requests, "cached_tokens": engine.cached_tokens}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request, api_key)
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "pseudocot"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        authorize(request, api_key)
        raw = await read_body(request, max_body_bytes)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not JSON.") from None
        req = parse_request(body, model, max_tokens)
        if req.stream:
            return StreamingResponse(stream_events(engine, req, model), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        c = await asyncio.wrap_future(engine.submit(req))
        return JSONResponse(completion_body(c, model, req.params.logprobs))

    return app


def serve_model(folder: str, *, host: str = "127.0.0.1", port: int = 8001, name: str | None = None,
                api_key_env: str = "PSEUDOCOT_API_KEY", device: str = "auto", max_batch: int = 32,
                batch_wait_ms: float = 5.0, cache_tokens: int = 65536, echo: Any = print) -> None:
    """Load `folder` and serve it until Ctrl-C / SIGTERM."""
    import os
    from pathlib import Path

    import uvicorn

    from pseudocot.config.schema import GeneratorConfig
    from pseudocot.errors import ConfigError
    from pseudocot.generate.base import open_generator
    from pseudocot.serve.app import is_loopback

    key = os.environ.get(api_key_env) or None
    if key is None and not is_loopback(host):
        raise ConfigError(f"--host {host} would let other machines call this server without an API key; set the "
                          f"environment variable {api_key_env} to a secret (or bind 127.0.0.1).")
    model = name or Path(folder).name
    gen = open_generator(GeneratorConfig(path=folder), device=device, batch_size=max_batch)
    engine = Engine(gen, max_batch=max_batch, batch_wait_ms=batch_wait_ms, cache_tokens=cache_tokens)
    app = create_engine_app(engine, model, key)
    echo(f"serving {folder} as '{model}' on http://{host}:{port}/v1 (POST /v1/completions)")
    echo(f"API key: from ${api_key_env}" if key else f"no API key (${api_key_env} is unset): anyone on this machine can call it")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
