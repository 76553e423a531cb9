"""Questions written from documents: reading the teacher's replies, the items as filter candidates, the
kept ones as Examples, and the split by document.

A reply is a JSON list of items `{"question", "answer", "reasoning"}` (the reasoning a list of steps or
one step per line), alone or inside a code fence or some prose; `{"items": [...]}` and one bare item
are read too, and so are the whole items of a list cut off at the token limit. A reply with no
readable item is malformed (`malformed:<why>`); an item without a question or an answer is rejected
on its own (`malformed:item`).

An item row (what `pseudocot synth qfilter` reads, and what the questions stage writes to its rejects):

    {"id", "question", "answer", "reasoning", "source": "NAME#START-END"}
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pseudocot.data.chat import answer_text
from pseudocot.data.documents import parse_source
from pseudocot.data.example import Example
from pseudocot.synth.filter import Candidate, is_answer_line
from pseudocot.synth.teacher import split_thinking

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_STEP_LABEL = re.compile(r"^\s*(?:step\s*\d+\s*[:.)-]|\d{1,2}[.)](?=\s))\s*", re.IGNORECASE)


def _json_values(text: str) -> list[Any]:
    """JSON values found in a reply: the whole text, each code fence, the outermost [...] or {...}."""
    tries = [text, *_FENCE.findall(text)]
    for open_, close_ in (("[", "]"), ("{", "}")):
        a, b = text.find(open_), text.rfind(close_)
        if 0 <= a < b:
            tries.append(text[a: b + 1])
    out = []
    for t in tries:
        try:
            out.append(json.loads(t))
        except (json.JSONDecodeError, ValueError):
            continue
    return out


def _objects(text: str) -> list[dict[str, Any]]:
    """Every complete top-level JSON object in a text, in order: the items a reply cut off at its token limit, or
    written one after another without a list, did finish."""
    out, depth, start, in_string, escaped = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string, escaped = True, False
        elif ch == "{":
            depth += 1
            if depth == 1:
                start = i
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                try:
                    value = json.loads(text[start: i + 1])
                except (json.JSONDecodeError, ValueError):
                    continue
                if isinstance(value, dict):
                    out.append(value)
    return out


def _steps(value: Any) -> list[str] | None:
    if isinstance(value, str):
        lines = value.splitlines()
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        lines = [str(v) for v in value]
    else:
        return None
    steps = [_STEP_LABEL.sub("", line).strip() for line in lines]
    return [st for st in steps if st and not is_answer_line(st)]


@dataclass
class Reply:
    items: list[dict[str, Any]]
    """Readable items: question, answer (text), reasoning (steps joined by newlines)."""
    problems: list[str]
    """`malformed:item: ...` per unreadable item."""
    error: str | None = None
    """`malformed:<why>: ...` when the reply holds no readable item."""


def parse_reply(text: str, k: int, finish_reason: str = "stop") -> Reply:
    """The first `k` items of a teacher's reply.

    >>> r = parse_reply('Sure!\\n```json\\n[{"question": "How many?", "answer": 24, "reasoning": ["48 / 2 = 24"]}]\\n```', 3)
    >>> r.items, r.error
    ([{'question': 'How many?', 'answer': '24', 'reasoning': '48 / 2 = 24'}], None)
    >>> parse_reply("I cannot do that.", 3).error
    'malformed:no-json: the reply holds no JSON list of items'
    """
    _, body = split_thinking(text)
    values = _json_values(body)
    listed = None
    for v in values:
        if isinstance(v, dict) and isinstance(v.get("items", v.get("questions")), list):
            v = v.get("items", v.get("questions"))
        elif isinstance(v, dict) and "question" in v:
            v = [v]
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            listed = v
            break
    if listed is None:  # no whole list: the items that are whole (a reply cut off after some of them)
        listed = [o for o in _objects(body) if "question" in o] or None
    if listed is None:
        why = ("malformed:cut-off: the reply stopped at max_new_tokens before its JSON closed" if finish_reason == "length" and not values
               else "malformed:no-json: the reply holds no JSON list of items" if not values
               else "malformed:not-items: the reply's JSON is not a list of {question, answer, reasoning} objects")
        return Reply([], [], why)
    items, problems = [], []
    for i, raw in enumerate(listed[:k], 1):
        question, answer = raw.get("question"), raw.get("answer")
        steps = _steps(raw.get("reasoning", raw.get("steps", [])))
        if not isinstance(question, str) or not question.strip():
            problems.append(f"malformed:item: item {i} has no question")
        elif not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
            problems.append(f"malformed:item: item {i} has no answer")
        elif steps is None:
            problems.append(f"malformed:item: item {i}'s reasoning is not text or a list of steps")
        else:
            items.append({"question": " ".join(question.split()), "answer": str(answer).strip(), "reasoning": "\n".join(steps)})
    if not items:
        return Reply([], problems, problems[0] if problems else "malformed:no-items: the reply's list is empty")
    return Reply(items, problems)


def item_candidate(row: dict[str, Any], context: str | None) -> Candidate:
    """An item as the filter reads it: its steps, then `The answer is X.`; `context` is its chunk's text."""
    ex = Example(id=str(row["id"]), question=str(row["question"]), answer=str(row["answer"]), reasoning=row.get("reasoning") or None)
    return Candidate(id=ex.id, sample=0, question=ex.question, completion=answer_text(ex), row=row, context=context)


def kept_item(c: Candidate, checks: Sequence[str], teacher: str | None = None) -> Example:
    """A kept item as an Example: `source` = its chunk (`NAME#START-END`), `meta.document` its document."""
    row = c.row
    where = parse_source(str(row.get("source") or ""))
    meta: dict[str, Any] = {"document": where[0] if where else None, "span": str(row.get("source") or "") or None,
                            "questions": {"checks": list(checks)}}
    if teacher:
        meta["questions"]["teacher"] = teacher
    return Example(id=str(row["id"]), question=str(row["question"]), answer=str(row["answer"]),
                   reasoning=row.get("reasoning") or None, source=str(row.get("source") or "documents"), meta=meta)


def document_of(ex: Example) -> str:
    span = str(ex.meta.get("span") or ex.source)
    return str(ex.meta.get("document") or (parse_source(span) or (span,))[0])


def split_by_document(examples: Sequence[Example], val: float, test: float, seed: int, by: str = "document") -> dict[str, list[Example]]:
    """train/val/test with every question of a document in one split: the documents are shuffled by `seed`, the
    first `test` share of them (at least one when there are three or more) gives the test questions, the next `val`.
    `by="question"`: the same with each question on its own (evaluation then asks about texts the model trained on)."""
    key = document_of if by == "document" else (lambda e: e.id)
    docs = sorted({key(e) for e in examples})
    random.Random(seed).shuffle(docs)
    n_test = max(1 if test > 0 and len(docs) >= 3 else 0, round(len(docs) * test))
    n_val = max(1 if val > 0 and len(docs) >= 3 else 0, round(len(docs) * val))
    where = {d: "test" for d in docs[:n_test]} | {d: "val" for d in docs[n_test: n_test + n_val]}
    out: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for e in examples:
        out[where.get(key(e), "train")].append(e)
    return out
