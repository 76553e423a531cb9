"""OpenAI-compatible HTTP backend of `Generator`: any server that speaks `/v1/completions` or
`/v1/chat/completions` (vLLM, llama.cpp, SGLang, a DeepSeek-R1 endpoint, OpenAI itself).

    gen = OpenAIGenerator("http://localhost:8000/v1", "my-model", chat=True, concurrency=8)
    gen.generate(["What is 2 + 3?"], GenerationParams(max_new_tokens=64))

One request per prompt, `concurrency` in flight at once, results in the caller's order. Plain text
prompts go to `/completions`; with `chat=True` they go to `/chat/completions` as one user turn, and
a prompt may also be a list of chat messages (`Task.messages`). Token counts come from the
response's `usage`; a reasoning model's separate thinking (`reasoning_content`, or vLLM's and
OpenRouter's `reasoning`) is kept in `Completion.reasoning`. Rate limits (429), server errors (5xx),
timeouts and dropped connections are retried with exponential backoff (a `Retry-After` header wins),
and counted in `retries` ({cause: count}); anything else, or running out of retries, is an
`EndpointError` in one sentence.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from pseudocot.errors import EndpointError
from pseudocot.generate.base import Completion, GenerationParams

Prompt = str | list[dict[str, str]]

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIGenerator:
    """An OpenAI-compatible endpoint as a `Generator`."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, chat: bool = False,
                 concurrency: int = 8, max_retries: int = 5, timeout: float = 120.0, backoff_seconds: float = 0.5,
                 max_backoff_seconds: float = 30.0, extra_body: dict[str, Any] | None = None, tokenizer: Any = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise EndpointError(f"base_url '{base_url}' is not an http(s) URL; give the endpoint, e.g. http://localhost:8000/v1.")
        if concurrency < 1 or max_retries < 0:
            raise ValueError("concurrency must be at least 1 and max_retries at least 0.")
        self.base_url = base_url.rstrip("/")
        self.model, self.chat, self.concurrency = model, chat, concurrency
        self.max_retries, self.backoff_seconds, self.max_backoff_seconds = max_retries, backoff_seconds, max_backoff_seconds
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers,
                                   limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self.extra_body = dict(extra_body or {})
        """Fields added to every /completions request (vLLM's `add_special_tokens: false`)."""
        self.tokenizer = tokenizer
        """The served model's tokenizer, when the caller renders its prompts (the pipeline); not used here."""
        self.requests = 0
        """HTTP requests sent, retries included."""
        self.retries: Counter[str] = Counter()
        """Retried requests by cause: the status code (`429`, `503`, ...), `timeout` or `connection`."""
        self._lock = threading.Lock()

    def _count(self, cause: str | None) -> None:
        with self._lock:
            self.requests += 1
            if cause:
                self.retries[cause] += 1

    def close(self) -> None:
        self.client.close()

    # -- requests ----------------------------------------------------------------------------

    def _body(self, prompt: Prompt, params: GenerationParams) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature}
        if params.temperature > 0:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if self.chat or not isinstance(prompt, str):
            if not self.chat:
                raise ValueError("chat messages need chat=True (the /chat/completions endpoint).")
            body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            if params.logprobs:
                body["logprobs"] = True
                if params.top_logprobs:
                    body["top_logprobs"] = params.top_logprobs
            return "/chat/completions", body
        body["prompt"] = prompt
        body.update(self.extra_body)
        if params.logprobs:
            body["logprobs"] = max(1, params.top_logprobs)  # the legacy field: how many of the likeliest tokens per position
        return "/completions", body

    def _post(self, path: str, body: dict[str, Any], on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
        """The response body; with `on_text` the request is streamed (`stream: true`), each text delta handed to it as
        it comes, and the chunks are put back together into the body a plain request gets."""
        url = self.base_url + path
        sent = False  # a stream that broke off after handing on text cannot be sent again

        def relay(delta: str) -> None:
            nonlocal sent
            sent = True
            on_text(delta)  # type: ignore[misc]

        if on_text is not None:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                if on_text is None:
                    r = self.client.post(url, json=body)
                else:
                    with self.client.stream("POST", url, json=body) as r:
                        if r.status_code == 200:
                            self._count(None)
                            return _assemble(url, r.iter_lines(), relay)
                        r.read()
            except httpx.TransportError as e:  # connection refused or dropped, timeouts
                if sent:
                    raise EndpointError(f"{url}: the stream broke off mid-answer ({type(e).__name__}: {e}); "
                                        "part of it was already passed on, so it is not sent again.") from None
                self._count(None if last else "timeout" if isinstance(e, httpx.TimeoutException) else "connection")
                if last:
                    raise EndpointError(f"{url}: no answer after {attempt + 1} tries ({type(e).__name__}: {e}); "
                                        "check that the server is up and base_url is right.") from None
                self._sleep(attempt, None)
                continue
            retry = r.status_code in RETRY_STATUS and not last
            self._count(str(r.status_code) if retry else None)
            if r.status_code == 200:
                try:
                    return r.json()
                except json.JSONDecodeError:
                    raise EndpointError(f"{url} answered 200 with a body that is not JSON; is base_url an OpenAI-compatible API?") from None
            if retry:
                self._sleep(attempt, r.headers.get("retry-after"))
                continue
            raise EndpointError(f"{url} answered {r.status_code} {r.reason_phrase}: {_message(r)}"
                                + (f" (after {attempt + 1} tries)" if r.status_code in RETRY_STATUS else "")
                                + ("; check the API key" if r.status_code in (401, 403) else "") + ".")
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        wait = self.backoff_seconds * 2**attempt
        if retry_after:
            try:
                wait = float(retry_after)
            except ValueError:
                pass
        time.sleep(min(wait, self.max_backoff_seconds))

    def complete(self, prompt: Prompt, params: GenerationParams) -> Completion:
        """One prompt's completion (one request, with its retries); `seconds` is its own wall time."""
        t0 = time.perf_counter()
        c = self._one(prompt, params)
        c.seconds = time.perf_counter() - t0
        return c

    def _one(self, prompt: Prompt, params: GenerationParams, on_text: Callable[[str], None] | None = None) -> Completion:
        path, body = self._body(prompt, params)
        data = self._post(path, body, on_text)
        try:
            choice = data["choices"][0]
            if path == "/completions":
                text, reasoning = choice["text"], None
            else:
                msg = choice["message"]
                text, reasoning = msg.get("content") or "", msg.get("reasoning_content") or msg.get("reasoning")
            lp, top = logprob_lists(choice.get("logprobs"))
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.base_url + path} answered without choices[0]"
                                f"{'.text' if path == '/completions' else '.message'}; is it an OpenAI-compatible API?") from None
        usage = data.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0), seconds=0.0,
                          finish_reason=finish, stop_string=stop_string(choice, params.stop, data) if finish == "stop" else None,
                          token_logprobs=[float(x) for x in lp if x is not None] if params.logprobs and lp else None,
                          top_logprobs=top if params.logprobs and params.top_logprobs and top else None,
                          cached_tokens=cached_tokens(data), reasoning=reasoning)

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Completion]:
        """One completion per prompt, in order; `seconds` is the call's wall time shared among them."""
        if params.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1.")
        if not prompts:
            return []
        t0 = time.perf_counter()
        on_text = params.on_text

        def one(i: int) -> Completion:
            return self._one(prompts[i], params, None if on_text is None else lambda delta: on_text(i, delta))

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            out = list(pool.map(one, range(len(prompts))))
        share = (time.perf_counter() - t0) / len(prompts)
        for c in out:
            c.seconds = share
        return out


