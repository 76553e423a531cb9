"""Evaluation metrics: pure functions over per-question results and texts.

- `accuracy`: mean of 0/1 verdicts with a 95% percentile bootstrap interval (seeded, vectorised).
- `paired_difference`: system A minus system B on the same questions, bootstrap interval and an
  optional paired-bootstrap p-value; `mcnemar_exact`: the exact McNemar test on the discordant pairs.
- `bleu` (sacrebleu corpus BLEU) and `rouge_l` (rouge-score, mean ROUGE-L F-measure): generated
  reasoning against reference reasoning.
- `faithfulness`, `answer_matches_last_value`: are the arithmetic statements written in a text
  true (`pseudocot.synth.arithmetic`, the same checker the synth filter's `arithmetic` check uses),
  and does the answer follow from the last step (the filter's `follows`).
- `over_seeds`: mean, standard deviation and per-seed values of a number measured with several seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from pseudocot.synth.arithmetic import statements
from pseudocot.synth.filter import answer_follows, split_solution

# ------------------------------------------------------------------------------- accuracy and its intervals


def bootstrap_means(values: Sequence[float] | np.ndarray, n_boot: int = 10_000, seed: int = 0,
                    max_elements: int = 4_000_000) -> np.ndarray:
    """Means of `n_boot` resamples (with replacement, same size) of `values`, shape (n_boot,).

    Resample b uses the b-th row of `default_rng(seed).integers(0, n, size=(n_boot, n))`; the rows
    are drawn in chunks of at most `max_elements` indices, which gives the same numbers as one draw.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no values to resample")
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot, dtype=np.float64)
    rows = max(1, max_elements // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # (rows, n)
        out[start:stop] = x[idx].mean(axis=1)
    return out


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def accuracy(correct: Sequence[bool] | np.ndarray, n_boot: int = 10_000, seed: int = 0,
             confidence: float = 0.95) -> dict[str, Any]:
    """{"accuracy", "ci95": [low, high], "n"}: the share of True and its percentile bootstrap interval."""
    x = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        raise ValueError("accuracy of no questions")
    low, high = percentile_interval(bootstrap_means(x, n_boot, seed), confidence)
    return {"accuracy": float(x.mean()), "ci95": [low, high], "n": int(x.size)}


def paired_difference(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray, n_boot: int = 10_000,
                      seed: int = 0, confidence: float = 0.95, p_value: bool = False) -> dict[str, Any]:
    """System A minus system B on the same questions (index i is the same question in both).

    Returns {"difference", "ci95", "n"}, plus "p_bootstrap" when `p_value`: the share of resampled
    differences at least as far from the observed one as the observed one is from zero
    (`|d* - d| >= |d|`), a two-sided paired bootstrap test of "no difference".
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape:
        raise ValueError(f"paired results need the same questions: {xa.size} against {xb.size}")
    d = xa - xb
    if d.size == 0:
        raise ValueError("difference over no questions")
    boots = bootstrap_means(d, n_boot, seed)
    low, high = percentile_interval(boots, confidence)
    observed = float(d.mean())
    out: dict[str, Any] = {"difference": observed, "ci95": [low, high], "n": int(d.size)}
    if p_value:
        out["p_bootstrap"] = float(np.mean(np.abs(boots - observed) >= abs(observed)))
    return out


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test: {"a_only", "b_only", "p_value"}.

    `a_only` questions A gets right and B wrong, `b_only` the reverse; under "no difference" each
    discordant question is a fair coin, so p = min(1, 2 * P(Binomial(a_only + b_only, 1/2) <= min)).
    """
    if len(a) != len(b):
        raise ValueError(f"paired results need the same questions: {len(a)} against {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n = a_only + b_only
    k = min(a_only, b_only)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
    return {"a_only": a_only, "b_only": b_only, "p_value": float(min(Fraction(1), 2 * tail))}


def over_seeds(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std" (sample, ddof=1; None for one seed), "per_seed", "n_seeds"} of one number
    measured once per seed (in seed order)."""
    x = [float(v) for v in values]
    if not x:
        raise ValueError("no seeds to aggregate")
    return {"mean": float(np.mean(x)), "std": float(np.std(x, ddof=1)) if len(x) > 1 else None,
            "per_seed": x, "n_seeds": len(x)}


# ------------------------------------------------------------------------------- text overlap


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (0-100) of predictions against one reference each."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions against {len(references)} references")
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> float:
    """Mean ROUGE-L F-measure (0-1) of rouge-score over the pairs."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions against {len(references)} references")
    if not predictions:
        raise ValueError("ROUGE-L of no texts")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return float(np.mean([scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]))


# ------------------------------------------------------------------------------- faithfulness

def faithfulness(text: str) -> float | None:
    """Share of the arithmetic statements in `text` that are true; None when it has none.

    >>> faithfulness("12 + 7 = 19\\n19 * 2 = 39\\nThe answer is 39."), faithfulness("no sums here")
    (0.5, None)
    """
    found = statements(text)
    if not found:
        return None
    return sum(s.ok for s in found) / len(found)


def answer_matches_last_value(text: str, answer: str) -> bool | None:
    """Does `answer` equal the value the last step of `text` arrived at (`synth.filter.answer_follows`)?
    None when the text has no arithmetic statement; False when the answer is not a number."""
    if not statements(text):
        return None
    return bool(answer_follows(split_solution(text)[0], answer))
