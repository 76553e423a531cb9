"""Loaders: every supported format becomes a list of `Example`s (plus rejects when skipping bad rows).

- `gsm8k`: the published JSONL (`question`, `answer` with `#### N`); gold = the number after `####`
  without commas; reasoning = the solution lines with the `<<...>>` calculator notes removed.
- `mmlu`: the published CSV (no header; question, A, B, C, D, answer letter; quoted fields may span
  lines); the subject comes from the file name (`college_mathematics_test.csv`).
- `jsonl`, `csv`: a user's file, with a field mapping `{Example field: column}`.
- `hf_disk`: a `datasets` folder written by `save_to_disk` (`FOLDER` or `FOLDER:SPLIT`).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pseudocot.data.example import CHOICE_LETTERS, Example
from pseudocot.data.jsonl import ReadResult, collect, iter_json_lines
from pseudocot.errors import DataError

_CALC_NOTE = re.compile(r"<<[^>]*>>")
_GSM8K_GOLD = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?$")
_EXAMPLE_FIELDS = ("id", "question", "answer", "choices", "reasoning", "source", "meta")


def _split_name(path: Path) -> str:
    for split in ("train", "test", "dev", "val", "validation"):
        if path.stem.endswith(split) or path.stem == split:
            return split
    return path.stem


# ---------------------------------------------------------------------------------- GSM8K


def gsm8k_example(row: Any, id: str, source: str = "gsm8k") -> Example:
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    for name in ("question", "answer"):
        if not isinstance(row.get(name), str):
            raise DataError(f"missing or non-string field '{name}' (GSM8K rows have 'question' and 'answer')")
    solution = row["answer"]
    if "####" not in solution:
        raise DataError("field 'answer' has no '#### N' final line")
    steps, _, gold = solution.rpartition("####")
    gold = gold.strip().replace(",", "")
    if not _GSM8K_GOLD.match(gold):
        raise DataError(f"the number after '####' is not a number: {gold!r}")
    reasoning = "\n".join(line.strip() for line in _CALC_NOTE.sub("", steps).strip().splitlines() if line.strip())
    return Example(id=id, question=row["question"].strip(), answer=gold, reasoning=reasoning or None,
                   source=source, meta={"solution": solution})


def load_gsm8k(path: str | os.PathLike[str], skip_bad: bool = False, source: str = "gsm8k") -> ReadResult:
    path = Path(path)
    split = _split_name(path)
    return collect(path, iter_json_lines(path), lambda i, row: gsm8k_example(row, f"{source}/{split}/{i}", source), skip_bad)


# ---------------------------------------------------------------------------------- MMLU


def mmlu_subject(path: Path) -> str:
    return re.sub(r"_(test|dev|val|validation|train)$", "", path.stem)


def _csv_rows(path: Path, dict_rows: bool) -> Iterable[tuple[int, str, Any]]:
    """Yield (first line of the record, text, row) using a real CSV parser (fields may hold newlines)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path.")
    with path.open("r", encoding="utf-8", newline="") as f:
        reader: Any = csv.DictReader(f) if dict_rows else csv.reader(f)
        start = 1
        try:
            if dict_rows:
                _ = reader.fieldnames  # read the header now, so the first record starts after it
                start = reader.line_num + 1
            for row in reader:
                end = reader.line_num
                values = list(row.values()) if dict_rows else row
                if any(str(v).strip() for v in values if v is not None):
                    yield start, ",".join(str(v) for v in values), row
                start = end + 1
        except csv.Error as e:
            raise DataError(f"{path}:{start}: not valid CSV ({e}); fix the quoting.") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason}); re-encode the file as UTF-8.") from None


