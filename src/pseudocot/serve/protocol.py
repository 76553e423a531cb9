"""The OpenAI chat-completions protocol of `pseudocot serve`: a request body checked field by field into a
`ChatRequest` (each wrong field a 4xx `RequestError` naming it), and a finished `Trace` written back as a
`chat.completion`, its stream chunks, usage and the `pseudocot` object.

The thoughts are the reasoning: `message.reasoning_content` (DeepSeek's name) and `message.reasoning`
(vLLM's newer one) carry them, one per line; `content` is the base model's final answer.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pseudocot.config.schema import ServeConfig
from pseudocot.errors import RequestError
from pseudocot.pipeline import MODES, Trace

MODEL = "pseudocot"
"""The model id whose mode is the run's default; `pseudocot-<mode>` names a mode."""

ROLES = ("system", "developer", "user", "assistant")
IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options",
                            "reasoning_effort", "modalities", "prediction", "web_search_options", "audio"})
"""Fields accepted and not acted on (what OpenAI clients send that changes nothing here)."""


MAX_STOP_CHARS = 200
"""Longest stop string (each is searched for after every generated token)."""


def model_id(mode: str) -> str:
    return f"{MODEL}-{mode}"


@dataclass(frozen=True)
class ChatRequest:
    """One checked `/v1/chat/completions` request."""

    model: str
    """The model id answered with: `pseudocot-<mode>`."""
    mode: str
    question: str
    """The last user message."""
    history: tuple[tuple[str, str], ...]
    """Earlier messages as (role, text): the base model reads them before the question."""
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    """Tokens per base answer (None: pipeline.answer_max_new_tokens)."""
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    max_thoughts: int | None = None
    threshold: float | None = None

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with the same key can share a pipeline batch (greedy requests ignore top_p and seed)."""
        sampled = self.temperature > 0
        return (self.mode, self.max_thoughts, self.threshold, self.max_tokens, self.stop, self.temperature,
                self.top_p if sampled else None, self.seed if sampled else None)

    def history_messages(self) -> list[dict[str, str]]:
        return [{"role": "system" if r == "developer" else r, "content": t} for r, t in self.history]


# --------------------------------------------------------------------------------------------
# Reading a request.
# --------------------------------------------------------------------------------------------


def _bad(message: str, param: str | None, status: int = 400, code: str | None = None) -> RequestError:
    return RequestError(message, status=status, param=param, code=code)


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _number(body: Mapping[str, Any], key: str, lo: float, hi: float, default: float, low_open: bool = False,
            param: str | None = None) -> float:
    v = body.get(key)
    param = param or key
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(f"'{param}' must be a finite number, got {_type_name(v) if not isinstance(v, float) else v}.", param)
    if v > hi or v < lo or (low_open and v == lo):
        raise _bad(f"'{param}' must be {'above' if low_open else 'at least'} {lo:g} and at most {hi:g}, got {v}.", param)
    return float(v)


def _integer(body: Mapping[str, Any], key: str, lo: int, hi: int | None, param: str | None = None) -> int | None:
    v = body.get(key)
    param = param or key
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{param}' must be an integer, got {_type_name(v)}.", param)
    if v < lo or (hi is not None and v > hi):
        raise _bad(f"'{param}' must be between {lo} and {hi}, got {v}." if hi is not None else f"'{param}' must be at least {lo}, got {v}.", param)
    return v


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or an array of text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"'{where}.content[{j}]' must be a text part {{\"type\": \"text\", \"text\": ...}}; this server reads text only.",
                           f"{where}.content")
            parts.append(part["text"])
        return "\n".join(parts)
    raise _bad(f"'{where}.content' must be a string or an array of text parts, got {_type_name(content)}.", f"{where}.content")


def _messages(value: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    if value is None:
        raise _bad("'messages' is required: a non-empty array of {role, content} objects.", "messages")
    if not isinstance(value, list):
        raise _bad(f"'messages' must be an array of {{role, content}} objects, got {_type_name(value)}.", "messages")
    if not value:
        raise _bad("'messages' is empty; send at least one user message.", "messages")
    turns = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object with role and content, got {_type_name(m)}.", where)
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}.", f"{where}.role")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        # An assistant message's reasoning_content is ignored, as DeepSeek's API does: only answers go back in.
        turns.append((role, _text(content, where)))
    role, question = turns[-1]
    if role != "user":
        raise _bad(f"the last message must be the user's question, got a {role} message.", f"messages[{len(turns) - 1}].role")
    if not question.strip():
        raise _bad(f"'messages[{len(turns) - 1}].content' is empty; ask a question.", f"messages[{len(turns) - 1}].content")
    return question, tuple(turns[:-1])


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops) or len(stops) > 4:
        raise _bad(f"'stop' must be a string or an array of at most 4 strings, each 1 to {MAX_STOP_CHARS} characters.", "stop")
    return tuple(stops)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Fields whose request this server cannot honour: a 400 naming the field, never a silent ignore."""
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _bad("log-probabilities are not returned by this server; drop 'logprobs'.", "logprobs")
    if body.get("tools") or body.get("functions"):
        raise _bad("tool calls are not supported by this server; drop 'tools'.", "tools")
    if body.get("tool_choice") not in (None, "none", "auto"):
        raise _bad("tool calls are not supported by this server; drop 'tool_choice'.", "tool_choice")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _bad("only text responses are supported; drop 'response_format' or set it to {\"type\": \"text\"}.", "response_format")
    for key in ("presence_penalty", "frequency_penalty"):
        v = body.get(key)
        if v not in (None, 0, 0.0):
            raise _bad(f"'{key}' is not supported by this server; leave it at 0.", key)
    if body.get("logit_bias"):
        raise _bad("'logit_bias' is not supported by this server.", "logit_bias")


