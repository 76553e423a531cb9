"""The GRPO rewards against hand-worked cases, and `base_correct` with a tiny base model that answers right
only after one specific thought (so the reward can only be right if the thoughts reach the base model
exactly as the pipeline renders them)."""

from __future__ import annotations

import pytest
import torch

from pseudocot.config import PipelineConfig
from pseudocot.data.chat import base_messages, render
from pseudocot.data.example import Example
from pseudocot.errors import ConfigError
from pseudocot.rewards import REWARDS, RewardContext, bind, build_rewards, get_reward, zero_spread_share
from pseudocot.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

Q = "Ann has 3 apples. She gets 4 more. How many apples does she have?"


@pytest.fixture(scope="module")
def ctx():
    return RewardContext(task=get_task("arith"), length_budget_tokens=3, length_penalty_per_token=0.5,
                         max_completion_length=10, num_generations=2)


def call(name, ctx, completions, answers, **kw):
    return get_reward(name)([""] * len(completions), completions, ctx=ctx, question=[Q] * len(completions), answer=answers, **kw)


def test_correct_reads_the_final_answer_line_and_skips_questions_without_gold(ctx):
    got = call("correct", ctx, ["3 + 4 = 7\nThe answer is 7.", "3 + 4 = 8\nThe answer is 8.", "no answer here", "The answer is 7."],
               ["7", "7", "7", ""])
    assert got == [1.0, 0.0, 0.0, None]


def test_arithmetic_is_the_share_of_true_statements(ctx):
    got = call("arithmetic", ctx, ["3 + 4 = 7\n7 + 2 = 9\nThe answer is 9.", "3 + 4 = 8\n8 - 2 = 5", "3 + 4 = 7\n7 - 2 = 5\n5 + 1 = 7",
                                   "The answer is 7."], ["9", "6", "7", "7"])
    assert got == [1.0, 0.0, pytest.approx(2 / 3), None]


def test_follows_compares_the_answer_with_the_last_computed_value(ctx):
    got = call("follows", ctx, ["3 + 4 = 7\nThe answer is 7.", "3 + 4 = 7\nThe answer is 8.", "I think so.\nThe answer is 7.",
                                "3 + 4 = 7\nThe answer is seven."], ["7"] * 4)
    assert got == [1.0, 0.0, 0.0, None]


def test_format_wants_steps_then_an_answer_line_not_cut_off(ctx):
    ids = [[1] * 5, [1] * 5, [1] * 5, [1] * 10]
    got = call("format", ctx, ["3 + 4 = 7\nThe answer is 7.", "3 + 4 = 7", "The answer is 7.", "3 + 4 = 7\nThe answer is 7."],
               ["7"] * 4, completion_ids=ids)
    assert got == [1.0, 0.0, 0.0, 0.0]  # no answer line; no step; cut at max_completion_length


def test_length_penalises_each_token_beyond_the_budget(ctx):
    got = call("length", ctx, ["a", "b", "c"], ["7"] * 3, completion_ids=[[1, 2], [1, 2, 3], [1, 2, 3, 4, 5]])
    assert got == [0.0, 0.0, -1.0]


def test_rewards_are_found_by_dotted_path_and_unknown_names_fail_in_one_line():
    assert get_reward("pseudocot.rewards:arithmetic") is REWARDS["arithmetic"]
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(ConfigError, match="cannot be imported"):
        get_reward("no_such_module:fn")


def test_bound_rewards_carry_their_names_and_log_zero_spread_groups(ctx, caplog):
    funcs = build_rewards({"arithmetic": 1.0, "correct": 0.5}, ctx)
    assert [f.__name__ for f in funcs] == ["arithmetic", "correct"]
    logged = {}
    completions = ["3 + 4 = 7", "3 + 4 = 7", "3 + 4 = 7", "3 + 4 = 8"]  # group 1 agrees, group 2 does not
    assert funcs[0]([""] * 4, completions, question=[Q] * 4, answer=["7"] * 4, log_metric=logged.__setitem__) == [1, 1, 1, 0]
    assert logged == {"rewards/arithmetic/zero_spread_groups": 0.5}
    with caplog.at_level("WARNING"):
        funcs[0]([""] * 2, ["no", "numbers"], question=[Q] * 2, answer=["7"] * 2)
    assert "returned None for every completion" in caplog.text
    assert zero_spread_share([None, None], 2) is None

    def wrong(prompts, completions, **_):
        return [1.0]

    with pytest.raises(ConfigError, match="returned 1 values for 2 completions"):
        bind("wrong", wrong, ctx)([""] * 2, ["a", "b"])


# -------------------------------------------------------------------------------- base_correct


