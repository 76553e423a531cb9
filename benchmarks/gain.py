"""Benchmark: does the gain hold? A preset over several training seeds, and arms that change one thing (an ablation).

For each arm (`--arm NAME=KEY=VALUE;KEY=VALUE`, repeatable; the preset itself is the arm `preset`) and each seed
(`--seeds 0,1,2,3,4`), `pseudocot run PRESET run.seed=S` into `<out-dir>/<arm>/seed-<S>/` (data, tokenizer and test
questions do not depend on `run.seed`, so every run answers the same questions). An arm's run starts from a copy of
the first arm's run of the same seed, so the stages the arm does not change are skipped by their keys (an arm that
changes the base model retrains only the base, the router and evaluation); the first arm's run of a later seed starts
from the first seed's, so the stages that do not read `run.seed` (data; the docs preset's writer and questions) are
made once. `--reuse` keeps finished runs.

Reported, per arm: each system's accuracy per seed with its 95% interval, thought calls per question, the TTM's
faithfulness (the share of its `a op b = c` statements that are true), the run's wall time; over seeds the mean, min,
max and spread (max - min). Per pair of arms and system: the paired difference (arm - first arm) over all seeds'
questions together, with a paired bootstrap 95% interval, and per seed. With `--targets`, the issue's acceptance lines
are checked and printed. The last line printed is one JSON object; `--markdown` also prints the tables.

    HF_HUB_OFFLINE=1 python benchmarks/gain.py --preset demo --seeds 0,1,2,3,4 --out-dir runs/gain --targets demo --markdown
    HF_HUB_OFFLINE=1 python benchmarks/gain.py --preset demo --seeds 0,1,2 --out-dir runs/gain \\
        --arm "off-policy=distill.stages.0.on_policy=0" --arm "base-mix=base.thoughts_from=mix" --markdown
    python benchmarks/gain.py --preset demo --seeds 0,1,2,3,4 --out-dir runs/gain --summarize --markdown   # runs already made
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pseudocot.evaluate.metrics import paired_difference
from pseudocot.evaluate.report import sources

SYSTEMS = ("never", "always", "router")
TARGETS = {
    # `pseudocot demo`: always >= 65% and router >= 63% on every seed, always's spread <= 6 points, <= 1.5 calls.
    "demo": {"always_min": 0.65, "router_min": 0.63, "always_spread": 0.06, "router_calls": 1.5},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo", help="the preset or config file every run starts from")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="run.seed values, comma-separated")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/gain"), help="where the runs go")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="an arm: a name and dotted overrides separated by ';' (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    parser.add_argument("--task", default=None, help="the task whose accuracy counts (default: the run's primary)")
    parser.add_argument("--targets", choices=sorted(TARGETS), help="check these acceptance lines")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs (their stages are skipped by key anyway)")
    parser.add_argument("--summarize", action="store_true", help="only read the runs already in --out-dir")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    return parser.parse_args(argv)


def arms_of(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    arms = [("preset", [])]
    for spec in args.arm:
        name, sep, rest = spec.partition("=")
        if not sep or not name:
            sys.exit(f"error: --arm {spec!r} must be NAME=KEY=VALUE[;KEY=VALUE...]")
        arms.append((name, [o for o in rest.split(";") if o]))
    return arms


def run_folder(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed-{seed}"


def run_one(args: argparse.Namespace, arm: str, overrides: list[str], seed: int, first: Path | None) -> float:
    """`pseudocot run PRESET` for one arm and seed (from a copy of the first arm's run, when there is one)."""
    folder = run_folder(args.out_dir, arm, seed)
    if folder.exists() and not args.reuse:
        shutil.rmtree(folder)
    if first is not None and first != folder and not folder.exists() and (first / "run_state.json").is_file():
        shutil.copytree(first, folder, ignore=shutil.ignore_patterns("eval", "run.log", "logs"))
    cmd = [sys.executable, "-m", "pseudocot", "run", args.preset, f"run.out_dir={folder.parent}", f"run.name={folder.name}",
           f"run.seed={seed}", *args.set, *overrides]
    print(f"[{arm} seed {seed}] {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1")).returncode
    if code != 0:
        sys.exit(f"error: the run {folder} failed (exit {code}); its log is {folder.parent / f'{folder.name}.log'}")
    return time.perf_counter() - t0


