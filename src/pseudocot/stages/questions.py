"""The questions stage: a teacher writes question, answer and reasoning from your own documents; the
checks keep the items that are grounded in their chunk, stand on their own and are not repeats.

    <run>/questions/chunks.jsonl         every chunk: document, start, end, tokens, text (text == document[start:end])
    <run>/questions/replies.jsonl        the teacher's reply per chunk (appended as written, then in chunk order)
    <run>/questions/retry/replies.jsonl  its second try at each malformed reply
    <run>/questions/kept.jsonl           Example JSONL: question, answer, reasoning, source = NAME#START-END
    <run>/questions/rejects.jsonl        malformed replies and rejected items, each with its `reasons`
    <run>/questions/{train,val,test}.jsonl  the kept questions split by document (`data.sources: [{format: questions}]`)
    <run>/questions/stats.json           documents, chunks, replies, kept and rejected per check, requests, tokens, time

The teacher, its sampling, retries, resume and shards are the synth stage's (`synth.teacher`, ...); what
to read and ask is `synth.documents`. With `synth.documents.paths` set, `pseudocot run` runs it before
`data`. Alone, sharded, or the filter on its own:

    pseudocot synth questions --config C
    pseudocot synth questions --config C --shard 0/4 ... ; pseudocot synth questions merge --config C
    pseudocot synth qfilter --docs DOCS/ --candidates c.jsonl --out kept.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pseudocot.config import Config, DocumentsConfig, SynthConfig, parse_shard, save_config
from pseudocot.data.documents import Chunk, Documents, Spans, chunk_documents, parse_source, read_documents, tokenizer_spans, word_spans
from pseudocot.data.example import Example
from pseudocot.data.jsonl import iter_json_lines, rejects_path, write_examples, write_jsonl
from pseudocot.errors import ConfigError, DataError
from pseudocot.files import atomic_write_text, read_json_object
from pseudocot.freshness import questions_generation_key, questions_key, questions_shard_key, writer_key
from pseudocot.generate.base import GenerationParams
from pseudocot.layout import RunLayout, metrics_file
from pseudocot.progress import progress as progress_bar
from pseudocot.stages import prepare
from pseudocot.synth.candidates import CandidateFile, GenerationStats, canonical, chunks, done_pairs, generate, sample_seed, shard_chunks
from pseudocot.synth.filter import FilterResult, FilterSettings, run_filter
from pseudocot.synth.questions import item_candidate, kept_item, parse_reply, split_by_document
from pseudocot.synth.teacher import Judge, Teacher
from pseudocot.tasks import get_task

ITEM_TASK = ("jsonl", {"extraction": "text"})
"""How the filter reads an item's answer back from `The answer is X.` (numbers and text alike)."""


def filter_settings(s: SynthConfig, d: DocumentsConfig, judge: Judge | None = None) -> FilterSettings:
    return FilterSettings(task=get_task(ITEM_TASK[0], **ITEM_TASK[1]), min_steps=s.min_steps, max_steps=s.max_steps,
                          max_step_chars=s.max_step_chars, judge=judge, duplicate_threshold=d.duplicate_threshold,
                          min_word_overlap=d.min_word_overlap, min_topic_overlap=d.min_topic_overlap, grounded_prompt=d.grounded_prompt,
                          self_contained_prompt=d.self_contained_prompt)


def _spans(d: DocumentsConfig, teacher: Teacher | None) -> tuple[Spans, str]:
    if d.tokenizer:
        from pseudocot.models.loading import load_tokenizer

        return tokenizer_spans(load_tokenizer(d.tokenizer)), d.tokenizer
    if teacher is not None and teacher.local:
        return tokenizer_spans(teacher.gen.tokenizer), f"{teacher.name} (the teacher's)"
    return word_spans, "words"


