"""`OpenAIGenerator` against a fake OpenAI-compatible server run in the test (http.server in a
thread; never the network): both endpoints, order under concurrency, usage, retries on 429/5xx and
dropped connections, one-sentence errors; and an endpoint as a system of `pseudocot eval`, greedy and
sampled over several seeds."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pseudocot.config import GeneratorConfig, SystemConfig
from pseudocot.errors import EndpointError
from pseudocot.generate.base import GenerationParams
from pseudocot.generate.openai import OpenAIGenerator


class FakeAPI:
    """A fake endpoint. Prompts steer it: `flaky` fails twice (429, then 503) before answering, `down`
    always answers 503, `bad` gets a 400. Arithmetic questions it knows (`answers`) are answered
    `The answer is N.` (off by one for seed 1 on odd ids)."""

    def __init__(self, api_key: str | None = None, answers: dict[str, tuple[str, int]] | None = None):
        self.api_key, self.answers = api_key, answers or {}
        self.requests: list[dict] = []
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with api.lock:
                    api.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, payload, headers = api.respond(self.path, body, self.headers.get("Authorization"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def text_for(self, prompt: str, seed) -> str:
        for question, (answer, index) in self.answers.items():
            if question in prompt:
                value = int(answer) + (1 if seed == 1 and index % 2 else 0)
                return f"{question.split('.')[0]}.\nThe answer is {value}."
        return "echo:" + prompt[-20:]

    def respond(self, path, body, auth):
        if self.api_key and auth != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "Incorrect API key provided"}}, {}
        if path == "/v1/completions":
            prompt = body["prompt"]
        elif path == "/v1/chat/completions":
            prompt = body["messages"][-1]["content"]
        else:
            return 404, {"error": "no such route"}, {}
        if prompt.startswith("bad"):
            return 400, {"error": {"message": "prompt is not allowed"}}, {}
        if prompt.startswith("down"):
            return 503, {"error": {"message": "overloaded"}}, {}
        if prompt.startswith("flaky"):
            with self.lock:
                n = self.failures[prompt] = self.failures.get(prompt, 0) + 1
            if n == 1:
                return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
            if n == 2:
                return 503, {"error": {"message": "busy"}}, {}
        text = self.text_for(prompt, body.get("seed"))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        if path == "/v1/completions":
            choice = {"text": text, "finish_reason": "stop", "index": 0}
            if body.get("logprobs"):
                choice["logprobs"] = {"token_logprobs": [-0.5] * len(text.split())}
        else:
            choice = {"message": {"role": "assistant", "content": text, "reasoning_content": "let me think"},
                      "finish_reason": "length" if body["max_tokens"] < 3 else "stop", "index": 0}
        return 200, {"choices": [choice], "usage": usage}, {}


@pytest.fixture
def api():
    server = FakeAPI()
    yield server
    server.close()


def test_completions_in_order_with_usage_and_parameters(api):
    gen = OpenAIGenerator(api.url, "tiny", concurrency=4)
    prompts = [f"prompt number {i}" for i in range(10)]
    outs = gen.generate(prompts, GenerationParams(max_new_tokens=7, stop=["\n"], seed=3, logprobs=True))
    assert [c.text for c in outs] == ["echo:" + p[-20:] for p in prompts]
    assert [c.prompt_tokens for c in outs] == [3] * 10
    assert all(c.completion_tokens == 3 and c.finish_reason == "stop" and c.token_logprobs == [-0.5] * 3 for c in outs)
    assert all(c.seconds > 0 for c in outs)
    body = api.requests[0]["body"]
    assert api.requests[0]["path"] == "/v1/completions"
    assert body["model"] == "tiny" and body["max_tokens"] == 7 and body["stop"] == ["\n"] and body["seed"] == 3
    assert body["temperature"] == 0.0 and "top_p" not in body  # top_p only matters when sampling
    gen.generate(["x"], GenerationParams(temperature=0.8, top_p=0.9))
    assert api.requests[-1]["body"]["top_p"] == 0.9


def test_chat_prompts_and_messages(api):
    gen = OpenAIGenerator(api.url, "tiny", chat=True)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    a, b = gen.generate(["plain text", messages], GenerationParams(max_new_tokens=2))
    assert a.text == "echo:plain text" and a.reasoning == "let me think" and a.finish_reason == "length"
    assert api.requests[0]["path"] == "/v1/chat/completions"
    sent = {tuple(m["content"] for m in r["body"]["messages"]) for r in api.requests}
    assert sent == {("plain text",), ("be brief", "hello there")}
    assert b.text == "echo:hello there"
    with pytest.raises(ValueError, match="chat=True"):
        OpenAIGenerator(api.url, "tiny").generate([messages], GenerationParams())


def test_retries_rate_limits_and_server_errors(api):
    gen = OpenAIGenerator(api.url, "tiny", backoff_seconds=0.01, max_retries=3)
    (c,) = gen.generate(["flaky one"], GenerationParams())
    assert c.text == "echo:flaky one"
    assert len(api.requests) == 3  # 429, 503, then the answer


def test_errors_are_one_sentence(api):
    gen = OpenAIGenerator(api.url, "tiny", backoff_seconds=0.01, max_retries=2)
    with pytest.raises(EndpointError, match=r"answered 400 Bad Request: prompt is not allowed\.$"):
        gen.generate(["bad prompt"], GenerationParams())
    with pytest.raises(EndpointError, match=r"answered 503 .*overloaded \(after 3 tries\)\.$"):
        gen.generate(["down again"], GenerationParams())
    secured = FakeAPI(api_key="sk-right")
    try:
        with pytest.raises(EndpointError, match="401 Unauthorized: Incorrect API key provided; check the API key"):
            OpenAIGenerator(secured.url, "tiny", api_key="sk-wrong").generate(["x"], GenerationParams())
        (ok,) = OpenAIGenerator(secured.url, "tiny", api_key="sk-right").generate(["x"], GenerationParams())
        assert ok.text == "echo:x" and secured.requests[-1]["auth"] == "Bearer sk-right"
    finally:
        secured.close()
    with pytest.raises(EndpointError, match="is not an http"):
        OpenAIGenerator("localhost:8000", "tiny")


def test_no_server_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", "tiny", backoff_seconds=0.01, max_retries=1, timeout=2)
    with pytest.raises(EndpointError, match=r"no answer after 2 tries \(ConnectError.*check that the server is up"):
        gen.generate(["x"], GenerationParams())


# ------------------------------------------------------------------------------ as a system of `pseudocot eval`


def test_endpoint_system_greedy_and_sampled(tmp_path):
    from eval_fakes import arith_data, eval_config
    from pseudocot.stages import eval as eval_stage

    examples, data = arith_data(tmp_path, n=10)
    answers = {e.question: (e.answer, int(e.id.rsplit("/", 1)[1])) for e in examples}
    server = FakeAPI(answers=answers)
    try:
        cfg = eval_config(tmp_path, data, seeds=[0, 1], systems=[
            SystemConfig(name="api", kind="model", model=GeneratorConfig(base_url=server.url, model="tiny"),
                         parameters=7_000_000_000),
            SystemConfig(name="api-sampled", kind="model", model=GeneratorConfig(base_url=server.url, model="tiny", chat=False),
                         temperature=0.7)])
        res = eval_stage.main(cfg, figures=False)
    finally:
        server.close()
    greedy, sampled = res["systems"]["api"], res["systems"]["api-sampled"]
    # greedy: one generation stands for both seeds; sampled: one per seed, averaged
    assert greedy["seeds"] == [0] and greedy["accuracy"] == 1.0 and greedy["accuracy_std"] is None
    assert greedy["parameters"] == {"total": 7_000_000_000}
    assert sampled["seeds"] == [0, 1] and sampled["accuracy_per_seed"] == [1.0, 0.5]
    assert sampled["accuracy"] == pytest.approx(0.75) and sampled["accuracy_std"] == pytest.approx(0.353553, abs=1e-5)
    assert sampled["parameters"] is None
    seeds_sent = sorted(r["body"].get("seed") for r in server.requests if r["path"] == "/v1/completions")
    assert seeds_sent == [0] * 10 + [1] * 10
    chat = [r for r in server.requests if r["path"] == "/v1/chat/completions"]
    assert len(chat) == 10 and all(r["body"]["messages"][-1]["role"] == "user" for r in chat)
    # the first seed's pairs feed McNemar; the interval uses the seed-averaged per-question scores
    c = res["comparisons"]["api-sampled_vs_api"]
    assert c["delta"] == pytest.approx(-0.25) and c["a_only"] == 0 and c["b_only"] == 0 and c["p_value"] == 1.0
    rows = [json.loads(x) for x in (tmp_path / "eval" / "predictions" / "arith" / "api-sampled.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and {r["seed"] for r in rows} == {0, 1}
    assert all(re.fullmatch(r".*\nThe answer is \d+\.", r["prediction"], re.S) for r in rows)
