"""The Pseudo-CoT loop (`pseudocot.pipeline`) on a briefly trained tiny model playing both the base
model and the Tiny Thought Model: every mode, a batch whose questions stop at different
iterations, trace contents, and KV reuse changing nothing but the work."""

from __future__ import annotations

import dataclasses

import pytest

from pseudocot.config import ArithConfig, PipelineConfig
from pseudocot.data import arith
from pseudocot.data.chat import final_answer, question_text
from pseudocot.errors import ConfigError
from pseudocot.generate import GenerationParams
from pseudocot.generate.hf import HFGenerator
from pseudocot.pipeline import Pipeline, Question, Trace, read_traces, write_traces


@pytest.fixture(scope="module")
def questions():
    exs = arith.generate(10, ArithConfig(max_steps=3), seed=4242, split="test")
    return [(e.id, question_text(e)) for e in exs]


class Recorder:
    """A plain `Generator` (no sessions) that records the batch size of every call."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.calls = inner, inner.tokenizer, []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, params)


class FixedRouter:
    """Continue for questions whose index is even, while fewer than `limit` answers exist."""

    features = ("logprobs",)
    threshold = 0.5

    def __init__(self, ids, limit):
        self.ids, self.limit = ids, limit

    def score(self, steps):
        return [1.0 if self.ids.index(s_id(s)) % 2 == 0 and s.iteration + 1 < self.limit else 0.0 for s in steps]

    def depth(self, prompts, base, sessions, max_thoughts):
        return [i % 3 for i in range(len(prompts))]


def s_id(step):
    return step.question


class Serving:
    """A server around the loop, as tests write it: `keep` and `admit` callables (`pipeline.Serving`)."""

    def __init__(self, keep=None, admit=None):
        self._keep, self._admit = keep, admit

    def keep(self, trace):
        return self._keep is None or self._keep(trace)

    def admit(self, free):
        return self._admit(free) if self._admit else []


def _pipe(trained_tiny, mode, router=None, **kw):
    model, tok = trained_tiny
    cfg = PipelineConfig(mode=mode, max_thoughts=kw.pop("max_thoughts", 3), batch_size=kw.pop("batch_size", 16),
                         kv_reuse=kw.pop("kv_reuse", True), answer_max_new_tokens=32, thought_max_new_tokens=24)
    base = kw.pop("base", None) or HFGenerator(model, tok, batch_size=16, kv_reuse=cfg.kv_reuse)
    ttm = kw.pop("ttm", None) or HFGenerator(model, tok, batch_size=16, kv_reuse=cfg.kv_reuse)
    return Pipeline(base, ttm, cfg, router)


def _texts(traces):
    return [([a.text for a in t.answers], [x.text for x in t.thoughts], t.stop_reason) for t in traces]


def test_never_is_one_base_answer(trained_tiny, questions):
    traces = _pipe(trained_tiny, "never").run(questions)
    assert [t.id for t in traces] == [q[0] for q in questions]
    for t in traces:
        assert len(t.answers) == 1 and t.thoughts == [] and t.stop_reason == "never"
        assert t.final_answer == final_answer(t.answers[0].text)
    # The base answer equals a plain greedy generation of the same prompt.
    pipe = _pipe(trained_tiny, "never")
    model, tok = trained_tiny
    plain = HFGenerator(model, tok).generate([pipe.base_prompt(q, []) for _, q in questions],
                                             GenerationParams(max_new_tokens=32))
    assert [t.answers[0].text for t in traces] == [c.text for c in plain]


def test_always_writes_thoughts_and_reanswers(trained_tiny, questions):
    traces = _pipe(trained_tiny, "always", max_thoughts=2).run(questions)
    for t in traces:
        assert 0 < len(t.thoughts) <= 2
        assert len(t.answers) == len(t.thoughts) + 1
        assert t.stop_reason in ("max_thoughts", "ttm_done")
        if t.stop_reason == "max_thoughts":
            assert len(t.thoughts) == 2
        assert all(x.text and "\n" not in x.text and x.tokens > 0 for x in t.thoughts)
        assert t.selected == len(t.answers) - 1 and t.returned_thoughts == t.shown_thoughts  # the last answer
    # The TTM continues its own reasoning: thought 1 is the first line of its plain answer.
    pipe = _pipe(trained_tiny, "always")
    model, tok = trained_tiny
    first = HFGenerator(model, tok).generate([pipe.ttm_prompt(q, [], "") for _, q in questions],
                                             GenerationParams(max_new_tokens=24, stop=["\n"]))
    assert [t.thoughts[0].text for t in traces] == [c.text.strip() for c in first]


def test_router_stops_part_of_the_batch(trained_tiny, questions):
    ids = [q for _, q in questions]
    base = Recorder(HFGenerator(*trained_tiny, batch_size=16))
    pipe = _pipe(trained_tiny, "router", router=FixedRouter(ids, limit=3), max_thoughts=3, base=base)
    traces = pipe.run(questions)
    for i, t in enumerate(traces):
        if i % 2:
            assert t.stop_reason == "router" and len(t.answers) == 1 and t.thoughts == []
            assert t.answers[0].router_score == 0.0
        else:
            assert len(t.thoughts) >= 1
            assert t.answers[0].router_score == 1.0
    # The batch shrank: all 10 answer first, then only the continuing half.
    assert base.calls[0] == len(questions)
    assert base.calls[1] <= len(questions) // 2
    assert base.calls == sorted(base.calls, reverse=True)


def test_depth_mode_thinks_first_then_answers_once(trained_tiny, questions):
    ids = [q for _, q in questions]
    traces = _pipe(trained_tiny, "depth", router=FixedRouter(ids, 3)).run(questions)
    for i, t in enumerate(traces):
        assert t.depth == i % 3 and t.stop_reason == "depth"
        assert len(t.answers) == 1
        assert len(t.thoughts) <= t.depth
        assert t.selected == 0 and t.returned_thoughts == t.shown_thoughts  # its one answer read every thought


@pytest.mark.parametrize("mode", ["always", "router"])
def test_kv_reuse_changes_nothing_but_work(trained_tiny, questions, mode):
    ids = [q for _, q in questions]
    router = FixedRouter(ids, 3)
    with_reuse = _pipe(trained_tiny, mode, router=router).run(questions)
    without = _pipe(trained_tiny, mode, router=router, kv_reuse=False).run(questions)
    assert _texts(with_reuse) == _texts(without)
    reused = [a.cached_tokens for t in with_reuse for a in t.answers[1:]]
    assert reused and all(n > 0 for n in reused)
    assert all(a.cached_tokens == 0 for t in without for a in t.answers)
    for t in with_reuse:  # a re-answer reuses at least the question part of its context
        for prev, a in zip(t.answers, t.answers[1:]):
            assert a.cached_tokens >= prev.prompt_tokens - 8


def test_batched_equals_one_at_a_time(trained_tiny, questions):
    batched = _pipe(trained_tiny, "always", batch_size=16).run(questions)
    single = _pipe(trained_tiny, "always", batch_size=1).run(questions)
    assert _texts(batched) == _texts(single)


def test_plain_generators_work_too(trained_tiny, questions):
    base = Recorder(HFGenerator(*trained_tiny))
    ttm = Recorder(HFGenerator(*trained_tiny))
    plain = _pipe(trained_tiny, "always", base=base, ttm=ttm).run(questions)
    assert _texts(plain) == _texts(_pipe(trained_tiny, "always").run(questions))


def test_trace_contents_and_jsonl_round_trip(trained_tiny, questions, tmp_path):
    traces = _pipe(trained_tiny, "always", max_thoughts=2).run(questions)
    for t in traces:
        d = t.to_dict()
        assert d["thought_calls"] == len(t.thoughts)
        assert d["tokens"]["base"] == sum(a.tokens for a in t.answers) > 0
        assert d["tokens"]["ttm"] == sum(x.tokens for x in t.thoughts)
        assert d["final_text"] == t.answers[-1].text
        assert t.seconds == pytest.approx(sum(a.seconds for a in t.answers) + sum(x.seconds for x in t.thoughts))
        assert all(a.prompt_tokens > 0 and a.seconds > 0 for a in t.answers)
        # Answer i sees exactly i thoughts: its prompt grows with each one.
        assert [a.prompt_tokens for a in t.answers] == sorted(a.prompt_tokens for a in t.answers)
    path = tmp_path / "traces.jsonl"
    write_traces(traces, path)
    back = read_traces(path)
    assert [b.to_dict() for b in back] == [t.to_dict() for t in traces]


def test_bad_setups_raise(trained_tiny):
    model, tok = trained_tiny
    g = HFGenerator(model, tok)
    with pytest.raises(ConfigError, match="needs a router"):
        Pipeline(g, g, PipelineConfig(mode="router"))
    with pytest.raises(ConfigError, match="Tiny Thought Model"):
        Pipeline(g, None, PipelineConfig(mode="always"))
    with pytest.raises(ConfigError, match="mode"):
        Pipeline(g, g, dataclasses.replace(PipelineConfig(), mode="sometimes"))


def test_bad_template_names_the_key():
    from pseudocot.errors import ConfigError

    # Refused when the config is built (at load, with its file:line), not when the first prompt is made.
    with pytest.raises(ConfigError, match="'base_prompt' cannot be filled.*context"):
        PipelineConfig(mode="never", base_prompt="{question} {context}")


def test_trace_from_dict_rejects_other_rows(tmp_path):
    from pseudocot.errors import DataError

    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "question": "q", "mode": "never"}\n{"id": "b", "colour": 1}\n')
    with pytest.raises(DataError, match=":2:"):
        read_traces(path)
    assert Trace.from_dict({"id": "a", "question": "q", "mode": "never"}).answers == []


def test_sessions_are_freed_after_each_batch(trained_tiny, questions):
    pipe = _pipe(trained_tiny, "always", max_thoughts=2, batch_size=4)
    pipe.run(questions)
    pipe.run(questions[:3], collect=True)
    assert len(pipe.base.prefixes) == 0 and len(pipe.ttm.prefixes) == 0


@pytest.mark.parametrize("mode", ["router", "depth"])
def test_done_events_come_once_per_question_as_it_stops(trained_tiny, questions, mode):
    """The server streams a question's answer when it stops, not when its whole batch does."""
    ids = [q for _, q in questions]
    seen = []

    def on_event(kind, trace):
        seen.append((kind, trace.id, trace.final_answer, len(trace.answers)))

    traces = _pipe(trained_tiny, mode, router=FixedRouter(ids, limit=3), max_thoughts=3).run(questions, on_event=on_event)
    done = [s for s in seen if s[0] == "done"]
    assert sorted(d[1] for d in done) == sorted(t.id for t in traces)
    by_id = {t.id: t for t in traces}
    for _, qid, final, n_answers in done:
        assert final == by_id[qid].final_answer and n_answers == len(by_id[qid].answers)
        # Nothing happens to a question after its done event.
        assert not any(s[1] == qid for s in seen[seen.index(("done", qid, final, n_answers)) + 1:])
    if mode == "router":  # odd questions stop after answer 0, long before the batch ends
        first_done = seen.index(done[0])
        assert len(by_id[done[0][1]].answers) == 1 and first_done < len(seen) - len(done)


