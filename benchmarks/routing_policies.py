"""Benchmark: what stopping policies could buy, simulated on a finished run's `always` traces (no model is run).

Under `always` the base model answers after 0, 1, ..., M thoughts, so with greedy decoding and a TTM prompt that does
not read the base's answers, any policy that stops after n thoughts ends with answer n of that trace (`router.policy`).
Each answer is scored by the run's primary task (`Task.is_correct`); costs are the traces' own processed tokens,
as estimated FLOPs (`pseudocot.cost`). Policies:

- `never`, `always`, and `oracle` (stop at the first right answer: the upper bound of any stopping rule);
- `router`: the run's own evaluated router system (its numbers, for the same questions), and random and heuristic
  routing at its number of thoughts per question (`router.policy`: exact expectations);
- thought-first rules (issue 22: read the thought before paying for the re-answer): after answer i the TTM writes
  thought i+1; the base re-answers only if the rule accepts it, else the loop stops with answer i (the rejected
  thought's TTM cost counted). `agree` stops when answer i is the last value the new thought wrote; `agree+cover`
  also needs every number of the question used by the thoughts (`pipeline.thought_features`).

Thought calls count every thought the TTM wrote (rejected ones too); re-answers count the base's calls after
answer 0; rates are against `always`.

    HF_HUB_OFFLINE=1 python benchmarks/routing_policies.py runs/demo
    HF_HUB_OFFLINE=1 python benchmarks/routing_policies.py runs/gain/preset/seed-{0,1,2,3,4} --markdown

The last line printed is one JSON object (one entry per run).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pseudocot.config import load_config
from pseudocot.cost import flops
from pseudocot.layout import RunLayout
from pseudocot.pipeline import Trace, read_traces, thought_features
from pseudocot.router import labels, policy
from pseudocot.tasks.registry import task_from
from pseudocot.train.rows import read_split

Rule = Callable[[list[float]], bool]
RULES: dict[str, Rule] = {
    "agree": lambda f: f[1] == 1.0,
    "agree+cover": lambda f: f[1] == 1.0 and f[4] == 1.0,
}
"""Thought-first rules on `thought_features` (index 1: the answer is the new thought's last value; 4: coverage):
True stops the loop with the current answer."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (eval/results.json with never, always, router)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    return parser.parse_args(argv)


def stop_first_right(right: list[bool]) -> int:
    return next((i for i, ok in enumerate(right) if ok), len(right) - 1)


def thought_first(t: Trace, rule: Rule) -> tuple[int, int]:
    """(answer returned, thoughts written) under a thought-first rule."""
    for i in range(len(t.answers)):
        if i >= len(t.thoughts):
            return i, len(t.thoughts)
        if rule(thought_features(t.question, [x.text for x in t.thoughts[: i + 1]], t.answers[i].final)):
            return i, i + 1
    return len(t.answers) - 1, len(t.thoughts)


def cost_of(t: Trace, answers: int, thoughts: int, parameters: dict[str, int]) -> float:
    part = Trace(id=t.id, question=t.question, mode=t.mode, answers=t.answers[:answers], thoughts=t.thoughts[:thoughts])
    return flops(part.processed, parameters) or 0.0


def policies(run: Path) -> dict[str, Any]:
    cfg = load_config(run / "config.yaml", [f"run.out_dir={run.parent}", f"run.name={run.name}"])
    results = json.loads((run / "eval" / "results.json").read_text())
    systems = results["tasks"][results["primary_task"]]["systems"]
    task = task_from(cfg.eval.tasks[0])
    examples = {e.id: e for e in read_split(RunLayout.of(cfg).split("test"), "test")}
    traces = read_traces(run / "eval" / systems["always"]["traces"])
    parameters = {k: v for k, v in (systems["always"]["parameters"] or {}).items() if k != "total"}
    n = len(traces)
    right = [[task.is_correct(a.text, examples[t.id]) for a in t.answers] for t in traces]
    always_thoughts = sum(len(t.thoughts) for t in traces) / n
    always_flops = sum(cost_of(t, len(t.answers), len(t.thoughts), parameters) for t in traces) / n

    def outcome(picks: list[tuple[int, int]]) -> dict[str, float]:
        acc = sum(r[k] for r, (k, _) in zip(right, picks)) / n
        thoughts = sum(u for _, u in picks) / n
        reans = sum(k for k, _ in picks) / n
        cost = sum(cost_of(t, k + 1, u, parameters) for t, (k, u) in zip(traces, picks)) / n
        return {"accuracy": round(acc, 4), "thought_calls": round(thoughts, 3), "call_rate": round(thoughts / always_thoughts, 3),
                "reanswers": round(reans, 3), "reanswer_rate": round(reans / always_thoughts, 3),
                "flops_rate": round(cost / always_flops, 3)}

    out: dict[str, Any] = {
        "never": outcome([(0, 0)] * n),
        "always": outcome([(len(t.answers) - 1, len(t.thoughts)) for t in traces]),
        "oracle": outcome([(k, k) for k in (stop_first_right(r) for r in right)]),
    }
    if "router" in systems:
        r = systems["router"]
        out["router"] = {"accuracy": round(r["accuracy"], 4), "thought_calls": round(r["thought_calls_per_question"], 3),
                         "call_rate": round(r["thought_calls_per_question"] / always_thoughts, 3),
                         "reanswer_rate": round(r["thought_calls_per_question"] / always_thoughts, 3),
                         "flops_rate": round(r["flops_per_question"] / always_flops, 3) if r.get("flops_per_question") else None}
        # random and heuristic routing at the router's thought calls (exact expectations, `router.policy`)
        m = max(len(t.thoughts) for t in traces)
        correct, available = labels.outcomes(traces, [examples[t.id] for t in traces], task, m)
        cost = labels.cost_matrix(traces, available, m, parameters)
        for name, o in (("random, router's calls", policy.random_at_rate(correct, available, r["thought_calls_per_question"], cost)),
                        ("heuristic, router's calls", policy.heuristic_at_rate(correct, available, [t.question for t in traces],
                                                                               r["thought_calls_per_question"], cost))):
            out[name] = {"accuracy": round(o.accuracy, 4), "thought_calls": round(o.calls_per_question, 3),
                         "call_rate": round(o.call_rate, 3), "reanswer_rate": round(o.call_rate, 3),
                         "flops_rate": round(o.flops_rate, 3) if o.flops_rate is not None else None}
    for name, rule in RULES.items():
        out[f"thought-first {name}"] = outcome([thought_first(t, rule) for t in traces])
    return {"run": str(run), "questions": n, "policies": out}


def main(argv: list[str]) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows = [policies(run) for run in args.runs]
    if args.markdown:
        print("| run | policy | accuracy | thought calls (rate) | re-answers (rate) | FLOPs rate |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            for name, o in r["policies"].items():
                fl = "–" if o.get("flops_rate") is None else f"{o['flops_rate']:.2f}"
                re_ = f"{o['reanswers']:.2f} ({o['reanswer_rate']:.2f})" if "reanswers" in o else f"({o['reanswer_rate']:.2f})"
                run = "/".join(Path(r["run"]).parts[-2:])
                print(f"| {run} | {name} | {100 * o['accuracy']:.1f} | {o['thought_calls']:.2f} ({o['call_rate']:.2f}) | {re_} | {fl} |")
    print(json.dumps(rows), flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
