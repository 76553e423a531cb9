"""Chunked distillation loss fused with the output projection: full-vocabulary logits never exist.

A language model's last hidden states (N, H) times its head (V, H) give (N, V) logits; at V = 128k
and a few thousand tokens that tensor, and the half-dozen of its size that softmax, KL and their
backward keep, dominate training memory. `chunked_distill_loss` takes the hidden states instead and
walks over the tokens in chunks of `chunk_size`. For each chunk it makes the logits (c, V), the
teacher's logits or top-k cache for the same rows, the chunk's loss, and right away the gradients
with respect to the chunk's hidden states and the head; then it drops the chunk. Only the gradients,
(N, H) and (V, H), outlive the forward pass; backward scales them by the incoming gradient (the
"fused linear" approach of Liger-Kernel's fused linear cross-entropy, written afresh here).

The value and gradients are those of `distill_loss` on `hidden @ weight.T` (+ bias): the same
per-token function (`terms.token_losses`) runs on each chunk, and the mean divides by the number of
valid tokens in the whole batch, not per chunk. Ignored tokens are skipped before projecting, so
padding costs nothing. The matmul count equals the plain form's (forward projection, then the
hidden-state and head gradients), so it is not slower in principle; it only trades one big kernel
call per step for N / chunk_size smaller ones.

Limits: backward can run once per forward (the stored gradients are scaled in place and handed
over); no double backward. The teacher gets no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from pseudocot.losses.terms import LossMix, at_least_float32, check_topk, make_mix, token_losses

DEFAULT_CHUNK_SIZE = 1024
"""Tokens per chunk; see BENCHMARKS.md ("Distillation loss: chunked vs plain") for how it was picked."""


@dataclass
class _Teacher:
    """Where a chunk's teacher comes from: full logits, hidden states + head, or a top-k cache."""

    logits: Tensor | None = None
    """(N, V) teacher logits."""
    hidden: Tensor | None = None
    """(N, Ht) teacher hidden states, projected per chunk by `weight` (and `bias`)."""
    weight: Tensor | None = None
    """(V, Ht) teacher output head."""
    bias: Tensor | None = None
    """(V,) teacher output bias, or None."""
    topk_logprobs: Tensor | None = None
    """(N, k) cached teacher log-probs at temperature 1."""
    topk_ids: Tensor | None = None
    """(N, k) vocabulary ids of `topk_logprobs`."""

    def chunk(self, rows: slice | Tensor) -> dict[str, Tensor]:
        """The `token_losses` teacher arguments for the given rows (a slice or an index tensor)."""
        if self.logits is not None:
            return {"teacher_logits": self.logits[rows]}
        if self.hidden is not None:
            with torch.no_grad():
                return {"teacher_logits": F.linear(self.hidden[rows], self.weight, self.bias)}  # (c, V)
        if self.topk_logprobs is not None:
            return {"teacher_topk_logprobs": self.topk_logprobs[rows], "teacher_topk_ids": self.topk_ids[rows]}
        return {}


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to sum in: float32 for 16-bit floats, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _accumulator(x: Tensor) -> Tensor:
    """A zero tensor shaped like `x` to sum gradients in (float32 for a 16-bit `x`)."""
    return torch.zeros(x.shape, dtype=_sum_dtype(x.dtype), device=x.device)