def test_keep_drops_a_question_before_the_next_call(trained_tiny, questions):
    gone = questions[0][0]
    full = _pipe(trained_tiny, "always", max_thoughts=2).run(questions)
    cut = _pipe(trained_tiny, "always", max_thoughts=2).run(questions, serving=Serving(keep=lambda t: t.id != gone or not t.answers))
    assert cut[0].stop_reason == "cancelled" and len(cut[0].answers) == 1 and cut[0].thoughts == []
    assert cut[0].final_answer == full[0].answers[0].final
    assert _texts(cut[1:]) == _texts(full[1:])


def test_history_comes_before_the_question_and_a_system_turn_replaces_the_default(trained_tiny):
    model, tok = trained_tiny
    pipe = Pipeline(HFGenerator(model, tok), None, PipelineConfig(mode="never", system_prompt="Be exact."))
    history = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "The answer is 4."}]
    prompt = pipe.base_prompt("What is 3 + 3?", [], history)
    assert prompt.index("Be exact.") < prompt.index("2 + 2") < prompt.index("The answer is 4.") < prompt.index("3 + 3")
    own = pipe.base_prompt("What is 3 + 3?", [], [{"role": "system", "content": "Be brief."}])
    assert "Be brief." in own and "Be exact." not in own
    (t,) = pipe.run([Question("q", "What is 3 + 3?", history)])
    assert t.answers[0].prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert "history" not in t.to_dict()


