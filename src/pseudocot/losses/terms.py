"""Distillation loss terms on full logits: cross-entropy, forward/reverse KL, generalised JSD, skew KL.

Every public function here is pure: logits and labels in, a scalar out. Shapes are `(B, T, V)` or
`(N, V)` for logits and `(B, T)` or `(N,)` for labels. Labels are already aligned with the logits
(position i's label is the target of the logits at i; the caller shifts). Each term is a per-token
value averaged over the tokens whose label is not `ignore_index`; with no such token the loss is 0.

Conventions, all of them deliberate:

- p is the teacher, q the student. Forward KL is KL(p‖q) = Σ p (log p − log q) (mean-seeking),
  reverse KL is KL(q‖p) = Σ q (log q − log p) (mode-seeking).
- Teacher terms are computed at temperature τ, softmax(logits / τ) on both sides, and multiplied by
  τ² (Hinton et al., 2015): the gradient of a softened KL shrinks like 1/τ², so the factor keeps the
  balance between the KL terms and cross-entropy roughly independent of τ. TRL's GKD and torchtune's
  KD losses do not apply it; divide by τ² to compare with them.
- Cross-entropy is always at temperature 1 on the raw student logits.
- Softmax and log-softmax run in float32 (float64 stays float64), whatever the input dtype.
- The teacher never gets a gradient. Teacher probabilities of exactly 0 (logits of −inf, e.g. a
  padded vocabulary) count as 0 · log 0 = 0.
- Ignored positions never reach the value, whatever they hold; their gradient is exactly 0 as long
  as their logits are finite (a NaN there would leak into the backward pass through 0 · NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

TEACHER_TERMS = ("fkl", "rkl", "jsd", "skew_fkl", "skew_rkl")
"""Names of the `LossMix` weights of the terms that need a teacher."""


@dataclass(frozen=True)
class LossMix:
    """The weighted terms of a distillation loss and their parameters (all weights 0: a zero loss)."""

    ce: float = 0.0
    """Weight of cross-entropy against the labels (temperature 1, raw student logits)."""
    fkl: float = 0.0
    """Weight of forward KL(teacher ‖ student) at `temperature`, times τ²."""
    rkl: float = 0.0
    """Weight of reverse KL(student ‖ teacher) at `temperature`, times τ²."""
    jsd: float = 0.0
    """Weight of TRL's generalised Jensen-Shannon divergence at `temperature`, times τ²."""
    jsd_beta: float = 0.5
    """JSD interpolation in [0, 1]: 0 is forward KL, 1 is reverse KL (TRL's convention)."""
    skew_fkl: float = 0.0
    """Weight of skew forward KL(p ‖ α p + (1 − α) q) at `temperature`, times τ²."""
    skew_rkl: float = 0.0
    """Weight of skew reverse KL(q ‖ α q + (1 − α) p) at `temperature`, times τ²."""
    skew_alpha: float = 0.1
    """Skew α in [0, 1]: 0 gives the plain KL, 1 gives 0."""
    temperature: float = 1.0
    """Softmax temperature τ of the teacher terms (> 0)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"loss setting {f.name}={value!r} must be a finite number.")
        weights = {name: getattr(self, name) for name in ("ce", *TEACHER_TERMS)}
        negative = [f"{name}_weight={w}" for name, w in weights.items() if w < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {', '.join(negative)}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not 0 <= self.jsd_beta <= 1:
            raise ValueError(f"jsd_beta must be in [0, 1], got {self.jsd_beta}.")
        if not 0 <= self.skew_alpha <= 1:
            raise ValueError(f"skew_alpha must be in [0, 1], got {self.skew_alpha}.")

    @property
    def needs_teacher(self) -> bool:
        """Whether any term with a nonzero weight compares against the teacher."""
        return any(getattr(self, name) != 0 for name in TEACHER_TERMS)


def make_mix(
    *,
    ce_weight: float,
    fkl_weight: float,
    rkl_weight: float,
    temperature: float = 1.0,
    jsd_weight: float = 0.0,
    jsd_beta: float = 0.5,
    skew_fkl_weight: float = 0.0,
    skew_rkl_weight: float = 0.0,
    skew_alpha: float = 0.1,
) -> LossMix:
    """The `LossMix` of the keyword arguments that every `*distill_loss` function takes."""
    return LossMix(
        ce=ce_weight,
        fkl=fkl_weight,
        rkl=rkl_weight,
        jsd=jsd_weight,
        jsd_beta=jsd_beta,
        skew_fkl=skew_fkl_weight,
        skew_rkl=skew_rkl_weight,
        skew_alpha=skew_alpha,
        temperature=temperature,
    )


# --------------------------------------------------------------------------------------------
# Divergences between two distributions given as log-probabilities over the last dimension.
# --------------------------------------------------------------------------------------------


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a ‖ b) = Σ a (log a − log b) over the last dim: (..., V) -> (...)."""
    # The difference form keeps precision when a ≈ b (two separate sums would cancel).
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w a + (1 − w) b) for 0 < w < 1, in log space so that tiny probabilities stay exact."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _jsd(log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
    """TRL's generalised JSD: β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = β p + (1 − β) q.

    At β = 0 and β = 1 TRL switches to forward KL(p ‖ q) and reverse KL(q ‖ p); the mixture formula
    itself tends to 0 at both ends, so the function is discontinuous there, as in TRL.
    """
    if beta == 0:
        return _kl(log_p, log_q)
    if beta == 1:
        return _kl(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def _skew(log_a: Tensor, log_b: Tensor, alpha: float) -> Tensor:
    """Skew KL(a ‖ α a + (1 − α) b): α = 0 is KL(a ‖ b), α = 1 is 0."""
    if alpha == 0:
        return _kl(log_a, log_b)
    if alpha == 1:
        return torch.zeros(log_a.shape[:-1], dtype=log_a.dtype, device=log_a.device)
    return _kl(log_a, _log_mixture(log_a, log_b, alpha))


# --------------------------------------------------------------------------------------------
# Per-token losses: the one place where the terms are computed. Everything else reduces them.
# --------------------------------------------------------------------------------------------


def at_least_float32(x: Tensor) -> Tensor:
    """x in at least float32 (float64 stays float64): softmax in bf16/fp16 loses too much."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def teacher_logprobs(logits: Tensor, temperature: float) -> Tensor:
    """Teacher log-probs at τ, no gradient, with log 0 = −inf replaced by the most negative float.

    The replacement makes 0 · (log 0 − x) come out as 0 instead of NaN, without an extra mask pass.
    """
    with torch.no_grad():
        x = at_least_float32(logits.detach())
        log_p = F.log_softmax(x if temperature == 1 else x / temperature, dim=-1)
        return log_p.clamp_min_(torch.finfo(log_p.dtype).min)


def token_losses(
    student_logits: Tensor,
    labels: Tensor,
    mix: LossMix,
    *,
    teacher_logits: Tensor | None = None,
    teacher_topk_logprobs: Tensor | None = None,
    teacher_topk_ids: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """The weighted loss of every token: (N, V) logits, (N,) labels -> (N,), 0 where ignored.

    Give the teacher either as full logits (N, V) or as its top-k cache (N, k) + (N, k); see
    `distill_loss_topk` for how the top-k form approximates the terms. The result is float32 (float64
    for float64 student logits).
    """
    s = at_least_float32(student_logits)  # (N, V)
    valid = labels != ignore_index  # (N,)
    total = torch.zeros(s.shape[:-1], dtype=s.dtype, device=s.device)
    tau = mix.temperature

    # Student log-probs at τ; also the cross-entropy's log-softmax when τ = 1.
    log_q = F.log_softmax(s if tau == 1 else s / tau, dim=-1) if mix.needs_teacher else None
    if mix.ce:
        # Ignored positions may hold any label (-100, or an id out of range): gather at 0 instead.
        target = torch.where(valid, labels, 0).unsqueeze(-1)  # (N, 1)
        if log_q is not None and tau == 1:
            ce = -log_q.gather(-1, target).squeeze(-1)
        else:
            # logsumexp keeps no (N, V) tensor for backward, unlike log_softmax.
            ce = torch.logsumexp(s, dim=-1) - s.gather(-1, target).squeeze(-1)
        total = total + mix.ce * ce

    if mix.needs_teacher:
        if teacher_logits is not None:
            log_p = teacher_logprobs(teacher_logits, tau)  # (N, V)
            # Full vocabulary: every term compares the same two distributions.
            fkl_pair = other_pair = (log_p, log_q)
        elif teacher_topk_logprobs is not None and teacher_topk_ids is not None:
            ids = teacher_topk_ids.long()  # (N, k)
            # The teacher's top-k probs renormalised over the k at τ.
            log_p = teacher_logprobs(teacher_topk_logprobs, tau)  # (N, k)
            # Forward KL: the student's full-vocabulary log-probs at the k ids (they sum to < 1).
            # Every other term: the student restricted to the k ids and renormalised there.
            z_k = s.gather(-1, ids)  # (N, k)
            log_q_k = F.log_softmax(z_k if tau == 1 else z_k / tau, dim=-1)
            fkl_pair = (log_p, log_q.gather(-1, ids))
            other_pair = (log_p, log_q_k)
        else:
            raise ValueError("a teacher term has a nonzero weight but no teacher was given.")

        teacher_total = torch.zeros_like(total)
        if mix.fkl:
            teacher_total = teacher_total + mix.fkl * _kl(*fkl_pair)
        if mix.rkl:
            log_p_o, log_q_o = other_pair
            teacher_total = teacher_total + mix.rkl * _kl(log_q_o, log_p_o)
        if mix.jsd:
            teacher_total = teacher_total + mix.jsd * _jsd(*other_pair, mix.jsd_beta)
        if mix.skew_fkl:
            teacher_total = teacher_total + mix.skew_fkl * _skew(*other_pair, mix.skew_alpha)
        if mix.skew_rkl:
            log_p_o, log_q_o = other_pair
            teacher_total = teacher_total + mix.skew_rkl * _skew(log_q_o, log_p_o, mix.skew_alpha)
        total = total + tau**2 * teacher_total

    # where, not a multiply: a NaN at an ignored position must not leak into the sum.
    return torch.where(valid, total, 0.0)


def _mean_over_valid(per_token: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Sum of per-token losses / number of valid tokens (1 if there are none, so 0 not NaN)."""
    count = (labels != ignore_index).sum().clamp_min(1)
    return per_token.sum() / count


def _flatten(student_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T, V) + (B, T) -> (N, V) + (N,), checking that they agree."""
    if student_logits.dim() < 2:
        raise ValueError(f"student logits must be (N, V) or (B, T, V), got shape {tuple(student_logits.shape)}.")
    if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match student logits of shape "
            f"{tuple(student_logits.shape)}; labels must be aligned with the logits (shift them first)."
        )
    return student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1)


def _check_teacher_logits(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            f"teacher logits of shape {tuple(teacher_logits.shape)} do not match student logits of shape "
            f"{tuple(student_logits.shape)}; slice both to the shared vocabulary first."
        )
    return teacher_logits.reshape(-1, teacher_logits.shape[-1])


def check_topk(n_tokens: int, vocab_size: int, topk_logprobs: Tensor, topk_ids: Tensor) -> tuple[Tensor, Tensor]:
    """The top-k cache flattened to (N, k) + (N, k), after checking it against N tokens."""
    k = topk_logprobs.shape[-1]
    if tuple(topk_logprobs.shape) != tuple(topk_ids.shape):
        raise ValueError(
            f"teacher top-k log-probs {tuple(topk_logprobs.shape)} and ids {tuple(topk_ids.shape)} differ in shape."
        )
    flat_lp, flat_ids = topk_logprobs.reshape(-1, k), topk_ids.reshape(-1, k)
    if flat_lp.shape[0] != n_tokens:
        raise ValueError(f"the teacher top-k cache covers {flat_lp.shape[0]} tokens, the student {n_tokens}.")
    if not 1 <= k <= vocab_size:
        raise ValueError(f"top-k size k={k} must be between 1 and the vocabulary size {vocab_size}.")
    if topk_ids.is_floating_point():
        raise ValueError("teacher top-k ids must be an integer tensor.")
    return flat_lp, flat_ids


# --------------------------------------------------------------------------------------------
# Public losses.
# --------------------------------------------------------------------------------------------


def cross_entropy(student_logits: Tensor, labels: Tensor, *, ignore_index: int = -100) -> Tensor:
    """Mean token cross-entropy over valid labels; equals `F.cross_entropy(..., ignore_index=...)`."""
    s, y = _flatten(student_logits, labels)
    return _mean_over_valid(token_losses(s, y, LossMix(ce=1.0), ignore_index=ignore_index), y, ignore_index)


def _one_term(student_logits, teacher_logits, labels, mix: LossMix, ignore_index: int) -> Tensor:
    s, y = _flatten(student_logits, labels)
    t = _check_teacher_logits(student_logits, teacher_logits)
    return _mean_over_valid(token_losses(s, y, mix, teacher_logits=t, ignore_index=ignore_index), y, ignore_index)


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """τ² · mean over valid tokens of KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s), both at τ."""
    return _one_term(student_logits, teacher_logits, labels, LossMix(fkl=1.0, temperature=temperature), ignore_index)


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """τ² · mean over valid tokens of KL(p_s ‖ p_t) = Σ p_s (log p_s − log p_t), both at τ."""
    return _one_term(student_logits, teacher_logits, labels, LossMix(rkl=1.0, temperature=temperature), ignore_index)


def jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Generalised Jensen-Shannon divergence, the definition of TRL's `GKDTrainer.generalized_jsd_loss`.

    With p = softmax(teacher / τ), q = softmax(student / τ) and m = β p + (1 − β) q:
    JSD_β = β KL(p ‖ m) + (1 − β) KL(q ‖ m), averaged over valid tokens. As in TRL, β = 0 is forward
    KL(p ‖ q) and β = 1 is reverse KL(q ‖ p) (special cases: the formula alone tends to 0 at both
    ends). The one difference from TRL (trl.experimental.gkd, TRL 1.x): the result is multiplied by
    τ² like every teacher term here, so `jsd(...) / τ**2` equals TRL's value with reduction
    "batchmean" and the same labels.
    """
    mix = LossMix(jsd=1.0, jsd_beta=beta, temperature=temperature)
    return _one_term(student_logits, teacher_logits, labels, mix, ignore_index)


