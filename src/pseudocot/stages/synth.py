"""The `synth` stage: a teacher writes `synth.samples` step-by-step solutions per question, the
faithfulness filter keeps the ones you can trust.

    <run>/synth/candidates.jsonl   every solution, in question order (appended as written, then sorted)
    <run>/synth/kept.jsonl         Example JSONL: question, answer, reasoning (one step per line), meta.synth
    <run>/synth/rejects.jsonl      the other candidates, each with its `reasons`
    <run>/synth/stats.json         keep rate, rejects by reason, requests and retries, tokens, time

With `synth.enabled`, `pseudocot run` runs it after `data`, and the teacher and the distillation
chain train on `kept.jsonl`. Alone, or sharded over machines:

    pseudocot synth --config C
    pseudocot synth --config C --shard 0/4 ... --shard 3/4 ; pseudocot synth merge --config C
    pseudocot synth filter --task gsm8k --data gold.jsonl --candidates c.jsonl --out kept.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pseudocot.config import Config, parse_shard, save_config
from pseudocot.data.example import Example
from pseudocot.data.jsonl import read_examples, write_jsonl
from pseudocot.data.loaders import load_file
from pseudocot.errors import ConfigError, DataError
from pseudocot.files import atomic_write_text, read_json_object
from pseudocot.freshness import synth_generation_key, synth_key, synth_shard_key
from pseudocot.generate.base import GenerationParams
from pseudocot.layout import RunLayout
from pseudocot.stages import prepare
from pseudocot.synth.candidates import CandidateFile, canonical, chunks, done_pairs, generate, shard_chunks
from pseudocot.synth.filter import run_filter
from pseudocot.synth.rows import settings_of, to_candidates, write_outputs
from pseudocot.synth.teacher import Judge, Teacher
from pseudocot.tasks import Task
from pseudocot.tasks.registry import task_from


def load_questions(cfg: Config) -> list[Example]:
    """The questions to solve (gold answers where the file has them), the first `synth.max_questions`."""
    s, layout = cfg.synth, RunLayout.of(cfg)
    path = layout.synth_questions
    if s.questions is None:
        if not path.is_file():
            raise DataError(f"{path}: no training split to take questions from; run `pseudocot data` first or set synth.questions.")
        examples = read_examples(path).examples
    else:
        examples = load_file(s.format, str(path), s.fields, require_answer=False).examples
    if not examples:
        raise DataError(f"{path}: holds no questions; give synth.questions a file with at least one.")
    return examples[: s.max_questions] if s.max_questions else examples


def _judge(cfg: Config, cache: Path) -> Judge | None:
    s = cfg.synth
    if "judge" not in s.checks or s.judge is None:
        return None
    return Judge(Teacher(s.judge, cfg.run.device), s.judge_prompt, cache, max_new_tokens=s.max_new_tokens)


def _need_teacher(cfg: Config) -> None:
    if cfg.synth.teacher is None:
        raise ConfigError("synth.teacher is not set; give a local model (synth.teacher.path=FOLDER) or an endpoint "
                          "(synth.teacher.base_url=URL synth.teacher.model=NAME).")


def main(cfg: Config) -> dict[str, Any]:
    """Generate this process's share of the solutions; without a shard, filter them too. Returns stats."""
    prepare(cfg)
    _need_teacher(cfg)
    layout = RunLayout.of(cfg)
    s = cfg.synth
    shard = parse_shard(s.shard)
    # A shard is done when its candidates are (the checks run at merge); the stage when it has filtered.
    key = synth_shard_key(cfg) if shard else synth_key(cfg)
    stats_file = layout.synth_file("stats.json", shard)
    old = read_json_object(stats_file)
    if old.get("key") == key and (shard or layout.synth_file("kept.jsonl").is_file()):
        return old  # complete for this config
    save_config(cfg, layout.config_file)
    questions = load_questions(cfg)
    task = task_from(cfg.task_of("synth"))  # before hours of generation: a misspelt task stops here
    judge = None if shard else _judge(cfg, layout.synth_file("judge.jsonl"))  # and a judge that cannot load
    assert s.teacher is not None
    teacher = Teacher(s.teacher, cfg.run.device, s.system_prompt)
    file = CandidateFile(layout.synth_file("candidates.jsonl", shard), synth_generation_key(cfg))
    params = GenerationParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, stop=list(s.stop), seed=s.seed)
    try:
        gen = generate(questions, teacher, file, prompt=s.prompt, samples=s.samples, params=params,
                       chunk_questions=s.chunk_questions, shard=shard)
    finally:
        counters = teacher.counters()
        teacher.close()
    generation = {**gen.to_dict(), **counters, "teacher": teacher.name}
    if shard is not None:
        stats = {"key": key, "shard": s.shard, "questions": sum(len(c) for c in shard_chunks(chunks(len(questions), s.chunk_questions), shard)),
                 "generation": generation}
        atomic_write_text(stats_file, json.dumps(stats, indent=2) + "\n")
        print(f"synth shard {s.shard}: {gen.generated} new solutions, {gen.reused} already there -> {file.path}; "
              f"when every shard is done: pseudocot synth merge")
        return stats
    return finish(cfg, questions, task, teacher.name, [generation], key, judge)