def resolve_model(name: Any, modes: Sequence[str], default_mode: str) -> str:
    """The mode a model id asks for, or a 404 listing the ids this server answers to."""
    if not isinstance(name, str) or not name:
        raise _bad("'model' is required: one of " + ", ".join(model_ids(modes)) + ".", "model")
    mode = default_mode if name == MODEL else name.removeprefix(MODEL + "-") if name.startswith(MODEL + "-") else None
    if mode not in modes:
        why = " (this run has no " + ("router" if mode in ("router", "depth") else "Tiny Thought Model") + ")" if mode in MODES else ""
        raise _bad(f"the model '{name}' does not exist here{why}; use one of {', '.join(model_ids(modes))} (GET /v1/models).",
                   "model", status=404, code="model_not_found")
    return mode


def model_ids(modes: Sequence[str]) -> list[str]:
    return [MODEL] + [model_id(m) for m in modes]


def parse_chat_request(body: Any, modes: Sequence[str], default_mode: str, limits: ServeConfig) -> ChatRequest:
    """A request body (parsed JSON) as a `ChatRequest`; every wrong field is a `RequestError` naming it."""
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {_type_name(body)}.", None)
    mode = resolve_model(body.get("model"), modes, default_mode)
    question, history = _messages(body.get("messages"))
    _refuse_unsupported(body)
    n = _integer(body, "n", 1, None)
    if n not in (None, 1):
        raise _bad(f"'n' must be 1: this server writes one choice per request, got {n}.", "n")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be a boolean, got {_type_name(stream)}.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _bad("'stream_options' must be an object like {\"include_usage\": true}.", "stream_options")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, key, 1, limits.max_tokens)
    extra = body.get("pseudocot") or {}
    if not isinstance(extra, dict):
        raise _bad(f"'pseudocot' must be an object with mode, max_thoughts, threshold, got {_type_name(extra)}.", "pseudocot")
    unknown = sorted(set(extra) - {"mode", "max_thoughts", "threshold"})
    if unknown:
        raise _bad(f"'pseudocot.{unknown[0]}' is not a field; use mode, max_thoughts or threshold.", f"pseudocot.{unknown[0]}")
    if extra.get("mode") is not None:
        want = extra["mode"]
        if want not in modes:
            raise _bad(f"'pseudocot.mode' must be one of {', '.join(modes)} for this run, got {want!r}.", "pseudocot.mode")
        if body["model"] != MODEL and want != mode:
            raise _bad(f"'pseudocot.mode' is {want} but the model '{body['model']}' says {mode}; use the model id {MODEL} with a mode, "
                       "or the mode's model id alone.", "pseudocot.mode")
        mode = want
    max_thoughts = _integer(extra, "max_thoughts", 0, limits.max_thoughts, "pseudocot.max_thoughts")
    threshold = None if extra.get("threshold") is None else _number(extra, "threshold", 0.0, 1.0, 0.0, param="pseudocot.threshold")
    return ChatRequest(
        model=model_id(mode), mode=mode, question=question, history=history, stream=stream,
        include_usage=bool(options.get("include_usage", False)) and stream, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, 0.0), top_p=_number(body, "top_p", 0.0, 1.0, 1.0, low_open=True),
        seed=_integer(body, "seed", -(2**63), 2**63 - 1), stop=_stop(body.get("stop")),
        max_thoughts=max_thoughts, threshold=threshold)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """The body as JSON; anything that is not (bad bytes, NaN, nesting too deep, huge integers) is a 400."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise _bad(f"the request body is not valid JSON ({why}); send a JSON object.", None) from None


# --------------------------------------------------------------------------------------------
# Writing a response.
# --------------------------------------------------------------------------------------------


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def reasoning_text(trace: Trace) -> str:
    """Every thought the TTM wrote, one per line, as the stream sends them (a thought a router that reads thoughts
    turned down is among them: its `router` event says it was dropped, and the base model never saw it)."""
    return "".join(t.text + "\n" for t in trace.thoughts)


def model_tokens(trace: Trace) -> dict[str, dict[str, int]]:
    """Prompt, completion and cached prompt tokens of every call, per model (`base`: answers, `ttm`: thoughts)."""
    return {model: {"prompt": sum(c.prompt_tokens for c in calls), "completion": trace.tokens[model],
                    "cached": sum(c.cached_tokens for c in calls)}
            for model, calls in (("base", trace.answers), ("ttm", trace.thoughts))}


def usage(trace: Trace) -> dict[str, Any]:
    """OpenAI's usage: both models' calls summed; the thoughts count as reasoning tokens."""
    t = model_tokens(trace)
    prompt = t["base"]["prompt"] + t["ttm"]["prompt"]
    completion = t["base"]["completion"] + t["ttm"]["completion"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": t["base"]["cached"] + t["ttm"]["cached"]},
            "completion_tokens_details": {"reasoning_tokens": t["ttm"]["completion"]}}


def summary(trace: Trace, queue_seconds: float, batch_size: int) -> dict[str, Any]:
    """The `pseudocot` object: what the loop did for this answer and what it cost."""
    return {
        "mode": trace.mode, "thought_calls": trace.thought_calls, "stop_reason": trace.stop_reason,
        "router_scores": [a.router_score for a in trace.answers], "answers": [a.text for a in trace.answers],
        "answer_scores": [a.answer_score for a in trace.answers], "selected": trace.selected,
        "depth": trace.depth, "tokens": model_tokens(trace),
        "seconds": round(trace.seconds, 4), "queue_seconds": round(queue_seconds, 4), "batch_size": batch_size,
    }


def finish_reason(trace: Trace) -> str:
    return "length" if trace.returned is not None and trace.returned.finish_reason == "length" else "stop"


def completion(cid: str, created: int, trace: Trace, queue_seconds: float, batch_size: int) -> dict[str, Any]:
    reasoning = reasoning_text(trace) or None
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model_id(trace.mode),
        "choices": [{"index": 0, "finish_reason": finish_reason(trace), "logprobs": None,
                     "message": {"role": "assistant", "content": trace.final_text,
                                 "reasoning_content": reasoning, "reasoning": reasoning}}],
        "usage": usage(trace), "pseudocot": summary(trace, queue_seconds, batch_size),
    }


def chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if extra is not None:
        out["pseudocot"] = extra
    return out


def usage_chunk(cid: str, created: int, model: str, trace: Trace) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage(trace)}


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def now() -> int:
    return int(time.time())
