"""On-policy distillation: batches whose completions the student writes itself.

A student trained only on the data's completions (teacher forcing) never sees its own mistakes in
its context, so at inference, where it reads its own earlier lines, errors compound (exposure bias).
On-policy distillation (Agarwal et al. 2024, "On-Policy Distillation of Language Models", GKD; TRL's
`lmbda`) fixes that: for a share `on_policy` of the batches the student completes each row's prompt
itself, the teacher scores every token it wrote, and the loss, per-token reverse KL(student || teacher)
by default, is taken on those tokens. The teacher's distribution on the student's own prefixes tells
it, token by token, what it should have written there.

Sampling is batched and KV-cached (`generate.sessions.decode`), seeded from (seed, step, micro-batch)
so a resumed run writes the same completions as an unbroken one. The distillation trainer
(`train.distill`) calls `student_rows` and then its usual chunked loss.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from pseudocot.train.rows import IGNORE_INDEX


def on_policy_batch(share: float, seed: int, step: int, micro: int) -> bool:
    """Whether micro-batch `micro` of optimizer step `step` is written by the student: a draw with
    probability `share` that depends only on (seed, step, micro), so a resumed run draws the same."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    return random.Random(f"on-policy/{seed}/{step}/{micro}").random() < share


def sample_seed(seed: int, step: int, micro: int) -> int:
    """The sampling seed of one micro-batch (the same on a resumed run)."""
    return random.Random(f"on-policy-sample/{seed}/{step}/{micro}").getrandbits(63)


def prompt_lengths(labels: torch.Tensor) -> list[int]:
    """(B, T) labels -> each row's prompt length: the position of its first answer token."""
    answer = labels != IGNORE_INDEX  # (B, T)
    if not bool(answer.any(dim=1).all()):
        raise ValueError("every row needs at least one answer token to mark where its prompt ends.")
    return answer.int().argmax(dim=1).tolist()


@torch.no_grad()
def sample_completions(model: Any, prompts: Sequence[list[int]], *, max_new_tokens: int, temperature: float,
                       seed: int, end: Sequence[int], pad_id: int) -> list[list[int]]:
    """The student's completion of each prompt (its end token included when it wrote one), batched and
    KV-cached, in eval mode (no dropout) and back to the mode it was in."""
    from pseudocot.generate.sessions import decode

    was_training = model.training
    model.eval()
    try:
        ends = set(end)
        rows, _ = decode(model, [list(p) for p in prompts], [None] * len(prompts), max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=1.0, seed=seed, is_end=lambda _r, toks: toks[-1] in ends,
                         pad_id=pad_id, keep=False, want_features=False)
    finally:
        model.train(was_training)
    return [r.tokens for r in rows]


def student_rows(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, *, max_new_tokens: int, max_length: int,
                 temperature: float, seed: int, end: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch whose completions the student wrote: each row's prompt (what precedes its first label) followed by
    the student's completion, at most `max_new_tokens` and cut at `max_length` tokens in all; labels on the
    completion only. Returns right-padded (B, T') input_ids, attention_mask and labels, plus
    `completion_tokens` (the number of student tokens, for the stage's metrics)."""
    starts = prompt_lengths(labels)
    prompts = [input_ids[r, :n].tolist() for r, n in enumerate(starts)]
    room = min(max_new_tokens, max(1, max_length - min(starts)))  # each row is cut at max_length below
    written = sample_completions(model, prompts, max_new_tokens=room, temperature=temperature, seed=seed, end=end,
                                 pad_id=pad_id)
    seqs = [(p + w)[:max_length] for p, w in zip(prompts, written)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    out_labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for r, (s, n) in enumerate(zip(seqs, starts)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        out_labels[r, n : len(s)] = ids[r, n : len(s)]
    device = input_ids.device
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": out_labels.to(device),
            "completion_tokens": torch.tensor(sum(len(s) - n for s, n in zip(seqs, starts)))}
