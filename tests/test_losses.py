"""Distillation losses against independent references: hand-computed closed forms (math.log),
`F.kl_div`, `F.cross_entropy`, TRL's `generalized_jsd_loss`; and the top-k and chunked forms against
the plain one (values and gradients)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from pseudocot.losses import (
    CHUNK_LOGITS,
    chunked_distill_loss,
    cross_entropy,
    default_chunk_size,
    distill_loss,
    distill_loss_topk,
    forward_kl,
    jsd,
    reverse_kl,
    skew_fkl,
    skew_rkl,
    topk_logprobs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# Two tokens over a 2-word vocabulary, as probabilities, so every term has a closed form.
STUDENT_PROBS = [[0.25, 0.75], [0.9, 0.1]]
TEACHER_PROBS = [[0.5, 0.5], [0.6, 0.4]]
LABELS = [1, 0]


def kl(a: list[float], b: list[float]) -> float:
    """KL(a ‖ b) by hand."""
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def softmax(logits: list[float]) -> list[float]:
    z = [math.exp(x) for x in logits]
    return [x / sum(z) for x in z]


def log_tensor(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is `probs`, as float64 (N, V)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def random_case(b=3, t=5, v=11, dtype=torch.float64, seed=0, ignore_every=4):
    """Student and teacher logits (B, T, V) and labels (B, T) with some positions ignored."""
    g = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(b, t, v, generator=g)).to(dtype)
    teacher = (2 * torch.randn(b, t, v, generator=g)).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels.view(-1)[::ignore_every] = -100
    return student, teacher, labels


def kl_div_reference(student, teacher, labels, temperature=1.0, reverse=False):
    """τ² · masked-mean KL via F.kl_div (kl_div(log_q, log_p, log_target) = KL(p ‖ q))."""
    log_q = F.log_softmax(student.double() / temperature, -1)
    log_p = F.log_softmax(teacher.double() / temperature, -1)
    if reverse:
        per_token = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    else:
        per_token = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    mask = labels != -100
    return temperature**2 * per_token[mask].sum() / mask.sum()


# ----------------------------------------------------------------------------- closed forms


def test_terms_match_hand_computed_values():
    s, t, y = log_tensor(STUDENT_PROBS), log_tensor(TEACHER_PROBS), torch.tensor(LABELS)
    fkl = sum(kl(p, q) for p, q in zip(TEACHER_PROBS, STUDENT_PROBS)) / 2
    rkl = sum(kl(q, p) for p, q in zip(TEACHER_PROBS, STUDENT_PROBS)) / 2
    ce = -(math.log(0.75) + math.log(0.9)) / 2
    assert forward_kl(s, t, y).item() == pytest.approx(fkl, rel=1e-12)
    assert reverse_kl(s, t, y).item() == pytest.approx(rkl, rel=1e-12)
    assert cross_entropy(s, y).item() == pytest.approx(ce, rel=1e-12)
    total = distill_loss(s, t, y, ce_weight=0.5, fkl_weight=2.0, rkl_weight=3.0)
    assert total.item() == pytest.approx(0.5 * ce + 2 * fkl + 3 * rkl, rel=1e-12)


def test_temperature_softens_both_sides_and_scales_by_tau_squared():
    s, t, y = log_tensor(STUDENT_PROBS), log_tensor(TEACHER_PROBS), torch.tensor(LABELS)
    tau = 2.0
    soft_q = [softmax([math.log(x) / tau for x in row]) for row in STUDENT_PROBS]
    soft_p = [softmax([math.log(x) / tau for x in row]) for row in TEACHER_PROBS]
    fkl = tau**2 * sum(kl(p, q) for p, q in zip(soft_p, soft_q)) / 2
    rkl = tau**2 * sum(kl(q, p) for p, q in zip(soft_p, soft_q)) / 2
    assert forward_kl(s, t, y, temperature=tau).item() == pytest.approx(fkl, rel=1e-12)
    assert reverse_kl(s, t, y, temperature=tau).item() == pytest.approx(rkl, rel=1e-12)
    # Cross-entropy stays at temperature 1 inside the mix.
    ce = -(math.log(0.75) + math.log(0.9)) / 2
    total = distill_loss(s, t, y, ce_weight=1.0, fkl_weight=1.0, rkl_weight=1.0, temperature=tau)
    assert total.item() == pytest.approx(ce + fkl + rkl, rel=1e-12)


def test_skew_kl_hand_computed_and_limits():
    s, t, y = log_tensor(STUDENT_PROBS), log_tensor(TEACHER_PROBS), torch.tensor(LABELS)
    a = 0.3

    def mix(x, z):
        return [a * xi + (1 - a) * zi for xi, zi in zip(x, z)]

    skew_f = sum(kl(p, mix(p, q)) for p, q in zip(TEACHER_PROBS, STUDENT_PROBS)) / 2
    skew_r = sum(kl(q, mix(q, p)) for p, q in zip(TEACHER_PROBS, STUDENT_PROBS)) / 2
    assert skew_fkl(s, t, y, alpha=a).item() == pytest.approx(skew_f, rel=1e-12)
    assert skew_rkl(s, t, y, alpha=a).item() == pytest.approx(skew_r, rel=1e-12)
    assert skew_fkl(s, t, y, alpha=0.0).item() == pytest.approx(forward_kl(s, t, y).item(), rel=1e-12)
    assert skew_rkl(s, t, y, alpha=0.0).item() == pytest.approx(reverse_kl(s, t, y).item(), rel=1e-12)
    assert skew_fkl(s, t, y, alpha=1.0).item() == 0.0


def test_jsd_hand_computed():
    s, t, y = log_tensor(STUDENT_PROBS), log_tensor(TEACHER_PROBS), torch.tensor(LABELS)
    beta = 0.3
    expected = 0.0
    for p, q in zip(TEACHER_PROBS, STUDENT_PROBS):
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        expected += (beta * kl(p, m) + (1 - beta) * kl(q, m)) / 2
    assert jsd(s, t, y, beta=beta).item() == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- torch references


@pytest.mark.parametrize("temperature", [1.0, 0.7, 3.0])
def test_kl_both_directions_match_kl_div(temperature):
    s, t, y = random_case()
    for fn, reverse in ((forward_kl, False), (reverse_kl, True)):
        expected = kl_div_reference(s, t, y, temperature, reverse=reverse)
        torch.testing.assert_close(fn(s, t, y, temperature=temperature), expected, rtol=1e-10, atol=0)


def test_cross_entropy_matches_f_cross_entropy():
    s, t, y = random_case(dtype=torch.float32)
    expected = F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(cross_entropy(s, y), expected)
    torch.testing.assert_close(
        distill_loss(s, None, y, ce_weight=1.0, fkl_weight=0.0, rkl_weight=0.0, temperature=4.0), expected
    )
    # Another ignore_index; labels at ignored positions are never used as indices.
    y7 = torch.where(y == -100, 7, y)
    expected7 = F.cross_entropy(s.reshape(-1, s.shape[-1]), y7.reshape(-1), ignore_index=7)
    torch.testing.assert_close(cross_entropy(s, y7, ignore_index=7), expected7)


def test_extra_terms_add_up_in_distill_loss():
    s, t, y = random_case()
    kw = dict(temperature=1.5)
    total = distill_loss(
        s, t, y, ce_weight=0.1, fkl_weight=0.2, rkl_weight=0.3, jsd_weight=0.4, jsd_beta=0.7,
        skew_fkl_weight=0.5, skew_rkl_weight=0.6, skew_alpha=0.2, **kw,
    )  # fmt: skip
    expected = (
        0.1 * cross_entropy(s, y)
        + 0.2 * forward_kl(s, t, y, **kw)
        + 0.3 * reverse_kl(s, t, y, **kw)
        + 0.4 * jsd(s, t, y, beta=0.7, **kw)
        + 0.5 * skew_fkl(s, t, y, alpha=0.2, **kw)
        + 0.6 * skew_rkl(s, t, y, alpha=0.2, **kw)
    )
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_matches_trl_generalized_jsd_loss(beta, temperature):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd")
    s, t, y = random_case(dtype=torch.float32)
    expected = gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=y, beta=beta, temperature=temperature)
    ours = jsd(s, t, y, beta=beta, temperature=temperature) / temperature**2  # TRL has no τ² factor
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s, t, y = random_case()
    torch.testing.assert_close(jsd(s, t, y, beta=0.0), forward_kl(s, t, y), rtol=1e-12, atol=0)
    torch.testing.assert_close(jsd(s, t, y, beta=1.0), reverse_kl(s, t, y), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- masking, dtypes, errors


def test_ignored_tokens_change_nothing():
    s, t, y = random_case()
    s = s.requires_grad_()
    kw = dict(ce_weight=1.0, fkl_weight=1.0, rkl_weight=1.0, jsd_weight=1.0, temperature=2.0)
    loss = distill_loss(s, t, y, **kw)
    (grad,) = torch.autograd.grad(loss, s)
    ignored = y == -100
    s2, t2 = s.detach().clone(), t.clone()
    s2[ignored] = 1e4 * torch.randn_like(s2[ignored])
    t2[ignored] = -1e4 * torch.randn_like(t2[ignored])
    s2.requires_grad_()
    loss2 = distill_loss(s2, t2, y, **kw)
    (grad2,) = torch.autograd.grad(loss2, s2)
    torch.testing.assert_close(loss2, loss, rtol=1e-14, atol=0)
    torch.testing.assert_close(grad2[~ignored], grad[~ignored])
    assert grad2[ignored].abs().max() == 0
    # Not even a NaN at an ignored position leaks into the value.
    t2[ignored] = float("nan")
    torch.testing.assert_close(distill_loss(s2, t2, y, **kw), loss, rtol=1e-14, atol=0)


def test_all_ignored_gives_zero_not_nan():
    s, t, y = random_case()
    s.requires_grad_()
    y = torch.full_like(y, -100)
    for loss in (
        distill_loss(s, t, y, ce_weight=1.0, fkl_weight=1.0, rkl_weight=1.0),
        distill_loss_topk(s, *topk_logprobs(t, 3), y, ce_weight=1.0, fkl_weight=1.0, rkl_weight=1.0),
    ):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.all(grad == 0)


def test_teacher_zero_probabilities_count_as_zero():
    # A padded teacher vocabulary: -inf logits on extra words give the same KL as without them.
    s, t, y = random_case(v=6)
    pad = torch.full((*t.shape[:-1], 2), -math.inf, dtype=t.dtype)
    s_pad = torch.cat([s, torch.zeros_like(pad)], -1)
    t_pad = torch.cat([t, pad], -1)
    # kl_div with a probability target takes 0 · log 0 = 0.
    log_q = F.log_softmax(s_pad, -1)
    per_token = F.kl_div(log_q, F.softmax(t_pad, -1), reduction="none").sum(-1)
    mask = y != -100
    torch.testing.assert_close(forward_kl(s_pad, t_pad, y), per_token[mask].mean())
    assert torch.isfinite(jsd(s_pad, t_pad, y, beta=0.5)) and torch.isfinite(skew_fkl(s_pad, t_pad, y))


def test_bf16_inputs_give_float32_results():
    s, t, y = random_case(b=2, t=8, v=300, dtype=torch.bfloat16)
    kw = dict(ce_weight=1.0, fkl_weight=0.5, rkl_weight=0.5, jsd_weight=0.3, temperature=2.0)
    loss = distill_loss(s, t, y, **kw)
    reference = distill_loss(s.double(), t.double(), y, **kw)  # the same bf16 values, exactly
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), reference, rtol=1e-5, atol=0)


def test_errors_say_what_is_wrong():
    s, t, y = random_case()
    kw = dict(ce_weight=1.0, fkl_weight=1.0, rkl_weight=0.0)
    with pytest.raises(ValueError, match="shared vocabulary"):
        distill_loss(s, t[..., :-1], y, **kw)
    with pytest.raises(ValueError, match="shift them first"):
        distill_loss(s, t, y[:, :-1], **kw)
    with pytest.raises(ValueError, match="needs teacher_logits"):
        distill_loss(s, None, y, **kw)
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(s, t, y, **kw, temperature=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        distill_loss(s, t, y, ce_weight=-1.0, fkl_weight=0.0, rkl_weight=0.0)
    h, w = torch.randn(15, 4, dtype=torch.float64), torch.randn(11, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="one form only"):
        chunked_distill_loss(
            h, w, y.reshape(-1), teacher_logits=t, teacher_hidden=h, teacher_lm_head_weight=w, **kw
        )
    with pytest.raises(ValueError, match="no teacher was given"):
        chunked_distill_loss(h, w, y.reshape(-1), **kw)


# ----------------------------------------------------------------------------- top-k


def test_topk_with_full_vocabulary_equals_full_form():
    s, t, y = random_case()
    s.requires_grad_()
    kw = dict(ce_weight=0.3, fkl_weight=1.0, rkl_weight=0.7, jsd_weight=0.2, skew_rkl_weight=0.4, temperature=1.7)
    lp, ids = topk_logprobs(t, t.shape[-1])
    perm = torch.randperm(t.shape[-1])  # the order of the k ids must not matter
    full = distill_loss(s, t, y, **kw)
    topk = distill_loss_topk(s, lp[..., perm], ids[..., perm], y, **kw)
    torch.testing.assert_close(topk, full, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(topk, s)[0], torch.autograd.grad(full, s)[0])


def test_topk_approximations_hand_computed():
    # One token, V = 3, k = 2: the teacher's top-2 is words {0, 1}.
    q = [0.2, 0.5, 0.3]
    p = [0.6, 0.3, 0.1]
    s = torch.tensor([q], dtype=torch.float64).log()
    lp, ids = topk_logprobs(torch.tensor([p], dtype=torch.float64).log(), 2)
    y = torch.tensor([1])
    tau = 2.0
    p_k = softmax([math.log(p[0]) / tau, math.log(p[1]) / tau])  # renormalised over the k at τ
    q_full = softmax([math.log(x) / tau for x in q])  # the student's full log-softmax at τ
    q_k = softmax([math.log(q[0]) / tau, math.log(q[1]) / tau])  # restricted and renormalised
    fkl = tau**2 * sum(pi * math.log(pi / q_full[i]) for i, pi in enumerate(p_k))
    rkl = tau**2 * kl(q_k, p_k)
    kw = dict(ce_weight=0.0, temperature=tau)
    assert distill_loss_topk(s, lp, ids, y, fkl_weight=1.0, rkl_weight=0.0, **kw).item() == pytest.approx(fkl)
    assert distill_loss_topk(s, lp, ids, y, fkl_weight=0.0, rkl_weight=1.0, **kw).item() == pytest.approx(rkl)


# ----------------------------------------------------------------------------- chunked


def chunked_case(dtype, n=23, h=6, v=17, bias=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = {
        "hidden": torch.randn(n, h, generator=g).to(dtype).requires_grad_(),
        "weight": torch.randn(v, h, generator=g).to(dtype).requires_grad_(),
        "bias": torch.randn(v, generator=g).to(dtype).requires_grad_() if bias else None,
        "teacher_hidden": torch.randn(n, h + 3, generator=g).to(dtype),
        "teacher_weight": torch.randn(v, h + 3, generator=g).to(dtype),
        "labels": torch.randint(0, v, (n,), generator=g),
    }
    x["labels"][::3] = -100
    return x


KW = dict(ce_weight=0.6, fkl_weight=0.5, rkl_weight=0.4, jsd_weight=0.3, skew_fkl_weight=0.2, temperature=1.5)

MIXES = {
    # CE, forward and reverse KL against a full teacher take the closed-form gradient path.
    "ce+fkl+rkl": dict(ce_weight=0.6, fkl_weight=0.5, rkl_weight=0.4),
    "ce+fkl+rkl@2": dict(ce_weight=0.6, fkl_weight=0.5, rkl_weight=0.4, temperature=2.0),
    "fkl@0.5": dict(ce_weight=0.0, fkl_weight=1.0, rkl_weight=0.0, temperature=0.5),
    "ce+rkl": dict(ce_weight=1.0, fkl_weight=0.0, rkl_weight=1.0),
    # JSD and skew terms (and any top-k teacher) take the autograd path.
    "all@1.5": KW,
}


def plain_loss_and_grads(x, teacher, **kw):
    """distill_loss (or distill_loss_topk) on the full logits, with its gradients."""
    params = [p for p in (x["hidden"], x["weight"], x["bias"]) if p is not None and p.requires_grad]
    logits = F.linear(x["hidden"], x["weight"], x["bias"])
    if teacher == "topk":
        loss = distill_loss_topk(logits, *x["topk"], x["labels"], **kw)
    else:
        loss = distill_loss(logits, x["teacher_hidden"] @ x["teacher_weight"].T, x["labels"], **kw)
    return loss, torch.autograd.grad(loss, params)


def chunked_loss_and_grads(x, teacher, chunk_size, **kw):
    params = [p for p in (x["hidden"], x["weight"], x["bias"]) if p is not None and p.requires_grad]
    given = {
        "logits": {"teacher_logits": x["teacher_hidden"] @ x["teacher_weight"].T},
        "hidden": {"teacher_hidden": x["teacher_hidden"], "teacher_lm_head_weight": x["teacher_weight"]},
        "topk": {"teacher_topk_logprobs": x["topk"][0], "teacher_topk_ids": x["topk"][1]} if "topk" in x else {},
    }[teacher]
    loss = chunked_distill_loss(
        x["hidden"], x["weight"], x["labels"], lm_head_bias=x["bias"], chunk_size=chunk_size, **given, **kw
    )
    return loss, torch.autograd.grad(loss, params)


CHUNKED_CASES = [
    # 15 valid tokens: chunk sizes 1 and 5 divide them, 8 and 100 do not.
    *[(torch.float64, 1e-5, chunk_size, mix) for chunk_size in (1, 5, 8, 100) for mix in MIXES],
    *[(torch.float32, 1e-4, chunk_size, mix) for chunk_size in (5, 8) for mix in ("ce+fkl+rkl@2", "all@1.5")],
]


@pytest.mark.parametrize("teacher", ["logits", "hidden", "topk"])
@pytest.mark.parametrize("dtype,rtol,chunk_size,mix", CHUNKED_CASES)
def test_chunked_equals_plain(dtype, rtol, teacher, chunk_size, mix):
    x = chunked_case(dtype)
    x["topk"] = topk_logprobs(x["teacher_hidden"] @ x["teacher_weight"].T, 5)
    expected, expected_grads = plain_loss_and_grads(x, teacher, **MIXES[mix])
    loss, grads = chunked_loss_and_grads(x, teacher, chunk_size, **MIXES[mix])
    torch.testing.assert_close(loss, expected, rtol=rtol, atol=0)
    for g, e in zip(grads, expected_grads):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * e.abs().max().item())


def test_chunked_every_token_valid_batched_shape_and_no_bias():
    x = chunked_case(torch.float64, n=24, bias=False)
    x["labels"] = x["labels"].clamp_min(0)
    expected, expected_grads = plain_loss_and_grads(x, "hidden", **KW)
    # (B, T, H) hidden states and (B, T) labels are flattened inside.
    y = {**x, "hidden": x["hidden"].detach().reshape(4, 6, -1).requires_grad_(), "labels": x["labels"].reshape(4, 6)}
    y["teacher_hidden"] = x["teacher_hidden"].reshape(4, 6, -1)
    loss, grads = chunked_loss_and_grads(y, "hidden", 7, **KW)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(grads[0].reshape(24, -1), expected_grads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], expected_grads[1], rtol=1e-10, atol=1e-12)


def test_chunked_frozen_head_and_upstream_gradient():
    x = chunked_case(torch.float64)
    x["weight"].requires_grad_(False)
    x["bias"].requires_grad_(False)
    _, (expected_h,) = plain_loss_and_grads(x, "hidden", **KW)
    # The loss inside a larger graph: backward scales the stored gradient by the incoming one.
    loss = chunked_distill_loss(
        x["hidden"], x["weight"], x["labels"], lm_head_bias=x["bias"], teacher_hidden=x["teacher_hidden"],
        teacher_lm_head_weight=x["teacher_weight"], chunk_size=4, **KW,
    )  # fmt: skip
    (3.0 * loss + 1.0).backward()
    torch.testing.assert_close(x["hidden"].grad, 3.0 * expected_h, rtol=1e-10, atol=0)
    assert x["weight"].grad is None and x["bias"].grad is None
    with pytest.raises(RuntimeError):
        loss.backward()  # gradients were handed over in place


def test_chunked_all_ignored_and_no_grad():
    x = chunked_case(torch.float64)
    kw = dict(teacher_hidden=x["teacher_hidden"], teacher_lm_head_weight=x["teacher_weight"], **KW)
    ignored = torch.full_like(x["labels"], -100)
    loss = chunked_distill_loss(x["hidden"], x["weight"], ignored, lm_head_bias=x["bias"], **kw)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x["hidden"].grad == 0) and torch.all(x["weight"].grad == 0)
    expected, _ = plain_loss_and_grads(x, "hidden", **KW)
    with torch.no_grad():
        loss = chunked_distill_loss(x["hidden"], x["weight"], x["labels"], lm_head_bias=x["bias"], **kw)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)


def test_chunked_all_weights_zero_gives_zero():
    x = chunked_case(torch.float64)
    zero = dict(ce_weight=0.0, fkl_weight=0.0, rkl_weight=0.0)
    loss = chunked_distill_loss(x["hidden"], x["weight"], x["labels"], **zero)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x["hidden"].grad == 0) and torch.all(x["weight"].grad == 0)


def test_chunked_cross_entropy_needs_no_teacher():
    x = chunked_case(torch.float32)
    logits = F.linear(x["hidden"], x["weight"], x["bias"])
    expected = F.cross_entropy(logits, x["labels"])
    for chunk_size in (4, None):  # None: the default, one chunk at this vocabulary
        loss = chunked_distill_loss(
            x["hidden"], x["weight"], x["labels"], lm_head_bias=x["bias"], ce_weight=1.0, fkl_weight=0.0,
            rkl_weight=0.0, chunk_size=chunk_size,
        )  # fmt: skip
        torch.testing.assert_close(loss, expected)


def test_default_chunk_size_bounds_the_chunk_logits():
    assert default_chunk_size(128_256) == 256
    assert default_chunk_size(32_000) == 1048
    assert default_chunk_size(2**30) == 1
    for vocab in (100, 50_257, 128_256, 151_936):
        assert default_chunk_size(vocab) * vocab <= CHUNK_LOGITS


def test_chunked_bf16_is_finite_and_close_to_plain():
    x = chunked_case(torch.bfloat16, n=40, h=32, v=300, bias=False)
    expected, expected_grads = plain_loss_and_grads(x, "hidden", **KW)
    loss, grads = chunked_loss_and_grads(x, "hidden", 6, **KW)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)  # same bf16 logits, fp32 softmax
    for g, e in zip(grads, expected_grads):
        assert g.dtype == torch.bfloat16 and torch.isfinite(g).all()
        torch.testing.assert_close(g.float(), e.float(), rtol=0.02, atol=0.02 * e.abs().max().item())
