"""Evaluation metrics against independent references: a per-resample bootstrap loop, binomial sums
done by hand (and scipy where installed), sacrebleu and rouge-score called directly, and arithmetic
statements whose truth was checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pseudocot.evaluate.metrics import (
    accuracy,
    answer_matches_last_value,
    bleu,
    bootstrap_means,
    faithfulness,
    mcnemar_exact,
    over_seeds,
    paired_difference,
    rouge_l,
)


def loop_bootstrap(values, n_boot, seed):
    """Reference: one resample at a time from the same generator."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    return np.array([x[rng.integers(0, len(x), size=len(x))].mean() for _ in range(n_boot)])


# ------------------------------------------------------------------------------ bootstrap


@pytest.mark.parametrize("max_elements", [7, 1000, 4_000_000])
def test_bootstrap_means_equal_a_plain_loop_whatever_the_chunking(max_elements):
    values = np.random.default_rng(1).random(23)
    got = bootstrap_means(values, n_boot=500, seed=3, max_elements=max_elements)
    np.testing.assert_allclose(got, loop_bootstrap(values, 500, 3), rtol=0, atol=1e-12)


def test_accuracy_value_and_percentile_interval():
    correct = [True] * 30 + [False] * 20
    result = accuracy(correct, n_boot=2000, seed=7)
    assert result["accuracy"] == 0.6 and result["n"] == 50
    ref = loop_bootstrap(np.array(correct, dtype=float), 2000, 7)
    assert result["ci95"] == pytest.approx([np.quantile(ref, 0.025), np.quantile(ref, 0.975)])
    lo, hi = result["ci95"]
    assert lo < 0.6 < hi
    # normal approximation of the same interval, sqrt(p(1-p)/n) = 0.0693: about +-0.136
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.6 * 0.4 / 50), abs=0.03)
    assert accuracy(correct, n_boot=2000, seed=7) == result  # seeded
    assert accuracy([True] * 9)["ci95"] == [1.0, 1.0]
    with pytest.raises(ValueError):
        accuracy([])


def test_paired_difference():
    a = [1, 1, 1, 0, 1, 0, 1, 1, 0, 1]
    b = [1, 0, 0, 0, 1, 0, 1, 0, 0, 1]
    result = paired_difference(a, b, n_boot=3000, seed=2, p_value=True)
    assert result["difference"] == pytest.approx(0.3) and result["n"] == 10
    ref = loop_bootstrap(np.array(a, float) - np.array(b, float), 3000, 2)
    assert result["ci95"] == pytest.approx([np.quantile(ref, 0.025), np.quantile(ref, 0.975)])
    assert result["p_bootstrap"] == pytest.approx(np.mean(np.abs(ref - 0.3) >= 0.3))
    same = paired_difference(a, a, n_boot=100, p_value=True)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["p_bootstrap"] == 1.0
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])


# ------------------------------------------------------------------------------ McNemar


def _pairs(a_only, b_only, both=3, neither=2):
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return a, b


@pytest.mark.parametrize("a_only, b_only, p", [
    (1, 6, 2 * (1 + 7) / 2**7),        # 16/128 = 0.125
    (0, 5, 2 * 1 / 2**5),              # 0.0625
    (6, 1, 0.125),                     # symmetric
    (3, 3, 1.0),                       # 2 * P(X <= 3 of 6) = 2 * 42/64 > 1, capped
    (0, 0, 1.0),                       # no discordant pairs
    (2, 10, 2 * (1 + 12 + 66) / 2**12),  # 158/4096
])
def test_mcnemar_exact_by_hand(a_only, b_only, p):
    result = mcnemar_exact(*_pairs(a_only, b_only))
    assert (result["a_only"], result["b_only"]) == (a_only, b_only)
    assert result["p_value"] == pytest.approx(p, rel=1e-12)


