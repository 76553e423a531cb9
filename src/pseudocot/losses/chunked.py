"""Chunked distillation loss fused with the output projection: full-vocabulary logits never exist.

A language model's last hidden states (N, H) times its head (V, H) give (N, V) logits; at V = 128k
and a few thousand tokens that tensor, and the half-dozen of its size that softmax, KL and their
backward keep, dominate training memory. `chunked_distill_loss` takes the hidden states instead and
walks over the tokens in chunks of `chunk_size`. For each chunk it makes the logits (c, V), the
teacher's logits or top-k cache for the same rows, the chunk's loss, and right away the gradients
with respect to the chunk's hidden states and the head; then it drops the chunk. Only the gradients,
(N, H) and (V, H), outlive the forward pass; backward scales them by the incoming gradient (the
"fused linear" approach of Liger-Kernel's fused linear cross-entropy, written afresh here).

The value and gradients are those of `distill_loss` (or `distill_loss_topk`) on
`hidden @ weight.T` (+ bias, then the head's logit scaling and soft-capping where the model has them:
Cohere, Granite, Gemma 2/3), and the mean divides by the number of valid tokens in the whole batch,
not per chunk. Ignored tokens are skipped before projecting, so padding costs nothing. A chunk's
gradient with respect to its logits comes one of two ways, with the same numbers:

- CE, forward KL and reverse KL against a full teacher (the common mix): written out in closed form
  and computed mostly in place, so three to four (c, V) tensors are alive at once;
- anything else (JSD, skew KL, a top-k teacher): `terms.token_losses` on the chunk, differentiated
  by a local `torch.autograd.grad`; about twice the memory per chunk.

The matmul count equals the plain form's (forward projection, then the hidden-state and head
gradients); the chunked form trades one big kernel call for N / chunk_size smaller ones.

Limits: backward can run once per forward (the stored gradients are scaled in place and handed
over); no double backward. The teacher gets no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from pseudocot.losses.terms import (
    LossMix,
    at_least_float32,
    check_topk,
    make_mix,
    teacher_logprobs,
    token_losses,
)

CHUNK_LOGITS = 2**25
"""Default chunk size in logits: a chunk of `CHUNK_LOGITS // V` tokens makes (c, V) float32 tensors of
128 MiB (256 tokens at V = 128,256; 1,048 at V = 32,000). Picked by `benchmarks/kd_loss.py`, see
BENCHMARKS.md ("Distillation loss: chunked vs plain")."""


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk for a vocabulary: `CHUNK_LOGITS // vocab_size`, a multiple of 8 when >= 8."""
    tokens = max(1, CHUNK_LOGITS // vocab_size)
    return tokens - tokens % 8 if tokens >= 8 else tokens


@dataclass(frozen=True)
class _Head:
    """What a model's head does after the projection: `softcap * tanh(scale * z / softcap)`
    (Cohere and Granite scale, Gemma 2/3 soft-cap). The projection z itself is `hidden @ W.T + b`."""

    scale: float = 1.0
    softcap: float | None = None

    @staticmethod
    def of(scale: float, softcap: float | None) -> _Head | None:
        """None for the plain head (no work, no extra memory)."""
        if softcap is not None and softcap <= 0:
            raise ValueError(f"a logit soft-cap must be positive, got {softcap}.")
        return None if scale == 1.0 and softcap is None else _Head(float(scale), softcap)

    def apply(self, z: Tensor, inplace: bool = True) -> Tensor:
        """The model's logits from the projection (c, V); in place unless autograd must see it."""
        if not inplace:
            z = z * self.scale if self.scale != 1.0 else z
            return torch.tanh(z / self.softcap) * self.softcap if self.softcap is not None else z
        z = z.mul_(self.scale) if self.scale != 1.0 else z
        if self.softcap is not None:
            z = z.div_(self.softcap).tanh_().mul_(self.softcap)
        return z

    def grad_factor(self, logits: Tensor) -> Tensor | float:
        """d logits / d z, elementwise, given the logits: scale, times 1 - tanh^2 under a soft-cap."""
        if self.softcap is None:
            return self.scale
        t = logits / self.softcap  # (c, V): tanh of the capped argument
        return t.mul_(t).neg_().add_(1.0).mul_(self.scale)


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
    head: _Head | None = None
    """The teacher head's scaling and soft-capping (None: plain logits)."""
    topk_logprobs: Tensor | None = None
    """(N, k) cached teacher log-probs at temperature 1."""
    topk_ids: Tensor | None = None
    """(N, k) vocabulary ids of `topk_logprobs`."""

    @property
    def is_full(self) -> bool:
        """Whether the teacher gives full-vocabulary logits (not a top-k cache, not absent)."""
        return self.logits is not None or self.hidden is not None

    def chunk_logits(self, rows: slice | Tensor) -> Tensor:
        """The teacher's logits (c, V) of the given rows (a slice or an index tensor)."""
        if self.logits is not None:
            return self.logits[rows]
        with torch.no_grad():
            z = F.linear(self.hidden[rows], self.weight, self.bias)
            return z if self.head is None else self.head.apply(z)

    def chunk(self, rows: slice | Tensor) -> dict[str, Tensor]:
        """The `token_losses` teacher arguments of the given rows."""
        if self.is_full:
            return {"teacher_logits": self.chunk_logits(rows)}
        if self.topk_logprobs is not None:
            return {"teacher_topk_logprobs": self.topk_logprobs[rows], "teacher_topk_ids": self.topk_ids[rows]}
        return {}


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to sum in: float32 for 16-bit floats, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _accumulator(x: Tensor) -> Tensor:
    """A zero tensor shaped like `x` to sum gradients in (float32 for a 16-bit `x`)."""
    return torch.zeros(x.shape, dtype=_sum_dtype(x.dtype), device=x.device)


# --------------------------------------------------------------------------------------------
# One chunk: its loss sum and d(sum)/d(logits). Two ways, same numbers.
# --------------------------------------------------------------------------------------------


def _has_fast_path(mix: LossMix, teacher: _Teacher) -> bool:
    """CE, forward and reverse KL against a full teacher (or CE alone) have a closed-form gradient."""
    others = mix.jsd or mix.skew_fkl or mix.skew_rkl
    return not others and (teacher.is_full or not mix.needs_teacher)


def _rowdot(a: Tensor, b: Tensor, scratch: Tensor) -> Tensor:
    """Σ_v a ⊙ b per row: (c, V), (c, V) -> (c,), a block of rows at a time through `scratch` (k, V).

    A batched matmul would need no temporary at all, but its float32 accumulation over 128k terms
    drifts by ~1e-5 from `sum`, the reduction the plain form uses. One scratch buffer reused for
    every block and chunk, rather than a fresh product each time: mid-sized temporaries (under
    glibc's 32 MiB mmap threshold) stay resident after they are freed and fragment the heap, which
    added 20% to the measured peak.
    """
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    step = scratch.shape[0]
    for i in range(0, a.shape[0], step):
        block = scratch[: min(step, a.shape[0] - i)]
        torch.mul(a[i : i + step], b[i : i + step], out=block)
        torch.sum(block, dim=-1, out=out[i : i + step])
    return out


def _scratch_for(chunk_len: int, vocab: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The `_rowdot` buffer of a quarter of a chunk's rows (c / 4, V), allocated once per call."""
    return torch.empty(-(-chunk_len // 4), vocab, dtype=dtype, device=device)


def _student_logits(h: Tensor, weight: Tensor, bias: Tensor | None, head: _Head | None, need_grad: bool
                    ) -> tuple[Tensor, Tensor | float | None]:
    """The student's logits of a chunk (c, V), in float32 at least, and d logits / d projection
    (None for a plain head)."""
    z = at_least_float32(F.linear(h, weight, bias))  # (c, V)
    if head is None:
        return z, None
    z = head.apply(z)
    return z, head.grad_factor(z) if need_grad else None


def _chunk_closed_form(
    h, weight, bias, labels, rows, teacher: _Teacher, mix: LossMix, need_grad: bool, scratch: Tensor | None,
    head: _Head | None = None,
):
    """CE + forward KL + reverse KL of one chunk with the gradient written out, mostly in place.

    With z the student logits, q = softmax(z / τ), p = softmax(t / τ) and d = log q − log p:
      d CE / dz            = softmax(z) − onehot(y)
      d τ² KL(p ‖ q) / dz  = τ (q − p)
      d τ² KL(q ‖ p) / dz  = τ q ⊙ (d − KL(q ‖ p))
    Three (c, V) tensors are alive at once, plus a quarter of one while the KL sums are taken and
    one more for cross-entropy at τ != 1, against about eight for autograd on the same expressions:
    a chunk can be twice as long for the same memory.
    """
    tau = mix.temperature
    idx = torch.arange(labels.shape[0], device=labels.device)  # (c,)
    # The teacher first, so that its logits are gone before the student's exist.
    log_p = teacher_logprobs(teacher.chunk_logits(rows), tau) if mix.needs_teacher else None  # (c, V)
    z, factor = _student_logits(h, weight, bias, head, need_grad)  # (c, V), ours to overwrite
    total = z.new_zeros(labels.shape[0])  # (c,)
    grad = None  # (c, V)
    # Cross-entropy at τ = 1 on its own, unless the τ = 1 student log-probs come for free below.
    if mix.ce and (tau != 1 or log_p is None):
        log_s = F.log_softmax(z, dim=-1)  # (c, V)
        total -= mix.ce * log_s[idx, labels]
        if need_grad:
            grad = log_s.exp_().mul_(mix.ce)
            grad[idx, labels] -= mix.ce
        del log_s
    if log_p is None:
        return total.sum(), _through_head(grad, factor)

    log_q = F.log_softmax(z.div_(tau) if tau != 1 else z, dim=-1)  # (c, V)
    del z
    if mix.ce and tau == 1:
        total -= mix.ce * log_q[idx, labels]
    d = log_q - log_p  # (c, V)
    q, p = log_q.exp_(), log_p.exp_()  # in place: the log-probs are not needed any more
    del log_q, log_p
    rkl = _rowdot(q, d, scratch)  # (c,)
    total += tau**2 * (mix.fkl * -_rowdot(p, d, scratch) + mix.rkl * rkl)
    if not need_grad:
        return total.sum(), None

    # g = τ w_r q ⊙ (d − rkl) + (τ w_f + w_ce) q − τ w_f p (+ the CE terms), built in d's storage.
    g = d
    ce_on_q = mix.ce if grad is None else 0.0  # τ = 1: softmax(z) is q
    if mix.rkl:
        coef = (tau * mix.fkl + ce_on_q) - tau * mix.rkl * rkl  # (c,)
        g.mul_(tau * mix.rkl).add_(coef.unsqueeze(-1)).mul_(q)
    else:
        torch.mul(q, tau * mix.fkl + ce_on_q, out=g)
    if mix.fkl:
        g.sub_(p, alpha=tau * mix.fkl)
    if grad is not None:
        g += grad  # cross-entropy at τ != 1, one-hot included
    elif ce_on_q:
        g[idx, labels] -= ce_on_q
    return total.sum(), _through_head(g, factor)


def _through_head(grad: Tensor | None, factor: Tensor | float | None) -> Tensor | None:
    """d loss / d projection from d loss / d logits (chain rule through scaling and soft-capping)."""
    if grad is None or factor is None:
        return grad
    return grad.mul_(factor)


_NO_IGNORE = torch.iinfo(torch.int64).min
"""An ignore_index no label equals (chunks hold valid tokens only)."""


def _chunk_autograd(
    h, weight, bias, labels, rows, teacher: _Teacher, mix: LossMix, need_grad: bool, scratch: Tensor | None,
    head: _Head | None = None,
):
    """Any mix: `token_losses` on the chunk's logits, differentiated locally by autograd.

    Same arguments as `_chunk_closed_form`; `scratch` is unused.
    """
    z = at_least_float32(F.linear(h, weight, bias)).requires_grad_(need_grad)  # (c, V)
    with torch.enable_grad():
        # The head's scaling and soft-capping out of place, so autograd sees them.
        logits = z if head is None else head.apply(z, inplace=False)
        # Every label of a chunk is valid: an ignore_index below every id masks nothing.
        chunk_sum = token_losses(logits, labels, mix, ignore_index=_NO_IGNORE, **teacher.chunk(rows)).sum()
        (grad,) = torch.autograd.grad(chunk_sum, z) if need_grad else (None,)
    return chunk_sum.detach(), grad


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
    head: _Head | None = None,
) -> tuple[Tensor, list[Tensor | None]]:
    """The mean loss and the gradients (d hidden, d weight, d bias) that `need` asks for.

    hidden (N, H), weight (V, H), bias (V,) or None, labels (N,); `head` the student's scaling and
    soft-capping after the projection. Runs without autograd history (inside `Function.forward` or
    under no_grad).
    """
    need_h, need_w, need_b = need
    # With every weight 0 the loss is a constant 0: the gradients stay zeros.
    need_any = any(need) and (mix.ce != 0 or mix.needs_teacher)
    valid = labels != ignore_index  # (N,)
    n_valid = int(valid.sum())
    scratch = None
    if _has_fast_path(mix, teacher):
        chunk_fn = _chunk_closed_form
        if mix.needs_teacher and n_valid:
            dtype = _sum_dtype(weight.dtype)
            scratch = _scratch_for(min(chunk_size, n_valid), weight.shape[0], dtype, hidden.device)
    else:
        chunk_fn = _chunk_autograd
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
        chunk_sum, grad_z = chunk_fn(h, weight, bias, labels[rows], rows, teacher, mix, need_any, scratch, head)
        loss_sum += chunk_sum
        if need_any:
            # d(mean)/d projection: the chunk's sum scaled by the global count, in the matmul dtype.
            grad_logits = grad_z.mul_(inv_count).to(weight.dtype)  # (c, V)
            del grad_z  # with a 16-bit head, frees the float32 copy before the matmuls
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
            # Free this chunk's (c, V) gradient before the next chunk allocates its own.
            del grad_logits

    grads = [grad_h, grad_w, grad_b]
    for i, like in ((1, weight), (2, bias)):
        if grads[i] is not None and grads[i].dtype != like.dtype:
            grads[i] = grads[i].to(like.dtype)
    return loss_sum * inv_count, grads


class _FusedLinearDistill(torch.autograd.Function):
    """Loss of `head(hidden @ weight.T + bias)`; gradients are computed in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, teacher, mix, ignore_index, chunk_size, head):
        need = tuple(ctx.needs_input_grad[:3])
        loss, ctx.grads = _loss_and_grads(hidden, weight, bias, labels, teacher, mix, ignore_index, chunk_size, need,
                                          head)
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
        return (*grads, None, None, None, None, None, None)


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
    chunk_size: int | None = None,
    lm_head_bias: Tensor | None = None,
    teacher_lm_head_bias: Tensor | None = None,
    jsd_weight: float = 0.0,
    jsd_beta: float = 0.5,
    skew_fkl_weight: float = 0.0,
    skew_rkl_weight: float = 0.0,
    skew_alpha: float = 0.1,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
    teacher_logit_scale: float = 1.0,
    teacher_logit_softcap: float | None = None,
) -> Tensor:
    """`distill_loss` / `distill_loss_topk` of the logits `student_hidden @ lm_head_weight.T`, chunk by chunk.

    student_hidden: (N, H) or (B, T, H); lm_head_weight: (V, H); labels: (N,) or (B, T), aligned.
    Give the teacher as one of: `teacher_logits` (N, V) or (B, T, V); `teacher_hidden` (N, Ht) or
    (B, T, Ht) with `teacher_lm_head_weight` (V, Ht) (projected per chunk under no_grad, so the
    teacher's full logits never exist either); or the top-k cache `teacher_topk_logprobs` +
    `teacher_topk_ids` (N, k) (the approximations of `distill_loss_topk`). No teacher is needed
    when every teacher weight is 0 (a memory-light cross-entropy).

    The logits are the model's own when its head does more than project: `lm_head_bias`, then
    `logit_scale` (Cohere, Granite), then `logit_softcap` c, `c * tanh(x / c)` (Gemma 2/3); the same
    `teacher_*` arguments for a teacher given as hidden states (`pseudocot.models.heads` reads them off
    a model).

    Gradients reach `student_hidden`, `lm_head_weight` and `lm_head_bias` where they require grad
    (a frozen head accumulates nothing). `chunk_size` is in tokens; None picks
    `default_chunk_size(V)` (256 at V = 128,256). Peak extra memory: a few (chunk_size, V) float32
    tensors plus the (V, H) head gradient (float32 for a 16-bit head). Returns a 0-dim float32
    tensor (float64 for float64 inputs).
    """
    mix = make_mix(
        ce_weight=ce_weight, fkl_weight=fkl_weight, rkl_weight=rkl_weight, temperature=temperature,
        jsd_weight=jsd_weight, jsd_beta=jsd_beta, skew_fkl_weight=skew_fkl_weight,
        skew_rkl_weight=skew_rkl_weight, skew_alpha=skew_alpha,
    )  # fmt: skip
    if lm_head_weight.dim() != 2:
        raise ValueError(f"lm_head_weight must be (V, H), got shape {tuple(lm_head_weight.shape)}.")
    vocab, width = lm_head_weight.shape
    chunk_size = default_chunk_size(vocab) if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if student_hidden.shape[-1] != width:
        raise ValueError(
            f"student hidden size {student_hidden.shape[-1]} does not match lm_head_weight "
            f"{tuple(lm_head_weight.shape)} (V, H)."
        )
    if student_hidden.dtype != lm_head_weight.dtype:
        raise ValueError(
            f"student_hidden is {student_hidden.dtype} but lm_head_weight is {lm_head_weight.dtype}; "
            "cast one to the other."
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
    head = _Head.of(logit_scale, logit_softcap)
    if teacher.hidden is not None:
        teacher.head = _Head.of(teacher_logit_scale, teacher_logit_softcap)
    elif teacher_logit_scale != 1.0 or teacher_logit_softcap is not None:
        raise ValueError("teacher_logit_scale and teacher_logit_softcap apply to a teacher given as teacher_hidden; "
                         "teacher_logits are already the model's logits.")

    wants_grad = any(t is not None and t.requires_grad for t in (hidden, lm_head_weight, lm_head_bias))
    if torch.is_grad_enabled() and wants_grad:
        return _FusedLinearDistill.apply(
            hidden, lm_head_weight, lm_head_bias, flat_labels, teacher, mix, ignore_index, chunk_size, head
        )
    with torch.no_grad():
        loss, _ = _loss_and_grads(
            hidden, lm_head_weight, lm_head_bias, flat_labels, teacher, mix, ignore_index, chunk_size,
            (False, False, False), head,
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
        if hidden.dtype != weight.dtype:
            raise ValueError(
                f"teacher_hidden is {hidden.dtype} but teacher_lm_head_weight is {weight.dtype}; cast one to the other."
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
