"""Writing the teacher's solutions: resumable, shardable, nothing lost and nothing asked twice.

Every solution is one row of `candidates.jsonl`, appended and fsync'd as soon as it exists:

    {"id", "sample", "question", "question_hash", "completion", "thinking", "finish_reason",
     "prompt_tokens", "completion_tokens", "seed"}

(no timings, so that the same settings write the same bytes; `stats.json` has the time).

A run started again reads the rows already there (a row torn by a kill is cut off) and asks only
for the (question, sample) pairs that are missing. `key.txt` beside the file holds the generation
key (teacher, prompt, sampling): rows written under another key are moved aside to
`candidates.stale-<key>.jsonl`, never mixed in and never deleted, and come back if those settings do.

The same settings give the same solutions however the work is split:
- a local model generates a chunk of `chunk_questions` questions (all their samples) per batch,
  seeded by the chunk's place in the question list; chunks are fixed by the list, so a killed run
  regenerates its last chunk exactly and writes the rows it is missing (a sample depends on its
  chunk: another question list, or another `chunk_questions`, gives other samples);
- an endpoint gets one request per solution with its own seed (`sample_seed`), `concurrency` in flight;
- `--shard i/n` takes a contiguous block of whole chunks, so shards merged equal one unsharded run.

When the run completes, the file is rewritten in question order (samples in order), so it equals an
unbroken run's row for row. An endpoint that fails a request after all its retries stops the run
with one line; every row written before stays.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pseudocot.data.chat import question_text
from pseudocot.data.example import Example
from pseudocot.data.mix import shard as shard_items
from pseudocot.errors import DataError, EndpointError
from pseudocot.files import append_bytes, append_jsonl, atomic_write_text, complete_lines, cut_torn_tail
from pseudocot.generate.base import Completion, GenerationParams
from pseudocot.progress import progress as progress_bar
from pseudocot.synth.teacher import Teacher, split_thinking


def stable_int(*parts: Any) -> int:
    """A 31-bit integer from a hash of `parts` (the same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:4], "big") >> 1


def sample_seed(seed: int, question_id: str, sample: int) -> int:
    """The seed of one solution an endpoint writes."""
    return stable_int("sample", seed, question_id, sample)


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of one chunk a local model writes (`chunk`: the index of its first question)."""
    return stable_int("chunk", seed, chunk)


def chunks(n_questions: int, chunk_questions: int) -> list[range]:
    """Question index ranges of the chunks, in order."""
    return [range(s, min(s + chunk_questions, n_questions)) for s in range(0, n_questions, chunk_questions)]


def shard_chunks(all_chunks: Sequence[range], shard: tuple[int, int] | None) -> list[range]:
    """Shard i of n: a contiguous block of whole chunks (None: every chunk)."""
    return list(all_chunks) if shard is None else shard_items(all_chunks, *shard)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# The file.
# --------------------------------------------------------------------------------------------


class CandidateFile:
    """`candidates.jsonl` and its `key.txt`."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key, self.key_file = path, key, path.with_name("key.txt")

    def stale(self, key: str | None) -> Path:
        return self.path.with_name(f"{self.path.stem}.stale-{key or 'unknown'}.jsonl")

    def open(self) -> str | None:
        """Make the file current for `key`: rows written under another key are moved aside (appended to
        that key's stale file), and rows kept aside under this key come back. Returns the file moved aside."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = self.key_file.read_text().strip() if self.key_file.is_file() else None
        if old == self.key:
            return None
        moved = None
        if self.path.is_file():
            stale = self.stale(old)
            if stale.is_file():  # that key was moved aside before: keep both sets of rows
                cut_torn_tail(self.path)
                append_bytes(stale, self.path.read_bytes())
                self.path.unlink()
            else:
                os.replace(self.path, stale)
            moved = stale.name
        back = self.stale(self.key)
        if back.is_file():
            os.replace(back, self.path)  # these settings were used before: their rows are not asked again
        atomic_write_text(self.key_file, self.key + "\n")
        return moved

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row, in file order."""
        if not self.path.is_file():
            return []
        out = []
        for lineno, raw in complete_lines(self.path):
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DataError(f"{self.path}:{lineno}: not a candidate row (broken JSON); delete the line or the file.") from None
            if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("sample"), int):
                raise DataError(f"{self.path}:{lineno}: not a candidate row (no id and integer sample); delete the line or the file.")
            out.append(row)
        return out

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        append_jsonl(self.path, rows)


def done_pairs(rows: Sequence[dict[str, Any]], questions: Sequence[Example]) -> dict[tuple[str, int], dict[str, Any]]:
    """(id, sample) -> row for rows of the current questions (same text); the first row of a pair wins."""
    by_id = {q.id: text_hash(q.question) for q in questions}
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        pair = (str(row["id"]), int(row["sample"]))
        if by_id.get(pair[0]) == row.get("question_hash") and pair not in out:
            out[pair] = row
    return out


