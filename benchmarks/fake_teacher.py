"""A fake DeepSeek-R1 teacher: an OpenAI-compatible chat server (standard library only) that answers
the questions of an `Example` file with their reference solutions, and injects faults on purpose, so
that a data-synthesis client can be shown to lose nothing, duplicate nothing and count its retries.

In a test or a benchmark (binds 127.0.0.1 on a free port, serves from a daemon thread):

    with FakeTeacher(examples, faults="429=0.1,500=0.1,slow=0.05,drop=0.05", slow_seconds=1.0) as teacher:
        gen = OpenAIGenerator(teacher.url, "fake-r1", chat=True, timeout=0.5)
        completions = gen.generate(prompts, GenerationParams(temperature=0.7, seed=0))
        teacher.wait_idle()      # late answers of timed-out requests still count
        teacher.stats()          # requests, served, unique_served, duplicates_served, faults

As a script (serves until Ctrl-C; prints the URL first and the counters as one JSON line last):

    python benchmarks/fake_teacher.py --data FILE.jsonl --port 8001 --faults 429=0.1,500=0.1,slow=0.05,drop=0.05

`POST /v1/chat/completions` finds the example whose question occurs in the last user message (the
longest such question wins) and answers as R1 does: `content` is the reference reasoning, one step a
line, then `Final answer: N`; the thinking goes in `reasoning_content`, `reasoning`, `<think>` tags at
the start of `content`, or nowhere (`thinking`). `max_tokens` and `stop` are not enforced. With a
request `seed`, a hash of (`seed`, example id, request seed) decides, the same way every time,
whether one intermediate step's result goes up by one (`error_rate`: a planted arithmetic error, the
final answer still right) and whether the final answer is gold + 1 (`wrong_rate`: the last step is
rewritten to give it, so the chain still checks out step by step).

Faults (`faults`, `429=p,500=p,502=p,503=p,slow=p,drop=p`): a request's key is a hash of (last user
message, seed, temperature); the first attempt of a key gets at most one fault, chosen by hashing the
key against the cumulative probabilities, and every later attempt of the key is answered, so a
client that retries always gets through. `429` carries `Retry-After`; `slow` sleeps `slow_seconds`
before answering (a client with a shorter timeout retries, and the late answer counts as served);
`drop` closes the connection without a response after the answer was made (it counts as served, so
the retry is a duplicate). `down=p` is different: the keys whose hash falls under p answer 503 on
every attempt (`down=1`: a teacher that fails every request).

`answerer(user message, seed, temperature) -> content`, where given, answers instead of the examples (a teacher
that writes questions from a document chunk, in the questions stage's tests).

`GET /v1/models` lists the one model `fake-r1`; `GET /stats` gives the counters of `stats()`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pseudocot.data.example import Example
from pseudocot.data.jsonl import read_examples
from pseudocot.errors import PseudocotError

MODEL = "fake-r1"
FAULT_KINDS = ("429", "500", "502", "503", "slow", "drop")
"""Faults injected on the first attempt of a request key; `down` (every attempt) is apart."""
THINKING = ("reasoning_content", "reasoning", "think_tags", "none")
UNKNOWN = "I cannot solve this.\nFinal answer: 0"
UNAUTHORIZED = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None,
                          "code": "invalid_api_key"}}

_STEP = re.compile(r"^(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)$")


# ---------------------------------------------------------------------------------------- answers


def unit(*parts: Any) -> float:
    """A number in [0, 1) fixed by `parts`: a draw that is the same in every process and every run."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def set_last_number(line: str, value: int) -> str:
    """The line with its last digit run (a step's result) replaced by `value`; unchanged if it has none."""
    hits = list(re.finditer(r"\d+", line))
    return line if not hits else line[:hits[-1].start()] + str(value) + line[hits[-1].end():]


def bump_result(line: str) -> str:
    """The step with its result raised by one: a planted arithmetic error."""
    hits = re.findall(r"\d+", line)
    return set_last_number(line, int(hits[-1]) + 1) if hits else line


def wrong_last_step(line: str, wrong: int) -> str:
    """The last step rewritten to give `wrong` (gold + 1) and still be true arithmetic where it is an
    `a op b = c` step: `+` and `-` move the operand by one, `*` and `/` add `+ 1`. Other lines just
    get `wrong` as their last number."""
    m = _STEP.match(line.strip())
    if not m:
        return set_last_number(line, wrong)
    a, op, b = m.group(1), m.group(2), int(m.group(3))
    if op == "+":
        return f"{a} + {b + 1} = {wrong}"
    if op == "-" and b >= 1:
        return f"{a} - {b - 1} = {wrong}"
    return f"{a} {op} {b} + 1 = {wrong}"


