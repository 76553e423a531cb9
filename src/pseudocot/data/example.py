"""The one `Example` schema every loader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pseudocot.errors import DataError


@dataclass
class Example:
    id: str
    """Unique within a file."""
    question: str
    """The question or problem, as the user would ask it."""
    answer: str
    """The gold final answer: a number as text, a choice letter, or free text."""
    choices: list[str] | None = None
    """Answer options of a multiple-choice question, in letter order (A, B, ...)."""
    reasoning: str | None = None
    """Reference step-by-step reasoning, one step per line, where the source has it."""
    source: str = ""
    """Which dataset the example came from (`arith`, `gsm8k`, `mmlu:college_mathematics`, ...)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else: the number of steps, the subject, the original row."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: Any, require_answer: bool = True) -> Example:
        """Validate a parsed JSON object; raises DataError with one sentence naming the field.
        `require_answer=False` takes a question without a gold answer (`answer` is then "")."""
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}")
        unknown = sorted(set(row) - _FIELDS)
        if unknown:
            raise DataError(f"unknown field '{unknown[0]}' (Example fields: {', '.join(sorted(_FIELDS))})")
        values = dict(row)
        if not require_answer and values.get("answer") in (None, ""):
            values["answer"] = ""
        for name in ("id", "question", "answer"):
            if name not in values:
                raise DataError(f"missing field '{name}'")
        # Ids and answers are often numbers in hand-written files: take them as text.
        for name in ("id", "answer"):
            if isinstance(values[name], (int, float)) and not isinstance(values[name], bool):
                values[name] = str(values[name])
        for name in ("id", "question", "answer"):
            if not isinstance(values[name], str):
                raise DataError(f"field '{name}' must be a string, got {type(values[name]).__name__}")
        for name in ("question", "answer") if require_answer else ("question",):
            if not values[name].strip():
                raise DataError(f"field '{name}' is empty")
        choices = values.get("choices")
        if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
            raise DataError("field 'choices' must be a list of strings or null")
        for name in ("reasoning", "source"):
            if values.get(name) is not None and not isinstance(values[name], str):
                raise DataError(f"field '{name}' must be a string, got {type(values[name]).__name__}")
        if values.get("meta") is not None and not isinstance(values["meta"], dict):
            raise DataError(f"field 'meta' must be an object, got {type(values['meta']).__name__}")
        values["source"] = values.get("source") or ""
        values["meta"] = values.get("meta") or {}
        return cls(**values)


_FIELDS = {"id", "question", "answer", "choices", "reasoning", "source", "meta"}

CHOICE_LETTERS = "ABCDEFGHIJ"
