"""`benchmarks/fake_teacher.py`, the fake DeepSeek-R1 teacher, on 127.0.0.1 only: R1-style answers
(steps, `Final answer:`, thinking in each place), deterministic planted errors and wrong answers per
seed, every fault kind injected once per request key while a retrying `OpenAIGenerator` still gets
every answer and the counters add up, a teacher that is down, auth, 400/404 bodies, and the script."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pseudocot.config import ArithConfig
from pseudocot.data import arith
from pseudocot.data.example import Example
from pseudocot.data.jsonl import write_examples
from pseudocot.errors import EndpointError
from pseudocot.generate.base import GenerationParams
from pseudocot.generate.openai import OpenAIGenerator

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "fake_teacher.py"
_spec = importlib.util.spec_from_file_location("fake_teacher", SCRIPT)
fake_teacher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_teacher)
FakeTeacher = fake_teacher.FakeTeacher

STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def step_is_true(line: str) -> bool:
    a, op, b, c = STEP.match(line).groups()
    return arith.apply_op(int(a), op, int(b)) == int(c)


@pytest.fixture(scope="module")
def examples():
    """Arithmetic problems of 2..4 steps, all on distinct questions."""
    return [e for e in arith.generate(80, ArithConfig(max_steps=4), seed=7) if e.meta["steps"] >= 2][:24]


def client(url: str, **kw) -> OpenAIGenerator:
    return OpenAIGenerator(url, "fake-r1", chat=True, concurrency=4, max_retries=3, timeout=0.5, backoff_seconds=0.01, **kw)


def params(seed: int | None = 0) -> GenerationParams:
    return GenerationParams(max_new_tokens=64, temperature=0.7, seed=seed)


def test_answers_like_r1(examples):
    nested = [Example(id="short", question="What is 2 + 3?", answer="5", reasoning="2 + 3 = 5"),
              Example(id="long", question="What is 2 + 3? Then add 4.", answer="9", reasoning="2 + 3 = 5\n5 + 4 = 9")]
    with FakeTeacher(examples + nested) as teacher:
        prompts = [f"Solve this problem step by step.\n\n{e.question}" for e in examples[:6]]
        outs = client(teacher.url).generate(prompts + ["Tell me a joke.", "Q: What is 2 + 3? Then add 4."], params(None))
    for e, c in zip(examples[:6], outs):
        assert c.text.splitlines() == [*e.reasoning.splitlines(), f"Final answer: {e.answer}"]
        assert c.reasoning.startswith("Let me work through this step by step.") and e.reasoning.splitlines()[0] in c.reasoning
        assert c.finish_reason == "stop" and c.completion_tokens > 0 and c.prompt_tokens == len(e.question.split()) + 6
    assert outs[-2].text == "I cannot solve this.\nFinal answer: 0"
    assert outs[-1].text.endswith("Final answer: 9")  # the longest question found in the message wins


def test_raw_response_schema_and_thinking_places(examples):
    e = examples[0]
    body = {"model": "fake-r1", "messages": [{"role": "system", "content": "be careful"}, {"role": "user", "content": e.question}],
            "max_tokens": 64, "temperature": 0.0}
    for thinking in ("reasoning_content", "reasoning", "think_tags", "none"):
        with FakeTeacher(examples, thinking=thinking) as teacher:
            r = httpx.post(teacher.url + "/chat/completions", json=body)
        data = r.json()
        assert r.status_code == 200 and data["object"] == "chat.completion" and data["model"] == "fake-r1"
        assert data["id"].startswith("chatcmpl-") and isinstance(data["created"], int)
        usage = data["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        choice = data["choices"][0]
        message, solution = choice["message"], f"{e.reasoning}\nFinal answer: {e.answer}"
        assert choice["finish_reason"] == "stop" and message["role"] == "assistant"
        keys = {"reasoning_content", "reasoning"} & set(message)
        if thinking == "think_tags":
            assert not keys and re.fullmatch(r"<think>\nLet me work.*</think>\n\n" + re.escape(solution), message["content"], re.S)
        else:
            assert message["content"] == solution and keys == ({thinking} if thinking != "none" else set())
    with FakeTeacher(examples, thinking="think_tags") as teacher:
        (c,) = client(teacher.url).generate([e.question], params())
    assert c.text.startswith("<think>\n") and c.reasoning is None


def test_variety_is_deterministic_per_seed(examples):
    with FakeTeacher(examples, error_rate=0.5, wrong_rate=0.3) as teacher:
        gen = client(teacher.url)
        prompts = [e.question for e in examples]
        first = [[c.text for c in gen.generate(prompts, params(s))] for s in range(4)]
        again = [[c.text for c in gen.generate(prompts, params(s))] for s in range(4)]
        unseeded = [c.text for c in gen.generate(prompts, params(None))]
    assert first == again
    gold = [f"{e.reasoning}\nFinal answer: {e.answer}" for e in examples]
    assert unseeded == gold  # no seed: neither planted errors nor wrong answers
    changed = sum(t != g for per_seed in first for t, g in zip(per_seed, gold))
    assert 0 < changed < len(gold) * 4
    assert len({first[s][0] for s in range(4)} | {first[s][1] for s in range(4)}) > 2


def test_error_rate_plants_an_intermediate_error(examples):
    with FakeTeacher(examples, error_rate=1.0) as teacher:
        outs = client(teacher.url).generate([e.question for e in examples], params(3))
    for e, c in zip(examples, outs):
        lines, gold = c.text.splitlines(), e.reasoning.splitlines()
        assert lines[-1] == f"Final answer: {e.answer}" and lines[-2] == gold[-1]
        diffs = [i for i, (a, b) in enumerate(zip(lines[:-1], gold)) if a != b]
        assert len(diffs) == 1 and diffs[0] < len(gold) - 1
        i = diffs[0]
        assert int(lines[i].rsplit("= ", 1)[1]) == int(gold[i].rsplit("= ", 1)[1]) + 1 and not step_is_true(lines[i])


def test_wrong_rate_gives_gold_plus_one_with_a_consistent_chain(examples):
    with FakeTeacher(examples, wrong_rate=1.0) as teacher:
        outs = client(teacher.url).generate([e.question for e in examples], params(5))
    ops = set()
    for e, c in zip(examples, outs):
        lines, gold = c.text.splitlines(), e.reasoning.splitlines()
        wrong = int(e.answer) + 1
        assert lines[-1] == f"Final answer: {wrong}" and lines[:-2] == gold[:-1]
        assert lines[-2].endswith(f"= {wrong}")
        op = STEP.match(gold[-1]).group(2)
        ops.add(op)
        if op in "+-":
            assert step_is_true(lines[-2])
        else:
            assert lines[-2] == gold[-1].rsplit(" = ", 1)[0] + f" + 1 = {wrong}"
    assert len(ops) >= 2


def test_every_fault_once_per_key_and_nothing_lost(examples):
    n = len(examples)
    faults = "429=0.25,500=0.25,slow=0.25,drop=0.25"
    with FakeTeacher(examples, faults=faults, slow_seconds=1.0) as teacher:
        gen = client(teacher.url)
        prompts = [e.question for e in examples]
        outs = gen.generate(prompts, params(1))
        assert teacher.wait_idle(5)  # the late answers of `slow` requests
        s = teacher.stats()
        assert [c.text.splitlines()[-1] for c in outs] == [f"Final answer: {e.answer}" for e in examples]
        assert set(s["faults"]) == {"429", "500", "slow", "drop"} and sum(s["faults"].values()) == n
        slow, drop = s["faults"]["slow"], s["faults"]["drop"]
        assert s["requests"] == 2 * n  # one fault and one answer per key
        assert s["unique_served"] == n and s["duplicates_served"] == slow + drop  # late and dropped answers
        assert s["served"] == n + slow + drop and s["in_flight"] == 0
        assert httpx.get(teacher.url.removesuffix("/v1") + "/stats").json() == s
        # The same requests again: later attempts of a key are never faulted.
        again = gen.generate(prompts, params(1))
        s2 = teacher.stats()
    assert [c.text for c in again] == [c.text for c in outs]
    assert s2["faults"] == s["faults"] and s2["requests"] == 3 * n and s2["duplicates_served"] == slow + drop + n


def test_fault_injection_is_deterministic_and_validated(examples):
    def run() -> dict:
        with FakeTeacher(examples, faults={"429": 0.3, "503": 0.3}) as teacher:
            client(teacher.url).generate([e.question for e in examples], params(2))
            return teacher.stats()["faults"]
    first = run()
    assert first == run() and set(first) == {"429", "503"}
    with pytest.raises(ValueError, match="unknown fault '418'"):
        FakeTeacher(examples, faults="418=0.1")
    with pytest.raises(ValueError, match="add up to 1.5"):
        FakeTeacher(examples, faults="429=0.5,500=0.5,drop=0.5")
    with pytest.raises(ValueError, match="thinking 'tags'"):
        FakeTeacher(examples, thinking="tags")


def test_a_teacher_that_is_down(examples):
    with FakeTeacher(examples, faults="down=1") as teacher:
        with pytest.raises(EndpointError, match=r"answered 503 .*\(after 4 tries\)"):
            client(teacher.url).generate([examples[0].question], params())
        assert teacher.stats()["faults"] == {"down": 4} and teacher.stats()["served"] == 0


def test_auth_and_error_bodies(examples):
    with FakeTeacher(examples, api_key="sk-right") as teacher:
        base = teacher.url
        with pytest.raises(EndpointError, match="401 Unauthorized: Incorrect API key provided; check the API key"):
            client(base, api_key="sk-wrong").generate(["x"], params())
        (ok,) = client(base, api_key="sk-right").generate([examples[0].question], params())
        assert ok.text.endswith(f"Final answer: {examples[0].answer}")
        assert httpx.get(base + "/models").status_code == 401
        models = httpx.get(base + "/models", headers={"Authorization": "Bearer sk-right"}).json()
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["fake-r1"]
        bad = httpx.post(base + "/chat/completions", content=b"{not json", headers={"Authorization": "Bearer sk-right"})
        assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
        assert httpx.post(base + "/chat/completions", content=b"{not json").status_code == 401
        for r in (httpx.get(base.removesuffix("/v1") + "/nope"), httpx.post(base + "/completions", json={})):
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_script_serves_until_interrupted(examples, tmp_path):
    data = tmp_path / "data.jsonl"
    write_examples(data, examples[:3])
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--data", str(data), "--port", "0", "--thinking", "reasoning"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        r = httpx.post(url + "/chat/completions", json={"model": "fake-r1", "messages": [{"role": "user", "content": examples[1].question}]})
        assert r.json()["choices"][0]["message"]["reasoning"].startswith("Let me work")
    finally:
        proc.send_signal(signal.SIGTERM)  # (SIGINT is ignored where the tests run as a shell's background job)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and json.loads(out.strip().splitlines()[-1])["served"] == 1
    bad = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "missing.jsonl"), "--port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "no such file" in bad.stderr
