"""Estimated FLOPs (`pseudocot.cost`): 2 x parameters x the tokens each model ran through, cached prefixes not
charged, checked by hand on a tiny model's trace and carried into evaluation's results and report."""

from __future__ import annotations

import pytest

from pseudocot.config import PipelineConfig
from pseudocot.cost import flops, processed_tokens
from pseudocot.generate.hf import HFGenerator
from pseudocot.pipeline import Pipeline


def test_flops_are_two_per_parameter_per_processed_token():
    assert processed_tokens(prompt_tokens=40, cached_tokens=0, generated_tokens=8) == 48
    assert processed_tokens(prompt_tokens=50, cached_tokens=48, generated_tokens=8) == 10
    # a 1,000-parameter base runs through 48 + 10 tokens, a 100-parameter TTM through 12
    assert flops({"base": 58, "ttm": 12}, {"base": 1000, "ttm": 100, "total": 1100}) == 2 * (1000 * 58 + 100 * 12)
    assert flops({"model": 5}, None) is None  # an endpoint: no parameter count
    assert flops({"base": 5, "ttm": 3}, {"base": 10}) is None  # the TTM's count unknown
    assert flops({"base": 5, "ttm": 0}, {"base": 10}) == 100.0  # never: the TTM ran through nothing


@pytest.mark.parametrize("kv_reuse", [False, True])
def test_a_tiny_models_trace_costs_what_a_hand_count_says(trained_tiny, kv_reuse):
    model, tok = trained_tiny
    n = sum(p.numel() for p in model.parameters())
    cfg = PipelineConfig(mode="always", max_thoughts=2, answer_max_new_tokens=16, thought_max_new_tokens=16,
                         kv_reuse=kv_reuse)
    pipe = Pipeline(HFGenerator(model, tok, kv_reuse=kv_reuse), HFGenerator(model, tok, kv_reuse=kv_reuse), cfg)
    question = "Mia has 5 apples. She gets 3 more apples. How many apples does Mia have now?"
    (t,) = pipe.run([("q", question)])
    assert t.thoughts and len(t.answers) == len(t.thoughts) + 1

    def count(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    thoughts = [x.text for x in t.thoughts]
    base_prompts = [count(pipe.base_prompt(question, thoughts[:i])) for i in range(len(t.answers))]
    ttm_prompts = [count(pipe.ttm_prompt(question, thoughts[:i], t.answers[i].text)) for i in range(len(t.thoughts))]
    assert [a.prompt_tokens for a in t.answers] == base_prompts and [x.prompt_tokens for x in t.thoughts] == ttm_prompts
    base = sum(base_prompts) + sum(a.tokens for a in t.answers)
    ttm = sum(ttm_prompts) + sum(x.tokens for x in t.thoughts)
    if kv_reuse:  # each call after the first reuses what its model encoded before; only the rest is charged
        cached_base, cached_ttm = sum(a.cached_tokens for a in t.answers), sum(x.cached_tokens for x in t.thoughts)
        assert t.answers[0].cached_tokens == 0 and all(a.cached_tokens > 0 for a in t.answers[1:]) and cached_base > 0
        base, ttm = base - cached_base, ttm - cached_ttm
    else:
        assert all(a.cached_tokens == 0 for a in t.answers)
    assert t.processed == {"base": base, "ttm": ttm}
    assert flops(t.processed, {"base": n, "ttm": n}) == 2.0 * n * (base + ttm)
    assert t.to_dict()["processed"] == t.processed