def canonical(rows: Sequence[dict[str, Any]], questions: Sequence[Example], samples: int) -> list[dict[str, Any]]:
    """The rows of the current questions in question order, samples in order, then the other rows
    (other questions, changed texts, samples beyond `samples`) in file order, so nothing is dropped;
    a second row of the same (id, sample, question text) is a copy and is dropped."""
    done = done_pairs(rows, questions)
    first = [done[(q.id, s)] for q in questions for s in range(samples) if (q.id, s) in done]
    seen = {(str(r["id"]), int(r["sample"]), r.get("question_hash")) for r in first}
    out = list(first)
    for r in rows:
        k = (str(r["id"]), int(r["sample"]), r.get("question_hash"))
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# Generation.
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationStats:
    generated: int = 0
    """Rows written by this process."""
    reused: int = 0
    """Rows found already written (a resumed run)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    stale: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"generated": self.generated, "reused": self.reused, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 2), "stale_files": self.stale}


def _row(q: Example, sample: int, seed: int, c: Completion) -> dict[str, Any]:
    thinking, text = split_thinking(c.text, c.reasoning)
    return {"id": q.id, "sample": sample, "question": q.question, "question_hash": text_hash(q.question),
            "completion": text, "thinking": thinking, "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "seed": seed}


def generate(questions: Sequence[Example], teacher: Teacher, file: CandidateFile, *, prompt: str, samples: int,
             params: GenerationParams, chunk_questions: int, shard: tuple[int, int] | None,
             progress: bool = True, desc: str = "synth", render: Callable[[Example], str] | None = None,
             unit: str = "solution") -> GenerationStats:
    """Write every missing solution of this shard's questions into `file`. The user turn is `prompt` filled with
    the question (`render(question)` where given: a document chunk's prompt has other fields)."""
    if render is None:
        def render(q: Example) -> str:
            return prompt.format(question=question_text(q))
    stats = GenerationStats()
    moved = file.open()
    if moved:
        stats.stale.append(moved)
    done = done_pairs(file.rows(), questions)
    mine = shard_chunks(chunks(len(questions), chunk_questions), shard)
    pairs = [(i, s) for ch in mine for i in ch for s in range(samples)]
    missing = [(i, s) for i, s in pairs if (questions[i].id, s) not in done]
    stats.reused = len(pairs) - len(missing)
    bar = progress_bar(total=len(pairs), initial=stats.reused, desc=desc, unit=unit, disable=not progress or not missing)
    t0 = time.perf_counter()
    try:
        if teacher.local:
            _generate_local(questions, teacher, file, render, samples, params, mine, done, stats, bar)
        else:
            _generate_endpoint(questions, teacher, file, render, params, missing, stats, bar, unit, desc)
    finally:
        bar.close()
        stats.seconds = time.perf_counter() - t0
    return stats


def _count(stats: GenerationStats, rows: Sequence[dict[str, Any]]) -> None:
    stats.generated += len(rows)
    stats.prompt_tokens += sum(r["prompt_tokens"] for r in rows)
    stats.completion_tokens += sum(r["completion_tokens"] for r in rows)


def _generate_local(questions: Sequence[Example], teacher: Teacher, file: CandidateFile, render: Callable[[Example], str], samples: int,
                    params: GenerationParams, mine: Sequence[range], done: dict[tuple[str, int], Any],
                    stats: GenerationStats, bar: Any) -> None:
    for ch in mine:
        pairs = [(i, s) for i in ch for s in range(samples)]
        if all((questions[i].id, s) in done for i, s in pairs):
            continue
        # The whole chunk, even the rows already written: its batches and seed make the same samples again.
        seed = chunk_seed(int(params.seed or 0), ch.start)
        texts = [teacher.prompt(render(questions[i])) for i, _ in pairs]
        outs = teacher.generate(texts, GenerationParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                                        top_p=params.top_p, stop=list(params.stop), seed=seed))
        rows = [_row(questions[i], s, seed, c) for (i, s), c in zip(pairs, outs) if (questions[i].id, s) not in done]
        file.append(rows)
        _count(stats, rows)
        bar.update(len(rows))


def _generate_endpoint(questions: Sequence[Example], teacher: Teacher, file: CandidateFile, render: Callable[[Example], str],
                       params: GenerationParams, missing: Sequence[tuple[int, int]], stats: GenerationStats, bar: Any,
                       unit: str = "solution", desc: str = "synth") -> None:
    base_seed = int(params.seed or 0)
    todo = iter(missing)
    limit = teacher.spec.concurrency
    failure: EndpointError | None = None

    def one(i: int, s: int) -> dict[str, Any]:
        seed = sample_seed(base_seed, questions[i].id, s)
        p = GenerationParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                             stop=list(params.stop), seed=seed)
        try:
            c = teacher.complete(teacher.prompt(render(questions[i])), p)
        except EndpointError as e:
            raise EndpointError(f"{'chunk' if unit == 'chunk' else 'question'} {questions[i].id} sample {s}: {str(e).rstrip('.')}") from None
        return _row(questions[i], s, seed, c)

    with ThreadPoolExecutor(max_workers=limit) as pool:
        running: set[Future[dict[str, Any]]] = set()
        while True:
            while failure is None and len(running) < limit:  # keep `concurrency` requests in flight
                nxt = next(todo, None)
                if nxt is None:
                    break
                running.add(pool.submit(one, *nxt))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            rows = []
            for fut in finished:
                try:
                    rows.append(fut.result())
                except EndpointError as e:
                    failure = failure or e  # stop asking; what is in flight still lands
            if rows:
                file.append(rows)
                _count(stats, rows)
                bar.update(len(rows))
    if failure is not None:
        again = "synth questions" if desc.startswith("questions") else "synth"
        raise EndpointError(f"the teacher failed a request after its retries ({str(failure).rstrip('.')}); {stats.generated} "
                            f"new {unit}s were written and kept, so run {again} again to ask for the rest.")
