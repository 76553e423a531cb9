"""Task `arith`: the built-in multi-step arithmetic problems (`pseudocot.data.arith`).

The prompt is the question alone, as the models of the demo are trained on it (`data.chat`); a
few-shot target is the gold reasoning, one `a op b = c` line per step, then `The answer is N.`.
Extractions: `answer-line` (the primary one: the number of the last `The answer is N`) and the
harness's `flexible-extract` (the last number), both compared with GSM8K's exact_match settings.
The data file is an Example JSONL (`pseudocot data arith --out FILE`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pseudocot.data.chat import answer_text, question_text
from pseudocot.data.example import Example
from pseudocot.data.jsonl import read_examples
from pseudocot.tasks.extract import GSM8K_MATCH, answer_line, flexible_number
from pseudocot.tasks.task import Task


def load(path: str | os.PathLike[str]) -> list[Example]:
    return read_examples(path).examples


def arith(num_fewshot: int = 0, fewshot: str | os.PathLike[str] | Sequence[Example] | None = None,
          fewshot_seed: int = 1234, sampler: str = "random") -> Task:
    """Task `arith`; `fewshot` is an arith Example JSONL (or Examples)."""
    pool = load(fewshot) if isinstance(fewshot, (str, os.PathLike)) else list(fewshot or [])
    return Task(
        name="arith", loader=load, doc_to_text=question_text, doc_to_target=answer_text,
        extractions={"answer-line": answer_line, "flexible-extract": flexible_number}, metric=GSM8K_MATCH,
        num_fewshot=num_fewshot, fewshot=pool, fewshot_seed=fewshot_seed, sampler=sampler, target_delimiter="\n",
    )
