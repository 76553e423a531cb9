"""The `router` stage: collect the base model's traces with thoughts forced, label them, train the
router, choose its threshold on validation, and compare it with random and heuristic routing.

    pseudocot router --config demo        -> runs/<name>/router/{router.json, router.safetensors, ...}

Collection is the slow part; it runs in chunks written atomically under `router/traces/`, so a
killed stage started again continues with the next chunk. This stage runs the pipeline (it sits
above `pipeline`); the router's model, features and policies never import it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pseudocot.config import Config, config_hash, to_dict
from pseudocot.data.example import DataError, Example
from pseudocot.router import policy
from pseudocot.router.features import assemble, check_features, step_parts

CHUNK = 128


def is_correct(final: str, gold: str) -> bool:
    """Committed answer vs gold: numerically when both are numbers, else as trimmed, case-folded text."""
    norm = lambda s: re.sub(r"[\s$,]", "", s).rstrip(".").lower()  # noqa: E731
    a, b = norm(final), norm(gold)
    try:
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-9)
    except ValueError:
        return a == b


def router_dir(cfg: Config) -> Path:
    """Where the router is written and read: `pipeline.router`, else the run's router/."""
    return Path(cfg.pipeline.router) if cfg.pipeline.router else cfg.run_dir / "router"


def chunk_size(cfg: Config) -> int:
    return max(CHUNK, cfg.pipeline.batch_size)


def stage_hash(cfg: Config) -> str:
    """Changes with the router and pipeline settings, the chunking, the data splits and the contents
    of the base and TTM folders, so a retrained model or new data is never labelled with old traces."""
    from pseudocot.files import folder_fingerprint
    from pseudocot.pipeline import run_models

    p = to_dict(cfg.pipeline)
    for k in ("mode", "threshold", "router", "batch_size"):
        p.pop(k)
    where = run_models(cfg)
    data = cfg.run_dir / "data"
    return config_hash({"router": to_dict(cfg.router), "pipeline": p, "chunk": chunk_size(cfg),
                        "models": [folder_fingerprint(where.base), folder_fingerprint(where.ttm)],
                        "data": [folder_fingerprint(data / "train.jsonl"), folder_fingerprint(data / "val.jsonl")]})


def _collect_chunk(pipe: Any, examples: list[Example], path: Path) -> None:
    from safetensors.torch import save_file

    from pseudocot.data.chat import question_text
    from pseudocot.files import atomic_path
    from pseudocot.pipeline import write_traces
    from pseudocot.router.model import question_completions

    prompts = [pipe.base_prompt(question_text(e), []) for e in examples]
    questions = torch.stack([c.features for c in question_completions(pipe.base, prompts, None)])
    traces = pipe.run([(e.id, question_text(e)) for e in examples], collect=True)
    steps = [step_parts(s.completion, s.iteration, s.changed) for t in traces for s in t.features]
    tensors = {name: torch.stack([s[name] for s in steps]) for name in steps[0]}
    tensors["question"] = questions
    write_traces(traces, path.with_suffix(".jsonl"))
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def collect(pipe: Any, examples: list[Example], folder: Path, split: str) -> tuple[list[Any], dict[str, torch.Tensor]]:
    """Forced traces of `examples` and their router inputs, chunk by chunk (finished chunks are kept)."""
    from safetensors.torch import load_file

    from pseudocot.pipeline import read_traces

    folder.mkdir(parents=True, exist_ok=True)
    size = max(CHUNK, pipe.cfg.batch_size)  # = chunk_size(cfg), which the stage hash covers
    chunks = [examples[i:i + size] for i in range(0, len(examples), size)]
    traces: list[Any] = []
    parts: dict[str, list[torch.Tensor]] = {}
    for k, chunk in enumerate(tqdm(chunks, desc=f"router: {split} traces", unit="chunk")):
        path = folder / f"{split}-{k:04d}"
        if not (path.with_suffix(".safetensors").is_file() and path.with_suffix(".jsonl").is_file()):
            _collect_chunk(pipe, chunk, path)
        traces += read_traces(path.with_suffix(".jsonl"))
        for name, t in load_file(str(path.with_suffix(".safetensors"))).items():
            parts.setdefault(name, []).append(t)
    return traces, {name: torch.cat(ts) for name, ts in parts.items()}


def outcomes(traces: list[Any], gold: dict[str, str], max_thoughts: int) -> tuple[np.ndarray, np.ndarray]:
    """`correct` (N, M+1) and `available` (N,) of forced traces (see `policy`)."""
    correct = np.zeros((len(traces), max_thoughts + 1), dtype=bool)
    available = np.zeros(len(traces), dtype=int)
    for q, t in enumerate(traces):
        marks = [is_correct(a.final, gold[t.id]) for a in t.answers]
        available[q] = len(marks) - 1
        correct[q, : len(marks)] = marks
        correct[q, len(marks):] = marks[-1]  # no later answer: the last one stands
    return correct, available


def _step_matrix(parts: dict[str, torch.Tensor], names: list[str], max_thoughts: int) -> torch.Tensor:
    n = len(parts["iteration"])
    return torch.stack([assemble({k: v[i] for k, v in parts.items() if k != "question"}, names, max_thoughts)
                        for i in range(n)])


def _rows_of(traces: list[Any], available: np.ndarray) -> list[int]:
    """Index into the step rows (one per answer) of every answer that could be followed by a thought."""
    out, start = [], 0
    for t, m in zip(traces, available):
        out += [start + i for i in range(m)]
        start += len(t.answers)
    return out


def _score_matrix(probs: np.ndarray, traces: list[Any], available: np.ndarray, max_thoughts: int) -> np.ndarray:
    scores = np.full((len(traces), max_thoughts), -np.inf)
    k = 0
    for q, m in enumerate(available):
        scores[q, :m] = probs[k:k + m]
        k += m
    return scores


