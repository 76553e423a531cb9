"""Evaluation metrics: pure functions over per-question results and texts.

- `accuracy`: mean of 0/1 verdicts with a 95% percentile bootstrap interval (seeded, vectorised).
- `paired_difference`: system A minus system B on the same questions, bootstrap interval and an
  optional paired-bootstrap p-value; `mcnemar_exact`: the exact McNemar test on the discordant pairs.
- `bleu` (sacrebleu corpus BLEU) and `rouge_l` (rouge-score, mean ROUGE-L F-measure): generated
  reasoning against reference reasoning.
- `arithmetic_statements`, `faithfulness`, `answer_matches_last_value`: are the `a op b = c` steps
  written in a text true, and does the answer follow from them.
- `over_seeds`: mean, standard deviation and per-seed values of a number measured with several seeds.

The arithmetic grammar (what `arithmetic_statements` reads)
-----------------------------------------------------------
A text is cut into tokens: numbers, operators, `=`, line breaks, and everything else.

- number: digits with optional thousands commas in groups of three (`1,234`, not `1,23`) and an
  optional decimal part (`4.50`, `.5`); a `$` before it is allowed and ignored. A `-` directly
  before the digits is a sign when the token before it is not a number (`= -3`, `(-2`), else it is
  the minus operator (`7 -3`). A final period is punctuation, not a decimal point (`= 8.`).
- operator: `+`, `-`, `−`, `*`, `×`, `/`, `÷`, and the letter `x` between a number and a digit
  (`5 x 3`, `5x3`; not the unknown of `9x-21`).
- A statement is exactly `number operator number = number`, on one line, not part of a longer
  expression: the token before it may not be a number, an operator, `=`, `)` or `:`, and the token
  after it may not be a number, an operator, `=`, `%` or `:`. So `16 - 3 - 4 = 9` (three operands),
  `3 + 4 = 7 = 7` (a chain), `(1/2) 278 + 11 = 150`, `3 / 6 = 50%`, `3 / 2 = 1 1/2` and the clock
  time `6:00+48=6:48` are skipped, not judged; `48/2 = <<48/2=24>>24` yields the one statement `48/2=24`. Words (`3 times 4 is 12`),
  brackets and percentages inside the expression are not read.

Evaluation is exact, with fractions: no `eval`; the numbers are parsed and the operator applied.
A statement is true when `a op b` equals `c`, or, when `c` is written with d decimals, when
`a op b` is within half a unit of its last decimal (`10 / 3 = 3.33` is true, `10 / 3 = 3` is not).
Division by zero is false.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

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

_TOKEN = re.compile(r"""
    (?P<num>\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\$?\.\d+)   # 1,234.5  12  .5  $3
  | (?P<op>[+\-−*/×÷])
  | (?P<eq>=)
  | (?P<word>[A-Za-z_]+)
  | (?P<nl>\n)
  | (?P<space>[ \t\r\f\v]+)
  | (?P<other>.)
""", re.VERBOSE)

_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "x": "*", "/": "/", "÷": "/"}


@dataclass(frozen=True)
class Statement:
    text: str
    """The statement as written (`48/2=24`)."""
    a: Fraction
    op: str
    """One of + - * / (the written operator mapped: × and x to *, ÷ to /)."""
    b: Fraction
    c: Fraction
    c_decimals: int
    """Decimals written in c, which set the tolerance."""

    @property
    def value(self) -> Fraction | None:
        """a op b, or None for a division by zero."""
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        if self.op == "*":
            return self.a * self.b
        return None if self.b == 0 else self.a / self.b

    @property
    def holds(self) -> bool:
        v = self.value
        if v is None:
            return False
        if self.c_decimals == 0:
            return v == self.c
        return abs(v - self.c) <= Fraction(1, 2 * 10**self.c_decimals)


def _number(text: str) -> tuple[Fraction, int]:
    digits = text.replace("$", "").replace(",", "")
    decimals = len(digits.partition(".")[2])
    return Fraction(digits), decimals


def _tokens(text: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, start, end) with signs folded into numbers and a standalone `x` made an operator."""
    out: list[tuple[str, str, int, int]] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "other"
        value, start, end = m.group(), m.start(), m.end()
        if kind == "space":
            continue
        if kind == "word" and value == "x" and out and out[-1][0] == "num" and text[end:].lstrip()[:1].isdigit():
            kind = "op"
        if kind == "num" and out and out[-1][0] == "op" and out[-1][1] in "-−" and out[-1][3] == start \
                and (len(out) < 2 or out[-2][0] != "num"):
            # a `-` glued to the digits, with no number before it: a sign
            _, sign, sign_start, _ = out.pop()
            value, start = "-" + value, sign_start
        out.append((kind, value, start, end))
    return out


def arithmetic_statements(text: str) -> list[Statement]:
    """Every `a op b = c` statement of `text` (see the grammar in the module docstring)."""
    toks = _tokens(text)
    found = []
    for i in range(len(toks) - 4):
        window = toks[i:i + 5]
        if [k for k, *_ in window] != ["num", "op", "num", "eq", "num"]:
            continue
        if i > 0 and (toks[i - 1][0] in ("num", "op", "eq") or toks[i - 1][1] in (")", ":")):
            continue
        if i + 5 < len(toks) and (toks[i + 5][0] in ("num", "op", "eq") or toks[i + 5][1] in ("%", ":")):
            continue
        (a, _), (b, _), (c, c_decimals) = _number(window[0][1]), _number(window[2][1]), _number(window[4][1])
        found.append(Statement(text=text[window[0][2]:window[4][3]], a=a, op=_OPS[window[1][1]], b=b, c=c,
                               c_decimals=c_decimals))
    return found


def faithfulness(text: str) -> float | None:
    """Share of the arithmetic statements in `text` that are true; None when it has none."""
    statements = arithmetic_statements(text)
    if not statements:
        return None
    return sum(s.holds for s in statements) / len(statements)


def answer_matches_last_value(text: str, answer: str) -> bool | None:
    """Does `answer` equal the result `c` of the last arithmetic statement of `text` (as numbers)?
    None when the text has no statement; False when the answer is not a number."""
    statements = arithmetic_statements(text)
    if not statements:
        return None
    try:
        value = Fraction(answer.strip().replace(",", "").replace("$", "").removesuffix("."))
    except (ValueError, ZeroDivisionError):
        return False
    return value == statements[-1].c
