"""Local HF backend of `Generator`: batched greedy or sampled generation with left padding.

Prompts are sorted by length so a batch wastes little padding, generated in batches of
`batch_size`, and returned in the caller's order. Stop strings end a sequence early and are cut
from its text. Greedy output of a batch equals the same prompts generated one at a time.

Calls that name sessions (or ask for hidden states) go through `generate.sessions.decode`, which
reuses each conversation's already-encoded prefix; plain calls use HF `generate`.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from transformers import GenerationConfig as HFGenerationConfig

from pseudocot.generate.base import Completion, GenerationParams, TextStream
from pseudocot.generate.sessions import PrefixStore, decode, end_ids
from pseudocot.models.loading import load_tokenizer
from pseudocot.models.lora import load_trained
from pseudocot.progress import progress


def _sliding_window(config: Any) -> bool:
    types = getattr(config, "layer_types", None) or []
    return bool(getattr(config, "sliding_window", None)) and (not types or any("sliding" in t for t in types))


class HFGenerator:
    """A causal LM and its tokenizer as a `Generator`."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, progress: bool = False,
                 kv_reuse: bool = True) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        self.progress = progress  # a progress bar over batches, for long runs
        # Sessions reuse their encoded prefix; off, they re-encode every call. Sliding-window layers drop
        # old columns, which the stored prefixes index by position, so such models never reuse.
        self.kv_reuse = kv_reuse and not _sliding_window(model.config)
        self.prefixes = PrefixStore()
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_ids: list[int] = end_ids(model, tokenizer)
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 32,
                        trust_remote_code: bool = False, tokenizer_path: str | None = None) -> HFGenerator:
        """A model folder, full or a LoRA adapter (merged into its base), with its tokenizer."""
        tokenizer = load_tokenizer(tokenizer_path or path, trust_remote_code=trust_remote_code)
        model = load_trained(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _hf_config(self, params: GenerationParams) -> HFGenerationConfig:
        # A fresh config, so a checkpoint's own sampling defaults never leak into greedy runs.
        sample = params.temperature > 0
        return HFGenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=None,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            stop_strings=list(params.stop) or None,
            return_dict_in_generate=True,
            output_logits=params.logprobs,
        )

    def generate(self, prompts: Sequence[str], params: GenerationParams,
                 sessions: Sequence[Hashable] | None = None) -> list[Completion]:
        """One completion per prompt. `sessions[i]` names prompt i's conversation: its next call
        reuses what this one encoded (see `generate.sessions`)."""
        if params.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1.")
        if sessions is not None and len(sessions) != len(prompts):
            raise ValueError(f"got {len(sessions)} session keys for {len(prompts)} prompts.")
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise ValueError(f"cannot generate from an empty prompt (prompt {empty[0]}).")
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Completion | None] = [None] * len(prompts)
        config = self._hf_config(params)
        starts = range(0, len(order), self.batch_size)
        bar = progress(total=len(prompts), desc="generate", unit="prompt", disable=not self.progress or len(starts) < 2)
        for b, start in enumerate(starts):
            idx = order[start : start + self.batch_size]
            seed = None if params.seed is None else params.seed + b
            batch = [encoded[i] for i in idx]
            if sessions is None and not params.hidden and params.on_text is None:
                done = self._generate_batch(batch, params, config, seed)
            else:
                done = self._generate_sessions(batch, [sessions[i] for i in idx] if sessions is not None else None,
                                               params, seed, idx)
            for i, completion in zip(idx, done):
                results[i] = completion
            bar.update(len(idx))
        bar.close()
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """log P(continuation | context) per (context, continuation) pair, summed over the continuation's
        tokens (lm-evaluation-harness's `loglikelihood`). Context and continuation are encoded apart, so
        the continuation's tokens are exactly its own. One-token continuations of one context (the option
        letters of a question) are read off a single forward pass over the context; longer ones get a
        pass each. Right padding, batches sorted by length."""
        enc = {}
        for text in {t for pair in requests for t in pair}:
            enc[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if any(not enc[c] or not enc[x] for c, x in requests):
            raise ValueError("log-likelihood requests need a non-empty context and continuation.")
        # One row per context with every one-token continuation read off its last position; one row per
        # longer continuation.
        rows: list[tuple[list[int], int, list[tuple[int, list[int]]]]] = []  # (ids, context length, [(request, tokens)])
        single: dict[str, list[tuple[int, list[int]]]] = {}
        for i, (c, x) in enumerate(requests):
            if len(enc[x]) == 1:
                single.setdefault(c, []).append((i, enc[x]))
            else:
                rows.append((enc[c] + enc[x], len(enc[c]), [(i, enc[x])]))
        rows += [(enc[c], len(enc[c]), reqs) for c, reqs in single.items()]
        rows.sort(key=lambda r: -len(r[0]))
        out = [0.0] * len(requests)
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            width = max(len(r[0]) for r in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (row, _, _) in enumerate(batch):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits  # (B, T, V)
            for r, (_, n_ctx, reqs) in enumerate(batch):
                for i, cont in reqs:
                    # positions n_ctx-1 .. n_ctx+len(cont)-2 predict the continuation's tokens: (C, V)
                    logp = torch.log_softmax(logits[r, n_ctx - 1 : n_ctx - 1 + len(cont)].float(), dim=-1)
                    out[i] = float(logp.gather(-1, torch.tensor(cont, device=logp.device).unsqueeze(-1)).sum())
        return out

    def end_sessions(self, sessions: Sequence[Hashable]) -> None:
        self.prefixes.drop(sessions)

    def _generate_sessions(self, batch: list[list[int]], keys: list[Hashable] | None, params: GenerationParams,
                           seed: int | None, index: Sequence[int] = ()) -> list[Completion]:
        """`index[r]`: row r's place in the caller's prompts (what `params.on_text` is told)."""
        reuse = keys is not None and self.kv_reuse
        reused = [self.prefixes.reusable(k, ids, params.hidden) if reuse else None for k, ids in zip(keys or [], batch)]
        if not reused:
            reused = [None] * len(batch)
        streams = [TextStream(params.stop) for _ in batch] if params.on_text else []

        def is_end(r: int, tokens: list[int]) -> bool:
            if tokens[-1] in self.eos_ids:
                return True
            if params.stop or streams:
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if streams and (delta := streams[r].update(text)):
                    params.on_text(index[r], delta)  # type: ignore[misc]
                return any(s and s in text for s in params.stop)
            return False

        rows, seconds = decode(self.model, batch, reused, max_new_tokens=params.max_new_tokens,
                               temperature=params.temperature, top_p=params.top_p, seed=seed, is_end=is_end,
                               pad_id=self.pad_id, keep=reuse, want_features=params.hidden,
                               top_k=params.top_logprobs if params.logprobs else 0)
        out = []
        for r, row in enumerate(rows):
            if reuse:
                self.prefixes.put(keys[r], row.encoded)
            c = self._finish(row.tokens, len(batch[r]), seconds / len(batch), params,
                             row.logprobs if params.logprobs else None)
            c.features, c.cached_tokens = row.features, row.cached_tokens
            if row.top is not None:
                c.top_logprobs = self._top_logprobs(row.top)[:c.completion_tokens]
            if streams and (delta := streams[r].finish(c.text)):
                params.on_text(index[r], delta)  # type: ignore[misc]
            out.append(c)
        return out

    def _generate_batch(self, batch: list[list[int]], params: GenerationParams, config: HFGenerationConfig,
                        seed: int | None) -> list[Completion]:
        width = max(len(ids) for ids in batch)
        # Left padding: (B, T) ids and mask; every row's last prompt token sits at column T-1.
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, ids in enumerate(batch):
            if ids:
                input_ids[r, width - len(ids):] = torch.tensor(ids)
                mask[r, width - len(ids):] = 1
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                generation_config=config, tokenizer=self.tokenizer if params.stop else None,
            )
        seconds = (time.perf_counter() - t0) / len(batch)
        new = out.sequences[:, width:].tolist()  # (B, N) generated ids, padded after a row finishes
        logprobs = tops = None
        if params.logprobs and out.logits:
            # (B, N, V) raw logits -> log-probabilities of the tokens actually chosen, (B, N).
            log_probs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
            chosen = out.sequences[:, width:].unsqueeze(-1)
            logprobs = log_probs.gather(-1, chosen).squeeze(-1).tolist()
            if params.top_logprobs:
                top_v, top_i = log_probs.topk(params.top_logprobs, dim=-1)  # (B, N, k)
                tops = [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
        out_rows = []
        for r, row in enumerate(new):
            c = self._finish(row, len(batch[r]), seconds, params, logprobs[r] if logprobs else None)
            if tops is not None:
                c.top_logprobs = self._top_logprobs(tops[r])[:c.completion_tokens]
            out_rows.append(c)
        return out_rows

    def _top_logprobs(self, top: Sequence[tuple[list[int], list[float]]]) -> list[dict[str, float]]:
        """Each position's (ids, log-probabilities) as OpenAI's legacy format: the tokens as the vocabulary spells them."""
        return [dict(zip(self.tokenizer.convert_ids_to_tokens(ids), lps)) for ids, lps in top]

    def _finish(self, tokens: list[int], prompt_tokens: int, seconds: float, params: GenerationParams,
                logprobs: list[float] | None) -> Completion:
        n, reason, keep = len(tokens), "length", len(tokens)
        for j, t in enumerate(tokens):
            if t in self.eos_ids:
                n, keep, reason = j + 1, j, "stop"
                if t == self.pad_id and params.stop and any(
                        s and s in self.tokenizer.decode(tokens[:j], skip_special_tokens=True) for s in params.stop):
                    n = j  # pad == end-of-sequence (Llama 3): HF padded a row a stop string had already ended
                break
            if t == self.pad_id:
                n, keep, reason = j, j, "stop"  # a stop string ended this row at the previous token
                break
        text = self.tokenizer.decode(tokens[:keep], skip_special_tokens=True)
        cuts = sorted((text.find(s), s) for s in params.stop if s and s in text)
        stop_string = None
        if cuts:
            (at, stop_string), reason = cuts[0], "stop"
            text = text[:at]
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=n, seconds=seconds,
                          finish_reason=reason, token_logprobs=logprobs[:n] if logprobs is not None else None,
                          stop_string=stop_string)
