"""`pseudocot serve` on a tiny run: the official `openai` client (streaming and not), reasoning apart from
content, the mode per model id and per `pseudocot` field, batching across concurrent requests, every bad
input a 4xx JSON error, the queue's 429, a client leaving mid-stream, loading, and SIGTERM draining."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from pseudocot.config import ServeConfig
from pseudocot.serve.app import create_app
from pseudocot.serve.batcher import Batcher
from serve_helpers import start_server

pytestmark = pytest.mark.usefixtures("one_thread")

Q1 = "Mia has 5 apples. She gets 3 more apples. How many apples does Mia have now?"
Q2 = "Leo has 9 coins. He loses 2 coins. Then he finds 4 coins. How many coins does Leo have now?"
QUESTIONS = [
    Q1, Q2,
    "Ann has 7 pens. She gives away 3 pens. How many pens are left?",
    "Tom has 4 boxes with 2 toys each. How many toys does Tom have?",
    "A jar has 12 candies. Sam eats 5 candies. How many candies are in the jar?",
    "Eva has 6 stamps. She buys 6 more stamps. How many stamps does Eva have?",
    "Max has 15 marbles. He loses 4 marbles. Then he wins 2 marbles. How many marbles does Max have?",
    "Zoe has 8 books. She reads 3 of them. How many books has she not read?",
]


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key=live_server.api_key, max_retries=0, timeout=120)


def _user(text):
    return [{"role": "user", "content": text}]


def _stream(client, **kw):
    """(chunks, reasoning text, content text) of a streamed completion."""
    chunks = list(client.chat.completions.create(stream=True, **kw))
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, reasoning, content


# ------------------------------------------------------------------------------------ the OpenAI API


def test_models_lists_every_mode_this_run_has(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["pseudocot", "pseudocot-router", "pseudocot-always", "pseudocot-never", "pseudocot-depth"]


def test_openai_client_reasoning_apart_from_content(client):
    r = client.chat.completions.create(model="pseudocot-always", messages=_user(Q1))
    msg = r.choices[0].message
    extra = msg.model_extra
    info = r.model_extra["pseudocot"]
    assert r.model == "pseudocot-always" and r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert info["mode"] == "always" and 1 <= info["thought_calls"] <= 2
    thoughts = extra["reasoning_content"].splitlines()
    assert len(thoughts) == info["thought_calls"] and all(thoughts)
    assert extra["reasoning"] == extra["reasoning_content"]
    assert msg.content == info["answers"][-1] and msg.content
    assert r.choices[0].finish_reason in ("stop", "length")
    # Usage counts the prompts and completions of both models; the thoughts are reasoning tokens.
    tokens = info["tokens"]
    assert r.usage.completion_tokens == tokens["base"]["completion"] + tokens["ttm"]["completion"]
    assert r.usage.prompt_tokens == tokens["base"]["prompt"] + tokens["ttm"]["prompt"] > 0
    assert r.usage.completion_tokens_details.reasoning_tokens == tokens["ttm"]["completion"] > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_sends_reasoning_before_content_then_usage(client):
    kw = {"model": "pseudocot-always", "messages": _user(Q2)}
    whole = client.chat.completions.create(**kw)
    chunks, reasoning, content = _stream(client, stream_options={"include_usage": True}, **kw)
    assert chunks[0].choices[0].delta.role == "assistant"
    kinds = []
    for c in chunks:
        if not c.choices:
            kinds.append("usage")
            continue
        d = c.choices[0].delta
        if (d.model_extra or {}).get("reasoning_content"):
            assert d.model_extra["reasoning"] == d.model_extra["reasoning_content"]
            kinds.append("reasoning")
        if d.content:
            kinds.append("content")
        if c.choices[0].finish_reason:
            kinds.append("finish")
    assert kinds[-2:] == ["finish", "usage"]
    # The answer comes after every thought, in one run of content chunks (the base model writing it).
    content_at = [i for i, k in enumerate(kinds) if k == "content"]
    assert content_at and content_at == list(range(content_at[0], content_at[-1] + 1))
    assert max(i for i, k in enumerate(kinds) if k == "reasoning") < content_at[0]
    assert kinds.count("reasoning") == whole.model_extra["pseudocot"]["thought_calls"]
    # Greedy: the stream says what the whole response says.
    assert reasoning == whole.choices[0].message.model_extra["reasoning_content"]
    assert content == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    events = [c.model_extra["pseudocot"]["event"] for c in chunks if (c.model_extra or {}).get("pseudocot")]
    assert events[0] == "answer" and events[-1] == "done" and "thought" in events


@pytest.mark.parametrize("mode", ["never", "always"])
def test_the_returned_answer_streams_token_by_token_as_the_base_writes_it(client, mode):
    long = [q for q in QUESTIONS if q]
    for q in long:
        chunks = list(client.chat.completions.create(model=f"pseudocot-{mode}", messages=_user(q), stream=True,
                                                     stream_options={"include_usage": True}))
        order = []  # content deltas, and the pseudocot event that says the base model has finished an answer
        for c in chunks:
            event = (c.model_extra or {}).get("pseudocot") or {}
            if c.choices and c.choices[0].delta.content:
                order.append(("content", c.choices[0].delta.content))
            if event.get("event") == "answer":
                order.append(("answer", event))
        answers = [e for k, e in order if k == "answer"]
        final = answers[-1]
        if final["tokens"] < 10:
            continue
        deltas = [d for k, d in order if k == "content"]
        assert len(deltas) >= 3 and "".join(deltas) == final["text"]
        # The first delta went out before the base model had finished the answer it belongs to.
        assert order.index(("content", deltas[0])) < order.index(("answer", final))
        return
    pytest.fail("no question got an answer of 10 tokens or more")


def test_the_model_id_and_the_pseudocot_field_pick_the_mode(client):
    never = client.chat.completions.create(model="pseudocot-never", messages=_user(Q1))
    assert never.model_extra["pseudocot"]["thought_calls"] == 0 and never.choices[0].message.model_extra["reasoning_content"] is None
    routed = client.chat.completions.create(model="pseudocot", messages=_user(Q1))
    info = routed.model_extra["pseudocot"]
    assert routed.model == "pseudocot-router" and info["mode"] == "router"
    assert info["router_scores"][0] is not None
    # threshold 0: every score passes, so the TTM thinks until max_thoughts (or until it has nothing to add).
    eager = client.chat.completions.create(model="pseudocot", messages=_user(Q2), extra_body={"pseudocot": {"threshold": 0.0}})
    assert eager.model_extra["pseudocot"]["stop_reason"] in ("max_thoughts", "ttm_done")
    one = client.chat.completions.create(model="pseudocot", messages=_user(Q2),
                                         extra_body={"pseudocot": {"mode": "always", "max_thoughts": 1}})
    assert one.model_extra["pseudocot"]["mode"] == "always" and one.model_extra["pseudocot"]["thought_calls"] == 1
    depth = client.chat.completions.create(model="pseudocot-depth", messages=_user(Q2))
    assert depth.model_extra["pseudocot"]["depth"] is not None and len(depth.model_extra["pseudocot"]["answers"]) == 1


def test_generation_fields_are_honoured(client):
    short = client.chat.completions.create(model="pseudocot-never", messages=_user(Q1), max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    full = client.chat.completions.create(model="pseudocot-never", messages=_user(Q1))
    cut = client.chat.completions.create(model="pseudocot-never", messages=_user(Q1), stop=["answer"])
    assert "answer" in full.choices[0].message.content and "answer" not in cut.choices[0].message.content
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    sampled = [client.chat.completions.create(model="pseudocot-always", messages=_user(Q2), temperature=1.5, top_p=0.95,
                                              seed=7).choices[0].message for _ in range(2)]
    assert sampled[0].content == sampled[1].content
    assert sampled[0].model_extra["reasoning_content"] == sampled[1].model_extra["reasoning_content"]


def test_history_reaches_the_base_model_and_old_reasoning_is_ignored(client):
    alone = client.chat.completions.create(model="pseudocot-never", messages=_user(Q2))
    turns = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": Q1},
             {"role": "assistant", "content": "The answer is 8.", "reasoning_content": "5 + 3 = 8\n" * 50},
             {"role": "user", "content": Q2}]
    followup = client.chat.completions.create(model="pseudocot-never", messages=turns)
    with_reasoning = followup.usage.prompt_tokens
    turns[2].pop("reasoning_content")
    without = client.chat.completions.create(model="pseudocot-never", messages=turns).usage.prompt_tokens
    assert with_reasoning == without > alone.usage.prompt_tokens


# ------------------------------------------------------------------------------------ batching


def test_concurrent_requests_share_batches_and_answer_as_alone(live_server, client):
    alone = [client.chat.completions.create(model="pseudocot-always", messages=_user(q)).choices[0].message for q in QUESTIONS]
    before = dict(live_server.batcher.stats)
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: client.chat.completions.create(model="pseudocot-always", messages=_user(q)), QUESTIONS))
    after = live_server.batcher.stats
    assert after["requests"] - before["requests"] == len(QUESTIONS)
    # Fewer batches than requests: they started together or joined a running batch.
    assert after["batches"] - before["batches"] < len(QUESTIONS)
    assert after["largest_batch"] > 1 or after["admitted"] > before["admitted"]
    assert [r.choices[0].message.content for r in together] == [m.content for m in alone]
    assert [r.choices[0].message.model_extra["reasoning_content"] for r in together] == [m.model_extra["reasoning_content"] for m in alone]
    assert max(r.model_extra["pseudocot"]["batch_size"] for r in together) > 1


# ------------------------------------------------------------------------------------ bad input

GOOD = {"model": "pseudocot-never", "messages": _user(Q1)}
BAD = [
    ("malformed json", b'{"model": "pseudocot", "messages": [', 400, None),
    ("body not an object", [1, 2], 400, None),
    ("messages not an array", {**GOOD, "messages": "hi"}, 400, "messages"),
    ("message not an object", {**GOOD, "messages": ["hi"]}, 400, "messages[0]"),
    ("bad role", {**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("content a number", {**GOOD, "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ("image part", {**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content"),
    ("empty messages", {**GOOD, "messages": []}, 400, "messages"),
    ("no messages", {"model": "pseudocot"}, 400, "messages"),
    ("last message not user", {**GOOD, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role"),
    ("empty question", {**GOOD, "messages": _user("   ")}, 400, "messages[0].content"),
    ("no model", {"messages": _user(Q1)}, 400, "model"),
    ("model a number", {**GOOD, "model": 3}, 400, "model"),
    ("unknown model", {**GOOD, "model": "gpt-4o"}, 404, "model"),
    ("temperature a string", {**GOOD, "temperature": "hot"}, 400, "temperature"),
    ("temperature too high", {**GOOD, "temperature": 9}, 400, "temperature"),
    ("top_p zero", {**GOOD, "top_p": 0}, 400, "top_p"),
    ("max_tokens a string", {**GOOD, "max_tokens": "10"}, 400, "max_tokens"),
    ("max_tokens zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens over the cap", {**GOOD, "max_tokens": 10**6}, 400, "max_tokens"),
    ("max_completion_tokens over the cap", {**GOOD, "max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
    ("stream a string", {**GOOD, "stream": "yes"}, 400, "stream"),
    ("n = 2", {**GOOD, "n": 2}, 400, "n"),
    ("seed a float", {**GOOD, "seed": 1.5}, 400, "seed"),
    ("five stops", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("logprobs", {**GOOD, "logprobs": True}, 400, "logprobs"),
    ("tools", {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("pseudocot not an object", {**GOOD, "pseudocot": "always"}, 400, "pseudocot"),
    ("pseudocot unknown key", {**GOOD, "pseudocot": {"depth": 3}}, 400, "pseudocot.depth"),
    ("pseudocot bad mode", {**GOOD, "model": "pseudocot", "pseudocot": {"mode": "sometimes"}}, 400, "pseudocot.mode"),
    ("pseudocot mode against the model", {**GOOD, "pseudocot": {"mode": "always"}}, 400, "pseudocot.mode"),
    ("max_thoughts over the cap", {**GOOD, "pseudocot": {"max_thoughts": 1000}}, 400, "pseudocot.max_thoughts"),
    ("threshold above 1", {**GOOD, "pseudocot": {"threshold": 2}}, 400, "pseudocot.threshold"),
]


def _check_error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].endswith((".", ")"))
    return body["error"]


@pytest.mark.parametrize("name, body, status, param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_json_error(live_server, name, body, status, param):
    with live_server.client() as http:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    err = _check_error(r, status)
    if param is not None:
        assert err["param"] == param, err


def test_limits_keys_and_routes_are_json_errors_and_the_server_survives(live_server):
    with live_server.client() as http:
        huge = {**GOOD, "messages": _user("x" * 1_100_000)}
        assert _check_error(http.post("/v1/chat/completions", json=huge), 413)["code"] == "body_too_large"
        assert _check_error(http.get("/v1/nothing"), 404)["code"] == "not_found"
        plain = http.post("/v1/chat/completions", content=json.dumps(GOOD), headers={"Content-Type": "text/plain"})
        assert _check_error(plain, 415)["code"] == "unsupported_media_type"
        for name, body in (("NaN", b'{"model": "pseudocot-never", "messages": [{"role": "user", "content": "1 + 2"}], "temperature": NaN}'),
                           ("deep", b"[" * 100_000), ("huge int", b'{"max_tokens": 1' + b"0" * 5000 + b"}")):
            assert _check_error(http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}), 400), name
        long = {**GOOD, "messages": _user("7 + 1 = 8. " * 2000)}  # far past the tiny model's 1,024 positions
        assert _check_error(http.post("/v1/chat/completions", json=long), 400)["code"] == "context_length_exceeded"
        _check_error(http.get("/v1/chat/completions"), 405)
    with httpx.Client(base_url=live_server.url, timeout=60) as anon:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-key"}):
            err = _check_error(anon.post("/v1/chat/completions", json=GOOD, headers=headers), 401)
            assert err["type"] == "authentication_error"
        _check_error(anon.get("/v1/models"), 401)
        assert anon.get("/health").status_code == 200  # health and the page need no key
        assert "<html" in anon.get("/").text.lower()
    with live_server.client() as http:
        r = http.post("/v1/chat/completions", json=GOOD)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


# ------------------------------------------------------------------------------------ queue, disconnects, loading, shutdown


def test_a_full_queue_answers_429_and_accepted_requests_finish(serve_run):
    server = start_server(serve_run, None, "serve.max_queue=1", "serve.max_batch=1")
    try:
        def ask(q):
            with httpx.Client(base_url=server.url, timeout=120) as http:
                return http.post("/v1/chat/completions", json={"model": "pseudocot-always", "messages": _user(q)})

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(ask, QUESTIONS))
        refused = [r for r in replies if r.status_code == 429]
        assert refused and all(r.headers["Retry-After"].isdigit() and _check_error(r, 429)["code"] == "queue_full" for r in refused)
        assert all(r.status_code == 200 for r in replies if r.status_code != 429)
        assert sum(r.status_code == 200 for r in replies) >= 2
    finally:
        server.stop()


def test_a_client_leaving_frees_its_place(serve_run):
    # A long batch window keeps the request queued, so it is surely still waiting when the client leaves.
    server = start_server(serve_run, None, "serve.batch_wait_ms=4000")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", "/v1/chat/completions", json={**GOOD, "stream": True}) as r:
                lines = r.iter_lines()  # kept: a dropped line iterator closes the connection
                first = next(lines)
                b = server.batcher
                assert first.startswith("data: ") and b.waiting == 1, (b.waiting, b.running, b.stats, b.state, b.draining)
        deadline = time.monotonic() + 10
        while server.batcher.waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.batcher.waiting == 0 and server.batcher.stats["requests"] == 0
    finally:
        server.stop()


def test_health_and_requests_wait_for_loading():
    from fastapi.testclient import TestClient

    from pseudocot.errors import ModelError

    release = threading.Event()

    def load():
        release.wait(30)
        raise ModelError("models/base: no base model here")

    batcher = Batcher(load, ServeConfig())
    app = create_app(batcher, ["never"], "never", ServeConfig(), None)
    with TestClient(app, base_url="http://127.0.0.1") as http:
        assert http.get("/health").status_code == 503
        err = _check_error(http.post("/v1/chat/completions", json=GOOD), 503)
        assert err["code"] == "loading"
        release.set()
        batcher.join(10)
        assert http.get("/health").json()["status"] == "failed"
        assert "no base model" in _check_error(http.post("/v1/chat/completions", json=GOOD), 503)["message"]
    with TestClient(app, base_url="http://rebound.example") as http:  # no key: only loopback names are served
        assert _check_error(http.get("/v1/models"), 403)["code"] == "host_not_allowed"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_accepted_requests(serve_run):
    port = _free_port()
    env = {**os.environ, "PSEUDOCOT_API_KEY": "k"}
    exe = os.path.join(os.path.dirname(sys.executable), "pseudocot")
    proc = subprocess.Popen([exe, "serve", "--run", str(serve_run), "--port", str(port),
                             "serve.batch_wait_ms=3000", "run.threads=1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "no start"
            time.sleep(0.2)
        headers = {"Authorization": "Bearer k"}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/chat/completions", json=GOOD, headers=headers, timeout=60)
            time.sleep(0.5)  # it waits in its 3-second batch window
            proc.send_signal(signal.SIGTERM)
            reply = pending.result()
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        # uvicorn re-raises the signal once drained, so the exit status says SIGTERM, as a supervisor expects.
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_an_open_host_without_a_key(serve_run, monkeypatch):
    from click.testing import CliRunner

    from pseudocot.cli import cli

    monkeypatch.delenv("PSEUDOCOT_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--run", str(serve_run), "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert result.output.startswith("error: serve.host=0.0.0.0") and "PSEUDOCOT_API_KEY" in result.output


def test_a_thought_first_answer_selecting_router_end_to_end(tmp_path, trained_tiny):
    """A router that reads each thought before the re-answer and returns its best-scored answer, served: a dropped
    thought is in the reasoning but not in the base's answers; the content is the selected answer."""
    from pseudocot.config import load_config
    from pseudocot.layout import RunLayout
    from pseudocot.stages import router as router_stage
    from tiny_run import write_tiny_run

    cfg = load_config(write_tiny_run(tmp_path, *trained_tiny, name="first"),
                      ["router.reads=thought", "router.features=[logprobs, iteration, changed, thought]", "router.select=best"])
    router_stage.main(cfg)
    server = start_server(RunLayout.of(cfg).root)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
        # threshold 1: no score reaches it, so the first thought is written, read and dropped
        kw = {"model": "pseudocot", "messages": _user(Q2), "extra_body": {"pseudocot": {"threshold": 1.0}}}
        whole = client.chat.completions.create(**kw)
        info = whole.model_extra["pseudocot"]
        assert info["thought_calls"] == 1 and len(info["answers"]) == 1 and info["stop_reason"] == "router"
        assert whole.choices[0].message.model_extra["reasoning_content"]  # the dropped thought, shown as reasoning
        assert whole.choices[0].message.content == info["answers"][0] and info["selected"] == 0
        chunks, reasoning, content = _stream(client, **kw)
        events = [c.model_extra["pseudocot"] for c in chunks if (c.model_extra or {}).get("pseudocot")]
        router = [e for e in events if e["event"] == "router"]
        assert len(router) == 1 and router[0]["reads"] == "thought" and router[0]["continue"] is False
        assert [e["event"] for e in events].index("thought") < [e["event"] for e in events].index("router")
        assert content == whole.choices[0].message.content and reasoning == whole.choices[0].message.model_extra["reasoning_content"]
        # threshold 0: every thought is taken; the content is the answer the answer head scores highest
        eager = client.chat.completions.create(model="pseudocot", messages=_user(Q2), extra_body={"pseudocot": {"threshold": 0.0}})
        info = eager.model_extra["pseudocot"]
        assert len(info["answers"]) == info["thought_calls"] + 1 and all(s is not None for s in info["answer_scores"])
        best = max(range(len(info["answers"])), key=lambda i: (info["answer_scores"][i], i))
        assert info["selected"] == best and eager.choices[0].message.content == info["answers"][best]
    finally:
        server.stop()
