"""The pipeline on inference engines: `pipeline.base` / `pipeline.ttm` as `{base_url, model, tokenizer}` mappings served
by `pseudocot models serve` (`serve.engine`), against the same folders loaded locally."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest

from pseudocot.config import GeneratorConfig
from pseudocot.errors import ConfigError
from pseudocot.generate import GenerationParams
from pseudocot.generate.openai import OpenAIGenerator, cached_tokens, logprob_lists, stop_string
from pseudocot.layout import RunLayout, run_config
from pseudocot.pipeline import load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engines(serve_run):
    """The run's base and TTM folders, each behind its own engine."""
    from serve_helpers import start_engine

    layout = RunLayout.of(run_config(serve_run))
    base, ttm = start_engine(layout.base, "base"), start_engine(layout.ttm, "ttm")
    yield {"base": base, "ttm": ttm, "layout": layout}
    base.stop()
    ttm.stop()


def engine_overrides(engines, roles=("base", "ttm")) -> list[str]:
    out = []
    for role in roles:
        folder = engines["layout"].base if role == "base" else engines["layout"].ttm
        out += [f"pipeline.{role}.base_url={engines[role].url}", f"pipeline.{role}.model={role}",
                f"pipeline.{role}.tokenizer={folder}", f"pipeline.{role}.concurrency=16"]
    return out


def questions(layout):
    from pseudocot.data.jsonl import read_examples
    from pseudocot.tasks.registry import get_task

    exs = read_examples(layout.split("test")).examples
    task = get_task("arith")
    return list(zip([e.id for e in exs], task.prompts(exs)))


@pytest.mark.parametrize("mode", ["never", "always"])
def test_engine_pipeline_equals_local_pipeline(serve_run, engines, mode):
    local_cfg = run_config(serve_run)
    engine_cfg = run_config(serve_run, engine_overrides(engines))
    assert RunLayout.of(engine_cfg).engine("base").base_url == engines["base"].url
    qs = questions(engines["layout"])
    local = load_pipeline(local_cfg, mode=mode).run(qs)
    remote = load_pipeline(engine_cfg, mode=mode).run(qs)
    # Greedy, the same decode loop and weights: every answer and thought, not just most of them.
    assert [[a.text for a in t.answers] for t in remote] == [[a.text for a in t.answers] for t in local]
    assert [[x.text for x in t.thoughts] for t in remote] == [[x.text for x in t.thoughts] for t in local]
    assert [t.stop_reason for t in remote] == [t.stop_reason for t in local]
    assert [[a.prompt_tokens for a in t.answers] for t in remote] == [[a.prompt_tokens for a in t.answers] for t in local]
    if mode == "always":
        # The re-answers continue a prefix the engine had cached: the question and the thoughts before.
        reanswers = [a for t in remote for a in t.answers[1:]]
        assert reanswers and all(a.cached_tokens > 0 for a in reanswers)
        assert sum(t.thought_calls for t in remote) == sum(t.thought_calls for t in local) > 0


def test_eval_keys_an_engine_apart_from_the_local_folder(serve_run, engines):
    from pseudocot.freshness import eval_system_key

    local, remote = run_config(serve_run), run_config(serve_run, engine_overrides(engines))
    system = dataclasses.replace(local.eval.systems[0], mode="always")
    assert eval_system_key(local, system) != eval_system_key(remote, system)
    moved = run_config(serve_run, [o.replace("/v1", "/v1/") if "base_url" in o else o for o in engine_overrides(engines)])
    assert eval_system_key(moved, system) != eval_system_key(remote, system)  # another URL: another engine


def test_a_router_that_reads_hidden_states_is_refused_with_an_engine_base(serve_run, engines):
    cfg = run_config(serve_run, engine_overrides(engines, roles=("base",)))
    with pytest.raises(ConfigError, match="hidden states.*without them"):
        load_pipeline(cfg, mode="router")


def test_an_engine_without_a_tokenizer_is_refused_by_key(serve_run):
    with pytest.raises(ConfigError, match="pipeline.base.tokenizer"):
        run_config(serve_run, ["pipeline.base.base_url=http://127.0.0.1:9/v1", "pipeline.base.model=base"])


