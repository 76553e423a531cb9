"""Scoring predictions that are already written, without a model: match them to a task's data, give
each a verdict per extraction, and summarise with intervals.

    pseudocot eval score --task gsm8k --data test.jsonl --predictions predictions.jsonl

A predictions file is JSONL with one row per question of the data file: `id` (the Example id the
task's loader gives, e.g. `gsm8k/test/0`) or `question` (the question text, compared with
surrounding whitespace removed), and `prediction` (the model's text). For a multiple-choice task a
row may instead (or also) give `loglikelihoods`, one number per option in letter order, scored as
the harness's `acc`. Every question needs exactly one prediction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pseudocot.data.example import CHOICE_LETTERS, Example
from pseudocot.data.jsonl import iter_json_lines
from pseudocot.errors import DataError
from pseudocot.evaluate import metrics
from pseudocot.tasks.task import Task, pick_choice


@dataclass
class Prediction:
    example: Example
    line: int
    """Line of the predictions file."""
    text: str | None = None
    loglikelihoods: list[float] | None = None


def verdicts_path(predictions: str | os.PathLike[str]) -> Path:
    """Where the verdicts of a predictions file go: `p.jsonl` -> `p.verdicts.jsonl`, beside it."""
    path = Path(predictions)
    return path.with_name(path.name.removesuffix(".jsonl") + ".verdicts.jsonl")


def _parse_loglikelihoods(value: Any, ex: Example) -> list[float]:
    n = len(ex.choices or ())
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError("'loglikelihoods' must be a list of numbers, one per option")
    if len(value) != n:
        raise DataError(f"'loglikelihoods' has {len(value)} numbers but the question has {n} options")
    return [float(v) for v in value]


def read_predictions(path: str | os.PathLike[str], examples: Sequence[Example], data_name: str = "the data") -> list[Prediction]:
    """Predictions matched to `examples`, returned in the data's order; every problem raises a
    DataError naming `FILE:LINE`."""
    by_id = {ex.id: ex for ex in examples}
    by_question: dict[str, Example] = {}
    for ex in examples:
        by_question.setdefault(ex.question.strip(), ex)
    found: dict[str, Prediction] = {}
    for line, _, row in iter_json_lines(path):
        where = f"{path}:{line}"
        if isinstance(row, DataError):
            raise DataError(f"{where}: {row}; fix the line.")
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with 'id' or 'question' and 'prediction'; fix the line.")
        if row.get("id") is not None:
            key = str(row["id"])
            if key not in by_id:
                raise DataError(f"{where}: id '{key}' is not in {data_name}; use the ids its loader gives (or give 'question').")
            ex = by_id[key]
        elif isinstance(row.get("question"), str):
            if row["question"].strip() not in by_question:
                raise DataError(f"{where}: no question of {data_name} has this text; give the question as written there, or its 'id'.")
            ex = by_question[row["question"].strip()]
        else:
            raise DataError(f"{where}: the row has neither 'id' nor 'question'; give one of them to say which question it answers.")
        if ex.id in found:
            raise DataError(f"{where}: a second prediction for question '{ex.id}' (the first is on line {found[ex.id].line}); keep one.")
        text, lls = row.get("prediction"), row.get("loglikelihoods")
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: 'prediction' must be a string (the model's text), got {type(text).__name__}.")
        if text is None and lls is None:
            raise DataError(f"{where}: the row has no 'prediction'; add the model's text.")
        try:
            parsed = _parse_loglikelihoods(lls, ex) if lls is not None else None
        except DataError as e:
            raise DataError(f"{where}: {e}.") from None
        found[ex.id] = Prediction(example=ex, line=line, text=text, loglikelihoods=parsed)
    missing = [ex.id for ex in examples if ex.id not in found]
    if missing:
        raise DataError(f"{path}: no prediction for {len(missing)} of the {len(examples)} questions of {data_name} "
                        f"(first: '{missing[0]}'); add them.")
    out = [found[ex.id] for ex in examples]
    for attr, what in (("text", "prediction"), ("loglikelihoods", "loglikelihoods")):
        have = [getattr(p, attr) is not None for p in out]
        if any(have) and not all(have):
            first = min(p.line for p, h in zip(out, have) if not h)
            raise DataError(f"{path}:{first}: the row has no '{what}' where other rows have one; give it on every row or on none.")
    return out


def score_predictions(task: Task, predictions: Sequence[Prediction], n_boot: int = 10_000,
                      seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, one verdict per prediction). The summary holds `accuracy` and `ci95` keyed by
    extraction (plus `loglikelihood` for option scores), `primary` (the headline key: the task's
    primary extraction, or `loglikelihood` when given), the mean `faithfulness` of the texts that
    state arithmetic, and BLEU / ROUGE-L against the reference reasoning where the data has it."""
    if not predictions:
        raise DataError("there are no predictions to score")
    # read_predictions makes each of the two present on every row or on none
    has_text = all(p.text is not None for p in predictions)
    has_lls = all(p.loglikelihoods is not None for p in predictions)
    if has_lls and not task.n_choices:
        raise DataError(f"task '{task.name}' is not multiple choice, so 'loglikelihoods' cannot be scored; give 'prediction' texts.")
    verdicts: list[dict[str, Any]] = []
    correct: dict[str, list[bool]] = {}
    faithful: list[float] = []
    for p in predictions:
        ex = p.example
        verdict: dict[str, Any] = {"id": ex.id, "line": p.line, "answer": task.reference(ex)}
        if has_text:
            assert p.text is not None
            verdict["extracted"] = task.extract(p.text)
            verdict["correct"] = task.score(p.text, ex)
            verdict["faithfulness"] = metrics.faithfulness(p.text)
            if verdict["faithfulness"] is not None:
                faithful.append(verdict["faithfulness"])
        if has_lls:
            assert p.loglikelihoods is not None
            verdict.setdefault("extracted", {})["loglikelihood"] = CHOICE_LETTERS[pick_choice(p.loglikelihoods)]
            verdict.setdefault("correct", {})["loglikelihood"] = task.score_loglikelihoods(p.loglikelihoods, ex)["acc"]
        for name, ok in verdict["correct"].items():
            correct.setdefault(name, []).append(ok)
        verdicts.append(verdict)

    # option log-likelihoods are the harness's MMLU number, so they lead when given
    primary = "loglikelihood" if has_lls else task.primary
    summary: dict[str, Any] = {"task": task.name, "n": len(predictions), "primary": primary, "accuracy": {}, "ci95": {}}
    for name, values in correct.items():
        acc = metrics.accuracy(values, n_boot=n_boot, seed=seed)
        summary["accuracy"][name] = acc["accuracy"]
        summary["ci95"][name] = acc["ci95"]
    if has_text:
        summary["faithfulness"] = {"mean": sum(faithful) / len(faithful) if faithful else None, "n": len(faithful)}
        pairs = [(p.text, p.example.reasoning) for p in predictions if p.example.reasoning]
        if pairs:
            hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
            summary["reasoning"] = {"bleu": metrics.bleu(hyps, refs), "rouge_l": metrics.rouge_l(hyps, refs), "n": len(pairs)}
    return summary, verdicts
