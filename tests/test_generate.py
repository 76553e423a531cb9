"""The `Generator` interface and its local HF backend, on a briefly trained tiny model."""

from __future__ import annotations

import pytest
import torch

from pseudocot.config import ArithConfig
from pseudocot.data import arith
from pseudocot.data.chat import messages_for, render
from pseudocot.generate import Completion, GenerationParams, Generator
from pseudocot.generate.hf import HFGenerator

N_PROMPTS = 14
LONG = 48  # enough new tokens for every greedy completion of the trained model to end by itself


@pytest.fixture(scope="module")
def prompts(trained_tiny):
    """Held-out arithmetic prompts (chat template applied) of many different lengths, unsorted."""
    _, tok = trained_tiny
    examples = arith.generate(N_PROMPTS, ArithConfig(max_steps=3), seed=12345, split="test")
    out = [render(tok, messages_for(e)[:-1], add_generation_prompt=True) for e in examples]
    # A couple of prompts outside the training distribution, one very short.
    out[3] = render(tok, [{"role": "user", "content": "2 + 2"}], add_generation_prompt=True)
    out[9] = out[9] + "1"
    return out


def _gen(trained_tiny, batch_size=16):
    model, tok = trained_tiny
    return HFGenerator(model, tok, batch_size=batch_size)


@pytest.fixture(scope="module")
def singles(trained_tiny, prompts):
    """Each prompt generated alone, greedily, with room to finish."""
    g = _gen(trained_tiny, batch_size=1)
    out = []
    for p in prompts:
        (c,) = g.generate([p], GenerationParams(max_new_tokens=LONG))
        out.append(c)
    return out


def _key(c: Completion):
    return (c.text, c.completion_tokens, c.finish_reason, c.prompt_tokens)


def test_fixture_generations_are_nontrivial(singles, prompts, trained_tiny):
    _, tok = trained_tiny
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert len(set(lengths)) >= 8, "prompts must have different lengths"
    assert len({c.completion_tokens for c in singles}) >= 3, "completions must have varied lengths"
    assert sum(c.finish_reason == "stop" for c in singles) >= 3 * len(singles) // 4, "most completions end with <|eos|>"
    assert sum("The answer is" in c.text for c in singles) >= len(singles) // 2
    assert sum("=" in c.text for c in singles) >= 3
    for c in singles:
        assert "<|" not in c.text  # special tokens are not in the text


@pytest.mark.parametrize("batch_size", [4, 16])
def test_batched_greedy_equals_one_at_a_time(trained_tiny, prompts, singles, batch_size):
    got = _gen(trained_tiny, batch_size).generate(prompts, GenerationParams(max_new_tokens=LONG))
    assert len(got) == len(prompts)
    assert [_key(c) for c in got] == [_key(c) for c in singles]


def test_results_come_back_in_input_order(trained_tiny, prompts, singles):
    g = _gen(trained_tiny, batch_size=5)
    params = GenerationParams(max_new_tokens=LONG)
    rev = g.generate(prompts[::-1], params)
    assert [c.text for c in rev] == [c.text for c in singles][::-1]
    # Duplicated prompts each get their own (identical) completion, in place.
    dup = g.generate([prompts[0], prompts[1], prompts[0]], params)
    assert [c.text for c in dup] == [singles[0].text, singles[1].text, singles[0].text]


def test_prompt_tokens_is_prompt_length(trained_tiny, prompts, singles):
    _, tok = trained_tiny
    for p, c in zip(prompts, singles):
        assert c.prompt_tokens == len(tok(p, add_special_tokens=False)["input_ids"])
    got = _gen(trained_tiny, 16).generate(prompts, GenerationParams(max_new_tokens=2))
    assert [c.prompt_tokens for c in got] == [c.prompt_tokens for c in singles]


