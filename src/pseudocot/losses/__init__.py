"""Distillation losses: cross-entropy, forward and reverse KL, generalised JSD and skew KL, weighted.

Pure functions of logits (or of hidden states and an output head) and aligned labels; each term is
averaged over the tokens whose label is not `ignore_index`. Three forms of one loss:

- `distill_loss(student_logits, teacher_logits, labels, ...)`: full logits (B, T, V) or (N, V);
- `distill_loss_topk(student_logits, teacher_topk_logprobs, teacher_topk_ids, labels, ...)`: a
  teacher cached as its top-k log-probs (see `topk_logprobs`);
- `chunked_distill_loss(student_hidden, lm_head_weight, labels, ...)`: the same value and gradients
  without ever holding the (N, V) logits, for large vocabularies; the head's bias, logit scaling
  and soft-capping (`logit_scale`, `logit_softcap`, and the teacher's) are applied as the model does.

The terms a distillation stage can weight: `ce`, `fkl` (`forward_kl`), `rkl` (`reverse_kl`), `jsd`
(`jsd`, TRL's generalised JSD), `skew_fkl` (`skew_fkl`) and `skew_rkl` (`skew_rkl`); the config's
`<term>_weight` fields name the same terms.

Conventions (τ² scaling of the teacher terms, float32 softmax, KL directions) are in `terms`; the
memory and speed of the chunked form are in BENCHMARKS.md (`python benchmarks/kd_loss.py`).
"""

from pseudocot.losses.chunked import CHUNK_LOGITS, chunked_distill_loss, default_chunk_size
from pseudocot.losses.terms import (
    LossMix,
    cross_entropy,
    distill_loss,
    distill_loss_topk,
    forward_kl,
    jsd,
    reverse_kl,
    skew_fkl,
    skew_rkl,
    token_losses,
    topk_logprobs,
)

__all__ = [
    "CHUNK_LOGITS",
    "LossMix",
    "chunked_distill_loss",
    "cross_entropy",
    "default_chunk_size",
    "distill_loss",
    "distill_loss_topk",
    "forward_kl",
    "jsd",
    "reverse_kl",
    "skew_fkl",
    "skew_rkl",
    "token_losses",
    "topk_logprobs",
]