def main(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Train the router into `<run>/router/` (or `pipeline.router`); returns `router.json`'s content."""
    from pseudocot.data.chat import question_text
    from pseudocot.pipeline import load_pipeline
    from pseudocot.router.model import DepthRouter, Router, StepRouter, fit
    from pseudocot.train.common import read_split

    rcfg, max_thoughts = cfg.router, cfg.pipeline.max_thoughts
    check_features(rcfg.features)
    out = router_dir(cfg)
    key = stage_hash(cfg)
    meta = out / "router.json"
    if meta.is_file() and not force:
        info = json.loads(meta.read_text())
        if info.get("config_hash") == key:
            return info
    traces_dir = out / "traces"
    stamp = traces_dir / "config_hash.txt"
    if force or not stamp.is_file() or stamp.read_text().strip() != key:
        import shutil

        shutil.rmtree(traces_dir, ignore_errors=True)  # traces of another config (or --force): collect anew
    traces_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")

    data = cfg.run_dir / "data"
    train_ex = read_split(data / "train.jsonl", "router training questions")[: rcfg.train_questions]
    val_ex = read_split(data / "val.jsonl", "router validation questions")[: rcfg.val_questions]
    if not train_ex or not val_ex:
        raise DataError(f"the router needs training and validation questions; {data} gave {len(train_ex)} and "
                        f"{len(val_ex)} (router.train_questions={rcfg.train_questions}, router.val_questions={rcfg.val_questions}).")
    gold = {e.id: e.answer for e in train_ex + val_ex}
    pipe = load_pipeline(cfg, mode="always")
    tr_traces, tr_parts = collect(pipe, train_ex, traces_dir, "train")
    va_traces, va_parts = collect(pipe, val_ex, traces_dir, "val")

    tr_correct, tr_avail = outcomes(tr_traces, gold, max_thoughts)
    va_correct, va_avail = outcomes(va_traces, gold, max_thoughts)
    tr_rows, tr_helps, tr_hurts = policy.step_labels(tr_correct, tr_avail)
    va_rows, va_helps, _ = policy.step_labels(va_correct, va_avail)
    if not tr_rows or not va_rows:
        raise DataError("no answer in the router's traces could be followed by a thought (the TTM wrote none); "
                        "check the TTM and pipeline.ttm_prompt, or raise pipeline.max_thoughts.")
    names = list(rcfg.features)
    x_tr = _step_matrix(tr_parts, names, max_thoughts)[_rows_of(tr_traces, tr_avail)]
    x_va = _step_matrix(va_parts, names, max_thoughts)[_rows_of(va_traces, va_avail)]
    mlp, fit_info = fit(x_tr, torch.tensor(tr_helps), x_va, torch.tensor(va_helps), 1, rcfg)
    step = StepRouter(mlp, names, 0.0, max_thoughts)
    with torch.no_grad():
        probs = torch.sigmoid(mlp(x_va).squeeze(-1)).numpy()
    scores = _score_matrix(probs, va_traces, va_avail, max_thoughts)
    points = policy.curve(va_correct, va_avail, scores)
    threshold, chosen = policy.choose_threshold(points, rcfg.objective, rcfg.penalty, rcfg.target_call_rate)
    step.threshold = policy.finite_threshold(threshold, points)

    questions = [question_text(e) for e in val_ex]
    never = policy.outcome_at_depth(va_correct, va_avail, np.zeros(len(val_ex), dtype=int))
    always = policy.outcome_at_depth(va_correct, va_avail, va_avail)
    val = {
        "questions": len(val_ex),
        "never": never.as_dict(), "always": always.as_dict(), "router": chosen.as_dict(),
        "random_same_calls": policy.random_at_rate(va_correct, va_avail, chosen.calls_per_question).as_dict(),
        "heuristic_same_calls": policy.heuristic_at_rate(va_correct, va_avail, questions, chosen.calls_per_question).as_dict(),
        "oracle": policy.outcome_at_depth(va_correct, va_avail, policy.depth_labels(va_correct, va_avail)).as_dict(),
    }
    info: dict[str, Any] = {
        "features": names, "max_thoughts": max_thoughts, "threshold": step.threshold,
        "objective": rcfg.objective, "penalty": rcfg.penalty, "target_call_rate": rcfg.target_call_rate,
        "step": {"input_dim": int(x_tr.shape[1]), "hidden_size": rcfg.hidden_size, **fit_info},
        "train": {"questions": len(train_ex), "rows": len(tr_rows), "helps": int(tr_helps.sum()), "hurts": int(tr_hurts.sum())},
        "validation": val,
        "curve": [{"threshold": policy.finite_threshold(t, points), **o.as_dict()} for t, o in points],
        "config_hash": key,
    }
    depth = None
    if rcfg.depth:
        q_tr, q_va = tr_parts["question"], va_parts["question"]
        d_tr = torch.tensor(policy.depth_labels(tr_correct, tr_avail))
        d_va = torch.tensor(policy.depth_labels(va_correct, va_avail))
        dmodel, dinfo = fit(q_tr, d_tr, q_va, d_va, max_thoughts + 1, rcfg)
        depth = DepthRouter(dmodel)
        with torch.no_grad():
            chosen_depth = dmodel(q_va).argmax(-1).numpy()
        val["depth"] = policy.outcome_at_depth(va_correct, va_avail, chosen_depth).as_dict()
        info["depth"] = {"input_dim": int(q_tr.shape[1]), "hidden_size": rcfg.hidden_size, "classes": max_thoughts + 1, **dinfo}
    Router(step, depth, info).save(out)
    return info