def _assemble(url: str, lines: Iterator[str], on_text: Callable[[str], None]) -> dict[str, Any]:
    """A streamed response (server-sent events: `data: {chunk}` lines, then `data: [DONE]`) as the one body a plain
    request gets: the texts of the chunks joined (each handed to `on_text` on arrival), the last finish and stop
    fields, the log-probabilities in order, and the usage of the final chunk."""
    text, reasoning, logprobs, tops = [], [], [], []
    choice: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    chat = False
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            raise EndpointError(f"{url} streamed a chunk that is not JSON ({payload[:80]!r}); is it an OpenAI-compatible API?") from None
        if isinstance(chunk.get("error"), (dict, str)):
            raise EndpointError(f"{url} failed mid-stream: {chunk['error'].get('message') if isinstance(chunk['error'], dict) else chunk['error']}.")
        usage = chunk.get("usage") or usage
        rest.update({k: v for k, v in chunk.items() if k == "timings"})
        for c in chunk.get("choices") or []:
            delta = c.get("delta")
            piece = (delta or {}).get("content") if delta is not None else c.get("text")
            chat = chat or delta is not None
            if delta is not None and (delta.get("reasoning_content") or delta.get("reasoning")):
                reasoning.append(delta.get("reasoning_content") or delta.get("reasoning"))
            if piece:
                text.append(piece)
                on_text(piece)
            lp, top = logprob_lists(c.get("logprobs"))
            logprobs += lp
            tops += top
            choice.update({k: v for k, v in c.items() if k in ("finish_reason", *STOP_FIELDS) and (v is not None or k not in choice)})
    joined = "".join(text)
    if chat:
        message = {"message": {"content": joined, "reasoning_content": "".join(reasoning) or None}}
    else:
        message = {"text": joined}
    body_logprobs = {"token_logprobs": logprobs, "top_logprobs": tops or None}  # read back by `logprob_lists`
    return {"choices": [{**choice, **message, "logprobs": body_logprobs}], "usage": usage, **rest}


