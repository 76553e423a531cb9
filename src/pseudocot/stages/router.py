"""The `router` stage: collect the base model's traces with thoughts forced, label every answer by
the router task's own scoring, train the router, choose its threshold on validation, and compare it
with random and heuristic routing.

    pseudocot router --config demo        -> runs/<name>/router/{router.json, router.safetensors, ...}

Questions are the run's train/val splits, prompted as evaluation prompts them (`router.task`, by
default the first eval task). Collection is the slow part; it runs in chunks written atomically
under `router/traces/`, so a killed stage started again continues with the next chunk. The stage key
(`freshness`) covers the router and pipeline settings, the task, the data and the base and TTM
models: a router or traces of another key are made again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pseudocot.config import Config
from pseudocot.data.example import Example
from pseudocot.errors import ConfigError, DataError
from pseudocot.files import atomic_write_text
from pseudocot.freshness import read_key, router_chunk, router_key, router_traces_key, write_key
from pseudocot.layout import KEY_FILE, RunLayout, metrics_file
from pseudocot.models.environment import environment
from pseudocot.pipeline import Pipeline, last_thought_logprobs, load_pipeline, read_traces, thought_features, write_traces
from pseudocot.progress import progress
from pseudocot.router import calibration, labels, policy
from pseudocot.router.features import step_parts
from pseudocot.router.model import AnswerHead, DepthRouter, Router, StepRouter, fit, question_completions
from pseudocot.stages import prepare
from pseudocot.tasks import Task
from pseudocot.tasks.registry import task_from
from pseudocot.train.rows import read_split


def _collect_chunk(pipe: Pipeline, prompts: list[str], examples: list[Example], files: tuple[Path, Path]) -> None:
    from safetensors.torch import save_file

    from pseudocot.files import atomic_path

    traces = pipe.run([(e.id, p) for e, p in zip(examples, prompts)], collect=True)
    steps = [step_parts(s.completion, s.iteration, s.changed) for t in traces for s in t.features]
    tensors = {name: torch.stack([s[name] for s in steps]) for name in steps[0]}
    if pipe.gives_hidden:  # the depth router's input: the question prompt's pooled hidden state
        base_prompts = [pipe.base_prompt(p, []) for p in prompts]
        tensors["question"] = torch.stack([c.features for c in question_completions(pipe.base, base_prompts, None)])
    write_traces(traces, files[0])
    with atomic_path(files[1]) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def model_parameters(pipe: Pipeline) -> dict[str, int] | None:
    """The base model's and the TTM's parameter counts (tied weights once), for the FLOPs of the traces."""
    from pseudocot.models.tiny import count_parameters

    models = {"base": getattr(pipe.base, "model", None), "ttm": getattr(pipe.ttm, "model", None)}
    if not all(callable(getattr(m, "parameters", None)) for m in models.values()):
        return None
    return {name: int(count_parameters(m)) for name, m in models.items()}


def collect(pipe: Pipeline, task: Task, examples: list[Example], layout: RunLayout, split: str, chunk: int,
            reads: str = "answer") -> tuple[list[Any], dict[str, torch.Tensor]]:
    """Forced traces of `examples` and their router inputs, chunk by chunk (finished chunks are kept). The `thought`
    input of answer i reads the thoughts before it, or (`reads` thought) also the next one, which a router that
    decides after the TTM has written sees; `thought_answer` always reads the thoughts before it (the answer head's
    input)."""
    from safetensors.torch import load_file

    layout.router_traces_dir.mkdir(parents=True, exist_ok=True)
    prompts = task.prompts(examples)  # as evaluation prompts them
    chunks = [range(i, min(i + chunk, len(examples))) for i in range(0, len(examples), chunk)]
    traces: list[Any] = []
    parts: dict[str, list[torch.Tensor]] = {}
    for k, rows in enumerate(progress(chunks, desc=f"router: {split} traces", unit="chunk")):
        files = layout.router_traces_chunk(split, k)
        stored = load_file(str(files[1])) if all(f.is_file() for f in files) else {}
        if "entropy" not in stored:  # (a chunk collected before `entropy` existed lacks it and the thoughts' log-probabilities)
            _collect_chunk(pipe, [prompts[i] for i in rows], [examples[i] for i in rows], files)
            stored = load_file(str(files[1]))
        chunk_traces = read_traces(files[0])
        traces += chunk_traces
        for name, t in stored.items():
            parts.setdefault(name, []).append(t)
        # What the thoughts say about each answer comes from the traces' text (chunks collected before it existed too):
        # `thought_answer` reads the thoughts before the answer (the answer head's), `thought` the step router's.
        for name, ahead in (("thought_answer", 0), ("thought", 1 if reads == "thought" else 0)):
            parts.setdefault(name, []).append(torch.tensor(
                [thought_features(t.question, [x.text for x in t.thoughts[: i + ahead]], a.final) for t in chunk_traces
                 for i, a in enumerate(t.answers)], dtype=torch.float32))
            parts.setdefault(name.replace("thought", "thought_logprobs"), []).append(torch.tensor(
                [last_thought_logprobs(t.thoughts[: i + ahead]) for t in chunk_traces for i, _ in enumerate(t.answers)],
                dtype=torch.float32))
    return traces, {name: torch.cat(ts) for name, ts in parts.items()}


def main(cfg: Config) -> dict[str, Any]:
    """Train the router into `<run>/router/` (or `pipeline.router`); returns `router.json`'s content."""
    prepare(cfg)
    layout = RunLayout.of(cfg)
    rcfg, max_thoughts = cfg.router, cfg.pipeline.max_thoughts
    out = layout.router_dir
    key = router_key(cfg)
    if layout.router_file.is_file():
        info = json.loads(layout.router_file.read_text())
        if info.get("key") == key:
            return info
    traces_dir, traces_key = layout.router_traces_dir, router_traces_key(cfg)
    if read_key(traces_dir / KEY_FILE) != traces_key:
        shutil.rmtree(traces_dir, ignore_errors=True)  # traces of other inputs: collect anew
        traces_dir.mkdir(parents=True)
        write_key(traces_dir / KEY_FILE, traces_key)

    t = cfg.task_of("router")
    task = task_from(t)
    train_ex = read_split(layout.split("train"), "router training questions")[: rcfg.train_questions]
    val_ex = read_split(layout.split("val"), "router validation questions")[: rcfg.val_questions]
    if not train_ex or not val_ex:
        raise DataError(f"the router needs training and validation questions; {layout.data_dir} gave {len(train_ex)} and "
                        f"{len(val_ex)} (router.train_questions={rcfg.train_questions}, router.val_questions={rcfg.val_questions}).")
    pipe = load_pipeline(cfg, mode="always")
    if "hidden" in rcfg.features and not pipe.gives_hidden:
        raise ConfigError("router.features has 'hidden', the base model's hidden states, which an engine "
                          "(pipeline.base.base_url) does not give; leave it out (e.g. [logprobs, iteration, changed]).")
    chunk = router_chunk(cfg)
    tr_traces, tr_parts = collect(pipe, task, train_ex, layout, "train", chunk, rcfg.reads)
    va_traces, va_parts = collect(pipe, task, val_ex, layout, "val", chunk, rcfg.reads)

    tr_correct, tr_avail = labels.outcomes(tr_traces, train_ex, task, max_thoughts)
    va_correct, va_avail = labels.outcomes(va_traces, val_ex, task, max_thoughts)
    tr_rows, tr_helps, tr_hurts = policy.step_labels(tr_correct, tr_avail)
    va_rows, va_helps, _ = policy.step_labels(va_correct, va_avail)
    if not tr_rows or not va_rows:
        raise DataError("no answer in the router's traces could be followed by a thought (the TTM wrote none); "
                        "check the TTM and pipeline.ttm_prompt, or raise pipeline.max_thoughts.")
    names = list(rcfg.features)
    value = rcfg.labels == "value"
    x_tr = labels.step_matrix(tr_parts, names, max_thoughts)[labels.rows_of(tr_traces, tr_avail)]
    x_va = labels.step_matrix(va_parts, names, max_thoughts)[labels.rows_of(va_traces, va_avail)]
    y_tr = torch.tensor(labels.next_step_classes(tr_correct, tr_avail)) if value else torch.tensor(tr_helps)
    y_va = torch.tensor(labels.next_step_classes(va_correct, va_avail)) if value else torch.tensor(va_helps)
    mlp, fit_info = fit(x_tr, y_tr, x_va, y_va, 3 if value else 1, rcfg)
    with torch.no_grad():
        temperature, step_calibration = calibration.calibrate(mlp(x_va), y_va, rcfg.seed)
    step = StepRouter(mlp, names, 0.0, max_thoughts, rcfg.labels, temperature)
    scores = labels.score_matrix(step.score_vectors(x_va).numpy(), va_traces, va_avail, max_thoughts)

    # The answer head: is this answer right? Every answer is a row, read with the thoughts before it.
    a_tr = labels.step_matrix({**tr_parts, "thought": tr_parts["thought_answer"],
                                "thought_logprobs": tr_parts["thought_logprobs_answer"]}, names, max_thoughts)
    a_va = labels.step_matrix({**va_parts, "thought": va_parts["thought_answer"],
                                "thought_logprobs": va_parts["thought_logprobs_answer"]}, names, max_thoughts)
    c_tr = torch.tensor(np.concatenate([tr_correct[q, : len(t.answers)] for q, t in enumerate(tr_traces)]))
    c_va = torch.tensor(np.concatenate([va_correct[q, : len(t.answers)] for q, t in enumerate(va_traces)]))
    amlp, answer_fit = fit(a_tr, c_tr, a_va, c_va, 1, rcfg)
    with torch.no_grad():
        answer_temperature, answer_calibration = calibration.calibrate(amlp(a_va), c_va, rcfg.seed)
    answer = AnswerHead(amlp, names, max_thoughts, answer_temperature)
    picked = labels.selected_correct(va_correct, labels.answer_matrix(answer.score_vectors(a_va).numpy(), va_traces,
                                                                      max_thoughts), va_avail)
    returned = picked if rcfg.select == "best" else va_correct  # whether the answer each policy ends with is right

    parameters = model_parameters(pipe)
    cost = labels.cost_matrix(va_traces, va_avail, max_thoughts, parameters)
    first = rcfg.reads == "thought"  # it pays for the thought it rejects
    points = policy.curve(returned, va_avail, scores,
                          labels.cost_matrix(va_traces, va_avail, max_thoughts, parameters, rejected=True) if first else cost,
                          rejected=first)
    threshold, chosen = policy.choose_threshold(points, rcfg.objective, rcfg.penalty, rcfg.target_call_rate,
                                                rcfg.target_flops_rate)
    step.threshold = policy.finite_threshold(threshold, points)

    questions = task.prompts(val_ex)
    never = policy.outcome_at_depth(va_correct, va_avail, np.zeros(len(val_ex), dtype=int), cost)
    always = policy.outcome_at_depth(va_correct, va_avail, va_avail, cost)
    val = {
        "questions": len(val_ex),
        "never": never.as_dict(), "always": always.as_dict(), "router": chosen.as_dict(),
        "random_same_calls": policy.random_at_rate(va_correct, va_avail, chosen.calls_per_question, cost).as_dict(),
        "heuristic_same_calls": policy.heuristic_at_rate(va_correct, va_avail, questions, chosen.calls_per_question, cost).as_dict(),
        "oracle": policy.outcome_at_depth(va_correct, va_avail, policy.depth_labels(va_correct, va_avail), cost).as_dict(),
        # Answer selection alone: every thought, then the best-scored answer.
        "always_best_answer": policy.outcome_at_depth(picked, va_avail, va_avail, cost).as_dict(),
    }
    info: dict[str, Any] = {
        "features": names, "max_thoughts": max_thoughts, "threshold": step.threshold, "task": task.name,
        "extraction": task.primary, "objective": rcfg.objective, "penalty": rcfg.penalty,
        "target_call_rate": rcfg.target_call_rate, "target_flops_rate": rcfg.target_flops_rate, "reads": rcfg.reads,
        "labels": rcfg.labels, "select": rcfg.select, "parameters": parameters,
        "step": {"input_dim": int(x_tr.shape[1]), "hidden_size": rcfg.hidden_size, "outputs": 3 if value else 1,
                 "temperature": temperature, **fit_info},
        "answer": {"input_dim": int(a_tr.shape[1]), "hidden_size": rcfg.hidden_size, "temperature": answer_temperature,
                   **answer_fit},
        "calibration": {"step": step_calibration, "answer": answer_calibration},
        "train": {"questions": len(train_ex), "rows": len(tr_rows), "helps": int(tr_helps.sum()), "hurts": int(tr_hurts.sum())},
        "validation": val,
        "curve": [{"threshold": policy.finite_threshold(t, points), **o.as_dict()} for t, o in points],
        "key": key,
    }
    depth = None
    if rcfg.depth and "question" not in tr_parts:
        info["depth_skipped"] = "the depth router reads the question's hidden states, which an engine does not give"
    elif rcfg.depth:
        q_tr, q_va = tr_parts["question"], va_parts["question"]
        d_tr = torch.tensor(policy.depth_labels(tr_correct, tr_avail))
        d_va = torch.tensor(policy.depth_labels(va_correct, va_avail))
        dmodel, dinfo = fit(q_tr, d_tr, q_va, d_va, max_thoughts + 1, rcfg)
        depth = DepthRouter(dmodel)
        with torch.no_grad():
            chosen_depth = dmodel(q_va).argmax(-1).numpy()
        depth_cost = labels.cost_matrix(va_traces, va_avail, max_thoughts, parameters, depth=True)
        val["depth"] = policy.outcome_at_depth(va_correct, va_avail, chosen_depth, depth_cost, reference=cost).as_dict()
        info["depth"] = {"input_dim": int(q_tr.shape[1]), "hidden_size": rcfg.hidden_size, "classes": max_thoughts + 1, **dinfo}
    Router(step, depth, info, answer).save(out)
    # what it ran on, beside router.json rather than in it: the router's fingerprint (every top-level file but
    # metrics.json) keys its evaluation, which must not change with the machine or the commit that trained it
    atomic_write_text(metrics_file(out), json.dumps({"environment": environment(), "key": key}, indent=2) + "\n")
    return info