def as_int(answer: str) -> int | None:
    try:
        return int(answer.strip().replace(",", ""))
    except ValueError:
        return None


def solution(example: Example, error_step: int | None = None, wrong: bool = False) -> tuple[list[str], str]:
    """The reference steps and final answer of `example`; `error_step` (an intermediate step) gets
    its result raised by one, `wrong` makes the final answer gold + 1 (integer golds only)."""
    lines = [ln.strip() for ln in (example.reasoning or "").splitlines() if ln.strip()]
    final = example.answer.strip()
    if error_step is not None and 0 <= error_step < len(lines) - 1:
        lines[error_step] = bump_result(lines[error_step])
    gold = as_int(final)
    if wrong and gold is not None:
        final = str(gold + 1)
        if lines:
            lines[-1] = wrong_last_step(lines[-1], gold + 1)
    return lines, final


def thinking_text(question: str, lines: Sequence[str], final: str) -> str:
    """A short R1-style thinking paragraph over the same steps and numbers."""
    parts = ["Let me work through this step by step."]
    numbers = re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", question)
    if numbers:
        parts.append(f"The question gives me {', '.join(numbers)}.")
    parts += [f"{'First' if i == 0 else 'Then'}, {line.rstrip('.')}." for i, line in enumerate(lines)]
    parts.append(f"So the answer should be {final}.")
    return " ".join(parts)


def parse_faults(spec: str | Mapping[str, float]) -> dict[str, float]:
    """`"429=0.1,slow=0.05"` or a dict -> {kind: probability}; one-sentence ValueError if wrong."""
    if isinstance(spec, str):
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            kind, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"fault '{part}' has no '=p'; write faults as KIND=PROBABILITY, e.g. 429=0.1,slow=0.05.")
            try:
                items.append((kind.strip(), float(value)))
            except ValueError:
                raise ValueError(f"fault '{part}': '{value}' is not a probability; give a number in 0..1.") from None
    else:
        items = [(str(k), float(v)) for k, v in spec.items()]
    faults: dict[str, float] = {}
    for kind, p in items:
        if kind not in (*FAULT_KINDS, "down"):
            raise ValueError(f"unknown fault '{kind}'; the kinds are {', '.join((*FAULT_KINDS, 'down'))}.")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"fault '{kind}' has probability {p}; give a number in 0..1.")
        faults[kind] = p
    total = sum(p for k, p in faults.items() if k != "down")
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault probabilities add up to {total:g}; at most one fault is injected per request, so keep the sum <= 1.")
    return faults


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def last_user_text(messages: Any) -> str | None:
    """The text of the last user message (a string, or a list of `{"type": "text"}` parts)."""
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else None
    return None


def words(messages: list[Any]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))


# ----------------------------------------------------------------------------------------- server


