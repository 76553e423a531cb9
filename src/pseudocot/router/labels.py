"""From forced traces to the arrays the router trains and is judged on.

Every answer of a trace is right or wrong by the task's own scoring (`Task.is_correct`: the task's
primary extraction and metric), the one definition of correct that evaluation also counts, so the
router learns to stop exactly where evaluation would call the answer right.

    correct, available = outcomes(traces, examples, task, max_thoughts)    # see `policy`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pseudocot.cost import flops, processed_tokens
from pseudocot.data.example import Example
from pseudocot.errors import DataError
from pseudocot.router.features import assemble
from pseudocot.tasks.task import Task


def outcomes(traces: Sequence[Any], examples: Sequence[Example], task: Task, max_thoughts: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """`correct` (N, M+1) and `available` (N,) of forced traces, answer by answer (see `policy`).
    `traces[i]` answers `examples[i]`; each answer's text is scored by `task`."""
    by_id = {e.id: e for e in examples}
    correct = np.zeros((len(traces), max_thoughts + 1), dtype=bool)
    available = np.zeros(len(traces), dtype=int)
    for q, t in enumerate(traces):
        ex = by_id.get(t.id)
        if ex is None:
            raise DataError(f"router trace '{t.id}' answers no question of the data; delete the router's traces/ folder.")
        marks = [task.is_correct(a.text, ex) for a in t.answers]
        available[q] = len(marks) - 1
        correct[q, : len(marks)] = marks
        correct[q, len(marks):] = marks[-1]  # no later answer: the last one stands
    return correct, available


def selected_correct(correct: np.ndarray, answer_scores: np.ndarray, available: np.ndarray) -> np.ndarray:
    """(N, M+1) whether the answer a selecting loop returns is right when it stops after i thoughts: of answers
    0..i (the trace's last one past its end), the one the correctness head scores highest, the later one on a tie.
    `answer_scores` (N, M+1) has the head's score of each answer (anything where the trace has none). Every policy
    of `policy` reads this matrix in place of `correct` to be judged with answer selection."""
    out = np.zeros_like(correct, dtype=bool)
    for q, m in enumerate(available):
        best = 0
        for i in range(correct.shape[1]):
            k = min(i, int(m))
            if answer_scores[q, k] >= answer_scores[q, best]:
                best = k
            out[q, i] = correct[q, best]
    return out


def _spread(values: np.ndarray, counts: Sequence[int], width: int) -> np.ndarray:
    """(N, width): question q's `counts[q]` consecutive `values` first in its row, -inf after them."""
    out = np.full((len(counts), width), -np.inf)
    k = 0
    for q, n in enumerate(counts):
        out[q, :n] = values[k:k + n]
        k += n
    return out


def answer_matrix(probs: np.ndarray, traces: Sequence[Any], max_thoughts: int) -> np.ndarray:
    """(N, M+1) the correctness head's score of every answer (one row per answer, in trace order; -inf past a trace's
    last answer)."""
    return _spread(probs, [len(t.answers) for t in traces], max_thoughts + 1)


def next_step_classes(correct: np.ndarray, available: np.ndarray) -> np.ndarray:
    """The marginal value of the next thought after each answer that could be followed by one (the rows of
    `rows_of`): 0 neutral (the next answer is as right as this one), 1 helps (wrong, then right), 2 hurts (right, then
    wrong)."""
    out = []
    for c, m in zip(correct, available):
        for i in range(int(m)):
            out.append(0 if c[i] == c[i + 1] else (1 if c[i + 1] else 2))
    return np.array(out, dtype=int)


def step_matrix(parts: dict[str, torch.Tensor], names: list[str], max_thoughts: int) -> torch.Tensor:
    """(rows, D) router inputs, one row per answer, from the collected per-answer parts."""
    n = len(parts["iteration"])
    return torch.stack([assemble({k: v[i] for k, v in parts.items() if k != "question"}, names, max_thoughts)
                        for i in range(n)])


def rows_of(traces: Sequence[Any], available: np.ndarray) -> list[int]:
    """Index into the step rows (one per answer) of every answer that could be followed by a thought."""
    out, start = [], 0
    for t, m in zip(traces, available):
        out += [start + i for i in range(m)]
        start += len(t.answers)
    return out


def score_matrix(probs: np.ndarray, traces: Sequence[Any], available: np.ndarray, max_thoughts: int) -> np.ndarray:
    """(N, M) router scores after each answer that could be followed by a thought (-inf elsewhere)."""
    return _spread(probs, [int(m) for m in available], max_thoughts)


def cost_matrix(traces: Sequence[Any], available: np.ndarray, max_thoughts: int, parameters: dict[str, int] | None,
                depth: bool = False, rejected: bool = False) -> np.ndarray | None:
    """(N, M+1) estimated FLOPs of each question when it stops after i thoughts (`pseudocot.cost`; a stop past the
    trace's last thought costs the whole trace); None without both parameter counts. The loop pays answers 0..i and
    thoughts 1..i; with `depth` (mode depth: the TTM writes i thoughts, then the base answers once) thoughts 1..i and
    one answer with all of them in its context, its whole prompt charged; with `rejected` (a router that reads the
    thought first) a stop before the trace's last thought also pays the thought it rejected."""
    if not parameters or "base" not in parameters or "ttm" not in parameters:
        return None
    out = np.zeros((len(traces), max_thoughts + 1))
    for q, (t, m) in enumerate(zip(traces, available)):
        for i in range(max_thoughts + 1):
            k = min(i, int(m))
            answers = [t.answers[k]] if depth else t.answers[: k + 1]
            written = k + 1 if rejected and k < m else k
            used = {"base": sum(processed_tokens(a.prompt_tokens, 0 if depth else a.cached_tokens, a.tokens) for a in answers),
                    "ttm": sum(processed_tokens(x.prompt_tokens, x.cached_tokens, x.tokens) for x in t.thoughts[:written])}
            out[q, i] = flops(used, parameters) or 0.0
    return out
