"""The `eval` stage: every system of `eval.systems` answers every task of `eval.tasks`, then
`results.json`, predictions, traces, `report.md` and the figures are written (`evaluate.runner`).

    pseudocot eval --config demo [eval.max_questions=200] [--shard i/n]
    pseudocot eval merge --config demo            # results from the shards' caches

Answers are cached as they are made, keyed by the task's data and the system's settings and model
files (`evaluate.cache`), so a killed evaluation started again answers only what is missing and a
changed model is answered afresh. With `--shard i/n` a process answers the i-th contiguous block of
questions; the last to finish (or `merge`) writes the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pseudocot.config import Config, FieldError, parse_shard
from pseudocot.errors import ConfigError, DataError
from pseudocot.evaluate.runner import build_results, describe_run, generate, load_tasks, missing, write_results
from pseudocot.evaluate.systems import SystemEntry, system_entries
from pseudocot.files import read_json_object
from pseudocot.layout import RunLayout, metrics_file
from pseudocot.stages import prepare


def grpo_summary(cfg: Config) -> dict[str, Any] | None:
    """What the run's GRPO stage did (its target, rewards and reward curve), for the report; None without it."""
    if not cfg.grpo.enabled:
        return None
    metrics = read_json_object(metrics_file(RunLayout.of(cfg).grpo_dir))
    if not metrics:
        return None
    return {k: metrics.get(k) for k in ("target", "method", "rewards", "steps", "curve")}


def questions_summary(cfg: Config) -> dict[str, Any] | None:
    """What the run's questions stage wrote and kept (who wrote, documents, items, kept and rejected per check, the
    splits), for the report, when the run's data reads its questions; None otherwise."""
    if not any(src.format == "questions" for src in cfg.data.sources):
        return None
    stats = read_json_object(RunLayout.of(cfg).questions_file("stats.json"))
    if not stats.get("key"):
        return None
    return {k: stats.get(k) for k in ("teacher", "documents", "chunks", "replies", "malformed", "items", "kept", "keep_rate",
                                      "rejected", "rejected_by_check", "splits")}


def main(cfg: Config, shard: str | None = None, entries: Sequence[SystemEntry] | None = None,
         answer: bool = True, figures: bool = True) -> dict[str, Any] | None:
    """Run (or, with `answer=False`, only merge) the evaluation; returns the results, or None when
    questions are still unanswered (another shard is running). `entries` replaces `eval.systems`
    (tests and scripts that hold their models in memory)."""
    prepare(cfg)
    ecfg = cfg.eval
    out = RunLayout.of(cfg).eval_dir
    try:
        which = parse_shard(shard if shard is not None else ecfg.shard)
    except FieldError as e:
        raise ConfigError(f"--shard {e.message}.") from None
    tasks = load_tasks(cfg)
    from_config = entries is None  # the run's own systems: the report can say what the run trained
    entries = list(entries) if entries is not None else system_entries(cfg)
    names = [e.name for e in entries]
    if not entries or len(set(names)) != len(names):
        raise ConfigError(f"the systems to evaluate ({', '.join(names) or 'none'}) must be at least one, each with its own name.")
    if answer:
        generate(out, tasks, entries, ecfg, which)
    lacking = missing(out, tasks, entries, ecfg)
    if lacking:
        if not answer:
            raise DataError(f"{RunLayout.of(cfg).eval.cache}: {len(lacking)} system/task caches are incomplete ({lacking[0]}); "
                            "run the shards that have not finished, then merge.")
        return None
    results = build_results(out, tasks, entries, ecfg, cfg.run.name)
    if from_config:
        results["setup"] = describe_run(cfg, entries)
        grpo = grpo_summary(cfg)
        if grpo:
            results["grpo"] = grpo
        questions = questions_summary(cfg)
        if questions:
            results["questions"] = questions
    write_results(results, out, figures=figures)
    return results
