"""Running an evaluation: every system answers every task's questions into the generation cache,
then results, predictions, traces and the report are written. The `eval` stage
(`pseudocot.stages.eval`) calls these in order.

    pseudocot eval --config demo [eval.max_questions=200] [--shard i/n]
    pseudocot eval merge --config demo            # results from the shards' caches
    pseudocot eval report A/results.json B/results.json --out compare/

Answers go to the generation cache (`evaluate.cache`) chunk by chunk as they are made, so a killed
evaluation started again only answers what is missing. With `--shard i/n` a process answers a
contiguous i-th of each task's questions (0 <= i < n); the process that finds every answer in the
cache when it finishes writes the results, as does `pseudocot eval merge`. Results read only the
cache, so they are the same however the questions were split (apart from timings).

Output (`eval.out`, default `<run>/eval/`):

    results.json                       the numbers (schema below)
    report.md, report.csv, report.json the report and its table as data; figures/*.png
    predictions/<task>/<system>.jsonl  per question and seed: text, extracted answers, verdicts, faithfulness, cost
    traces/<task>/<system>.jsonl       pipeline traces (`pipeline.read_traces` reads them)
    cache/                             the generation cache

results.json
------------
    {
      "schema": "pseudocot.eval/1", "run": NAME, "created": ISO-8601 time,
      "primary_task": TASK,                   # eval.tasks[0]
      "systems": {SYSTEM: METRICS},           # the primary task's systems (the headline view)
      "comparisons": {"A_vs_B": COMPARISON},  # the primary task's comparisons
      "wall_seconds": float,                  # generation wall time, every system and task summed
      "tasks": {TASK: {"data": PATH, "n_questions": int, "extraction": NAME,
                       "systems": {SYSTEM: METRICS}, "comparisons": {...}}},
      "settings": {"seeds": [...], "n_boot": int, "max_questions": int|null, "shards": [...]},
      "environment": ENVIRONMENT,             # the process that wrote this file (`models.environment`)
      "trained_on": {FOLDER: {"role": ROLE, "precision": {...}|null, "environment": SUMMARY}}
    }                                         # every model folder the systems read that records its training

METRICS (see `evaluate.results`): kind, mode, models, n, seeds, sampled, accuracy, ci95 [low, high],
accuracy_per_seed, accuracy_std, extraction, accuracy_by_extraction, bleu, rougeL, reasoning_n,
faithfulness, faithfulness_n, answer_matches_last_value, thought_calls_per_question,
generated_tokens_per_question, generated_tokens_per_question_by_model,
processed_tokens_per_question_by_model, seconds_per_question, wall_seconds, parameters {per model, total}
or null, flops_per_question (estimated forward FLOPs, `pseudocot.cost`; null where a parameter count or the
processed tokens are unknown), router_curve (router mode, the validation
threshold sweep from router.json) or absent, answered_on (the `environment.summary` of the process that
generated the answers, or null for answers cached before it was recorded), predictions and traces (paths relative
to results.json).
COMPARISON: a, b, delta (accuracy A - B), ci95, p_value (exact McNemar), test, a_only, b_only,
p_bootstrap, n. So `results["systems"]["router"]["accuracy"]` and
`results["comparisons"]["router_vs_never"]["p_value"]` are the headline numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pseudocot.config import Config, EvalConfig
from pseudocot.data.example import Example
from pseudocot.errors import ConfigError, DataError
from pseudocot.evaluate.cache import GenerationCache, part_name, read_system_meta, write_system_meta
from pseudocot.evaluate.systems import SystemEntry
from pseudocot.files import read_json_object
from pseudocot.freshness import eval_task_key
from pseudocot.layout import METRICS, EvalLayout, RunLayout
from pseudocot.models.environment import environment, summary
from pseudocot.progress import progress
from pseudocot.tasks.registry import task_from
from pseudocot.tasks.task import Task

SCHEMA = "pseudocot.eval/1"


@dataclass
class EvalTask:
    name: str
    key: str
    """Changes with the task's options and data file."""
    task: Task
    examples: list[Example]
    data: str
    loglikelihood: bool = False
    """Multiple choice scored by the options' log-likelihoods (`eval.tasks[i].loglikelihood`)."""


def load_tasks(cfg: Config) -> list[EvalTask]:

    layout = RunLayout.of(cfg)
    out = []
    for i, t in enumerate(cfg.eval.tasks):
        data = layout.eval_task_data(t.data)
        if not data.exists():
            hint = "run `pseudocot data` first or set" if not t.data else "check"
            raise DataError(f"{data}: no such data for task '{t.name}'; {hint} eval.tasks.{i}.data.")
        task = task_from(t)
        if t.loglikelihood and not task.n_choices:
            raise ConfigError(f"eval.tasks.{i}.loglikelihood is true but task '{t.name}' is not multiple choice; set it to false.")
        examples = task.load(data)
        if cfg.eval.max_questions is not None:
            examples = examples[: cfg.eval.max_questions]
        if not examples:
            raise DataError(f"{data}: task '{t.name}' has no questions here; check eval.tasks.{i}.data.")
        key = eval_task_key(t, data, cfg.eval.max_questions)
        out.append(EvalTask(t.name, key, task, examples, str(data), t.loglikelihood))
    return out