@pytest.mark.parametrize("mode", ["always", "router"])
def test_admitted_questions_join_a_running_batch_and_answer_as_alone(trained_tiny, questions, mode):
    ids = [q for _, q in questions]
    first, later = questions[:4], questions[4:]
    waiting = list(later)
    asked = []

    def admit(free):
        asked.append(free)
        n = min(free, 2)
        out, waiting[:] = waiting[:n], waiting[n:]
        return [Question(qid, q) for qid, q in out]

    pipe = _pipe(trained_tiny, mode, router=FixedRouter(ids, limit=3), max_thoughts=3, batch_size=5)
    traces = pipe.run(first, serving=Serving(admit=admit))
    assert not waiting and [t.id for t in traces] == [q[0] for q in questions]
    assert asked[0] == 1 and all(0 <= f <= 5 for f in asked)  # 4 of 5 places taken at the start
    alone = _pipe(trained_tiny, mode, router=FixedRouter(ids, limit=3), max_thoughts=3).run(questions)
    assert _texts(traces) == _texts(alone)


def test_a_calls_settings_are_arguments_and_leave_the_pipeline_as_it_was(trained_tiny, questions):
    """The server runs each batch with its requests' settings; the pipeline's own settings stay as they were."""
    import dataclasses

    from pseudocot.pipeline import Sampling

    pipe = _pipe(trained_tiny, "always", max_thoughts=2)
    before, sampling = pipe.cfg, pipe.sampling
    one = dataclasses.replace(pipe.cfg, mode="always", max_thoughts=1, answer_max_new_tokens=8)
    traces = pipe.run(questions[:4], cfg=one, sampling=Sampling(temperature=0.8, seed=3))
    assert pipe.cfg is before and pipe.sampling is sampling
    assert all(len(t.thoughts) <= 1 and all(a.tokens <= 8 for a in t.answers) for t in traces)
    assert _texts(pipe.run(questions[:4])) == _texts(_pipe(trained_tiny, "always", max_thoughts=2).run(questions[:4]))


