"""From cached answers to numbers: each system's metrics on a task, and paired comparisons.

Per system and task (`score_system`), over the questions of the task and every seed it generated:

- `accuracy`: share right by the task's primary extraction; with several seeds the mean over seeds,
  and `ci95` the bootstrap interval of the per-question mean over seeds (`accuracy_per_seed`,
  `accuracy_std` beside it). `accuracy_by_extraction` has every extraction of the task.
- `bleu` (0-100, sacrebleu corpus BLEU) and `rougeL` (0-1, mean F) of everything the system wrote
  (thoughts, then the final text) against the reference reasoning; null when the data has none.
- `faithfulness`: mean share of true `a op b = c` statements, over the texts that state any
  (`faithfulness_n` of them); `answer_matches_last_value`: share of those texts whose extracted answer
  equals the last statement's result.
- cost: `thought_calls_per_question`, `generated_tokens_per_question` (every model together) and
  `generated_tokens_per_question_by_model`, `processed_tokens_per_question_by_model` (prompt tokens not
  reused from a cache plus generated, what FLOPs count: `pseudocot.cost`), `seconds_per_question` (the
  question's share of its generation calls), `wall_seconds` (wall time of the system's generation
  chunks, summed).

`compare` gives, for systems A and B on the same questions, `delta` (accuracy of A minus B) with a
paired bootstrap `ci95` and `p_bootstrap`, and `p_value`, the exact McNemar test on the first seed's
right/wrong pairs (with `a_only`, `b_only`: questions only A, only B gets right).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pseudocot.data.example import CHOICE_LETTERS, Example
from pseudocot.evaluate import metrics
from pseudocot.pipeline import Trace
from pseudocot.tasks.task import Task, pick_choice


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def score_system(task: Task, examples: Sequence[Example], rows_per_seed: dict[int, dict[str, dict[str, Any]]],
                 n_boot: int = 10_000, boot_seed: int = 0) -> tuple[dict[str, Any], np.ndarray, list[dict[str, Any]]]:
    """(metrics, correct (S, N) bool by the primary extraction, one prediction row per question and seed).

    `rows_per_seed[seed][question id]` is a cached answer (`Response` fields); every example must have one.
    """
    seeds = sorted(rows_per_seed)
    # Options scored by log-likelihood (`eval.tasks[i].loglikelihood`) are the headline; the letter in the text is beside.
    by_ll = all(rows_per_seed[s][e.id].get("loglikelihoods") is not None for s in seeds for e in examples)
    names = list(task.extractions) + (["loglikelihood"] if by_ll else [])
    headline = "loglikelihood" if by_ll else task.primary
    correct = {name: np.zeros((len(seeds), len(examples)), dtype=bool) for name in names}
    predictions: list[dict[str, Any]] = []
    faithful: list[float] = []
    follows: list[bool] = []
    bleus: list[float] = []
    rouges: list[float] = []
    calls, tokens, seconds, wall = [], [], [], 0.0
    by_model: dict[str, list[float]] = {}
    processed: dict[str, list[float]] = {}
    all_processed = True  # an endpoint's old cached answers may have none
    has_ref = [i for i, e in enumerate(examples) if e.reasoning]
    for s, seed in enumerate(seeds):
        rows = rows_per_seed[seed]
        for i, ex in enumerate(examples):
            row = rows[ex.id]
            extracted = task.extract(row["text"])
            verdict = task.score(row["text"], ex)
            if by_ll:
                extracted["loglikelihood"] = CHOICE_LETTERS[pick_choice(row["loglikelihoods"])]
                verdict["loglikelihood"] = task.score_loglikelihoods(row["loglikelihoods"], ex)["acc"]
            for name in names:
                correct[name][s, i] = verdict[name]
            f = metrics.faithfulness(row["reasoning"])
            m = metrics.answer_matches_last_value(row["reasoning"], extracted[headline])
            if f is not None:
                faithful.append(f)
                follows.append(bool(m))
            calls.append(row.get("thought_calls", 0))
            tokens.append(sum(row["tokens"].values()))
            for model, n in row["tokens"].items():
                by_model.setdefault(model, []).append(n)
            used = row.get("processed")
            if used is None and row.get("trace"):  # answered before processed tokens were kept: the trace has them
                used = Trace.from_dict(row["trace"]).processed
            if used is None:
                all_processed = False
            for model, n in (used or {}).items():
                processed.setdefault(model, []).append(n)
            seconds.append(row.get("seconds", 0.0))
            wall += row.get("wall_seconds", 0.0)
            predictions.append({"id": ex.id, "seed": seed, "prediction": row["text"], "reasoning": row["reasoning"],
                                "answer": task.reference(ex), "extracted": extracted, "correct": verdict,
                                "faithfulness": f, "answer_matches_last_value": m,
                                "thought_calls": row.get("thought_calls", 0), "tokens": row["tokens"],
                                "seconds": row.get("seconds", 0.0)})
        if has_ref:
            hyps = [rows[examples[i].id]["reasoning"] for i in has_ref]
            refs = [examples[i].reasoning or "" for i in has_ref]
            bleus.append(metrics.bleu(hyps, refs))
            rouges.append(metrics.rouge_l(hyps, refs))

    primary = correct[headline]
    per_question = primary.mean(axis=0)  # (N,) share of seeds right
    acc = metrics.accuracy(per_question, n_boot=n_boot, seed=boot_seed)
    spread = metrics.over_seeds(primary.mean(axis=1).tolist())
    out: dict[str, Any] = {
        "n": len(examples), "seeds": seeds,
        "accuracy": acc["accuracy"], "ci95": acc["ci95"],
        "accuracy_per_seed": spread["per_seed"], "accuracy_std": spread["std"],
        "extraction": headline,
        "accuracy_by_extraction": {},
        "bleu": _mean(bleus), "rougeL": _mean(rouges), "reasoning_n": len(has_ref),
        "faithfulness": _mean(faithful), "faithfulness_n": len(faithful),
        "answer_matches_last_value": _mean([float(x) for x in follows]),
        "thought_calls_per_question": _mean(calls), "generated_tokens_per_question": _mean(tokens),
        "generated_tokens_per_question_by_model": {k: _mean(v) for k, v in by_model.items()},
        "processed_tokens_per_question_by_model": {k: _mean(v) for k, v in processed.items()} if all_processed else None,
        "seconds_per_question": _mean(seconds), "wall_seconds": wall,
    }
    for name in names:
        a = metrics.accuracy(correct[name].mean(axis=0), n_boot=n_boot, seed=boot_seed)
        out["accuracy_by_extraction"][name] = {"accuracy": a["accuracy"], "ci95": a["ci95"]}
    return out, primary, predictions


def compare(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, boot_seed: int = 0) -> dict[str, Any]:
    """A against B from their (S, N) right/wrong matrices over the same N questions (S may differ)."""
    diff = metrics.paired_difference(a.mean(axis=0), b.mean(axis=0), n_boot=n_boot, seed=boot_seed, p_value=True)
    test = metrics.mcnemar_exact(a[0].tolist(), b[0].tolist())
    return {"delta": diff["difference"], "ci95": diff["ci95"], "p_value": test["p_value"], "test": "mcnemar_exact",
            "a_only": test["a_only"], "b_only": test["b_only"], "p_bootstrap": diff["p_bootstrap"], "n": diff["n"]}


def comparisons(correct: dict[str, np.ndarray], n_boot: int = 10_000, boot_seed: int = 0) -> dict[str, Any]:
    """Every pair, later-listed system against earlier-listed: `router_vs_never`, `always_vs_never`, ..."""
    names = list(correct)
    out = {}
    for j, a in enumerate(names):
        for b in names[:j]:
            out[f"{a}_vs_{b}"] = {"a": a, "b": b, **compare(correct[a], correct[b], n_boot, boot_seed)}
    return out


def total_parameters(counts: dict[str, int] | None) -> dict[str, int] | None:
    """Per-model counts with their `total` (base + TTM for a pipeline that thinks)."""
    if not counts:
        return None
    if "total" in counts:
        return dict(counts)
    return {**counts, "total": int(sum(counts.values()))}