def skew_fkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Skew forward KL (DistiLLM): τ² · mean over valid tokens of KL(p ‖ α p + (1 − α) q), at τ.

    α = 0 is forward KL; a small α keeps the loss finite where the student puts ~0 mass.
    """
    mix = LossMix(skew_fkl=1.0, skew_alpha=alpha, temperature=temperature)
    return _one_term(student_logits, teacher_logits, labels, mix, ignore_index)


def skew_rkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Skew reverse KL (DistiLLM): τ² · mean over valid tokens of KL(q ‖ α q + (1 − α) p), at τ.

    α = 0 is reverse KL.
    """
    mix = LossMix(skew_rkl=1.0, skew_alpha=alpha, temperature=temperature)
    return _one_term(student_logits, teacher_logits, labels, mix, ignore_index)


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    *,
    ce_weight: float,
    fkl_weight: float,
    rkl_weight: float,
    temperature: float = 1.0,
    ignore_index: int = -100,
    jsd_weight: float = 0.0,
    jsd_beta: float = 0.5,
    skew_fkl_weight: float = 0.0,
    skew_rkl_weight: float = 0.0,
    skew_alpha: float = 0.1,
) -> Tensor:
    """Weighted distillation loss on full logits, averaged over tokens whose label != ignore_index.

        ce_weight · CE(student, labels)                      (τ = 1, raw logits)
      + τ² · [fkl_weight · KL(p_t ‖ p_s) + rkl_weight · KL(p_s ‖ p_t)
              + jsd_weight · JSD_β + skew_fkl_weight · SKL_α(p_t, p_s) + skew_rkl_weight · SKL_α(p_s, p_t)]

    student_logits and teacher_logits: (B, T, V) or (N, V); labels: (B, T) or (N,), aligned with the
    logits. `teacher_logits` may be None when every teacher weight is 0. Returns a 0-dim float32
    tensor (float64 for float64 logits); only the student gets a gradient.
    """
    mix = make_mix(
        ce_weight=ce_weight, fkl_weight=fkl_weight, rkl_weight=rkl_weight, temperature=temperature,
        jsd_weight=jsd_weight, jsd_beta=jsd_beta, skew_fkl_weight=skew_fkl_weight,
        skew_rkl_weight=skew_rkl_weight, skew_alpha=skew_alpha,
    )  # fmt: skip
    s, y = _flatten(student_logits, labels)
    if mix.needs_teacher and teacher_logits is None:
        raise ValueError("distill_loss needs teacher_logits when a KL, JSD or skew weight is nonzero.")
    t = _check_teacher_logits(student_logits, teacher_logits) if mix.needs_teacher else None
    return _mean_over_valid(token_losses(s, y, mix, teacher_logits=t, ignore_index=ignore_index), y, ignore_index)


