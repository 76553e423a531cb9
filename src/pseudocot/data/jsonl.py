"""JSONL reading and writing for `Example` files.

Every problem is reported as `FILE:LINE: what is wrong`. With `skip_bad=True` reading keeps going
and returns the rejected lines with their reasons, so a caller can write them beside its output.
Writes are atomic (temp file, then rename).

    pseudocot data check FILE.jsonl
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pseudocot.data.example import Example
from pseudocot.errors import DataError
from pseudocot.files import atomic_open


@dataclass
class Reject:
    file: str
    line: int
    reason: str
    text: str

    def message(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason, "text": self.text}


@dataclass
class ReadResult:
    examples: list[Example] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def iter_json_lines(path: str | os.PathLike[str]) -> Iterable[tuple[int, str, Any | DataError]]:
    """Yield (line number, raw text, parsed object or the DataError) for each non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path.")
    # Bytes, decoded line by line: a text-mode reader decodes ahead in chunks, so its error would
    # name the wrong line.
    with path.open("rb") as f:
        for lineno, raw_bytes in enumerate(f, start=1):
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason}); re-encode the file as UTF-8.") from None
            text = raw.strip()
            if not text:
                continue
            try:
                yield lineno, text, json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, text, DataError(f"not valid JSON ({e.msg} at column {e.colno})")


def collect(
    path: str | os.PathLike[str],
    rows: Iterable[tuple[int, str, Any]],
    to_example: Callable[[int, Any], Example],
    skip_bad: bool = False,
) -> ReadResult:
    """Turn (line, raw text, parsed row or DataError) into Examples with unique ids.

    Without `skip_bad` the first bad row raises `FILE:LINE: reason`; with it, bad rows become rejects.
    """
    result = ReadResult()
    seen: dict[str, int] = {}
    for index, (lineno, text, row) in enumerate(rows):
        try:
            if isinstance(row, DataError):
                raise row
            ex = to_example(index, row)
            if ex.id in seen:
                raise DataError(f"duplicate id '{ex.id}' (first on line {seen[ex.id]})")
            seen[ex.id] = lineno
            result.examples.append(ex)
        except DataError as e:
            reject = Reject(str(path), lineno, str(e), text)
            if not skip_bad:
                raise DataError(reject.message() + "; fix it or pass --skip-bad to leave it out.") from None
            result.rejects.append(reject)
    return result


def read_examples(path: str | os.PathLike[str], skip_bad: bool = False) -> ReadResult:
    """Read an Example JSONL file. Without `skip_bad` the first bad line raises `FILE:LINE: ...`."""
    return collect(path, iter_json_lines(path), lambda _, row: Example.from_dict(row), skip_bad)


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write dicts as JSON lines atomically; returns the number written."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_examples(path: str | os.PathLike[str], examples: Iterable[Example]) -> int:
    return write_jsonl(path, (ex.to_dict() for ex in examples))


def rejects_path(out: str | os.PathLike[str]) -> Path:
    """Where the rejects of an output file go: `x.jsonl` -> `x.rejects.jsonl`, beside it."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".rejects.jsonl")


def write_rejects(out: str | os.PathLike[str], rejects: list[Reject]) -> Path | None:
    """Write rejects beside `out` (or remove a stale rejects file when there are none)."""
    path = rejects_path(out)
    if not rejects:
        path.unlink(missing_ok=True)
        return None
    write_jsonl(path, (r.to_dict() for r in rejects))
    return path
