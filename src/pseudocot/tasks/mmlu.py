"""MMLU as lm-evaluation-harness runs it: task `mmlu:<subject>` over the original CSV files.

Prompt (lm-evaluation-harness, `lm_eval/tasks/mmlu/default/_default_template_yaml`): the subject line
`The following are multiple choice questions (with answers) about {subject with spaces}.\\n\\n`, then
0 shots (the harness default) or k shots from the subject's dev file in file order, each
`{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: {letter}\\n\\n`, then the question ending `Answer:`.

Two ways to score:
- log-likelihood (the harness's `acc`, the usual MMLU number): the model scores the continuations
  `" A"` .. `" D"` of the prompt (`Task.loglikelihood_requests`); the highest one is the answer
  (`Task.score_loglikelihoods`).
- generative, on text: `strict-match` is the harness's generative variant (the first line, stripped,
  compared ignoring case and punctuation, so `B`, `b.` and `(B)` count but `B) 4` does not);
  `letter` (ours) also reads `The answer is (B)` anywhere and a letter opening the first line.

Data paths are always given: a CSV file, or a folder holding `{subject}_test.csv` or
`test/{subject}_test.csv` (few-shot: `{subject}_dev.csv` or `dev/{subject}_dev.csv`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pseudocot.data.example import CHOICE_LETTERS, Example
from pseudocot.data.loaders import load_mmlu
from pseudocot.errors import DataError
from pseudocot.tasks.extract import LETTER_MATCH, choice_letter, mmlu_first_line
from pseudocot.tasks.task import Task


def subject_file(path: str | os.PathLike[str], subject: str, split: str) -> Path:
    """`path` itself when it is a file, else the subject's CSV of `split` inside the folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder; give an MMLU CSV file or the folder that holds them.")
    for candidate in (path / f"{subject}_{split}.csv", path / split / f"{subject}_{split}.csv"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{path}: has neither {subject}_{split}.csv nor {split}/{subject}_{split}.csv; "
                    "check the subject name and the folder.")


def doc_to_text(ex: Example) -> str:
    options = "".join(f"\n{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(ex.choices or ()))
    return f"{ex.question.strip()}{options}\nAnswer:"


def mmlu(subject: str, num_fewshot: int = 0, fewshot: str | os.PathLike[str] | Sequence[Example] | None = None) -> Task:
    """Task `mmlu:<subject>`; `fewshot` is the dev CSV, a folder holding it, or Examples."""
    if not subject:
        raise DataError("name an MMLU subject: mmlu:college_mathematics, say.")
    pool: list[Example] = []
    if isinstance(fewshot, (str, os.PathLike)):
        pool = load_mmlu(subject_file(fewshot, subject, "dev")).examples
    elif fewshot is not None:
        pool = list(fewshot)
    return Task(
        name=f"mmlu:{subject}",
        loader=lambda path: load_mmlu(subject_file(path, subject, "test")).examples,
        doc_to_text=doc_to_text, doc_to_target=lambda ex: ex.answer,
        extractions={"strict-match": mmlu_first_line, "letter": choice_letter},
        metric=LETTER_MATCH,
        description=f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
        num_fewshot=num_fewshot, fewshot=pool, sampler="first_n", stop=("</s>", "\n"), n_choices=4,
    )
