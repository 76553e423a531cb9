"""Session generation with prefix key/value reuse (`generate.sessions`) on a briefly trained tiny model:
it must give what HF `generate` gives, and reusing a conversation's prefix must change nothing but
the work done."""

from __future__ import annotations

import pytest
import torch

from pseudocot.config import ArithConfig
from pseudocot.data import arith
from pseudocot.data.chat import messages_for, render
from pseudocot.generate import GenerationParams
from pseudocot.generate.hf import HFGenerator
from pseudocot.generate.sessions import PrefixStore, common_prefix

LONG = 48


@pytest.fixture(scope="module")
def examples():
    return arith.generate(12, ArithConfig(max_steps=3), seed=777, split="test")


@pytest.fixture(scope="module")
def prompts(trained_tiny, examples):
    _, tok = trained_tiny
    return [render(tok, messages_for(e)[:-1], add_generation_prompt=True) for e in examples]


def _key(c):
    return (c.text, c.completion_tokens, c.finish_reason, c.prompt_tokens)


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_session_path_equals_hf_generate(trained_tiny, prompts, batch_size):
    model, tok = trained_tiny
    hf = HFGenerator(model, tok, batch_size=16).generate(prompts, GenerationParams(max_new_tokens=LONG, logprobs=True))
    g = HFGenerator(model, tok, batch_size=batch_size)
    ours = g.generate(prompts, GenerationParams(max_new_tokens=LONG, logprobs=True), sessions=list(range(len(prompts))))
    assert [_key(c) for c in ours] == [_key(c) for c in hf]
    for a, b in zip(ours, hf):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
    assert len({c.completion_tokens for c in ours}) > 2  # rows really finish at different steps


@pytest.mark.parametrize("stop", [["\n"], ["="], ["The answer"]])
def test_session_stop_strings_equal_hf(trained_tiny, prompts, stop):
    model, tok = trained_tiny
    params = GenerationParams(max_new_tokens=LONG, stop=stop)
    hf = HFGenerator(model, tok, batch_size=16).generate(prompts, params)
    ours = HFGenerator(model, tok, batch_size=16).generate(prompts, params, sessions=list(range(len(prompts))))
    assert [_key(c) for c in ours] == [_key(c) for c in hf]


def _conversation(gen, prompts, turns, params):
    """Grow each prompt by its previous completion and a fixed follow-up, `turns` times; returns the
    completions of every turn. Follow-ups differ per prompt, so rows reuse different amounts."""
    texts, history = list(prompts), []
    keys = [f"q{i}" for i in range(len(prompts))]
    for t in range(turns):
        out = gen.generate(texts, params, sessions=keys)
        history.append(out)
        texts = [p + c.text + f"<|eos|><|user|>And {i % 3 + t} more?<|eos|><|assistant|>" for i, (p, c) in
                 enumerate(zip(texts, out))]
    return history


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_reuse_is_token_identical_to_no_reuse(trained_tiny, prompts, batch_size):
    model, tok = trained_tiny
    params = GenerationParams(max_new_tokens=24, logprobs=True, hidden=True)
    with_reuse = HFGenerator(model, tok, batch_size=batch_size)
    without = HFGenerator(model, tok, batch_size=batch_size, kv_reuse=False)
    a = _conversation(with_reuse, prompts, 3, params)
    b = _conversation(without, prompts, 3, params)
    for turn_a, turn_b in zip(a, b):
        assert [_key(c) for c in turn_a] == [_key(c) for c in turn_b]
        for x, y in zip(turn_a, turn_b):
            assert x.token_logprobs == pytest.approx(y.token_logprobs, abs=1e-4)
            torch.testing.assert_close(x.features, y.features, atol=1e-4, rtol=1e-4)
    # The first turn has nothing to reuse; later turns reuse at least the earlier prompt.
    assert all(c.cached_tokens == 0 for c in a[0])
    for t in (1, 2):
        for c, prev in zip(a[t], a[t - 1]):
            assert c.cached_tokens >= prev.prompt_tokens
    assert all(c.cached_tokens == 0 for turn in b for c in turn)
    assert len(without.prefixes) == 0 and len(with_reuse.prefixes) == len(prompts)
    with_reuse.end_sessions([f"q{i}" for i in range(len(prompts))])
    assert len(with_reuse.prefixes) == 0


