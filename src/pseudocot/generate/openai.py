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
from collections.abc import Sequence
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
                 max_backoff_seconds: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise EndpointError(f"base_url '{base_url}' is not an http(s) URL; give the endpoint, e.g. http://localhost:8000/v1.")
        if concurrency < 1 or max_retries < 0:
            raise ValueError("concurrency must be at least 1 and max_retries at least 0.")
        self.base_url = base_url.rstrip("/")
        self.model, self.chat, self.concurrency = model, chat, concurrency
        self.max_retries, self.backoff_seconds, self.max_backoff_seconds = max_retries, backoff_seconds, max_backoff_seconds
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
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
            return "/chat/completions", body
        body["prompt"] = prompt
        if params.logprobs:
            body["logprobs"] = 1
        return "/completions", body

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                r = self.client.post(url, json=body)
            except httpx.TransportError as e:  # connection refused or dropped, timeouts
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

    def _one(self, prompt: Prompt, params: GenerationParams) -> Completion:
        path, body = self._body(prompt, params)
        data = self._post(path, body)
        try:
            choice = data["choices"][0]
            if path == "/completions":
                text, reasoning = choice["text"], None
                lp = (choice.get("logprobs") or {}).get("token_logprobs")
            else:
                msg = choice["message"]
                text, reasoning = msg.get("content") or "", msg.get("reasoning_content") or msg.get("reasoning")
                lp = [t["logprob"] for t in ((choice.get("logprobs") or {}).get("content") or [])] or None
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.base_url + path} answered without choices[0]"
                                f"{'.text' if path == '/completions' else '.message'}; is it an OpenAI-compatible API?") from None
        usage = data.get("usage") or {}
        finish = choice.get("finish_reason") or "stop"
        return Completion(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0), seconds=0.0,
                          finish_reason="length" if finish == "length" else "stop",
                          token_logprobs=[float(x) for x in lp if x is not None] if params.logprobs and lp else None,
                          reasoning=reasoning)

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Completion]:
        """One completion per prompt, in order; `seconds` is the call's wall time shared among them."""
        if params.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1.")
        if not prompts:
            return []
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            out = list(pool.map(lambda p: self._one(p, params), prompts))
        share = (time.perf_counter() - t0) / len(prompts)
        for c in out:
            c.seconds = share
        return out


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