def _loss_and_grads(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    teacher: _Teacher,
    mix: LossMix,
    ignore_index: int,
    chunk_size: int,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor, list[Tensor | None]]:
    """The mean loss and the gradients (d hidden, d weight, d bias) that `need` asks for.

    hidden (N, H), weight (V, H), bias (V,) or None, labels (N,). Runs without autograd history
    (inside `Function.forward` or under no_grad); each chunk's own backward is a local
    `torch.autograd.grad` on its logits.
    """
    need_h, need_w, need_b = need
    need_any = any(need)
    valid = labels != ignore_index  # (N,)
    n_valid = int(valid.sum())
    # All valid: chunks are slices (views). Otherwise only the valid rows are ever projected.
    valid_rows = None if n_valid == labels.shape[0] else valid.nonzero().squeeze(1)  # (n_valid,)
    inv_count = 1.0 / max(n_valid, 1)

    loss_sum = torch.zeros((), dtype=_sum_dtype(weight.dtype), device=hidden.device)
    grad_h = torch.zeros_like(hidden) if need_h else None  # (N, H)
    grad_w = _accumulator(weight) if need_w else None  # (V, H), float32 for 16-bit weights
    grad_b = _accumulator(bias) if need_b else None  # (V,)

    for start in range(0, n_valid, chunk_size):
        stop = min(start + chunk_size, n_valid)
        rows = slice(start, stop) if valid_rows is None else valid_rows[start:stop]
        h = hidden[rows]  # (c, H)
        logits = F.linear(h, weight, bias)  # (c, V), in the head's dtype like the plain form
        z = at_least_float32(logits).detach().requires_grad_(need_any)  # (c, V), float32+
        with torch.enable_grad():
            per_token = token_losses(z, labels[rows], mix, ignore_index=ignore_index, **teacher.chunk(rows))
            chunk_sum = per_token.sum()
            (grad_z,) = torch.autograd.grad(chunk_sum, z) if need_any else (None,)
        loss_sum += chunk_sum.detach()
        del per_token, chunk_sum, z
        if need_any:
            # d(mean)/d logits: the chunk's sum scaled by the global count, in the matmul dtype.
            grad_logits = grad_z.mul_(inv_count).to(logits.dtype)  # (c, V)
            del grad_z
            if need_h:
                grad_h[rows] = grad_logits @ weight  # (c, H)
            if need_w:
                if grad_w.dtype == grad_logits.dtype:
                    grad_w.addmm_(grad_logits.t(), h)  # (V, c) @ (c, H), in place
                else:
                    # 16-bit head: the chunk's product in its dtype, summed in float32 so that many
                    # chunks do not round away each other's contributions.
                    grad_w += grad_logits.t() @ h
            if need_b:
                grad_b += grad_logits.sum(0)
            del grad_logits
        # Free this chunk's (c, V) tensors before the next chunk allocates its own.
        del logits, h

    grads = [grad_h, grad_w, grad_b]
    for i, like in ((1, weight), (2, bias)):
        if grads[i] is not None and grads[i].dtype != like.dtype:
            grads[i] = grads[i].to(like.dtype)
    return loss_sum * inv_count, grads


