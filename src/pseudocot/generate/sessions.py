"""Generation that remembers what each conversation has already encoded: prefix key/value reuse.

The Pseudo-CoT loop asks the base model the same question again and again, each time with one more
thought in its context. Everything before the new thought was encoded on the previous call, so
re-encoding it is waste. Here each conversation (a *session*, named by any hashable key) keeps the
keys/values and final hidden states of the tokens it has fed through the model; a new prompt reuses
the longest common token prefix with what is stored and encodes only the rest.

Batching rows that reuse different amounts: the batch cache is `(B, H_kv, C, D)` with each row's
reused prefix right-aligned in the first `C` columns, then a block of `W` new tokens, each row's
right-aligned; masked padding sits in the middle and position ids are each row's own, so a row sees
exactly what it would see alone. Rows that finish are dropped from the batch (the batch shrinks).
Greedy output is token-identical with and without reuse (tested).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pseudocot.models.heads import logit_head


@dataclass
class EncodedPrefix:
    """What one session has fed through the model."""

    ids: list[int]
    """The tokens whose keys/values are stored, in order."""
    keys: list[torch.Tensor]
    """Per layer, (H_kv, L, D), on the model's device."""
    values: list[torch.Tensor]
    """Per layer, (H_kv, L, D), on the model's device."""
    hidden: torch.Tensor | None
    """(L, H) final hidden state of each token, kept when hidden states were asked for (on the model's device)."""

    def head(self, n: int) -> EncodedPrefix:
        hidden = None if self.hidden is None else self.hidden[:n]
        return EncodedPrefix(self.ids[:n], [k[:, :n] for k in self.keys], [v[:, :n] for v in self.values], hidden)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixStore:
    """Session key -> its `EncodedPrefix`."""

    def __init__(self) -> None:
        self._items: dict[Hashable, EncodedPrefix] = {}

    def reusable(self, key: Hashable, ids: Sequence[int], need_hidden: bool) -> EncodedPrefix | None:
        """The stored prefix shared with `ids`, cut so at least the last prompt token is encoded anew."""
        stored = self._items.get(key)
        if stored is None or (need_hidden and stored.hidden is None):
            return None
        n = min(common_prefix(stored.ids, ids), len(ids) - 1)
        return stored.head(n) if n > 0 else None

    def put(self, key: Hashable, prefix: EncodedPrefix) -> None:
        self._items[key] = prefix

    def copy(self, source: Hashable, key: Hashable) -> None:
        """Start session `key` from what `source` holds (shared tensors: a stored prefix is never changed in place)."""
        if source in self._items:
            self._items[key] = self._items[source]

    def ids(self, key: Hashable) -> list[int] | None:
        """The tokens session `key` holds, None when it holds nothing."""
        stored = self._items.get(key)
        return None if stored is None else stored.ids

    def drop(self, keys: Sequence[Hashable]) -> None:
        for k in keys:
            self._items.pop(k, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class RowResult:
    tokens: list[int]
    """Generated ids, the end-of-sequence or stop-completing token included."""
    logprobs: list[float]
    """Log-probability of each generated token."""
    features: torch.Tensor | None
    """(2H,) float32: the mean final hidden state over prompt and answer, then the last one."""
    encoded: EncodedPrefix | None
    """Everything this row fed through the model, for the next call of its session."""
    cached_tokens: int = 0
    """Prompt tokens taken from the reused prefix instead of encoded."""
    top: list[tuple[list[int], list[float]]] | None = None
    """With `top_k`: each generated position's k most likely ids and their log-probabilities, most likely first."""


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids: argmax, or a sample at `temperature` from the top-p nucleus."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p (the first token always stays).
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def cache_argument(decoder: Any) -> str:
    """The keyword a decoder's forward takes its key/value cache by: `cache` in transformers' current API, else the
    `past_key_values` it replaced (deprecated, to be removed in 5.40). Read once per decoder class."""
    return _cache_argument(type(decoder))


@functools.cache
def _cache_argument(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def end_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a completion: the model's generation end-of-sequence ids, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def decode(model: Any, prompts: list[list[int]], reused: list[EncodedPrefix | None], *, max_new_tokens: int,
           temperature: float, top_p: float, seed: int | None, is_end: Callable[[int, list[int]], bool],
           pad_id: int, keep: bool, want_features: bool, top_k: int = 0) -> tuple[list[RowResult], float]:
    """Generate for a batch of prompts, each continuing its reused prefix; returns rows and seconds.

    `is_end(row, tokens)` says whether a row's generation is over (end-of-sequence or stop string).
    With `keep`, each row's keys/values are handed back for its session's next call.
    """
    decoder, head = model.get_decoder(), logit_head(model)  # the head as the model applies it (scale, soft-cap)
    kv = cache_argument(decoder)
    device = next(model.parameters()).device
    B = len(prompts)
    c = [0 if p is None else len(p.ids) for p in reused]
    new = [ids[c_r:] for ids, c_r in zip(prompts, c)]
    C, W = max(c), max(len(n) for n in new)
    t0 = time.perf_counter()

    from transformers import DynamicCache

    if C > 0:
        ref = next(p for p in reused if p is not None)
        layers = []
        for layer in range(len(ref.keys)):
            h_kv, _, d = ref.keys[layer].shape
            k = ref.keys[layer].new_zeros((B, h_kv, C, d))
            v = ref.values[layer].new_zeros((B, h_kv, C, d))
            for r, p in enumerate(reused):
                if p is not None:
                    k[r, :, C - c[r]:] = p.keys[layer]
                    v[r, :, C - c[r]:] = p.values[layer]
            layers.append((k.to(device), v.to(device)))
        cache = DynamicCache(ddp_cache_data=layers, config=model.config)
    else:
        cache = DynamicCache(config=model.config)

    # (B, W) new tokens right-aligned; (B, C+W) mask; each row's own positions continue its prefix.
    block = torch.full((B, W), pad_id, dtype=torch.long)
    mask = torch.zeros((B, C + W), dtype=torch.long)
    pos = torch.zeros((B, W), dtype=torch.long)
    cols: list[list[int]] = []
    for r in range(B):
        n = len(new[r])
        block[r, W - n:] = torch.tensor(new[r])
        mask[r, C - c[r]:C] = 1
        mask[r, C + W - n:] = 1
        pos[r, W - n:] = torch.arange(c[r], c[r] + n)
        cols.append(list(range(C - c[r], C)) + list(range(C + W - n, C + W)))
    mask, pos = mask.to(device), pos.to(device)
    generator = None
    if temperature > 0 and seed is not None:  # no seed: torch's global generator, as HF generate does
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    rows: list[int] = list(range(B))  # batch index -> original row
    tokens: list[list[int]] = [[] for _ in range(B)]
    logprobs: list[list[float]] = [[] for _ in range(B)]
    tops: list[list[tuple[list[int], list[float]]]] = [[] for _ in range(B)]
    hidden_parts: list[list[torch.Tensor]] = [[] for _ in range(B)]
    results: list[RowResult | None] = [None] * B
    next_pos = pos[:, -1] + 1  # (B,)

    def finish(r: int, b: int) -> None:
        # Row r (batch index b) is over: collect its features and the cache columns it owns.
        parts = [reused[r].hidden] if (reused[r] is not None and reused[r].hidden is not None and want_features) else []
        parts += hidden_parts[r]
        feats = None
        if want_features:
            h = torch.cat([p.to(device) for p in parts], dim=0).float()  # (L, H)
            feats = torch.cat([h.mean(0), h[-1]]).cpu()
        encoded = None
        if keep:
            idx = torch.tensor(cols[r], device=device)
            fed = len(cols[r]) - c[r] - len(new[r])
            # kept on the model's device: the session's next call reads them there, with no copy either way
            keys = [layer.keys[b].index_select(1, idx) for layer in cache.layers]
            values = [layer.values[b].index_select(1, idx) for layer in cache.layers]
            h_all = torch.cat([p.to(device) for p in parts], dim=0) if want_features else None
            encoded = EncodedPrefix(prompts[r] + tokens[r][:fed], keys, values, h_all)
        results[r] = RowResult(tokens[r], logprobs[r], feats, encoded, c[r], tops[r] if top_k else None)

    with torch.no_grad():  # not inference_mode: on-policy distillation samples inside a training step
        out = decoder(input_ids=block.to(device), attention_mask=mask, position_ids=pos, use_cache=True, **{kv: cache})
        hidden = out.last_hidden_state  # (B, W, H)
        if want_features:
            for r in range(B):
                hidden_parts[r].append(hidden[r, W - len(new[r]):])
        logits = head(hidden[:, -1]).float()  # (B, V)
        width = C + W
        for step in range(max_new_tokens):
            nxt = _choose(logits, temperature, top_p, generator)  # (B,)
            log_probs = torch.log_softmax(logits, dim=-1)
            lp = log_probs.gather(-1, nxt[:, None]).squeeze(-1)
            done_b = []
            nxt_list, lp_list = nxt.tolist(), lp.tolist()  # one device sync per step, not per row
            if top_k:
                top_v, top_i = log_probs.topk(top_k, dim=-1)
                top_v_list, top_i_list = top_v.tolist(), top_i.tolist()
            for b, r in enumerate(rows):
                tokens[r].append(nxt_list[b])
                logprobs[r].append(lp_list[b])
                if top_k:
                    tops[r].append((top_i_list[b], top_v_list[b]))
                if is_end(r, tokens[r]) or step == max_new_tokens - 1:
                    done_b.append(b)
            for b in done_b:
                finish(rows[b], b)
            if len(done_b) == len(rows):
                break
            if done_b:  # shrink the batch to the rows still generating
                keep_b = torch.tensor([b for b in range(len(rows)) if b not in set(done_b)], device=device)
                cache.reorder_cache(keep_b)
                rows = [rows[b] for b in keep_b.tolist()]
                nxt, mask, next_pos = nxt[keep_b], mask[keep_b], next_pos[keep_b]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            out = decoder(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None], use_cache=True, **{kv: cache})
            for b, r in enumerate(rows):
                cols[r].append(width)
                if want_features:
                    hidden_parts[r].append(out.last_hidden_state[b])
            width += 1
            next_pos = next_pos + 1
            logits = head(out.last_hidden_state[:, -1]).float()
    return [r for r in results if r is not None], time.perf_counter() - t0
