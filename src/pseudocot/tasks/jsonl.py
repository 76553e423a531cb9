"""Task `jsonl`: a user's own question file, with a field mapping and a choice of extraction.

    get_task("jsonl", fields={"question": "prompt", "answer": "label"}, extraction="text")

The file is JSONL (or CSV with a header, by its `.csv` suffix), read by `data.loaders` with the field
mapping `{Example field: column}`. The prompt is `Question: {question}\\nAnswer:`, or for a row with
choices the MMLU layout (`{question}\\nA. ..\\nAnswer:`). Extractions by `extraction`:

- `number`: `answer-line` (primary) and `flexible-extract` as for GSM8K, with GSM8K's exact_match
  (`,` `$` and a final `.` ignored; `5.0` is not `5`).
- `letter`: `letter`, a choice letter (`The answer is (B)`, or a letter opening the first line),
  compared ignoring case and punctuation. Rows with choices can also be scored by log-likelihood.
- `text`: `exact`, the text after the last `The answer is` (else the first line), compared with
  the gold answer ignoring case, punctuation and surrounding whitespace.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pseudocot.data.chat import answer_text
from pseudocot.data.example import CHOICE_LETTERS, Example
from pseudocot.data.loaders import load_csv, load_jsonl
from pseudocot.errors import ConfigError
from pseudocot.tasks.extract import GSM8K_MATCH, LETTER_MATCH, ExactMatch, answer_line, choice_letter, first_line_or_answer, flexible_number
from pseudocot.tasks.mmlu import doc_to_text as choices_text
from pseudocot.tasks.task import Task

EXTRACTIONS = ("number", "letter", "text")
TEXT_MATCH = ExactMatch(regexes_to_ignore=(r"^\s+|\s+$",), ignore_case=True, ignore_punctuation=True)


def loader(fields: dict[str, str] | None):
    def load(path: str | os.PathLike[str]) -> list[Example]:
        read = load_csv if Path(path).suffix.lower() == ".csv" else load_jsonl
        return read(path, fields).examples
    return load


def doc_to_text(ex: Example) -> str:
    return choices_text(ex) if ex.choices else f"Question: {ex.question}\nAnswer:"


def jsonl(fields: dict[str, str] | None = None, extraction: str = "number", num_fewshot: int = 0,
          fewshot: str | os.PathLike[str] | Sequence[Example] | None = None, fewshot_seed: int = 1234,
          sampler: str = "random") -> Task:
    """Task `jsonl`; `fewshot` is a file in the same layout (read with the same mapping) or Examples."""
    if extraction not in EXTRACTIONS:
        raise ConfigError(f"task 'jsonl': extraction '{extraction}' is not one of {', '.join(EXTRACTIONS)}.")
    load = loader(fields)
    pool = load(fewshot) if isinstance(fewshot, (str, os.PathLike)) else list(fewshot or [])
    if extraction == "number":
        extractions, metric, target = {"answer-line": answer_line, "flexible-extract": flexible_number}, GSM8K_MATCH, answer_text
    elif extraction == "letter":
        extractions = {"letter": lambda text: choice_letter(text, len(CHOICE_LETTERS))}
        metric, target = LETTER_MATCH, (lambda ex: ex.answer)
    else:
        extractions, metric, target = {"exact": first_line_or_answer}, TEXT_MATCH, (lambda ex: ex.answer)
    return Task(name="jsonl", loader=load, doc_to_text=doc_to_text, doc_to_target=target, extractions=extractions,
                metric=metric, num_fewshot=num_fewshot, fewshot=pool, fewshot_seed=fewshot_seed, sampler=sampler,
                n_choices=4 if extraction == "letter" else 0)