class FakeTeacher:
    """The fake teacher; `start()` serves it, `stats()` counts what it did (thread-safe)."""

    def __init__(self, examples: Sequence[Example], *, faults: str | Mapping[str, float] = "", slow_seconds: float = 2.0,
                 error_rate: float = 0.0, wrong_rate: float = 0.0, thinking: str = "reasoning_content",
                 api_key: str | None = None, seed: int = 0, retry_after: str = "0", port: int = 0,
                 answerer: Callable[[str, int | None, float | None], str] | None = None) -> None:
        if thinking not in THINKING:
            raise ValueError(f"thinking '{thinking}' is not one of {', '.join(THINKING)}.")
        for name, rate in (("error_rate", error_rate), ("wrong_rate", wrong_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in 0..1, got {rate}.")
        if slow_seconds < 0:
            raise ValueError(f"slow_seconds must be >= 0, got {slow_seconds}.")
        self.faults = parse_faults(faults)
        self.slow_seconds, self.error_rate, self.wrong_rate = slow_seconds, error_rate, wrong_rate
        self.thinking, self.api_key, self.seed, self.retry_after, self.port = thinking, api_key, seed, retry_after, port
        self.answerer = answerer
        self.by_question = {e.question: e for e in examples}
        # Longest first: the first question found in a message is the longest match.
        self.by_length = sorted(examples, key=lambda e: len(e.question), reverse=True)
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._answered: set[str] = set()
        self._counts = {"requests": 0, "served": 0, "duplicates_served": 0, "in_flight": 0}
        self._fault_counts: dict[str, int] = {}
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FakeTeacher:
        if self._server is None:
            self._server = _Server(("127.0.0.1", self.port), _handler(self))
            # A short poll interval: close() waits up to one interval for the serving loop to stop.
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake teacher is not started; call start() first.")
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def close(self) -> None:
        self._closing.set()  # wakes `slow` requests, which then answer at once
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTeacher:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """requests (POSTs), served (200 answers made, delivered or not), unique_served (distinct request
        keys answered), duplicates_served (answers for a key already answered), faults {kind: n}, in_flight."""
        with self._lock:
            return {**{k: v for k, v in self._counts.items() if k != "in_flight"},
                    "unique_served": len(self._answered), "faults": dict(sorted(self._fault_counts.items())),
                    "in_flight": self._counts["in_flight"]}

    def wait_idle(self, timeout_seconds: float = 10.0) -> bool:
        """Wait until no POST is being handled (late `slow` answers included); False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if self._counts["in_flight"] == 0:
                    return True
            time.sleep(0.01)
        return False

    # -- requests -----------------------------------------------------------------------------------

    def _authorized(self, auth: str | None) -> bool:
        return self.api_key is None or auth == f"Bearer {self.api_key}"

    def _fault(self, key: str) -> str | None:
        """The fault of this attempt of `key`, counted; None to answer."""
        down = self.faults.get("down", 0.0)
        with self._lock:
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        kind = None
        if down and unit("down", self.seed, key) < down:
            kind = "down"
        elif attempt == 1:
            u, cumulative = unit("fault", self.seed, key), 0.0
            for name, p in self.faults.items():
                if name == "down":
                    continue
                cumulative += p
                if u < cumulative:
                    kind = name
                    break
        if kind is not None:
            with self._lock:
                self._fault_counts[kind] = self._fault_counts.get(kind, 0) + 1
        return kind

    def _served(self, key: str) -> None:
        with self._lock:
            self._counts["served"] += 1
            if key in self._answered:
                self._counts["duplicates_served"] += 1
            self._answered.add(key)

    def find(self, text: str) -> Example | None:
        """The example whose question occurs in `text`, the longest one if several do."""
        hit = self.by_question.get(text.strip())
        if hit is not None:
            return hit
        return next((e for e in self.by_length if e.question in text), None)

    def answer(self, text: str, seed: int | None) -> tuple[str, str]:
        """(thinking, content without thinking) for a user message and request seed."""
        ex = self.find(text)
        if ex is None:
            return "Let me work through this step by step. I do not recognise this problem.", UNKNOWN
        error_step, wrong = None, False
        if seed is not None:
            n_steps = len([ln for ln in (ex.reasoning or "").splitlines() if ln.strip()])
            if n_steps >= 2 and unit("error", self.seed, ex.id, seed) < self.error_rate:
                error_step = int(unit("step", self.seed, ex.id, seed) * (n_steps - 1))
            wrong = unit("wrong", self.seed, ex.id, seed) < self.wrong_rate
        lines, final = solution(ex, error_step, wrong)
        return thinking_text(ex.question, lines, final), "\n".join([*lines, f"Final answer: {final}"])

    def chat(self, body: Any) -> tuple[int, dict[str, Any], dict[str, str], str | None]:
        """(status, JSON body, headers, action) for one authorised chat completion request; action is
        None, `slow` (answer late) or `drop` (hang up instead)."""
        if not isinstance(body, dict):
            return 400, error_body("The body must be a JSON object.", "invalid_request_error", "invalid_json"), {}, None
        text = last_user_text(body.get("messages"))
        if text is None:
            return 400, error_body("'messages' must hold a user message with text.", "invalid_request_error",
                                   "invalid_value", "messages"), {}, None
        seed = body.get("seed") if isinstance(body.get("seed"), int) else None
        temperature = body.get("temperature")
        temperature = float(temperature) if isinstance(temperature, (int, float)) else None
        key = hashlib.sha256(json.dumps([text, seed, temperature]).encode()).hexdigest()
        kind = self._fault(key)
        if kind == "429":
            return 429, error_body("Rate limit reached; retry later.", "rate_limit_error", "rate_limit_exceeded"), \
                {"Retry-After": self.retry_after}, None
        if kind in ("500", "502", "503", "down"):
            status = 503 if kind == "down" else int(kind)
            return status, error_body(f"The server had an error ({kind}).", "server_error", kind), {}, None
        if self.answerer is not None:  # another kind of teacher (one that writes questions from a text): its content, no thinking
            thinking, content = "", self.answerer(text, seed, temperature)
        else:
            thinking, content = self.answer(text, seed)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.thinking == "reasoning_content":
            message["reasoning_content"] = thinking
        elif self.thinking == "reasoning":
            message["reasoning"] = thinking
        elif self.thinking == "think_tags":
            message["content"] = f"<think>\n{thinking}\n</think>\n\n{content}"
        prompt_tokens = words(body["messages"])
        completion_tokens = len(content.split()) + (0 if self.thinking == "none" else len(thinking.split()))
        self._served(key)
        reply = {"id": f"chatcmpl-{key[:24]}", "object": "chat.completion", "created": int(time.time()),
                 "model": str(body.get("model") or MODEL),
                 "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}}
        return 200, reply, {}, kind

    def get(self, path: str, auth: str | None) -> tuple[int, dict[str, Any]]:
        if path == "/stats":
            return 200, self.stats()
        if path == "/v1/models":
            if not self._authorized(auth):
                return 401, UNAUTHORIZED
            return 200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "pseudocot"}]}
        return 404, error_body(f"No route GET {path}.", "invalid_request_error", "not_found")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up is part of the game; anything else is a bug worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(teacher: FakeTeacher) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fake-teacher/1"

        def log_message(self, *args: Any) -> None:
            pass

        def send_json(self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a `slow` answer)
                self.close_connection = True

        def do_GET(self) -> None:
            self.send_json(*teacher.get(self.path.split("?")[0], self.headers.get("Authorization")))

        def do_POST(self) -> None:
            with teacher._lock:
                teacher._counts["requests"] += 1
                teacher._counts["in_flight"] += 1
            try:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.split("?")[0] != "/v1/chat/completions":
                    self.send_json(404, error_body(f"No route POST {self.path}.", "invalid_request_error", "not_found"))
                    return
                if not teacher._authorized(self.headers.get("Authorization")):
                    self.send_json(401, UNAUTHORIZED)
                    return
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    self.send_json(400, error_body(f"The body is not valid JSON ({e}).", "invalid_request_error", "invalid_json"))
                    return
                status, payload, headers, action = teacher.chat(body)
                if action == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if action == "slow":
                    teacher._closing.wait(teacher.slow_seconds)
                self.send_json(status, payload, headers)
            finally:
                with teacher._lock:
                    teacher._counts["in_flight"] -= 1

    return Handler


# ------------------------------------------------------------------------------------------- script


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve a fake DeepSeek-R1 teacher over an Example file until Ctrl-C.")
    p.add_argument("--data", required=True, help="Example JSONL file whose questions the teacher answers")
    p.add_argument("--port", type=int, default=8001, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--faults", default="", help="e.g. 429=0.1,500=0.1,slow=0.05,drop=0.05 (also 502, 503, down)")
    p.add_argument("--slow-seconds", type=float, default=2.0, help="delay of a `slow` fault")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of seeded answers with a planted step error")
    p.add_argument("--wrong-rate", type=float, default=0.0, help="share of seeded answers whose final answer is gold + 1")
    p.add_argument("--thinking", choices=THINKING, default="reasoning_content", help="where the thinking goes")
    p.add_argument("--api-key-env", default=None, help="environment variable holding the API key to require")
    p.add_argument("--seed", type=int, default=0, help="seed of the planted errors and of the fault choice")
    p.add_argument("--retry-after", default="0", help="Retry-After header of a 429, in seconds")
    args = p.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            p.exit(1, f"error: --api-key-env {args.api_key_env}: the variable is not set; export it or leave the flag out.\n")
    try:
        examples = read_examples(args.data).examples
        teacher = FakeTeacher(examples, faults=args.faults, slow_seconds=args.slow_seconds, error_rate=args.error_rate,
                              wrong_rate=args.wrong_rate, thinking=args.thinking, api_key=api_key, seed=args.seed,
                              retry_after=args.retry_after, port=args.port).start()
    except (PseudocotError, ValueError) as e:
        p.exit(1, f"error: {e}\n")
    except OSError as e:
        p.exit(1, f"error: cannot listen on 127.0.0.1:{args.port} ({e.strerror}); pick another --port.\n")
    # Ctrl-C or SIGTERM stop it: a shell's background job starts with SIGINT ignored, so set both here.
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(teacher.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        teacher.close()
        print(json.dumps(teacher.stats()), flush=True)


if __name__ == "__main__":
    main()