def logprob_lists(logprobs: Any) -> tuple[list[float | None], list[dict[str, float]]]:
    """A choice's `logprobs` as (each token's log-probability, each position's likeliest tokens {token: logprob}):
    from the legacy lists (`token_logprobs`, `top_logprobs`: vLLM, SGLang, `/completions`) or a content list of
    `{token, logprob, top_logprobs: [{token, logprob}]}` (chat completions, llama.cpp)."""
    if not isinstance(logprobs, dict):
        return [], []
    if logprobs.get("token_logprobs") is not None:
        top = [dict(t) for t in logprobs.get("top_logprobs") or [] if isinstance(t, dict)]
        return list(logprobs["token_logprobs"]), top
    content = [t for t in logprobs.get("content") or [] if isinstance(t, dict)]
    top = [{str(x.get("token")): x["logprob"] for x in t["top_logprobs"] if isinstance(x, dict) and x.get("logprob") is not None}
           for t in content if t.get("top_logprobs")]
    return [t.get("logprob") for t in content], top


STOP_FIELDS = ("stop_reason", "matched_stop", "stopping_word")
"""Where engines say what ended a choice: vLLM's `stop_reason` (the stop string, a stop token id, or null for the end of
sequence), SGLang's `matched_stop`, llama.cpp's `stopping_word` (empty for the end of sequence)."""


def stop_string(choice: dict[str, Any], stops: Sequence[str], data: dict[str, Any] | None = None) -> str | None:
    """The stop string that ended a choice whose finish_reason is `stop`, None when the end of sequence did: the
    choice's own field (`STOP_FIELDS`), else llama.cpp's `__verbose` object (sent when the request says `verbose:
    true`). An engine that does not say (OpenAI, llama-cpp-python) is read as having met a stop string whenever there
    were any: a thought then asks the TTM once more rather than ending the loop early."""
    for key in STOP_FIELDS:
        if key in choice:
            value = choice[key]
            return value if isinstance(value, str) and value else None
    verbose = (data or {}).get("__verbose")
    if isinstance(verbose, dict) and "stop_type" in verbose:
        word = verbose.get("stopping_word")
        return word if verbose["stop_type"] == "word" and isinstance(word, str) and word else None
    return stops[0] if stops else None


def cached_tokens(data: dict[str, Any]) -> int:
    """Prompt tokens the engine took from its prefix cache: `usage.prompt_tokens_details.cached_tokens` (OpenAI, vLLM
    with --enable-prompt-tokens-details, SGLang, llama.cpp's server), else llama.cpp's `timings.cache_n`; 0 unknown."""
    details = (data.get("usage") or {}).get("prompt_tokens_details") or {}
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    if value is None:
        value = (data.get("timings") or {}).get("cache_n")
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _message(r: httpx.Response) -> str:
    """The error text of an OpenAI-style error body, else the start of the body."""
    try:
        err = r.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]).rstrip(".")
        if isinstance(err, str):
            return err.rstrip(".")
    except (json.JSONDecodeError, AttributeError):
        pass
    return r.text.strip()[:200].rstrip(".") or "no body"