class ThoughtReader:
    """A router that reads the thought before the re-answer (`router.reads: thought`): it accepts each question's first
    thought and rejects the second."""

    features = ("logprobs", "thought")
    threshold = 0.5
    reads = "thought"

    def __init__(self):
        self.steps = []

    def score(self, steps):
        self.steps += steps
        return [1.0 if s.iteration == 0 else 0.0 for s in steps]


def test_a_rejected_thought_is_never_shown_to_the_base_and_is_paid_for(trained_tiny, questions):
    model, tok = trained_tiny

    class Recording(HFGenerator):
        seen: list = []

        def generate(self, prompts, params, sessions=None):
            self.seen += prompts
            return super().generate(prompts, params, sessions=sessions)

    base = Recording(model, tok, batch_size=16)
    router = ThoughtReader()
    pipe = _pipe(trained_tiny, "router", router=router, max_thoughts=3, base=base)
    traces = pipe.run(questions)
    two = [t for t in traces if len(t.thoughts) == 2]
    assert two, "the TTM wrote a second thought for no question"
    for t in two:
        first, second = t.thoughts
        assert not first.rejected and second.rejected and t.stop_reason == "router"
        assert len(t.answers) == 2 and t.shown_thoughts == [first.text] and t.final_answer == t.answers[1].final
        # the base saw the question alone, then with the accepted thought; never the rejected one after it
        mine = [p for p in base.seen if t.question in p]
        assert set(mine) == {pipe.base_prompt(t.question, []), pipe.base_prompt(t.question, [first.text])}
        # the rejected thought's TTM call is counted
        assert t.thought_calls == 2 and t.processed["ttm"] == sum(x.prompt_tokens - x.cached_tokens + x.tokens for x in t.thoughts)
    # the router read each thought with the answer before it: the step of answer 0 carries thought 1's features
    assert all(s.thought[0] == 1.0 for s in router.steps)
    first_steps = [s for s in router.steps if s.iteration == 0]
    assert len(first_steps) == sum(1 for t in traces if t.thoughts)


class Scripted:
    """A plain `Generator` that writes by rule: `rule(prompt, params)` -> text (ended by a stop string)."""

    def __init__(self, tokenizer, rule):
        self.tokenizer, self.rule, self.params = tokenizer, rule, []

    def generate(self, prompts, params):
        from pseudocot.generate.base import Completion

        self.params.append(params)
        return [Completion(text=self.rule(p, params), prompt_tokens=len(p) // 4, completion_tokens=4, seconds=0.0,
                           finish_reason="stop", stop_string="\n", token_logprobs=[-0.1] * 4) for p in prompts]


ANN = "Ann has 5 pens and gets 3. How many pens does she have?"


def _ann_base(prompt, params):
    """The base answers from the thoughts it was shown: 5 alone, 8 after the good thought, 12 after the bad one."""
    return "12" if "8 + 3 = 12" in prompt else ("8" if "5 + 3 = 8" in prompt else "5")