class _FusedLinearDistill(torch.autograd.Function):
    """Loss of `hidden @ weight.T + bias`; gradients are computed in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, teacher, mix, ignore_index, chunk_size):
        need = tuple(ctx.needs_input_grad[:3])
        loss, ctx.grads = _loss_and_grads(hidden, weight, bias, labels, teacher, mix, ignore_index, chunk_size, need)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError(
                "chunked_distill_loss can be differentiated once per call (its gradients are handed over "
                "in place); call it again to differentiate again."
            )
        # In place: a (V, H) copy of the head's gradient is exactly the memory this form saves.
        grads = [None if g is None else g.mul_(grad_loss) for g in grads]
        return (*grads, None, None, None, None, None)


def chunked_distill_loss(
    student_hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    teacher_logits: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_lm_head_weight: Tensor | None = None,
    teacher_topk_logprobs: Tensor | None = None,
    teacher_topk_ids: Tensor | None = None,
    ce_weight: float,
    fkl_weight: float,
    rkl_weight: float,
    temperature: float = 1.0,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    lm_head_bias: Tensor | None = None,
    teacher_lm_head_bias: Tensor | None = None,
    jsd_weight: float = 0.0,
    jsd_beta: float = 0.5,
    skew_fkl_weight: float = 0.0,
    skew_rkl_weight: float = 0.0,
    skew_alpha: float = 0.1,
) -> Tensor:
    """`distill_loss` / `distill_loss_topk` of `student_hidden @ lm_head_weight.T`, chunk by chunk.

    student_hidden: (N, H) or (B, T, H); lm_head_weight: (V, H); labels: (N,) or (B, T), aligned.
    Give the teacher as one of: `teacher_logits` (N, V) or (B, T, V); `teacher_hidden` (N, Ht) or
    (B, T, Ht) with `teacher_lm_head_weight` (V, Ht) (projected per chunk under no_grad, so the
    teacher's full logits never exist either); or the top-k cache `teacher_topk_logprobs` +
    `teacher_topk_ids` (N, k) (the approximations of `distill_loss_topk`). No teacher is needed
    when every teacher weight is 0 (a memory-light cross-entropy).

    Gradients reach `student_hidden`, `lm_head_weight` and `lm_head_bias` where they require grad
    (a frozen head accumulates nothing). Peak extra memory: a few (chunk_size, V) float32 tensors
    plus the (V, H) head gradient (float32 for a 16-bit head). Returns a 0-dim float32 tensor
    (float64 for float64 inputs).
    """
    mix = make_mix(
        ce_weight=ce_weight, fkl_weight=fkl_weight, rkl_weight=rkl_weight, temperature=temperature,
        jsd_weight=jsd_weight, jsd_beta=jsd_beta, skew_fkl_weight=skew_fkl_weight,
        skew_rkl_weight=skew_rkl_weight, skew_alpha=skew_alpha,
    )  # fmt: skip
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if lm_head_weight.dim() != 2:
        raise ValueError(f"lm_head_weight must be (V, H), got shape {tuple(lm_head_weight.shape)}.")
    vocab, width = lm_head_weight.shape
    if student_hidden.shape[-1] != width:
        raise ValueError(
            f"student hidden size {student_hidden.shape[-1]} does not match lm_head_weight {tuple(lm_head_weight.shape)} (V, H)."
        )
    hidden = student_hidden.reshape(-1, width)  # (N, H)
    n = hidden.shape[0]
    if tuple(labels.shape) != tuple(student_hidden.shape[:-1]):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match student hidden states of shape "
            f"{tuple(student_hidden.shape)}; labels must be aligned with the positions (shift them first)."
        )
    flat_labels = labels.reshape(-1)  # (N,)
    if lm_head_bias is not None and tuple(lm_head_bias.shape) != (vocab,):
        raise ValueError(f"lm_head_bias must be ({vocab},), got {tuple(lm_head_bias.shape)}.")
    teacher = _teacher_source(
        mix, n, vocab, teacher_logits, teacher_hidden, teacher_lm_head_weight, teacher_lm_head_bias,
        teacher_topk_logprobs, teacher_topk_ids,
    )  # fmt: skip

    wants_grad = any(t is not None and t.requires_grad for t in (hidden, lm_head_weight, lm_head_bias))
    if torch.is_grad_enabled() and wants_grad:
        return _FusedLinearDistill.apply(
            hidden, lm_head_weight, lm_head_bias, flat_labels, teacher, mix, ignore_index, chunk_size
        )
    with torch.no_grad():
        loss, _ = _loss_and_grads(
            hidden, lm_head_weight, lm_head_bias, flat_labels, teacher, mix, ignore_index, chunk_size,
            (False, False, False),
        )  # fmt: skip
    return loss


def _teacher_source(
    mix: LossMix,
    n: int,
    vocab: int,
    logits: Tensor | None,
    hidden: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    topk_logprobs: Tensor | None,
    topk_ids: Tensor | None,
) -> _Teacher:
    """Check that exactly one teacher form is given (when one is needed) and flatten it to N rows."""
    given = [
        name
        for name, present in (
            ("teacher_logits", logits is not None),
            ("teacher_hidden", hidden is not None or weight is not None),
            ("teacher_topk_logprobs", topk_logprobs is not None or topk_ids is not None),
        )
        if present
    ]
    if len(given) > 1:
        raise ValueError(f"give the teacher in one form only, got {' and '.join(given)}.")
    if not given:
        if mix.needs_teacher:
            raise ValueError(
                "a KL, JSD or skew weight is nonzero but no teacher was given: pass teacher_logits, "
                "teacher_hidden with teacher_lm_head_weight, or teacher_topk_logprobs with teacher_topk_ids."
            )
        return _Teacher()
    if logits is not None:
        if logits.shape[-1] != vocab or logits.numel() != n * vocab:
            raise ValueError(
                f"teacher logits of shape {tuple(logits.shape)} do not match {n} tokens x vocabulary {vocab}; "
                "slice both to the shared vocabulary first."
            )
        return _Teacher(logits=logits.detach().reshape(n, vocab))
    if hidden is not None:
        if weight is None:
            raise ValueError("teacher_hidden needs teacher_lm_head_weight (V, Ht).")
        if weight.dim() != 2 or weight.shape[0] != vocab or hidden.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"teacher_lm_head_weight {tuple(weight.shape)} must be (V={vocab}, Ht) with Ht the last dim "
                f"of teacher_hidden {tuple(hidden.shape)}."
            )
        flat = hidden.detach().reshape(-1, weight.shape[1])
        if flat.shape[0] != n:
            raise ValueError(f"teacher_hidden covers {flat.shape[0]} tokens, the student {n}.")
        return _Teacher(hidden=flat, weight=weight.detach(), bias=None if bias is None else bias.detach())
    if weight is not None:
        raise ValueError("teacher_lm_head_weight was given without teacher_hidden.")
    if topk_logprobs is None or topk_ids is None:
        raise ValueError("the top-k teacher needs both teacher_topk_logprobs and teacher_topk_ids.")
    lp, ids = check_topk(n, vocab, topk_logprobs.detach(), topk_ids)
    return _Teacher(topk_logprobs=lp, topk_ids=ids)