def read_run(folder: Path, task: str | None) -> dict[str, Any]:
    """A finished run's numbers: per system accuracy, interval, calls, faithfulness, and right/wrong per question."""
    results = json.loads((folder / "eval" / "results.json").read_text())
    task = task or results["primary_task"]
    t = results["tasks"][task]
    out: dict[str, Any] = {"task": task, "wall_seconds": results.get("run_wall_seconds", {}).get("total"), "systems": {},
                           "machines": machines(results)}
    for name, s in t["systems"].items():
        preds = [json.loads(line) for line in (folder / "eval" / s["predictions"]).read_text().splitlines() if line.strip()]
        extraction = s["extraction"]
        out["systems"][name] = {
            "accuracy": s["accuracy"], "ci95": s["ci95"], "calls": s["thought_calls_per_question"],
            "faithfulness": s.get("faithfulness"), "correct": {p["id"]: bool(p["correct"][extraction]) for p in preds}}
    return out


def machines(results: dict[str, Any]) -> list[dict[str, str]]:
    """The distinct environments a run's numbers came from (`pseudocot.evaluate.report.sources`), threads and thread
    variables left out (a stage trained beside another runs one thread by design)."""
    out: list[dict[str, str]] = []
    for _, _, env in sources(results):
        env = {k: v for k, v in env.items() if k not in ("threads", "variables")}
        if env and env not in out:
            out.append(env)
    return out


def summary(runs: dict[str, dict[int, dict[str, Any]]], arms: list[str], n_boot: int = 10_000) -> dict[str, Any]:
    out: dict[str, Any] = {"arms": {}, "differences": {}}
    for arm in arms:
        seeds = sorted(runs[arm])
        per: dict[str, Any] = {}
        for system in SYSTEMS:
            if not all(system in runs[arm][s]["systems"] for s in seeds):
                continue
            acc = [runs[arm][s]["systems"][system]["accuracy"] for s in seeds]
            calls = [runs[arm][s]["systems"][system]["calls"] for s in seeds]
            faith = [runs[arm][s]["systems"][system]["faithfulness"] for s in seeds]
            per[system] = {"accuracy": dict(zip(map(str, seeds), acc)),
                           "ci95": {str(s): runs[arm][s]["systems"][system]["ci95"] for s in seeds},
                           "mean": round(statistics.mean(acc), 4), "min": min(acc), "max": max(acc),
                           "spread": round(max(acc) - min(acc), 4), "calls": dict(zip(map(str, seeds), calls)),
                           "calls_max": max(calls), "faithfulness": dict(zip(map(str, seeds), faith))}
        wall = [runs[arm][s]["wall_seconds"] for s in seeds]
        seen: list[dict[str, str]] = []
        for s in seeds:
            seen += [m for m in runs[arm][s]["machines"] if m not in seen]
        out["arms"][arm] = {"seeds": seeds, "systems": per, "wall_seconds": dict(zip(map(str, seeds), wall)), "machines": seen}
    base = arms[0]
    for arm in arms[1:]:
        diffs: dict[str, Any] = {}
        seeds = sorted(set(runs[arm]) & set(runs[base]))
        for system in SYSTEMS:
            a_all, b_all, per_seed = [], [], {}
            for s in seeds:
                a, b = runs[arm][s]["systems"].get(system), runs[base][s]["systems"].get(system)
                if a is None or b is None:
                    continue
                ids = sorted(set(a["correct"]) & set(b["correct"]))
                x, y = [a["correct"][i] for i in ids], [b["correct"][i] for i in ids]
                d = paired_difference(x, y, n_boot=n_boot, seed=s)
                per_seed[str(s)] = {"delta": d["difference"], "ci95": d["ci95"]}
                a_all += x
                b_all += y
            if a_all:
                d = paired_difference(a_all, b_all, n_boot=n_boot)
                diffs[system] = {"delta": d["difference"], "ci95": d["ci95"], "per_seed": per_seed, "questions": len(a_all)}
        out["differences"][f"{arm} - {base}"] = diffs
    return out