def test_features_pool_prompt_and_output(trained_tiny, prompts):
    model, tok = trained_tiny
    (c,) = HFGenerator(model, tok).generate(prompts[:1], GenerationParams(max_new_tokens=LONG, hidden=True))
    H = model.config.hidden_size
    assert c.features.shape == (2 * H,) and c.features.dtype == torch.float32
    # Independent check: one forward pass over prompt + generated tokens (all but the last one).
    ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    gen = tok(c.text, add_special_tokens=False)["input_ids"]
    full = torch.tensor([ids + gen])  # the last generated token (<|eos|>) is never fed
    with torch.no_grad():
        h = model.get_decoder()(input_ids=full).last_hidden_state[0]
    torch.testing.assert_close(c.features, torch.cat([h.mean(0), h[-1]]), atol=1e-4, rtol=1e-4)


def test_sampled_sessions_are_seeded(trained_tiny, prompts):
    model, tok = trained_tiny
    params = GenerationParams(max_new_tokens=16, temperature=1.0, seed=3)
    a = HFGenerator(model, tok).generate(prompts, params, sessions=list(range(len(prompts))))
    b = HFGenerator(model, tok).generate(prompts, params, sessions=list(range(len(prompts))))
    greedy = HFGenerator(model, tok).generate(prompts, GenerationParams(max_new_tokens=16))
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.text for c in a] != [c.text for c in greedy]


def test_prefix_store_keeps_one_token_to_encode():
    from pseudocot.generate.sessions import EncodedPrefix

    k = [torch.zeros(2, 5, 4)]
    store = PrefixStore()
    store.put("a", EncodedPrefix([1, 2, 3, 4, 5], k, k, None))
    assert store.reusable("a", [1, 2, 3, 4, 5], need_hidden=False).ids == [1, 2, 3, 4]
    assert store.reusable("a", [1, 2, 9], need_hidden=False).keys[0].shape == (2, 2, 4)
    assert store.reusable("a", [9], need_hidden=False) is None
    assert store.reusable("a", [1, 2, 3], need_hidden=True) is None  # no hidden states stored
    assert store.reusable("b", [1, 2], need_hidden=False) is None
    assert common_prefix([1, 2, 3], [1, 2]) == 2 and common_prefix([], [1]) == 0


def test_session_count_mismatch_raises(trained_tiny, prompts):
    model, tok = trained_tiny
    with pytest.raises(ValueError, match="session keys"):
        HFGenerator(model, tok).generate(prompts[:2], GenerationParams(), sessions=["a"])


@pytest.mark.parametrize("stop", [["\n"], ["="]])
def test_pad_equal_to_eos_does_not_count_as_a_token(trained_tiny, prompts, stop):
    """Llama 3 style tokenizers pad with their end-of-sequence token: a row a stop string ended is
    padded with it, and that pad must not count as generated (nor change with KV reuse)."""
    model, tok = trained_tiny
    hf = HFGenerator(model, tok, batch_size=16)
    hf.pad_id = hf.eos_ids[0]
    ours = HFGenerator(model, tok, batch_size=16)
    ours.pad_id = ours.eos_ids[0]
    params = GenerationParams(max_new_tokens=LONG, stop=stop, logprobs=True)
    a = hf.generate(prompts, params)
    b = ours.generate(prompts, params, sessions=list(range(len(prompts))))
    assert [_key(c) for c in a] == [_key(c) for c in b]
    assert [len(c.token_logprobs) for c in a] == [c.completion_tokens for c in a]


def test_the_cache_goes_by_the_current_keyword_without_a_warning_and_stays_on_the_device(trained_tiny, prompts):
    """transformers 5.x renamed the forward's `past_key_values` to `cache` (the old name warns, then goes in 5.40): the
    decode loop uses the name the installed decoder takes, and a session's keys/values stay where the model is."""
    import warnings

    from pseudocot.generate.sessions import cache_argument

    model, tok = trained_tiny
    assert cache_argument(model.get_decoder()) in ("cache", "past_key_values")

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):  # the earlier signature
            return input_ids

    assert cache_argument(Old()) == "past_key_values"
    g = HFGenerator(model, tok, batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _conversation(g, prompts[:4], 2, GenerationParams(max_new_tokens=8, hidden=True))
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    device = next(model.parameters()).device
    kept = [g.prefixes._items[f"q{i}"] for i in range(4)]
    assert all(t.device == device for p in kept for t in (*p.keys, *p.values, p.hidden))