def _documents(cfg: Config) -> Documents:
    """The documents `synth.documents.paths` names (before any model loads: a wrong path stops at once)."""
    d = cfg.synth.documents
    if not d.paths:
        raise ConfigError("synth.documents.paths is empty; name the files or folders to write questions from, e.g. "
                          "synth.documents.paths=[docs/].")
    docs = read_documents(RunLayout.of(cfg).document_paths, d.text_field)
    if not docs.documents:
        raise DataError(f"{', '.join(d.paths)}: no readable document (.txt, .md, .pdf, .html, .jsonl); "
                        f"{len(docs.unreadable)} could not be read, {docs.skipped} had other suffixes.")
    return docs


def _chunks(cfg: Config, docs: Documents, teacher: Teacher | None) -> tuple[list[Chunk], str]:
    d = cfg.synth.documents
    spans, counted_by = _spans(d, teacher)
    found = chunk_documents(docs.documents, spans, d.chunk_tokens, d.chunk_overlap)
    return found[: d.max_chunks] if d.max_chunks else found, counted_by


def _as_questions(found: Sequence[Chunk]) -> list[Example]:
    """Each chunk as the generator's `question` (the replies are matched back by its span and text)."""
    return [Example(id=ch.source, question=ch.text, answer="") for ch in found]


def _files(layout: RunLayout, cfg: Config, shard: tuple[int, int] | None) -> tuple[CandidateFile, CandidateFile]:
    return (CandidateFile(layout.questions_file("replies.jsonl", shard), questions_generation_key(cfg)),
            CandidateFile(layout.questions_file("retry/replies.jsonl", shard), questions_generation_key(cfg, True)))


def _malformed(rows: dict[tuple[str, int], dict[str, Any]], chunks_: Sequence[Example], k: int) -> list[Example]:
    return [q for q in chunks_ if (q.id, 0) in rows and
            parse_reply(str(rows[(q.id, 0)].get("completion") or ""), k, str(rows[(q.id, 0)].get("finish_reason") or "stop")).error]


def main(cfg: Config) -> dict[str, Any]:
    """Write this process's share of the replies (first tries, then one more try at each malformed one); without a
    shard, filter them too. Returns the stats."""
    prepare(cfg)
    layout, s, d = RunLayout.of(cfg), cfg.synth, cfg.synth.documents
    spec = layout.questions_teacher
    if spec is None:
        from pseudocot.stages.synth import _need_teacher

        _need_teacher(cfg)
    elif cfg.writer.enabled and read_json_object(metrics_file(layout.writer_dir)).get("key") != writer_key(cfg):
        raise DataError(f"writer.enabled is true but {layout.writer_dir} holds no writer trained for this config; "
                        "run pseudocot synth writer first.")
    shard = parse_shard(s.shard)
    key = questions_shard_key(cfg) if shard else questions_key(cfg)
    stats_file = layout.questions_file("stats.json", shard)
    old = read_json_object(stats_file)
    if old.get("key") == key and (shard or layout.questions_file("kept.jsonl").is_file()):
        return old  # complete for this config
    save_config(cfg, layout.config_file)
    docs = _documents(cfg)
    judge = None if shard else _judge(cfg, layout)  # a judge that cannot load stops here, before the teacher's hours
    assert spec is not None
    teacher = Teacher(spec, cfg.run.device, s.system_prompt)
    generation: dict[str, Any] = {}
    try:
        found, counted_by = _chunks(cfg, docs, teacher)
        write_jsonl(layout.questions_file("chunks.jsonl", shard),
                    ({"source": c.source, "document": c.document, "start": c.start, "end": c.end, "tokens": c.tokens, "text": c.text}
                     for c in found))
        questions = _as_questions(found)
        k = d.items_per_chunk

        def render(q: Example) -> str:
            return d.prompt_for(q.question)

        first, retry = _files(layout, cfg, shard)
        params = GenerationParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, stop=list(s.stop), seed=s.seed)
        gen1 = generate(questions, teacher, first, prompt=d.prompt, samples=1, params=params, chunk_questions=s.chunk_questions,
                        shard=shard, desc="questions", render=render, unit="chunk")
        mine = [questions[i] for ch in shard_chunks(chunks(len(questions), s.chunk_questions), shard) for i in ch]
        bad = _malformed(done_pairs(first.rows(), mine), mine, k)
        gen2 = _retry(bad, teacher, retry, cfg, render)
        for f, qs in ((first, mine), (retry, bad)):
            write_jsonl(f.path, canonical(f.rows(), qs, 1))  # atomic: completion order becomes chunk order
        generation = {"first": gen1.to_dict(), "retry": gen2.to_dict()}
    finally:
        generation.update(teacher.counters(), teacher=teacher.name)
        teacher.close()
    read = {"documents": len(docs.documents), "unreadable": docs.unreadable, "skipped_files": docs.skipped,
            "chunks": len(found), "chunk_tokens_counted_by": counted_by}
    if shard is not None:
        stats = {"key": key, "shard": s.shard, **read, "generation": generation}
        atomic_write_text(stats_file, json.dumps(stats, indent=2) + "\n")
        print(f"synth questions shard {s.shard}: {len(mine)} chunks answered -> {first.path}; "
              "when every shard is done: pseudocot synth questions merge")
        return stats
    return finish(cfg, found, [(first, retry)], read, [generation], key, judge)


