"""Benchmark: what GRPO on the Tiny Thought Model does to the Pseudo-CoT system on the built-in task.

Starting from a finished demo run (`pseudocot demo`), each arm copies its data, tokenizer, teacher,
distilled TTM and base model into `<out-dir>/grpo-<arm>/` and runs `pseudocot run demo-grpo` there: the
finished stages are skipped (same keys), GRPO tunes the TTM with the arm's rewards, the router is
retrained on the new TTM's traces, and never / always / router answer the same 1,000 test questions.

Arms (`--arm NAME=REWARDS`, repeatable; default the two below):

- `bc+arith0.25`: {base_correct: 1, arithmetic: 0.25} (the demo-grpo preset's rewards);
- `correct`: {correct: 1}, the TTM's own final answer only.

Reported per arm and system: accuracy before (the demo run's evaluation) and after with their 95%
intervals, the paired difference after - before with its bootstrap interval and McNemar p, thoughts per
question, and the faithfulness metric (share of true `a op b = c` statements in what the system wrote)
before and after. Also each arm's first and last logged reward means and the GRPO stage's wall time. The
last line printed is one JSON object; `--markdown` also prints the BENCHMARKS.md tables. The reward
curves are in each arm's report (`<out-dir>/grpo-<arm>/eval/figures/grpo_rewards.png`).

    HF_HUB_OFFLINE=1 python benchmarks/grpo_outcome.py --demo runs/demo --markdown
    HF_HUB_OFFLINE=1 python benchmarks/grpo_outcome.py --arm bc+arith0.25=base_correct:1,arithmetic:0.25 --set grpo.seed=1 --tag=-seed1 --markdown
    HF_HUB_OFFLINE=1 python benchmarks/grpo_outcome.py --arm lr5e-4=base_correct:1,arithmetic:1 --set grpo.learning_rate=5e-4
    python benchmarks/grpo_outcome.py --arm bc+arith0.25=x:1 --summarize=,-seed1,-seed2,-seed3   # over seeds already run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pseudocot.evaluate.metrics import mcnemar_exact, paired_difference

COPIED = ("data", "tokenizer", "teacher", "distill", "base", "run_state.json")
"""What an arm takes from the demo run: everything GRPO starts from (their stage keys match, so they are skipped)."""


def correct_by_question(eval_dir: Path, task: str, system: str) -> dict[str, bool]:
    rows = [json.loads(line) for line in (eval_dir / "predictions" / task / f"{system}.jsonl").read_text().splitlines() if line.strip()]
    results = json.loads((eval_dir / "results.json").read_text())
    primary = results["tasks"][task].get("primary") or next(iter(rows[0]["correct"]))
    return {r["id"]: bool(r["correct"][primary]) for r in rows}


def rewards_override(spec: str) -> str:
    """`base_correct:1,arithmetic:1` -> `grpo.rewards={base_correct: 1, arithmetic: 1}`."""
    pairs = [p.split(":") for p in spec.split(",") if p]
    if not pairs or any(len(p) != 2 for p in pairs):
        sys.exit(f"error: rewards {spec!r} must be name:weight pairs separated by commas, e.g. correct:1.")
    return "grpo.rewards={" + ", ".join(f"{n}: {w}" for n, w in pairs) + "}"


def run_arm(demo: Path, folder: Path, overrides: list[str]) -> float:
    """Copy the demo's trained stages into `folder`, then `pseudocot run demo-grpo` there; returns its wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src, dst = demo / name, folder / name
        if dst.exists() or not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    cmd = [sys.executable, "-m", "pseudocot", "run", "demo-grpo", f"run.name={folder.name}", f"run.out_dir={folder.parent}", *overrides]
    print("+ " + " ".join(cmd), flush=True)
    log = folder.parent / f"{folder.name}.log"
    t0 = time.perf_counter()
    with log.open("ab") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if code != 0:
        sys.exit(f"error: arm {folder.name} failed (exit code {code}); its log is {log}.")
    return time.perf_counter() - t0


def summary(results: dict[str, Any], system: str) -> dict[str, Any]:
    s = results["systems"][system]
    return {k: s.get(k) for k in ("accuracy", "ci95", "thought_calls_per_question", "faithfulness", "faithfulness_n",
                                  "answer_matches_last_value", "generated_tokens_per_question")}


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Two-sided 95% quantiles of Student's t by degrees of freedom (more: 1.96)."""