def _seeds(entry: SystemEntry, ecfg: EvalConfig) -> list[int]:
    return list(ecfg.seeds) if entry.sampled else list(ecfg.seeds[:1])


def _cache(out: Path, task: EvalTask, entry: SystemEntry, seed: int) -> GenerationCache:
    return GenerationCache(EvalLayout(out).answers(task.name, task.key, entry.name, entry.key, seed))


def _meta_path(out: Path, entry: SystemEntry) -> Path:
    return EvalLayout(out).system_meta(entry.name, entry.key)


def generate(out: Path, tasks: Sequence[EvalTask], entries: Sequence[SystemEntry], ecfg: EvalConfig,
             shard: tuple[int, int] | None) -> None:
    """Answer what the cache does not have yet: this shard's questions, every system, task and seed.
    A system's models are loaded only when it has something to answer, and released before the next."""
    from pseudocot.data.mix import shard as take_shard

    part = part_name(shard)
    size = max(1, ecfg.chunk_questions)
    for entry in entries:
        system = None
        for task in tasks:
            mine = task.examples if shard is None else take_shard(task.examples, *shard)
            for seed in _seeds(entry, ecfg):
                cache = _cache(out, task, entry, seed)
                done = cache.rows()
                todo = [e for e in mine if e.id not in done]
                if not todo:
                    continue
                if system is None:
                    system = entry.build()
                    write_system_meta(_meta_path(out, entry), {"name": entry.name, "parameters": system.parameters(),
                                                               "environment": environment()})
                chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
                for chunk in progress(chunks, desc=f"eval {task.name} {entry.name} seed {seed}", unit="chunk",
                                      disable=len(chunks) < 2):
                    t0 = time.perf_counter()
                    responses = system.answer(task.task, chunk, seed, loglikelihood=task.loglikelihood)
                    share = (time.perf_counter() - t0) / len(chunk)
                    cache.append(part, [{**asdict(r), "seed": seed, "wall_seconds": share} for r in responses])
        del system


def missing(out: Path, tasks: Sequence[EvalTask], entries: Sequence[SystemEntry], ecfg: EvalConfig) -> list[str]:
    """One line per (task, system, seed) whose cache lacks answers."""
    lines = []
    for task in tasks:
        for entry in entries:
            for seed in _seeds(entry, ecfg):
                rows = _cache(out, task, entry, seed).rows()
                lacking = [e.id for e in task.examples if e.id not in rows]
                if lacking:
                    lines.append(f"{task.name}/{entry.name}/seed {seed}: {len(lacking)} of {len(task.examples)} "
                                 f"questions unanswered (first: {lacking[0]})")
    return lines


def build_results(out: Path, tasks: Sequence[EvalTask], entries: Sequence[SystemEntry], ecfg: EvalConfig,
                  run_name: str) -> dict[str, Any]:
    """results.json's content from the cache; also writes the predictions and traces files."""
    from pseudocot.cost import flops
    from pseudocot.data.jsonl import write_jsonl
    from pseudocot.evaluate.results import comparisons, score_system, total_parameters
    from pseudocot.files import atomic_open

    per_task: dict[str, Any] = {}
    wall = 0.0
    shards = sorted({p.name for t in tasks for e in entries for s in _seeds(e, ecfg) for p in _cache(out, t, e, s).parts()})
    for task in tasks:
        systems: dict[str, Any] = {}
        correct = {}
        for entry in entries:
            rows = {seed: _cache(out, task, entry, seed).rows() for seed in _seeds(entry, ecfg)}
            m, right, predictions = score_system(task.task, task.examples, rows, n_boot=ecfg.n_boot)
            pred_path = EvalLayout.predictions(task.name, entry.name)
            write_jsonl(out / pred_path, predictions)
            files = {"predictions": str(pred_path)}
            first = rows[min(rows)]
            if all(first[e.id].get("trace") for e in task.examples):
                trace_path = EvalLayout.traces(task.name, entry.name)
                with atomic_open(out / trace_path) as f:
                    for e in task.examples:
                        f.write(json.dumps(first[e.id]["trace"], ensure_ascii=False) + "\n")
                files["traces"] = str(trace_path)
            meta = read_system_meta(_meta_path(out, entry))
            counted = meta.get("parameters")
            info = {k: v for k, v in entry.info.items() if k != "parameters"}
            parameters = entry.info.get("parameters") or total_parameters(counted)
            processed = m["processed_tokens_per_question_by_model"]
            systems[entry.name] = {**info, "sampled": entry.sampled, **m, "parameters": parameters,
                                   "flops_per_question": flops(processed, parameters) if processed is not None else None,
                                   "answered_on": summary(meta.get("environment")) or None, **files}
            correct[entry.name] = right
            wall += m["wall_seconds"]
        per_task[task.name] = {"data": task.data, "n_questions": len(task.examples),
                               "extraction": "loglikelihood" if task.loglikelihood else task.task.primary,
                               "systems": systems, "comparisons": comparisons(correct, n_boot=ecfg.n_boot)}
    primary = tasks[0].name
    return {
        "schema": SCHEMA, "run": run_name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "primary_task": primary,
        "systems": per_task[primary]["systems"], "comparisons": per_task[primary]["comparisons"],
        "wall_seconds": wall, "tasks": per_task,
        "settings": {"seeds": list(ecfg.seeds), "n_boot": ecfg.n_boot, "max_questions": ecfg.max_questions,
                     "shards": shards},
        "environment": environment(), "trained_on": trained_on(entries),
    }