def _retry(bad: Sequence[Example], teacher: Teacher, file: CandidateFile, cfg: Config, render: Any) -> GenerationStats:
    """The second try at each malformed reply, sampled at `retry_temperature` with another seed. An endpoint gets one
    request per chunk seeded by its id; a local model one batch per chunk, seeded by its id too, so that shards ask
    what one run asks (a batch of several would depend on which other chunks were malformed in the same shard)."""
    s, d = cfg.synth, cfg.synth.documents

    def params(seed: int) -> GenerationParams:
        return GenerationParams(max_new_tokens=s.max_new_tokens, temperature=d.retry_temperature, top_p=s.top_p, stop=list(s.stop), seed=seed)

    if not teacher.local:
        return generate(bad, teacher, file, prompt=d.prompt, samples=1, params=params(s.seed + 1), chunk_questions=s.chunk_questions,
                        shard=None, desc="questions, second tries", render=render, unit="chunk")
    total = GenerationStats()
    bar = progress_bar(total=len(bad), desc="questions, second tries", unit="chunk", disable=not bad)
    try:
        for q in bad:
            one = generate([q], teacher, file, prompt=d.prompt, samples=1, params=params(sample_seed(s.seed + 1, q.id, 0)),
                           chunk_questions=1, shard=None, progress=False, render=render)
            for k in ("generated", "reused", "prompt_tokens", "completion_tokens"):
                setattr(total, k, getattr(total, k) + getattr(one, k))
            total.seconds += one.seconds
            total.stale += one.stale
            bar.update(1)
    finally:
        bar.close()
    return total


def merge(cfg: Config) -> dict[str, Any]:
    """`pseudocot synth questions merge`: join the replies every shard wrote (all must be complete), then filter."""
    prepare(cfg)
    layout = RunLayout.of(cfg)
    shards_dir = layout.questions_work((0, 1)).parent
    found_dirs = sorted(shards_dir.glob("*-of-*")) if shards_dir.is_dir() else []
    counts = {p.name.split("-of-")[1] for p in found_dirs}
    if len(counts) != 1:
        raise DataError(f"{shards_dir}: " + ("no shards to merge; run pseudocot synth questions --shard i/n first" if not counts else
                                             f"shards of several splits ({', '.join(sorted(counts))}); keep one i-of-n set") + ".")
    n = int(counts.pop())
    shard_key = questions_shard_key(cfg)
    files, generation = [], []
    for i in range(n):
        st = read_json_object(layout.questions_file("stats.json", (i, n)))
        if st.get("key") != shard_key:
            raise DataError(f"{layout.questions_work((i, n))}: shard {i}/{n} is not complete for this config; run "
                            f"pseudocot synth questions --shard {i}/{n} with it, then merge again.")
        files.append(_files(layout, cfg, (i, n)))
        generation.append(st["generation"])
    # The chunks every shard answered (each wrote them all; a local teacher's tokenizer counted their tokens).
    found = [Chunk(r["document"], int(r["start"]), int(r["end"]), str(r["text"]), int(r["tokens"]))
             for _, _, r in iter_json_lines(layout.questions_file("chunks.jsonl", (0, n))) if isinstance(r, dict)]
    first = read_json_object(layout.questions_file("stats.json", (0, n)))
    read = {k: first.get(k) for k in ("documents", "unreadable", "skipped_files", "chunks", "chunk_tokens_counted_by")}
    save_config(cfg, layout.config_file)
    return finish(cfg, found, files, read, generation, questions_key(cfg), _judge(cfg, layout))