def merge(cfg: Config) -> dict[str, Any]:
    """`pseudocot synth merge`: join the shards' candidates (every shard must be complete), then filter."""
    prepare(cfg)
    _need_teacher(cfg)
    layout = RunLayout.of(cfg)
    s = cfg.synth
    shards_dir = layout.synth_work((0, 1)).parent
    found = sorted(shards_dir.glob("*-of-*")) if shards_dir.is_dir() else []
    counts = {p.name.split("-of-")[1] for p in found}
    if len(counts) != 1:
        raise DataError(f"{shards_dir}: " + ("no shards to merge; run pseudocot synth --shard i/n first" if not counts else
                                             f"shards of several splits ({', '.join(sorted(counts))}); keep one i-of-n set") + ".")
    n = int(counts.pop())
    shard_key, gen_key = synth_shard_key(cfg), synth_generation_key(cfg)
    questions = load_questions(cfg)
    judge = _judge(cfg, layout.synth_file("judge.jsonl"))
    rows: list[dict[str, Any]] = []
    generation = []
    for i in range(n):
        shard = (i, n)
        st = read_json_object(layout.synth_file("stats.json", shard))
        written = layout.synth_file("key.txt", shard)
        if st.get("key") != shard_key or not written.is_file() or written.read_text().strip() != gen_key:
            raise DataError(f"{layout.synth_work(shard)}: shard {i}/{n} is not complete for this config; run "
                            f"pseudocot synth --shard {i}/{n} with it, then merge again.")
        rows += CandidateFile(layout.synth_file("candidates.jsonl", shard), gen_key).rows()
        generation.append(st["generation"])
    file = CandidateFile(layout.synth_file("candidates.jsonl"), synth_generation_key(cfg))
    moved = file.open()
    if moved:
        generation.append({"stale_files": [moved]})
    write_jsonl(file.path, canonical(file.rows() + rows, questions, s.samples))
    save_config(cfg, layout.config_file)
    return finish(cfg, questions, task_from(cfg.task_of("synth")), generation[0].get("teacher", ""), generation, synth_key(cfg), judge)


def finish(cfg: Config, questions: Sequence[Example], task: Task, teacher: str, generation: list[dict[str, Any]],
           key: str, judge: Judge | None = None) -> dict[str, Any]:
    """Sort the candidates into question order, check every question has all its samples, filter,
    and write kept/rejects/stats."""
    layout, s = RunLayout.of(cfg), cfg.synth
    file = CandidateFile(layout.synth_file("candidates.jsonl"), synth_generation_key(cfg))
    rows = canonical(file.rows(), questions, s.samples)
    write_jsonl(file.path, rows)  # atomic: the appends in completion order become question order
    done = done_pairs(rows, questions)
    missing = len(questions) * s.samples - sum(1 for q in questions for i in range(s.samples) if (q.id, i) in done)
    if missing:
        raise DataError(f"{file.path}: {missing} solutions are still missing; run pseudocot synth again (or every shard).")
    current = [done[(q.id, i)] for q in questions for i in range(s.samples)]
    try:
        result = run_filter(to_candidates(current, questions, s.reasoning_from), settings_of(s, task, judge), s.checks)
    finally:
        if judge is not None:
            judge.teacher.close()
    write_outputs(result, layout.synth_file("kept.jsonl"), layout.synth_file("rejects.jsonl"), teacher, s.checks)
    total = {k: sum(int(g.get(k) or 0) for g in generation) for k in ("generated", "reused", "requests", "prompt_tokens", "completion_tokens")}
    retries: dict[str, int] = {}
    for g in generation:
        for cause, n in (g.get("retries") or {}).items():
            retries[cause] = retries.get(cause, 0) + int(n)
    stats = {"key": key, "teacher": teacher, "task": task.name, "checks": list(s.checks), "questions": len(questions),
             "samples": s.samples, **result.summary(), "generation": {**total, "retries": dict(sorted(retries.items())),
             "seconds": round(sum(float(g.get("seconds") or 0) for g in generation), 2),
             "stale_files": [f for g in generation for f in g.get("stale_files") or []]},
             "gold_answers": sum(1 for q in questions if q.answer)}
    atomic_write_text(layout.synth_file("stats.json"), json.dumps(stats, indent=2) + "\n")
    print(f"synth: kept {stats['kept']} of {stats['candidates']} solutions ({stats['keep_rate']}) -> {layout.synth_file('kept.jsonl')}")
    return stats