def trained_on(entries: Sequence[SystemEntry]) -> dict[str, Any]:
    """Per model folder the systems read (base, TTM, router; a system's own model): how it was trained and on what,
    from its `metrics.json`; folders without such a record (older runs, engines) are left out."""
    out: dict[str, Any] = {}
    for entry in entries:
        for role, path in (entry.info.get("models") or {}).items():
            folder = Path(str(path))
            record = read_json_object(folder / METRICS)  # a trained model's or the router's
            if record.get("environment") and str(path) not in out:
                out[str(path)] = {"role": role, "precision": record.get("precision"),
                                  "environment": summary(record["environment"])}
    return out


def describe_run(cfg: Config, entries: Sequence[SystemEntry]) -> str:
    """One sentence on what this run trained, for the report's opening (empty when no system is
    the run's own pipeline)."""
    if not any(e.info.get("kind") == "pipeline" for e in entries):
        return ""
    def name(spec: Any) -> str:
        if spec.from_:
            kept = f"{spec.num_layers}" if spec.num_layers else f"{len(spec.keep_layers)}"
            return f"{kept} layers of {'its teacher' if spec.from_ == 'teacher' else Path(spec.from_).name}"
        return spec.preset or Path(spec.path or "").name
    parts = []
    if cfg.distill.stages:
        chain = " -> ".join(name(s.student) + (" learning from the solutions its teacher wrote" if s.teacher_writes else "")
                            for s in cfg.distill.stages)
        teacher = name(cfg.distill.teacher) if (cfg.distill.teacher.path or cfg.distill.teacher.preset) else name(cfg.teacher.model)
        parts.append(f"a reasoning teacher ({teacher}) fine-tuned on step-by-step solutions and distilled in "
                     f"{len(cfg.distill.stages)} stage{'s' if len(cfg.distill.stages) > 1 else ''} ({chain}) into the "
                     f"Tiny Thought Model")
    thoughts = " to answer with or without thoughts in its prompt" if cfg.base.thoughts_in_context else " on the task"
    parts.append(f"a base model ({name(cfg.base.model)}) fine-tuned{thoughts}")
    if cfg.grpo.enabled:
        weights = ", ".join(f"{k} x{v:g}" for k, v in cfg.grpo.rewards.items())
        parts.append(f"then GRPO on the {'Tiny Thought Model' if cfg.grpo.target == 'ttm' else 'base model'} with the rewards {weights}")
    if any(e.info.get("mode") in ("router", "depth") for e in entries):
        parts.append("a router trained on the base model's own answers to decide when another thought is worth it")
    modes = {"never": "the base model alone", "always": f"the TTM writes a thought before every re-answer, up to {cfg.pipeline.max_thoughts}",
             "router": "the TTM thinks only while the router says so", "depth": "the depth router picks the number of thoughts"}
    named = [f"`{e.name}` ({modes[e.info['mode']]})" for e in entries if e.info.get("kind") == "pipeline" and e.info.get("mode") in modes]
    said = f"Run {cfg.run.name} trained " + ", ".join(parts[:-1]) + (", and " if len(parts) > 1 else "") + parts[-1] + "."
    return said + (" Systems: " + "; ".join(named) + "." if named else "")


def write_results(results: dict[str, Any], out: Path, figures: bool = True) -> Path:
    from pseudocot.evaluate.report import write_report
    from pseudocot.files import atomic_write_text

    path = atomic_write_text(EvalLayout(out).results, json.dumps(results, indent=2) + "\n")
    write_report([results], out, names=[str(path)], figures=figures)
    return path