def test_engine_answers_in_vllm_fields_and_reuses_prefixes(engines):
    url = engines["base"].url
    tok = engines["base"].engine.gen.tokenizer
    prompt = "<|user|>\nWhat is 3 + 4?\n<|assistant|>\n" if "<|user|>" in tok.get_vocab() else "3 + 4 ="
    body = {"model": "base", "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 1,
            "add_special_tokens": False}
    with httpx.Client(timeout=60) as c:
        first = c.post(f"{url}/completions", json=body).json()
        again = c.post(f"{url}/completions", json=body).json()
        bad = c.post(f"{url}/completions", json={**body, "max_tokens": 0})
        wrong_model = c.post(f"{url}/completions", json={**body, "model": "other"})
        echo = c.post(f"{url}/completions", json={**body, "echo": True})
        with c.stream("POST", f"{url}/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    choice = first["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and "stop_reason" in choice
    assert len(choice["logprobs"]["token_logprobs"]) == first["usage"]["completion_tokens"]
    assert again["choices"][0]["text"] == choice["text"]
    # The second time the prompt is all cached but its last token (encoded anew to give the first logits).
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == again["usage"]["prompt_tokens"] - 1
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    assert wrong_model.status_code == 404 and "serves the model 'base'" in wrong_model.json()["error"]["message"]
    assert echo.status_code == 400 and echo.json()["error"]["param"] == "echo"
    # A stream: text deltas, a last chunk with the finish fields, the usage, [DONE]; the deltas add up to the text.
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == choice["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["usage"]["completion_tokens"] == first["usage"]["completion_tokens"]


def test_engine_with_a_key_refuses_requests_without_it(serve_run):
    from serve_helpers import start_engine

    layout = RunLayout.of(run_config(serve_run))
    live = start_engine(layout.base, "base", api_key="k")
    try:
        with httpx.Client(timeout=60) as c:
            assert c.post(f"{live.url}/completions", json={"prompt": "1"}).status_code == 401
            ok = c.post(f"{live.url}/completions", json={"prompt": "1", "max_tokens": 2},
                        headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200
    finally:
        live.stop()


def test_open_generator_sends_rendered_text_with_extra_body(engines):
    spec = GeneratorConfig(base_url=engines["base"].url, model="base", tokenizer=str(engines["layout"].base))
    from pseudocot.generate import open_generator

    gen = open_generator(spec, chat=False, rendered=True)
    assert isinstance(gen, OpenAIGenerator) and gen.tokenizer is not None
    path, body = gen._body("x", GenerationParams(max_new_tokens=3, logprobs=True))
    assert path == "/completions" and body["add_special_tokens"] is False and body["logprobs"] == 1
    gen.close()
    # Plain text keeps the engine's own BOS; extra_body adds fields, and null leaves one out.
    plain = open_generator(spec, chat=False)
    assert "add_special_tokens" not in plain._body("x", GenerationParams(max_new_tokens=3))[1]
    plain.close()
    spec.extra_body = {"add_special_tokens": None, "verbose": True}
    quiet = open_generator(spec, chat=False, rendered=True)
    body = quiet._body("x", GenerationParams(max_new_tokens=3))[1]
    assert "add_special_tokens" not in body and body["verbose"] is True
    quiet.close()


def test_stop_and_cache_fields_of_each_engine():
    # vLLM: stop_reason is the stop string, or null at the end of sequence; SGLang: matched_stop; llama.cpp: stopping_word.
    assert stop_string({"stop_reason": "\n"}, ["\n"]) == "\n"
    assert stop_string({"stop_reason": None}, ["\n"]) is None
    assert stop_string({"stop_reason": 2}, ["\n"]) is None  # a stop token id
    assert stop_string({"matched_stop": "\n"}, ["\n"]) == "\n"
    assert stop_string({"stopping_word": ""}, ["\n"]) is None
    # llama.cpp's server asked with verbose: true.
    assert stop_string({}, ["\n"], {"__verbose": {"stop_type": "word", "stopping_word": "\n"}}) == "\n"
    assert stop_string({}, ["\n"], {"__verbose": {"stop_type": "eos", "stopping_word": ""}}) is None
    # An engine that does not say: a stop string is assumed (the TTM is asked once more, not cut off).
    assert stop_string({}, ["\n"]) == "\n" and stop_string({}, []) is None
    assert cached_tokens({"usage": {"prompt_tokens_details": {"cached_tokens": 7}}}) == 7
    assert cached_tokens({"usage": {}, "timings": {"cache_n": 5}}) == 5
    assert cached_tokens({"usage": {"prompt_tokens_details": None}}) == 0
    # Log-probabilities: the legacy lists (vLLM, SGLang) or a content list (chat completions, llama.cpp).
    legacy = {"tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{"a": -0.1, "x": -3.0}, {"b": -0.2}]}
    assert logprob_lists(legacy) == ([-0.1, -0.2], [{"a": -0.1, "x": -3.0}, {"b": -0.2}])
    content = {"content": [{"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "a", "logprob": -0.1},
                                                                             {"token": "x", "logprob": -3.0}]},
                           {"token": "b", "logprob": -0.2, "top_logprobs": []}]}
    assert logprob_lists(content) == ([-0.1, -0.2], [{"a": -0.1, "x": -3.0}])
    assert logprob_lists(None) == ([], [])


def test_a_streamed_engine_completion_adds_up_to_the_plain_one(engines):
    from pseudocot.generate import open_generator

    spec = GeneratorConfig(base_url=engines["base"].url, model="base", tokenizer=str(engines["layout"].base))
    gen = open_generator(spec, chat=False)
    prompt = gen.tokenizer.apply_chat_template([{"role": "user", "content": "Ann has 7 pens. She gives away 3 pens. "
                                                 "How many pens are left?"}], tokenize=False, add_generation_prompt=True)
    deltas: list[tuple[int, str]] = []
    plain = gen.generate([prompt, prompt], GenerationParams(max_new_tokens=24, logprobs=True))
    streamed = gen.generate([prompt, prompt], GenerationParams(max_new_tokens=24, logprobs=True,
                                                               on_text=lambda i, d: deltas.append((i, d))))
    gen.close()
    for i in (0, 1):
        mine = [d for j, d in deltas if j == i]
        assert "".join(mine) == streamed[i].text == plain[i].text
        assert len(mine) >= 3
        assert streamed[i].completion_tokens == plain[i].completion_tokens >= 3
        assert streamed[i].token_logprobs == pytest.approx(plain[i].token_logprobs, abs=1e-5)
        assert streamed[i].finish_reason == plain[i].finish_reason and streamed[i].stop_string == plain[i].stop_string


def test_text_stream_holds_back_what_may_start_a_stop_string():
    from pseudocot.generate.base import TextStream

    s = TextStream(["\nThe end"])
    assert s.update("12 + 3") == "12 + 3"
    assert s.update("12 + 3 = 15\nThe") == " = 15"  # "\nThe" may begin the stop string
    assert s.update("12 + 3 = 15\nThe answer") == "\nThe answer"
    assert s.update("12 + 3 = 15\nThe answer\nThe end and more") == ""
    assert s.finish("12 + 3 = 15\nThe answer") == ""
    t = TextStream([])
    assert t.update("caf\ufffd") == "caf" and t.update("café") == "é" and t.finish("café!") == "!"


def test_models_serve_refuses_an_open_host_without_a_key(serve_run, monkeypatch):
    from click.testing import CliRunner

    from pseudocot.cli import cli

    monkeypatch.delenv("PSEUDOCOT_API_KEY", raising=False)
    folder = RunLayout.of(run_config(serve_run)).base
    result = CliRunner().invoke(cli, ["models", "serve", str(folder), "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "without an API key" in result.output and "PSEUDOCOT_API_KEY" in result.output


def test_serve_on_engines_streams_the_answer_as_the_engine_writes_it(serve_run, engines):
    import openai

    from pseudocot.serve.server import available_modes
    from serve_helpers import start_server

    overrides = engine_overrides(engines)
    # The run's router reads hidden states, which an engine base does not give: always and never only.
    assert available_modes(run_config(serve_run, overrides)) == ["always", "never"]
    live = start_server(serve_run, "k", *overrides)
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0, timeout=120)
        q = "Leo has 9 coins. He loses 2 coins. Then he finds 4 coins. How many coins does Leo have now?"
        whole = client.chat.completions.create(model="pseudocot-never", messages=[{"role": "user", "content": q}])
        chunks = list(client.chat.completions.create(model="pseudocot-never", messages=[{"role": "user", "content": q}],
                                                     stream=True))
    finally:
        live.stop()
    order = []
    for c in chunks:
        if c.choices and c.choices[0].delta.content:
            order.append("content")
        if ((c.model_extra or {}).get("pseudocot") or {}).get("event") == "answer":
            order.append("answer")
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert whole.model_extra["pseudocot"]["tokens"]["base"]["completion"] >= 10  # a long enough answer to stream
    assert order.count("content") >= 3 and order.index("content") < order.index("answer")


def test_router_inputs_an_engine_gives_equal_the_local_ones(serve_run, engines):
    """Collected traces (every router input) through the engines and locally: the answers' top-5 entropies and the
    thoughts' log-probabilities come from the same weights, through the engine's JSON (`logprobs: 5`)."""
    from pseudocot.router.features import ENTROPY_TOP_K, step_parts

    qs = questions(engines["layout"])[:6]
    local = load_pipeline(run_config(serve_run), mode="always").run(qs, collect=True)
    remote = load_pipeline(run_config(serve_run, engine_overrides(engines)), mode="always").run(qs, collect=True)
    steps = [(a, b) for t, u in zip(local, remote) for a, b in zip(t.features, u.features)]
    assert len(steps) > len(qs)  # re-answers too
    for a, b in steps:
        assert len(b.completion.top_logprobs) == len(b.completion.token_logprobs)
        assert all(len(top) == ENTROPY_TOP_K for top in b.completion.top_logprobs)
        pa, pb = step_parts(a.completion, 0, False), step_parts(b.completion, 0, False)
        assert pb["entropy"].tolist() == pytest.approx(pa["entropy"].tolist(), abs=1e-4)
        assert pb["entropy"][0] > 0  # the 5 likeliest tokens are not all but one impossible
    thoughts = [(x, y) for t, u in zip(local, remote) for x, y in zip(t.thoughts, u.thoughts)]
    assert thoughts and all(x.logprobs is not None and len(x.logprobs) == 7 for x, _ in thoughts)
    for x, y in thoughts:
        assert y.logprobs == pytest.approx(x.logprobs, abs=1e-4)