def check(targets: dict[str, float], arm: dict[str, Any]) -> dict[str, Any]:
    s = arm["systems"]
    lines = {
        f"always >= {targets['always_min']:.0%} on every seed": s["always"]["min"] >= targets["always_min"],
        f"router >= {targets['router_min']:.0%} on every seed": s["router"]["min"] >= targets["router_min"],
        f"always's spread <= {targets['always_spread'] * 100:.0f} points": s["always"]["spread"] <= targets["always_spread"] + 1e-9,
        f"router thought calls <= {targets['router_calls']} per question": s["router"]["calls_max"] <= targets["router_calls"],
    }
    return {"lines": lines, "met": all(lines.values())}


def markdown(result: dict[str, Any]) -> str:
    rows = ["| arm | system | " + " | ".join(f"seed {s}" for s in result["seeds"]) + " | mean | min | max | spread | calls/question |",
            "| --- | --- | " + " | ".join("---:" for _ in result["seeds"]) + " | ---: | ---: | ---: | ---: | ---: |"]
    for arm, a in result["summary"]["arms"].items():
        for system, s in a["systems"].items():
            cells = [f"{100 * s['accuracy'][str(x)]:.1f} [{100 * s['ci95'][str(x)][0]:.1f}, {100 * s['ci95'][str(x)][1]:.1f}]"
                     for x in result["seeds"]]
            calls = ", ".join(f"{s['calls'][str(x)]:.2f}" for x in result["seeds"])
            rows.append(f"| {arm} | {system} | " + " | ".join(cells) + f" | {100 * s['mean']:.1f} | {100 * s['min']:.1f} | "
                        f"{100 * s['max']:.1f} | {100 * s['spread']:.1f} | {calls} |")
    text = "\n".join(rows)
    seen = [m for a in result["summary"]["arms"].values() for m in a["machines"]]
    for m in [m for i, m in enumerate(seen) if m not in seen[:i]]:
        text += (f"\n\nRan on {m['machine']}; torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, "
                 f"peft {m['peft']}, accelerate {m['accelerate']}; pseudocot {m['pseudocot']}.")
    if not seen:
        text += "\n\nThe runs do not record their machine (made before pseudocot recorded environments)."
    diffs = result["summary"]["differences"]
    if diffs:
        rows = ["| comparison | system | Δ accuracy, all seeds [95% paired interval] | per seed |", "| --- | --- | ---: | --- |"]
        for name, d in diffs.items():
            for system, x in d.items():
                seeds = ", ".join(f"{100 * v['delta']:+.1f}" for v in x["per_seed"].values())
                rows.append(f"| {name} | {system} | {100 * x['delta']:+.1f} [{100 * x['ci95'][0]:+.1f}, {100 * x['ci95'][1]:+.1f}] | {seeds} |")
        text += "\n\n" + "\n".join(rows)
    return text


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arms = arms_of(args)
    if not args.summarize:
        for seed in seeds:
            first = run_folder(args.out_dir, arms[0][0], seed)
            for arm, overrides in arms:
                # the first arm of a later seed starts from the first seed's run: the stages that do not read run.seed
                # (data, tokenizer; a writer and its questions) are skipped by their keys
                run_one(args, arm, overrides, seed, first if arm != arms[0][0] else run_folder(args.out_dir, arm, seeds[0]))
    runs = {arm: {s: read_run(run_folder(args.out_dir, arm, s), args.task) for s in seeds
                  if (run_folder(args.out_dir, arm, s) / "eval" / "results.json").is_file()} for arm, _ in arms}
    missing = [f"{arm}/seed-{s}" for arm, _ in arms for s in seeds if s not in runs[arm]]
    if missing:
        sys.exit(f"error: no results for {', '.join(missing)} in {args.out_dir}; run them first (without --summarize).")
    result: dict[str, Any] = {"preset": args.preset, "seeds": seeds, "arms": {a: o for a, o in arms}, "set": args.set,
                              "summary": summary(runs, [a for a, _ in arms])}
    if args.targets:
        result["targets"] = {arm: check(TARGETS[args.targets], a) for arm, a in result["summary"]["arms"].items()}
        for arm, c in result["targets"].items():
            for line, ok in c["lines"].items():
                print(f"[{arm}] {'met' if ok else 'MISSED'}: {line}")
    if args.markdown:
        print(markdown(result))
    print(json.dumps(result, default=lambda x: x.tolist() if isinstance(x, np.ndarray) else str(x)), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