def distill_loss_topk(
    student_logits: Tensor,
    teacher_topk_logprobs: Tensor,
    teacher_topk_ids: Tensor,
    labels: Tensor,
    *,
    ce_weight: float,
    fkl_weight: float,
    rkl_weight: float,
    temperature: float = 1.0,
    ignore_index: int = -100,
    jsd_weight: float = 0.0,
    jsd_beta: float = 0.5,
    skew_fkl_weight: float = 0.0,
    skew_rkl_weight: float = 0.0,
    skew_alpha: float = 0.1,
) -> Tensor:
    """`distill_loss` against a cached teacher given as its top-k log-probs (N, k) and ids (N, k).

    The cache holds log-probs at temperature 1 from the teacher's full distribution (see
    `topk_logprobs`). The teacher terms are approximations on the k-token support S:

    - teacher: p = softmax(logp_S / τ), i.e. the top-k probs at τ renormalised over S (the mass
      outside S is dropped);
    - forward KL: Σ_S p (log p − log q_S) with log q_S the student's log-probs at S taken from its
      FULL-vocabulary log-softmax at τ. They sum to < 1, so this upper-bounds the KL between the two
      distributions renormalised over S, and still pushes the student's mass off the tail;
    - reverse KL, JSD and skew: the student restricted to S and renormalised there, against p. The
      student's tail is invisible to them.

    With k = V (any order of ids) every term equals the full form. Cross-entropy uses the full student
    logits as in `distill_loss`.
    """
    mix = make_mix(
        ce_weight=ce_weight, fkl_weight=fkl_weight, rkl_weight=rkl_weight, temperature=temperature,
        jsd_weight=jsd_weight, jsd_beta=jsd_beta, skew_fkl_weight=skew_fkl_weight,
        skew_rkl_weight=skew_rkl_weight, skew_alpha=skew_alpha,
    )  # fmt: skip
    s, y = _flatten(student_logits, labels)
    lp, ids = check_topk(s.shape[0], s.shape[-1], teacher_topk_logprobs, teacher_topk_ids)
    per_token = token_losses(s, y, mix, teacher_topk_logprobs=lp, teacher_topk_ids=ids, ignore_index=ignore_index)
    return _mean_over_valid(per_token, y, ignore_index)


def topk_logprobs(teacher_logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k cache of a teacher: log-probs at temperature 1 (float32) and ids, each (..., k)."""
    with torch.no_grad():
        values, ids = torch.topk(F.log_softmax(at_least_float32(teacher_logits.detach()), dim=-1), k, dim=-1)
    return values, ids

