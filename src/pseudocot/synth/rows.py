"""Candidate rows and the filter over files: a teacher's solution rows (`candidates.jsonl`, or any file of
`{id or question, completion}` rows) read as `Candidate`s of their questions, the filter's settings from a
`SynthConfig`, and its kept Examples and rejects written. The synth stage, the distillation's teacher-written
solutions and `pseudocot synth filter` share them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pseudocot.config import SynthConfig
from pseudocot.data.example import Example
from pseudocot.data.jsonl import iter_json_lines, rejects_path, write_examples, write_jsonl
from pseudocot.errors import DataError
from pseudocot.synth.filter import Candidate, FilterResult, FilterSettings, is_answer_line, kept_example, run_filter, split_solution
from pseudocot.synth.teacher import Judge
from pseudocot.tasks import Task


def settings_of(s: SynthConfig, task: Task, judge: Judge | None = None) -> FilterSettings:
    return FilterSettings(task=task, extraction=s.extraction, min_agreement=s.min_agreement, min_steps=s.min_steps,
                          max_steps=s.max_steps, max_step_chars=s.max_step_chars, judge=judge)


def candidate_of(row: dict[str, Any], q: Example, sample: int, completion: str) -> Candidate:
    """One solution row as the filter reads it: its question, sample number and text, the gold where there is one."""
    return Candidate(id=q.id, sample=sample, question=q.question, completion=completion, gold=q if q.answer else None,
                     finish_reason=str(row.get("finish_reason") or "stop"), row=row)


def to_candidates(rows: Sequence[dict[str, Any]], questions: Sequence[Example], reasoning_from: str = "content") -> list[Candidate]:
    """Candidate rows of the current questions, in order; `reasoning_from: thinking` reads the steps from
    the thinking (its answer lines left out), then the content's answer line."""
    gold = {q.id: q for q in questions}
    out = []
    for row in rows:
        q = gold.get(str(row["id"]))
        if q is None:
            continue
        text = str(row.get("completion") or "")
        if reasoning_from == "thinking" and row.get("thinking"):
            # The thinking's own answer lines are intermediate answers (`pseudocot serve` returns the base
            # model's re-answers between its thoughts), not steps.
            steps = [line for line in str(row["thinking"]).splitlines() if line.strip() and not is_answer_line(line)]
            final = split_solution(text)[1]
            text = "\n".join([*steps, final or text])
        out.append(candidate_of(row, q, int(row["sample"]), text))
    return out


def write_outputs(result: FilterResult, kept_path: Path, rejects_path: Path, teacher: str, checks: Sequence[str]) -> None:
    write_examples(kept_path, (kept_example(c, teacher, checks) for c in result.kept))
    write_jsonl(rejects_path, ({**c.row, "reasons": reasons} for c, reasons in result.rejected))


def read_candidate_rows(path: Path, gold: Sequence[Example] | None) -> tuple[list[Candidate], list[Example]]:
    """Rows `{"id" or "question", "completion"}` (optional `sample`, `thinking`, `finish_reason`) matched to
    the gold questions by id, else by question text; without gold, each distinct question is its own."""
    by_id = {g.id: g for g in gold or []}
    by_text = {g.question.strip(): g for g in gold or []}
    made: dict[str, Example] = {}
    counts: dict[str, int] = {}
    out = []
    for lineno, _, row in iter_json_lines(path):
        where = f"{path}:{lineno}"
        if isinstance(row, DataError):
            raise DataError(f"{where}: {row}; fix the line.")
        if not isinstance(row, dict) or not isinstance(row.get("completion"), str) or not (row.get("id") is not None or row.get("question")):
            raise DataError(f"{where}: a candidate row needs 'completion' (text) and 'id' or 'question'; fix the line.")
        q: Example | None
        if gold is not None:
            q = by_id.get(str(row["id"])) if row.get("id") is not None else by_text.get(str(row["question"]).strip())
            if q is None:
                what = f"id '{row['id']}'" if row.get("id") is not None else "its question"
                raise DataError(f"{where}: {what} is not in the gold data; give the matching --data file.")
        else:
            qid = str(row["id"]) if row.get("id") is not None else str(row["question"]).strip()
            q = made.setdefault(qid, Example(id=qid, question=str(row.get("question") or qid), answer=""))
        sample = int(row["sample"]) if isinstance(row.get("sample"), int) else counts.get(q.id, 0)
        counts[q.id] = counts.get(q.id, 0) + 1
        out.append(candidate_of(row, q, sample, row["completion"]))
    return out, list(gold) if gold is not None else list(made.values())


def filter_files(task: Task, data: str | None, candidates: str, out: str, checks: Sequence[str], settings: SynthConfig,
                 judge: Judge | None = None) -> dict[str, Any]:
    """Filter a candidates file: kept Examples to `out`, rejects with reasons beside it; returns the summary."""
    gold = task.load(data) if data else None
    cands, _ = read_candidate_rows(Path(candidates), gold)
    result = run_filter(cands, settings_of(settings, task, judge), checks)
    write_outputs(result, Path(out), rejects_path(out), f"file:{os.path.basename(candidates)}", checks)
    return result.summary()
