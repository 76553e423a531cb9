"""The generation cache of an evaluation: what each system answered, on disk as soon as it exists.

    <eval>/cache/<task>-<task key>/<system>-<system key>/seed-<s>/part-<i>-of-<n>.jsonl
    <eval>/cache/systems/<system>-<system key>.json       parameter counts, written when it was built

(the folders are `layout.EvalLayout`'s `answers` and `system_meta`; this module owns the parts.)

One JSONL row per answered question (`Response` fields plus `seed` and `wall_seconds`, the
question's share of its chunk's wall time). A process appends a chunk's rows and fsyncs them before
it starts the next chunk, so a killed evaluation loses at most the chunk it was in; a row cut off
by the kill is dropped (and the file's torn tail cut) the next time the file is touched. Every
process (`--shard i/n`, or none: `part-all`) writes its own part; readers take the union of all
parts by question id, so any sharding, and any mix of finished and unfinished runs, reads back
as the same set of answers. The keys change with the task's data and options and the system's
settings and model files, so a changed system is answered afresh instead of read from a stale cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pseudocot.errors import DataError
from pseudocot.files import append_jsonl, atomic_write_text, complete_lines


def part_name(shard: tuple[int, int] | None) -> str:
    return "part-all.jsonl" if shard is None else f"part-{shard[0]}-of-{shard[1]}.jsonl"


class GenerationCache:
    """The answers of one system to one task with one seed."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.jsonl")) if self.folder.is_dir() else []

    def rows(self) -> dict[str, dict[str, Any]]:
        """Question id -> its row, over every part (the first row of an id wins)."""
        out: dict[str, dict[str, Any]] = {}
        for path in self.parts():
            for lineno, raw in complete_lines(path):
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise DataError(f"{path}:{lineno}: not a cached answer (broken JSON); delete the file to answer its questions again.") from None
                if not isinstance(row, dict) or "id" not in row:
                    raise DataError(f"{path}:{lineno}: not a cached answer (no 'id'); delete the file to answer its questions again.")
                out.setdefault(str(row["id"]), row)
        return out

    def append(self, part: str, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to this process's part and make them durable before returning."""
        append_jsonl(self.folder / part, rows)


def write_system_meta(path: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")


def read_system_meta(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
