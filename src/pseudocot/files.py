"""Atomic file writes: write to a temp file in the same folder, then rename over the target.
A killed process leaves either the old file or the new one, never half of one.

Durable streams: `append_jsonl` appends rows and fsyncs them before it returns; a row a kill cut
short (a last line without its newline) is cut off the next time the file is appended to, and
`complete_lines` never reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file owner-only; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temp path beside `path` for a library that writes by file name (safetensors, say);
    renamed over `path` on success, removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temp folder beside `path` to write a whole folder into (a model's `save_pretrained`); on
    success it replaces `path` (an older folder there is removed), on error it is removed."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cut_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a write the process was killed in)."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline; everything after it is the torn row.
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                f.truncate(pos - step + nl + 1)
                return
            pos -= step
        f.truncate(0)


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Append rows as JSON lines and make them durable (fsync) before returning."""
    append_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def append_bytes(path: str | os.PathLike[str], blob: bytes) -> None:
    """Append whole lines (`blob` ends with a newline) after cutting a torn last line; fsync before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        cut_torn_tail(path)
    with path.open("ab") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def complete_lines(path: str | os.PathLike[str]) -> list[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line that ends with a newline: a row torn by a kill is left out."""
    lines = Path(path).read_bytes().split(b"\n")
    # lines[-1] is what follows the last newline: empty, or a row torn by a kill
    return [(i, raw) for i, raw in enumerate(lines[:-1], start=1) if raw.strip()]


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON state file's content, or {} when it is missing or unreadable (a stage that has not run yet)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