@pytest.fixture(scope="module")
def thought_reader(arith_tokenizer):
    """A tiny base model trained to answer `Q` with 7 only when its one thought is `3 + 4 = 7`, and 1 otherwise."""
    from pseudocot.models.tiny import build_tiny_model

    tok, p = arith_tokenizer, PipelineConfig()
    cases = [([], "1"), (["3 + 4 = 7"], "7"), (["3 + 4 = 8"], "1"), (["2 + 2 = 4"], "1"), (["3 + 4 = 7", "7 + 0 = 7"], "1")]
    rows = [tok(render(tok, base_messages(Q, th, p) + [{"role": "assistant", "content": f"The answer is {a}."}]),
                add_special_tokens=False)["input_ids"] for th, a in cases]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, :len(r)] = torch.tensor(r)
    model = build_tiny_model("tiny-3xs", tok, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, p


def test_base_correct_rewards_the_thought_the_base_model_needs(thought_reader):
    from pseudocot.generate.hf import HFGenerator

    model, tok, p = thought_reader

    class Spy(HFGenerator):
        calls: list = []

        def generate(self, prompts, params, sessions=None):
            out = super().generate(prompts, params, sessions)
            self.calls.append(out)
            return out

    base = Spy(model, tok, batch_size=8, kv_reuse=True)
    ctx = RewardContext(task=get_task("arith"), pipeline=PipelineConfig(max_thoughts=1), base=base, base_tokenizer=tok, num_generations=3)
    completions = ["3 + 4 = 7", "3 + 4 = 8", "2 + 2 = 4",              # group 1: only the first is the thought it needs
                   "3 + 4 = 7\n7 + 0 = 7", "\n3 + 4 = 7", "3 + 4 = 7\n\n"]  # group 2: max_thoughts=1 keeps line 1; a blank line ends
    logged = {}
    reward = bind("base_correct", get_reward("base_correct"), ctx)
    got = reward([""] * 6, completions, question=[Q] * 6, answer=["7"] * 6, log_metric=logged.__setitem__)
    assert got == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert logged["base_correct/without_thoughts"] == 0.0  # it answers 1 without thoughts
    assert logged["rewards/base_correct/zero_spread_groups"] == 0.0
    first, answers = base.calls
    assert len(first) == 1  # the question without thoughts, once for its six completions ...
    assert all(a.cached_tokens > 0 for a in answers)  # ... and each answer with thoughts reused its encoding
    assert not base.prefixes._items  # the sessions are dropped afterwards

    ctx_two = RewardContext(task=get_task("arith"), pipeline=PipelineConfig(max_thoughts=2), base=base, base_tokenizer=tok)
    assert get_reward("base_correct")([""], ["3 + 4 = 7\n7 + 0 = 7"], ctx=ctx_two, question=[Q], answer=["7"]) == [0.0]


def test_base_correct_without_a_base_model_fails_in_one_line(ctx):
    with pytest.raises(ConfigError, match="base_correct needs the base model"):
        call("base_correct", ctx, ["3 + 4 = 7"], ["7"])


def test_base_correct_scores_the_answer_the_loop_returns(thought_reader):
    """The reward's answer is the one `pseudocot eval` would score: the loop in mode always, its TTM writing the
    completion's lines, returns the same text."""
    from pseudocot.generate.base import Completion
    from pseudocot.generate.hf import HFGenerator
    from pseudocot.pipeline import Pipeline

    model, tok, _ = thought_reader

    class Lines:  # a TTM that writes the completion's lines, one per call
        tokenizer = tok

        def generate(self, prompts, params):
            return [Completion(text="3 + 4 = 7" if "3 + 4 = 7" not in p else "", prompt_tokens=1, completion_tokens=1,
                               seconds=0.0, finish_reason="stop", stop_string="\n") for p in prompts]

    p = PipelineConfig(mode="always", max_thoughts=1)
    base = HFGenerator(model, tok, batch_size=8, kv_reuse=True)
    (loop,) = Pipeline(base, Lines(), p).run([("q", Q)])
    assert loop.shown_thoughts == ["3 + 4 = 7"]
    (alone,) = Pipeline(base, None, PipelineConfig(mode="never", max_thoughts=1), base_tokenizer=tok).answer_with([("q", Q)], [["3 + 4 = 7"]])
    assert alone.final_text == loop.final_text and alone.final_answer == "7"
    ctx = RewardContext(task=get_task("arith"), pipeline=p, base=base, base_tokenizer=tok)
    assert get_reward("base_correct")([""], ["3 + 4 = 7"], ctx=ctx, question=[Q], answer=["7"]) == [
        float(get_task("arith").is_correct(loop.final_text, Example(id="q", question=Q, answer="7")))]