def _judge(cfg: Config, layout: RunLayout) -> Judge | None:
    s = cfg.synth
    if "judge" not in s.documents.checks or s.judge is None:
        return None
    return Judge(Teacher(s.judge, cfg.run.device), s.judge_prompt, layout.questions_file("judge.jsonl"), max_new_tokens=s.max_new_tokens)


def item_rows(found: Sequence[Chunk], files: Sequence[tuple[CandidateFile, CandidateFile]], k: int
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(item rows, malformed replies and items as reject rows, counts): every chunk's reply read, its second try where
    the first was malformed. Fails when a chunk has no reply yet."""
    questions = _as_questions(found)
    firsts: dict[tuple[str, int], dict[str, Any]] = {}
    retries: dict[tuple[str, int], dict[str, Any]] = {}
    for first, retry in files:
        firsts.update(done_pairs(first.rows(), questions))
        retries.update(done_pairs(retry.rows(), questions))
    items: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    counts = {"replies": 0, "malformed_first": 0, "retried": 0, "malformed": 0, "items": 0, "malformed_items": 0}
    missing = 0
    for ch, q in zip(found, questions):
        row = firsts.get((q.id, 0))
        if row is None:
            missing += 1
            continue
        counts["replies"] += 1
        reply = parse_reply(str(row.get("completion") or ""), k, str(row.get("finish_reason") or "stop"))
        tries = 1
        if reply.error:
            counts["malformed_first"] += 1
            second = retries.get((q.id, 0))
            if second is None:
                missing += 1
                continue
            counts["retried"] += 1
            first_error = reply.error
            reply, tries = parse_reply(str(second.get("completion") or ""), k, str(second.get("finish_reason") or "stop")), 2
            if reply.error:
                counts["malformed"] += 1
                rejects.append({"source": ch.source, "document": ch.document, "tries": 2, "reply": str(second.get("completion") or "")[:4000],
                                "reasons": [first_error + " (first try)", reply.error + " (second try)"]})
                continue
        for problem in reply.problems:
            counts["malformed_items"] += 1
            rejects.append({"source": ch.source, "document": ch.document, "tries": tries, "reasons": [problem]})
        for j, item in enumerate(reply.items):
            items.append({"id": f"{ch.source}/{j}", **item, "source": ch.source, "document": ch.document, "tries": tries})
    if missing:
        raise DataError(f"{files[0][0].path.parent}: {missing} chunks have no reply yet; run pseudocot synth questions again (or every shard).")
    counts["items"] = len(items)
    return items, rejects, counts


def filter_items(rows: Sequence[dict[str, Any]], texts: dict[str, str | None], settings: FilterSettings,
                 checks: Sequence[str]) -> FilterResult:
    """Run the checks over item rows; `texts[source]` is the chunk text a row's `source` names (None: not found)."""
    return run_filter([item_candidate(r, texts.get(str(r.get("source") or ""))) for r in rows], settings, checks)


def finish(cfg: Config, found: Sequence[Chunk], files: Sequence[tuple[CandidateFile, CandidateFile]], read: dict[str, Any],
           generation: list[dict[str, Any]], key: str, judge: Judge | None) -> dict[str, Any]:
    """Read the replies, filter the items, write kept / rejects / the document splits / stats."""
    layout, s, d = RunLayout.of(cfg), cfg.synth, cfg.synth.documents
    rows, malformed, counts = item_rows(found, files, d.items_per_chunk)
    try:
        result = filter_items(rows, {c.source: c.text for c in found}, filter_settings(s, d, judge), d.checks)
    finally:
        if judge is not None:
            judge.teacher.close()
    teacher = generation[0].get("teacher") if generation else None
    kept = [kept_item(c, d.checks, teacher) for c in result.kept]
    write_examples(layout.questions_file("kept.jsonl"), kept)
    write_jsonl(layout.questions_file("rejects.jsonl"), [*malformed, *({**c.row, "reasons": r} for c, r in result.rejected)])
    splits = split_by_document(kept, d.val_documents, d.test_documents, d.seed, d.split)
    for name, examples in splits.items():
        write_examples(layout.questions_file(f"{name}.jsonl"), examples)
    summary = result.summary()
    total = {k: sum(int((g.get(part) or {}).get(k) or 0) for g in generation for part in ("first", "retry"))
             for k in ("generated", "reused", "prompt_tokens", "completion_tokens")}
    stats = {"key": key, "teacher": teacher, "checks": list(d.checks), **read, **counts, **summary,
             "splits": {name: {"questions": len(v), "documents": len({e.meta.get("document") for e in v})} for name, v in splits.items()},
             "generation": {**total, "requests": sum(int(g.get("requests") or 0) for g in generation),
                            "seconds": round(sum(float((g.get(p) or {}).get("seconds") or 0) for g in generation for p in ("first", "retry")), 2)}}
    atomic_write_text(layout.questions_file("stats.json"), json.dumps(stats, indent=2) + "\n")
    print(f"synth questions: {len(found)} chunks of {read['documents']} documents -> {counts['items']} items, kept {len(kept)} "
          f"-> {layout.questions_file('kept.jsonl')}")
    return stats


# --------------------------------------------------------------------------------------------
# `pseudocot synth qfilter`: the checks alone, on any item file.
# --------------------------------------------------------------------------------------------


def read_item_rows(path: Path) -> list[dict[str, Any]]:
    """Rows `{question, answer, reasoning, source}` (optional `id`; reasoning text or a list of steps)."""
    out = []
    for lineno, _, row in iter_json_lines(path):
        where = f"{path}:{lineno}"
        if isinstance(row, DataError):
            raise DataError(f"{where}: {row}; fix the line.")
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or row.get("answer") is None:
            raise DataError(f"{where}: an item row needs 'question' (text) and 'answer' (and 'reasoning', 'source'); fix the line.")
        reasoning = row.get("reasoning")
        if isinstance(reasoning, list):
            reasoning = "\n".join(map(str, reasoning))
        if reasoning is not None and not isinstance(reasoning, str):
            raise DataError(f"{where}: 'reasoning' must be text or a list of steps; fix the line.")
        out.append({**row, "id": str(row.get("id") if row.get("id") is not None else f"{path.name}:{lineno}"),
                    "answer": str(row["answer"]), "reasoning": reasoning, "source": str(row.get("source") or "")})
    return out


def source_texts(rows: Sequence[dict[str, Any]], docs: Documents) -> dict[str, str | None]:
    """The text each row's `source` (`NAME#START-END`) names in the documents; None where there is no such span."""
    texts = {doc.name: doc.text for doc in docs.documents}
    out: dict[str, str | None] = {}
    for r in rows:
        where = parse_source(r["source"])
        text = texts.get(where[0]) if where else None
        out[r["source"]] = text[where[1]: where[2]] if text is not None and where and where[2] <= len(text) else None
    return out


def qfilter(docs: Sequence[str], candidates: Path, out: Path, checks: Sequence[str], settings: FilterSettings,
            warn: Any = print, text_field: str = "text") -> dict[str, Any]:
    """Filter an item file against the documents: kept Examples to `out`, rejects (with their failed checks) beside it."""
    rows = read_item_rows(candidates)  # a bad row stops before the documents are read
    documents = read_documents(docs, text_field, warn=warn)
    result = filter_items(rows, source_texts(rows, documents), settings, checks)
    write_examples(out, (kept_item(c, checks) for c in result.kept))
    write_jsonl(rejects_path(out), ({**c.row, "reasons": r} for c, r in result.rejected))
    return result.summary()