def test_length_limit_and_finish_reason(trained_tiny, prompts, singles):
    full = [c.completion_tokens for c in singles]
    limit = sorted(full)[len(full) // 2]  # about half the rows run out of tokens
    assert min(full) <= limit < max(full)
    got = _gen(trained_tiny, 4).generate(prompts, GenerationParams(max_new_tokens=limit))
    reasons = set()
    for c, ref in zip(got, singles):
        assert c.completion_tokens <= limit
        reasons.add(c.finish_reason)
        if ref.completion_tokens <= limit:  # <|eos|> fits: same result as without a limit
            assert c.finish_reason == "stop"
            assert _key(c) == _key(ref)
        else:
            assert c.finish_reason == "length"
            assert c.completion_tokens == limit
            assert ref.text.startswith(c.text)
            # Shorter, unless all the full answer had left was its end-of-sequence token (not in the text).
            assert len(c.text) < len(ref.text) or ref.completion_tokens == limit + 1
    assert reasons == {"stop", "length"}


def test_max_new_tokens_one(trained_tiny, prompts, singles):
    got = _gen(trained_tiny, 16).generate(prompts, GenerationParams(max_new_tokens=1))
    for c, ref in zip(got, singles):
        assert c.completion_tokens == 1
        assert c.finish_reason == ("stop" if ref.completion_tokens == 1 else "length")
        assert ref.text.startswith(c.text)


@pytest.mark.parametrize("stop", [["="], ["The answer"], ["=", "\n"]])
@pytest.mark.parametrize("batch_size", [1, 16])
def test_stop_strings(trained_tiny, prompts, singles, stop, batch_size):
    got = _gen(trained_tiny, batch_size).generate(prompts, GenerationParams(max_new_tokens=LONG, stop=stop))
    n_stopped = 0
    for c, ref in zip(got, singles):
        cuts = [ref.text.find(s) for s in stop if s in ref.text]
        for s in stop:
            assert s not in c.text
        assert ref.text.startswith(c.text)
        assert c.finish_reason == "stop"
        assert c.completion_tokens <= ref.completion_tokens
        if cuts:
            n_stopped += 1
            assert c.text == ref.text[: min(cuts)]
            assert c.completion_tokens < ref.completion_tokens  # generation really ended early
        else:
            assert _key(c) == _key(ref)
    assert n_stopped >= 3


def test_stop_string_token_count_and_logprobs(trained_tiny, prompts):
    """A row ended by a stop string counts the tokens up to the one completing it, and its
    log-probabilities are the first ones of the unstopped row."""
    model, tok = trained_tiny
    g = _gen(trained_tiny, 16)
    full = g.generate(prompts, GenerationParams(max_new_tokens=LONG, logprobs=True))
    got = g.generate(prompts, GenerationParams(max_new_tokens=LONG, stop=["="], logprobs=True))
    n_stopped = 0
    for p, c, ref in zip(prompts, got, full):
        assert c.token_logprobs is not None and len(c.token_logprobs) == c.completion_tokens
        assert all(lp <= 0.0 for lp in c.token_logprobs)
        assert c.token_logprobs == pytest.approx(ref.token_logprobs[: c.completion_tokens], abs=1e-5)
        new, _ = _reference_greedy(model, tok, p, LONG)
        hits = [k for k in range(1, len(new) + 1) if "=" in tok.decode(new[:k], skip_special_tokens=True)]
        if hits:
            n_stopped += 1
            assert c.completion_tokens == hits[0]
        else:
            assert c.completion_tokens == ref.completion_tokens == len(new)
    assert n_stopped >= 3


def test_sampling_is_seeded_and_leaves_global_rng_alone(trained_tiny, prompts):
    g = _gen(trained_tiny, 4)
    torch.manual_seed(777)
    state = torch.get_rng_state()
    a = g.generate(prompts, GenerationParams(max_new_tokens=24, temperature=1.0, seed=11))
    assert torch.equal(torch.get_rng_state(), state)
    b = g.generate(prompts, GenerationParams(max_new_tokens=24, temperature=1.0, seed=11))
    c = g.generate(prompts, GenerationParams(max_new_tokens=24, temperature=1.0, seed=12))
    assert torch.equal(torch.get_rng_state(), state)
    assert [_key(x) for x in a] == [_key(x) for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    # A fresh generator object with the same seed gives the same samples too.
    again = _gen(trained_tiny, 4).generate(prompts, GenerationParams(max_new_tokens=24, temperature=1.0, seed=11))
    assert [x.text for x in again] == [x.text for x in a]
    # Greedy calls do not move the global RNG either.
    g.generate(prompts[:3], GenerationParams(max_new_tokens=4))
    assert torch.equal(torch.get_rng_state(), state)


def test_sampling_differs_from_greedy(trained_tiny, prompts, singles):
    got = _gen(trained_tiny, 16).generate(prompts, GenerationParams(max_new_tokens=LONG, temperature=1.5, seed=3))
    assert [c.text for c in got] != [c.text for c in singles]
    for c in got:
        assert c.completion_tokens <= LONG and c.finish_reason in ("stop", "length")


def _reference_greedy(model, tok, prompt: str, max_new_tokens: int):
    """Greedy decoding with plain full forward passes: (generated ids, their log-probabilities)."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    new, lps = [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + new])).logits[0, -1].double()
            logp = torch.log_softmax(logits, dim=-1)
            t = int(torch.argmax(logp))
            new.append(t)
            lps.append(float(logp[t]))
            if t == tok.eos_token_id:
                break
    return new, lps


def test_logprobs_match_a_plain_forward_pass(trained_tiny, prompts):
    model, tok = trained_tiny
    subset = prompts[:6]
    max_new = 30
    got = _gen(trained_tiny, 4).generate(subset, GenerationParams(max_new_tokens=max_new, logprobs=True))
    saw_eos = False
    for p, c in zip(subset, got):
        new, lps = _reference_greedy(model, tok, p, max_new)
        ended = new[-1] == tok.eos_token_id
        saw_eos |= ended
        assert c.completion_tokens == len(new)
        assert c.finish_reason == ("stop" if ended else "length")
        assert c.text == tok.decode(new[:-1] if ended else new, skip_special_tokens=True)
        assert c.token_logprobs is not None and len(c.token_logprobs) == c.completion_tokens
        assert c.token_logprobs == pytest.approx(lps, abs=1e-4)
    assert saw_eos


def test_no_logprobs_unless_asked(trained_tiny, prompts):
    got = _gen(trained_tiny, 16).generate(prompts[:3], GenerationParams(max_new_tokens=4))
    assert all(c.token_logprobs is None for c in got)


def test_is_a_generator(trained_tiny):
    g = _gen(trained_tiny)
    assert isinstance(g, Generator)
    assert not isinstance(object(), Generator)


def test_empty_prompt_raises(trained_tiny, prompts):
    g = _gen(trained_tiny, 16)
    with pytest.raises(ValueError, match="empty"):
        g.generate([""], GenerationParams(max_new_tokens=4))
    # Also when the empty prompt shares a batch with real ones.
    with pytest.raises(ValueError, match="empty"):
        g.generate([prompts[0], "", prompts[1]], GenerationParams(max_new_tokens=4))


def test_bad_arguments_raise(trained_tiny, prompts):
    model, tok = trained_tiny
    with pytest.raises(ValueError, match="max_new_tokens"):
        HFGenerator(model, tok).generate(prompts[:1], GenerationParams(max_new_tokens=0))
    with pytest.raises(ValueError, match="batch_size"):
        HFGenerator(model, tok, batch_size=0)
    assert HFGenerator(model, tok).generate([], GenerationParams()) == []