def summarize(demo: Path, out_dir: Path, name: str, tags: list[str]) -> dict[str, Any]:
    """Over runs already made (one per tag, e.g. one per GRPO seed): each run's paired difference per system,
    their mean, standard deviation and t interval over runs, and the shares of groups with no reward spread."""
    import statistics

    before = json.loads((demo / "eval" / "results.json").read_text())
    task = before["primary_task"]
    folders = [out_dir / f"grpo-{name.replace('+', '-')}{tag}" for tag in tags]
    out: dict[str, Any] = {"arm": name, "runs": [str(f) for f in folders], "systems": {}, "zero_spread": {}}
    for system in before["systems"]:
        b = correct_by_question(demo / "eval", task, system)
        diffs = []
        for folder in folders:
            a = correct_by_question(folder / "eval", task, system)
            diffs.append(100 * sum(a[i] - b[i] for i in b) / len(b))
        mean = statistics.mean(diffs)
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        half = T95.get(len(diffs) - 1, 1.96) * sd / len(diffs) ** 0.5
        out["systems"][system] = {"differences": [round(d, 1) for d in diffs], "mean": round(mean, 2), "sd": round(sd, 2),
                                  "t95": [round(mean - half, 1), round(mean + half, 1)]}
    for folder in folders:
        curve = json.loads((folder / "grpo" / "metrics.json").read_text())["curve"]
        shares = {"total": [c["frac_reward_zero_std"] for c in curve]}
        shares |= {k.split("/")[1]: [c[k] for c in curve if c.get(k) is not None] for k in curve[0] if k.endswith("/zero_spread_groups")}
        out["zero_spread"][folder.name] = {k: {"mean": round(statistics.mean(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
                                           for k, v in shares.items() if v}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="A finished demo run (`pseudocot demo`).")
    ap.add_argument("--out-dir", type=Path, default=Path("runs"), help="Where the arms' runs go (<out-dir>/grpo-<arm>).")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=REWARDS",
                    help="An arm: its name and rewards as name:weight pairs, e.g. correct=correct:1; repeatable.")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A config override for every arm; repeatable.")
    ap.add_argument("--tag", default="", help="A suffix for the arms' folders (e.g. --tag=-seed1 with --set grpo.seed=1).")
    ap.add_argument("--markdown", action="store_true", help="Also print the BENCHMARKS.md tables.")
    ap.add_argument("--summarize", metavar="TAGS",
                    help="Run nothing: over the first arm's runs with these comma-separated tags (e.g. ',-seed1,-seed2'), "
                         "print the differences' mean, sd and t interval, and the zero-spread shares.")
    args = ap.parse_args()
    before_results = args.demo / "eval" / "results.json"
    if not before_results.is_file():
        sys.exit(f"error: {before_results} does not exist; run `pseudocot demo` first (or pass --demo RUN).")
    specs = args.arm or ["bc+arith0.25=base_correct:1,arithmetic:0.25", "correct=correct:1"]
    arms: dict[str, str] = {}
    for spec in specs:
        name, _, rewards = spec.partition("=")
        if not name or not rewards or name in arms:
            sys.exit(f"error: --arm {spec!r} needs a new NAME=REWARDS (e.g. correct=correct:1).")
        arms[name] = rewards_override(rewards)
    if args.summarize is not None:
        print(json.dumps(summarize(args.demo, args.out_dir, next(iter(arms)), args.summarize.split(","))))
        return
    before = json.loads(before_results.read_text())
    task = before["primary_task"]
    report: dict[str, Any] = {"demo": str(args.demo), "overrides": args.set, "arms": {}}
    for name, rewards in arms.items():
        folder = args.out_dir / f"grpo-{name.replace('+', '-')}{args.tag}"
        seconds = run_arm(args.demo, folder, [rewards, *args.set])
        after = json.loads((folder / "eval" / "results.json").read_text())
        grpo = json.loads((folder / "grpo" / "metrics.json").read_text())
        state = json.loads((folder / "run_state.json").read_text())
        curve = grpo["curve"]
        entry: dict[str, Any] = {
            "rewards": grpo["rewards"], "steps": grpo["steps"], "wall_seconds": round(seconds, 1),
            "stage_seconds": {s: state[s].get("seconds") for s in ("grpo", "router", "eval") if s in state},
            "reward_first": {k: v for k, v in curve[0].items() if k.endswith("/mean") or k.startswith("base_correct/")},
            "reward_last": {k: v for k, v in curve[-1].items() if k.endswith("/mean") or k.startswith("base_correct/")},
            "systems": {}}
        for system in before["systems"]:
            b, a = correct_by_question(args.demo / "eval", task, system), correct_by_question(folder / "eval", task, system)
            if sorted(a) != sorted(b):
                sys.exit("error: the demo and the arm were evaluated on different questions.")
            ids = sorted(b)
            xa, xb = [a[i] for i in ids], [b[i] for i in ids]
            entry["systems"][system] = {"before": summary(before, system), "after": summary(after, system),
                                        "after_minus_before": paired_difference(xa, xb) | {"mcnemar": mcnemar_exact(xa, xb)}}
        report["arms"][name] = entry
    if args.markdown:
        for name, entry in report["arms"].items():
            print(f"\n**{name}** ({entry['steps']} GRPO steps; run {entry['wall_seconds']:.0f} s)\n")
            print("| system | before | after | after - before [95% CI] | McNemar p | thoughts/question before -> after | "
                  "faithfulness before -> after |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for system, r in entry["systems"].items():
                b, a, d = r["before"], r["after"], r["after_minus_before"]
                faith = (f"{100 * b['faithfulness']:.1f}% -> {100 * a['faithfulness']:.1f}%"
                         if b["faithfulness"] is not None and a["faithfulness"] is not None else "–")
                print(f"| {system} | {100 * b['accuracy']:.1f}% | {100 * a['accuracy']:.1f}% | {100 * d['difference']:+.1f} "
                      f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}] | {d['mcnemar']['p_value']:.3g} | "
                      f"{b['thought_calls_per_question']:.2f} -> {a['thought_calls_per_question']:.2f} | {faith} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