def _selecting_router(select):
    """A real `Router` whose step head always continues and whose answer head, set by hand, reads the `thought`
    feature: an answer after a thought with false arithmetic scores low."""
    import torch

    from pseudocot.router.model import MLP, AnswerHead, Router, StepRouter

    def mlp(weights, bias):
        m = MLP(6, 1, 1, 0.0)
        with torch.no_grad():
            m.net[0].weight.copy_(torch.tensor([weights]))
            m.net[0].bias.fill_(bias)
            m.net[3].weight.fill_(1.0)
            m.net[3].bias.fill_(-2.0)
        return m.eval()

    step = StepRouter(mlp([0.0] * 6, 10.0), ["thought"], 0.5, 2)
    answer = AnswerHead(mlp([0.5, 0.0, 0.0, 10.0, 0.0, 0.0], -5.0), ["thought"], 2)  # a thought exists; its arithmetic
    return Router(step, None, {"select": select, "reads": "answer", "max_thoughts": 2}, answer)


@pytest.mark.parametrize("select", ["best", "last"])
def test_a_harmful_second_thought_the_selecting_router_returns_the_answer_before_it(trained_tiny, select):
    _, tok = trained_tiny
    ttm = Scripted(tok, lambda p, params: "8 + 3 = 12" if "5 + 3 = 8" in p else "5 + 3 = 8")
    pipe = Pipeline(Scripted(tok, _ann_base), ttm, PipelineConfig(mode="router", max_thoughts=2), _selecting_router(select))
    (t,) = pipe.run([("ann", ANN)])
    assert [a.final for a in t.answers] == ["5", "8", "12"] and t.thought_calls == 2  # the loop went on to the end
    if select == "best":
        s = [a.answer_score for a in t.answers]
        assert s[2] < 0.5 < s[0] < s[1]
        assert t.selected == 1 and t.final_answer == "8" and t.final_text == "8"
        assert t.returned_thoughts == ["5 + 3 = 8"]  # what the returned answer read
    else:
        assert all(a.answer_score is None for a in t.answers)
        assert t.selected == 2 and t.final_answer == "12"
    back = Trace.from_dict(t.to_dict())
    assert back.selected == t.selected and back.final_text == t.final_text
    assert Trace.from_dict({k: v for k, v in t.to_dict().items() if k != "selected"}).final_text == "12"  # older traces


class Picky:
    """A router that reads the thought first and accepts only a thought whose arithmetic is true."""

    features = ("thought",)
    threshold = 0.5
    reads = "thought"

    def score(self, steps):
        return [s.thought[3] for s in steps]  # the share of the thought's statements that are true


@pytest.mark.parametrize("k", [1, 2, 3])
def test_best_of_k_writes_a_rejected_thought_again_sampled(trained_tiny, k):
    _, tok = trained_tiny
    # greedy the TTM writes a false statement, sampled a true one on its second sample, then it has nothing more
    ttm = Scripted(tok, lambda p, params: "" if "5 + 3 = 8" in p else ("5 + 3 = 8" if params.seed == 2 else "5 + 3 = 9"))
    base = Scripted(tok, _ann_base)
    cfg = PipelineConfig(mode="router", max_thoughts=2, thought_samples=k, resample_temperature=0.9)
    (t,) = Pipeline(base, ttm, cfg, Picky()).run([("ann", ANN)])
    texts = [(x.text, x.rejected) for x in t.thoughts]
    if k == 1:
        assert texts == [("5 + 3 = 9", True)] and t.final_answer == "5" and t.stop_reason == "router"
    elif k == 2:  # the second try (seed 1) is false again: the question stops, both tries paid for
        assert texts == [("5 + 3 = 9", True), ("5 + 3 = 9", True)] and t.final_answer == "5" and t.stop_reason == "router"
        assert [p.temperature for p in ttm.params] == [0.0, 0.9] and ttm.params[1].seed == 1
    else:  # the third try is true: the base sees it alone and answers again
        assert texts == [("5 + 3 = 9", True), ("5 + 3 = 9", True), ("5 + 3 = 8", False)]
        assert t.shown_thoughts == ["5 + 3 = 8"] and t.final_answer == "8" and t.thought_calls == 3
        assert [a.final for a in t.answers] == ["5", "8"] and t.stop_reason == "ttm_done"
    assert len(t.answers) == len(t.shown_thoughts) + 1