def mmlu_example(row: Any, id: str, source: str) -> Example:
    if len(row) != 6:
        raise DataError(f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
    question, *choices, letter = (c.strip() for c in row)
    letter = letter.upper()
    if letter not in CHOICE_LETTERS[:4]:
        raise DataError(f"answer must be one of A, B, C, D, got {letter!r}")
    return Example(id=id, question=question, answer=letter, choices=choices, source=source)


def load_mmlu(path: str | os.PathLike[str], skip_bad: bool = False) -> ReadResult:
    path = Path(path)
    subject, split = mmlu_subject(path), _split_name(path)
    source = f"mmlu:{subject}"
    result = collect(path, _csv_rows(path, dict_rows=False),
                      lambda i, row: mmlu_example(row, f"{source}/{split}/{i}", source), skip_bad)
    for ex in result.examples:
        ex.meta["subject"] = subject
    return result


# ---------------------------------------------------------------------------------- generic


def mapped_example(row: Any, mapping: dict[str, str], default_id: str, source: str, require_answer: bool = True) -> Example:
    """Build an Example from a row through a field mapping {Example field: column}.

    Unmapped Example fields are read from a column of the same name when there is one. A `choices`
    mapping may name several columns separated by commas (`A,B,C,D`).
    """
    if not isinstance(row, dict):
        raise DataError(f"expected an object with named fields, got {type(row).__name__}")
    bad = sorted(set(mapping) - {"id", "question", "answer", "choices", "reasoning"})
    if bad:
        raise DataError(f"field mapping names '{bad[0]}', which is not an Example field (id, question, answer, choices, reasoning)")
    out: dict[str, Any] = {"source": source}
    for name in ("id", "question", "answer", "choices", "reasoning"):
        column = mapping.get(name, name)
        if name == "choices" and "," in column:
            cols = [c.strip() for c in column.split(",")]
            missing = [c for c in cols if c not in row]
            if missing:
                raise DataError(f"missing column '{missing[0]}' (mapped to choices)")
            out["choices"] = [str(row[c]) for c in cols]
            continue
        if column in row and row[column] is not None:
            out[name] = row[column]
        elif name == "question" or (name == "answer" and require_answer):
            hint = f" (mapped to {name})" if name in mapping else f"; map it with fields.{name}=COLUMN"
            raise DataError(f"missing column '{column}'{hint}")
    out.setdefault("id", default_id)
    if isinstance(row.get("source"), str) and row["source"]:
        out["source"] = row["source"]
    # Columns that map to no field are kept in meta (scalars only), beside any meta the row brings.
    # (a `choices` mapping of several columns uses each of them)
    used = set(mapping.values()) | {c.strip() for c in mapping.get("choices", "").split(",")} | set(_EXAMPLE_FIELDS)
    meta = dict(row["meta"]) if isinstance(row.get("meta"), dict) else {}
    meta.update({k: v for k, v in row.items() if k not in used and (isinstance(v, (str, int, float, bool)) or v is None)})
    if meta:
        out["meta"] = meta
    if isinstance(out.get("choices"), str):
        raise DataError("column for 'choices' holds one string; map several columns (fields.choices=A,B,C,D) or give a list")
    return Example.from_dict(out, require_answer)


def load_jsonl(path: str | os.PathLike[str], fields: dict[str, str] | None = None, skip_bad: bool = False,
               source: str | None = None, require_answer: bool = True) -> ReadResult:
    """A user's JSONL file; lines already in the Example schema need no mapping."""
    path = Path(path)
    name = source or path.stem
    return collect(path, iter_json_lines(path),
                   lambda i, row: mapped_example(row, fields or {}, f"{name}/{i}", name, require_answer), skip_bad)


def load_csv(path: str | os.PathLike[str], fields: dict[str, str] | None = None, skip_bad: bool = False,
             source: str | None = None, require_answer: bool = True) -> ReadResult:
    """A user's CSV file with a header row."""
    path = Path(path)
    name = source or path.stem
    return collect(path, _csv_rows(path, dict_rows=True),
                   lambda i, row: mapped_example(row, fields or {}, f"{name}/{i}", name, require_answer), skip_bad)


def load_hf_disk(spec: str, fields: dict[str, str] | None = None, skip_bad: bool = False, source: str | None = None,
                 require_answer: bool = True) -> ReadResult:
    """A `datasets` folder from `save_to_disk`: `FOLDER` (a Dataset) or `FOLDER:SPLIT` (a DatasetDict)."""
    import datasets  # heavy import, only when used

    folder, _, split = spec.partition(":")
    if not Path(folder).is_dir():
        raise DataError(f"{folder}: no such folder; give a folder written by datasets' save_to_disk.")
    try:
        ds: Any = datasets.load_from_disk(folder)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{folder}: not a datasets folder ({e}); write it with save_to_disk.") from None
    if isinstance(ds, datasets.DatasetDict):
        if not split:
            raise DataError(f"{folder}: holds splits {', '.join(ds)}; name one as {folder}:SPLIT.")
        if split not in ds:
            raise DataError(f"{folder}: has no split '{split}'; it has {', '.join(ds)}.")
        ds = ds[split]
    name = source or Path(folder).name
    rows = ((i + 1, "", row) for i, row in enumerate(ds))
    return collect(f"{folder}{':' + split if split else ''} row", rows,
                    lambda i, row: mapped_example(row, fields or {}, f"{name}/{split or 'all'}/{i}", name, require_answer), skip_bad)


def load_file(fmt: str, path: str, fields: dict[str, str] | None = None, skip_bad: bool = False,
              source: str | None = None, require_answer: bool = True) -> ReadResult:
    """Dispatch on a format name: gsm8k, mmlu, jsonl, csv, hf_disk. `require_answer=False` (jsonl, csv,
    hf_disk) also takes questions without a gold answer (`answer` ""): what `pseudocot synth` solves."""
    if fmt == "gsm8k":
        return load_gsm8k(path, skip_bad, source or "gsm8k")
    if fmt == "mmlu":
        return load_mmlu(path, skip_bad)
    if fmt == "jsonl":
        return load_jsonl(path, fields, skip_bad, source, require_answer)
    if fmt == "csv":
        return load_csv(path, fields, skip_bad, source, require_answer)
    if fmt == "hf_disk":
        return load_hf_disk(path, fields, skip_bad, source, require_answer)
    raise DataError(f"unknown data format '{fmt}'; use one of gsm8k, mmlu, jsonl, csv, hf_disk.")


FORMATS = ("gsm8k", "mmlu", "jsonl", "csv", "hf_disk")