def test_mcnemar_matches_scipy_when_installed():
    try:
        from scipy.stats import binomtest
    except ImportError:
        pytest.skip("scipy is not installed; the hand-computed cases above stand in")
    for a_only, b_only in [(1, 6), (4, 9), (17, 30), (50, 50), (0, 12), (120, 95)]:
        expected = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
        assert mcnemar_exact(*_pairs(a_only, b_only))["p_value"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_large_counts_stay_finite():
    p = mcnemar_exact(*_pairs(400, 520))["p_value"]
    assert 0.0 < p < 0.001


# ------------------------------------------------------------------------------ BLEU and ROUGE-L

HYPS = ["3 + 4 = 7\nThe answer is 7.", "She has 12 apples, gives 5 away, so 12 - 5 = 7 are left.",
        "the cat sat on the mat"]
REFS = ["3 + 4 = 7\nSo the answer is 7.", "12 - 5 = 7 apples are left.", "the cat is on the mat"]


def test_bleu_equals_sacrebleu():
    import sacrebleu

    assert bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert bleu(REFS, REFS) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        bleu(HYPS, REFS[:2])


def test_rouge_l_equals_rouge_score():
    from rouge_score import rouge_scorer

    for stem in (True, False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
        expected = np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)])
        assert rouge_l(HYPS, REFS, use_stemmer=stem) == pytest.approx(expected)
    assert rouge_l(REFS, REFS) == pytest.approx(1.0)
    # a hand count: "the cat sat on the mat" vs "the cat is on the mat": LCS 5 of 6 words each way
    assert rouge_l(HYPS[2:], REFS[2:]) == pytest.approx(5 / 6)


# ------------------------------------------------------------------------------ faithfulness

# text -> share of true statements (None: no statement), each checked by hand; the grammar itself is
# tested with the checker it comes from (tests/test_synth_arithmetic.py).
FAITHFULNESS = [
    ("3 + 4 = 7", 1.0),
    ("so 3 + 4 = 8.", 0.0),
    ("She sold 48/2 = <<48/2=24>>24 clips.", 1.0),           # the note and the text: one calculation, both true
    ("2 * 3 = 6\n6 + 1 = 8", 0.5),
    ("10 / 3 = 3.33 and 10 / 3 = 3.34", 0.5),                 # rounded to the decimals written
    ("1 / 0 = 0", 0.0),
    ("3 times 4 is 12", None),
]


@pytest.mark.parametrize("text, expected", FAITHFULNESS)
def test_faithfulness_is_the_share_of_true_statements(text, expected):
    from pseudocot.synth.arithmetic import statements

    assert faithfulness(text) == (pytest.approx(expected) if expected is not None else None)
    found = statements(text)
    if found:  # one definition: the synth filter's arithmetic checker
        assert faithfulness(text) == pytest.approx(sum(s.ok for s in found) / len(found))


def test_answer_matches_last_value():
    text = "12 + 7 = 19\n19 * 2 = 38\nThe answer is 38."
    assert answer_matches_last_value(text, "38") is True
    assert answer_matches_last_value(text, "38.0") is True
    assert answer_matches_last_value(text, "19") is False
    assert answer_matches_last_value(text, "thirty-eight") is False
    assert answer_matches_last_value("no arithmetic here", "38") is None
    assert answer_matches_last_value("1,000 + 250 = 1,250", "$1,250") is True


# ------------------------------------------------------------------------------ seeds


def test_over_seeds():
    result = over_seeds([0.5, 0.7, 0.9])
    assert result["mean"] == pytest.approx(0.7)
    assert result["std"] == pytest.approx(0.2)  # sample standard deviation: sqrt((0.04 + 0 + 0.04) / 2)
    assert result["per_seed"] == [0.5, 0.7, 0.9] and result["n_seeds"] == 3
    assert over_seeds([0.4]) == {"mean": 0.4, "std": None, "per_seed": [0.4], "n_seeds": 1}
