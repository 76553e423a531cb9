"""GSM8K as lm-evaluation-harness runs it: tasks `gsm8k` and `gsm8k_cot` (`lm_eval/tasks/gsm8k/*.yaml`).

- `gsm8k`: `Question: {question}\\nAnswer:`, 5 shots drawn by the seeded random sampler from the
  train file, each shot's target the full solution with its `<<...>>` notes and `#### N` line.
- `gsm8k_cot`: `Q: {question}\\nA:`, the 8 Wei et al. exemplars in file order
  (`cot_fewshot_8.jsonl`, rows `question`, `target`), each target ending `The answer is N.`.

Both report three extractions, each scored with the harness's exact_match (`,`, `$`, everything up
to `#### ` and one final `.` removed, case ignored):

- `strict-match`: the harness's own format only: `#### N` (gsm8k) or the first `The answer is N.`
  (gsm8k_cot). A model that ends "The answer is 18." fails strict on gsm8k and passes on gsm8k_cot.
- `flexible-extract`: the last number-like token, whatever the wording.
- `answer-line` (ours, not a harness metric): the last stated answer, `The answer is N`,
  `The final answer is N`, `Final answer: N` or `#### N`. It never reads a bare number, so a text
  with no answer statement is `[invalid]` where flexible would still take its last number; and
  when a model writes more numbers after its answer (a check like `18 + 2 = 20`), flexible reads
  the later number, answer-line the stated one. When the answer statement ends the text, the two agree.

strict-match is the headline (`primary`) and what `reward()` pays for by default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pseudocot.data.example import Example
from pseudocot.data.jsonl import collect, iter_json_lines, read_examples
from pseudocot.data.loaders import load_gsm8k
from pseudocot.errors import DataError
from pseudocot.tasks.extract import GSM8K_MATCH, answer_line, flexible_number, gsm8k_cot_strict, gsm8k_strict
from pseudocot.tasks.task import Task

FewshotSource = str | os.PathLike[str] | Sequence[Example] | None

_COT_ANSWER = re.compile(r"The answer is (-?[0-9][0-9,]*(?:\.[0-9]+)?)\.?\s*$")


def _first_row(path: Path) -> Any:
    for _, _, row in iter_json_lines(path):
        return row
    raise DataError(f"{path}: the file is empty; give a GSM8K JSONL file.")


def cot_exemplar(row: Any, id: str) -> Example:
    """A chain-of-thought exemplar row (`question`, `target` ending `The answer is N.`)."""
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("target"), str):
        raise DataError("expected an object with string fields 'question' and 'target'")
    target = row["target"]
    m = _COT_ANSWER.search(target)
    if not m:
        raise DataError("field 'target' does not end with 'The answer is N.'")
    return Example(id=id, question=row["question"].strip(), answer=m.group(1).replace(",", ""),
                   reasoning=target[: m.start()].strip() or None, source="gsm8k_cot", meta={"target": target})


def load_gsm8k_any(path: str | os.PathLike[str]) -> list[Example]:
    """The published GSM8K JSONL (`question`, `answer` with `#### N`), the CoT exemplar file
    (`question`, `target`), or an Example JSONL (as `pseudocot data convert --format gsm8k` writes)."""
    path = Path(path)
    row = _first_row(path)
    if isinstance(row, dict) and "target" in row and "answer" not in row:
        return collect(path, iter_json_lines(path), lambda i, r: cot_exemplar(r, f"gsm8k_cot/fewshot/{i}")).examples
    if isinstance(row, dict) and "id" not in row:
        return load_gsm8k(path).examples
    return read_examples(path).examples


def _fewshot(source: FewshotSource) -> list[Example]:
    if source is None:
        return []
    if isinstance(source, (str, os.PathLike)):
        return load_gsm8k_any(source)
    return list(source)


def full_solution(ex: Example) -> str:
    """gsm8k's few-shot target: the original solution, or one rebuilt from the reasoning."""
    if isinstance(ex.meta.get("solution"), str):
        return ex.meta["solution"]
    return f"{ex.reasoning}\n#### {ex.answer}" if ex.reasoning else f"#### {ex.answer}"


def cot_target(ex: Example) -> str:
    """gsm8k_cot's few-shot target: an exemplar's target, else (as the harness) the bare gold number."""
    if isinstance(ex.meta.get("target"), str):
        return ex.meta["target"]
    if isinstance(ex.meta.get("solution"), str):
        return ex.meta["solution"].split("####")[-1].strip()
    return ex.answer


def gsm8k(num_fewshot: int = 5, fewshot: FewshotSource = None, fewshot_seed: int = 1234, sampler: str = "random") -> Task:
    """Task `gsm8k`; `fewshot` is the GSM8K train file (or Examples)."""
    return Task(
        name="gsm8k", loader=load_gsm8k_any,
        doc_to_text=lambda ex: f"Question: {ex.question}\nAnswer:", doc_to_target=full_solution,
        extractions={"strict-match": gsm8k_strict, "flexible-extract": flexible_number, "answer-line": answer_line},
        metric=GSM8K_MATCH, num_fewshot=num_fewshot, fewshot=_fewshot(fewshot), sampler=sampler,
        fewshot_seed=fewshot_seed, stop=("Question:", "</s>", "<|im_end|>"),
    )


def gsm8k_cot(num_fewshot: int = 8, fewshot: FewshotSource = None, fewshot_seed: int = 1234, sampler: str = "first_n") -> Task:
    """Task `gsm8k_cot`; `fewshot` is the exemplar file `cot_fewshot_8.jsonl` (or Examples)."""
    return Task(
        name="gsm8k_cot", loader=load_gsm8k_any,
        doc_to_text=lambda ex: f"Q: {ex.question}\nA:", doc_to_target=cot_target,
        extractions={"strict-match": gsm8k_cot_strict, "flexible-extract": flexible_number, "answer-line": answer_line},
        metric=GSM8K_MATCH, num_fewshot=num_fewshot, fewshot=_fewshot(fewshot), sampler=sampler,
        fewshot_seed=fewshot_seed, stop=("Q:", "</s>", "<|im_end|>"),
    )
