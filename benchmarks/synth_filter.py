"""Benchmark: what the faithfulness filter is worth on the built-in task.

The demo's trained teacher (`<demo>/teacher`, made by `pseudocot demo`) samples `--samples` solutions
at `--temperature` for each of the first `--questions` training questions (`pseudocot synth`). Two
runs of the demo preset, identical but for `synth.checks`, then train the teacher -> TTM chain on

- `all`: every candidate (`synth.checks=[]`, the unfiltered baseline), and
- `kept`: the solutions that pass the default checks (format, answer, arithmetic, follows, consistency),

and evaluate never / always / router on the same 1,000 test questions. The base model and the data
are the same in both (same config and seed); the `kept` run reuses the `all` run's candidates (its
synth stage finds them under the same generation key and asks the teacher for nothing).

Reported: the keep rate, the rejects by reason, each run's accuracies with their intervals, and per
system the paired difference kept - all with its 95% bootstrap interval. The last line printed is one
JSON object; `--markdown` also prints the BENCHMARKS.md table.

    HF_HUB_OFFLINE=1 python benchmarks/synth_filter.py --demo runs/demo --questions 4000
    HF_HUB_OFFLINE=1 python benchmarks/synth_filter.py --demo runs/demo --questions 4000 --seed 1   # another training seed

`--seed` sets `run.seed` (model initialisation and data order) of both runs, in folders suffixed
`-seed<N>`; the questions, the candidates (copied from the seed-0 runs when they exist) and the test
set stay the same, so a second seed separates the filter's effect from training noise.
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

from pseudocot.evaluate.metrics import paired_difference


def run(name: str, out_dir: Path, overrides: list[str]) -> float:
    """`pseudocot run demo` with the overrides; returns its wall time."""
    cmd = [sys.executable, "-m", "pseudocot", "run", "demo", f"run.name={name}", f"run.out_dir={out_dir}", *overrides]
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    log = out_dir / f"{name}.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if code != 0:
        sys.exit(f"error: run {name} failed (exit code {code}); its log is {log}.")
    return time.perf_counter() - t0


def correct_by_question(eval_dir: Path, task: str, system: str) -> dict[str, bool]:
    rows = [json.loads(line) for line in (eval_dir / "predictions" / task / f"{system}.jsonl").read_text().splitlines() if line.strip()]
    results = json.loads((eval_dir / "results.json").read_text())
    primary = results["tasks"][task].get("primary") or next(iter(rows[0]["correct"]))
    return {r["id"]: bool(r["correct"][primary]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="A finished demo run: its teacher writes the solutions.")
    ap.add_argument("--out-dir", type=Path, default=Path("runs"), help="Where the two runs go (<out-dir>/synth-all, synth-kept).")
    ap.add_argument("--questions", type=int, default=2000, help="Training questions solved.")
    ap.add_argument("--samples", type=int, default=4, help="Solutions per question.")
    ap.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature of the teacher.")
    ap.add_argument("--seed", type=int, default=0, help="run.seed of both runs (training initialisation and data order).")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=CHECKS",
                    help="Another run on the same candidates with these checks (comma-separated), e.g. dedup=format; repeatable.")
    ap.add_argument("--markdown", action="store_true", help="Also print the BENCHMARKS.md table.")
    args = ap.parse_args()
    teacher = args.demo / "teacher"
    if not (teacher / "config.json").is_file():
        sys.exit(f"error: {teacher} holds no trained teacher; run `pseudocot demo` first (or pass --demo RUN).")
    common = ["synth.enabled=true", f"synth.teacher.path={teacher.resolve()}", "synth.teacher.batch_size=64", "synth.prompt={question}",
              f"synth.max_questions={args.questions}", f"synth.samples={args.samples}", f"synth.temperature={args.temperature}",
              "synth.max_new_tokens=64", "synth.chunk_questions=64"]
    if args.seed:
        common.append(f"run.seed={args.seed}")
    suffix = f"-seed{args.seed}" if args.seed else ""
    arms = {"all": ["synth.checks=[]"], "kept": []}
    for spec in args.arm:
        name, _, checks = spec.partition("=")
        if not name or name in arms:
            sys.exit(f"error: --arm {spec!r} needs a new NAME=CHECKS (e.g. dedup=format).")
        arms[name] = [f"synth.checks=[{checks}]"]
    folder = {arm: args.out_dir / f"synth-{arm}{suffix}" for arm in arms}
    seconds: dict[str, float] = {}

    def reuse(src: Path, dst: Path) -> None:
        """The same candidates in another run: copy them where its synth stage looks (same generation key)."""
        dst.mkdir(parents=True, exist_ok=True)
        if (src / "candidates.jsonl").is_file() and not (dst / "candidates.jsonl").exists():
            for name in ("candidates.jsonl", "key.txt"):
                shutil.copy2(src / name, dst / name)

    if args.seed:
        reuse(args.out_dir / "synth-all" / "synth", folder["all"] / "synth")
    seconds["all"] = run(folder["all"].name, args.out_dir, common + arms["all"])
    for arm in list(arms)[1:]:
        reuse(folder["all"] / "synth", folder[arm] / "synth")
        seconds[arm] = run(folder[arm].name, args.out_dir, common + arms[arm])

    report: dict[str, Any] = {"questions": args.questions, "samples": args.samples, "temperature": args.temperature,
                              "seed": args.seed, "teacher": str(teacher), "wall_seconds": {k: round(v, 1) for k, v in seconds.items()}}
    stats = {arm: json.loads((folder[arm] / "synth" / "stats.json").read_text()) for arm in arms}
    report["synth"] = {arm: {k: s[k] for k in ("candidates", "kept", "keep_rate", "rejected", "generation")} for arm, s in stats.items()}
    results = {arm: json.loads((folder[arm] / "eval" / "results.json").read_text()) for arm in arms}
    task = results["all"]["primary_task"]
    report["systems"] = {}
    for system in results["all"]["systems"]:
        base = correct_by_question(folder["all"] / "eval", task, system)
        ids = sorted(base)
        entry: dict[str, Any] = {arm: {"accuracy": results[arm]["systems"][system]["accuracy"], "ci95": results[arm]["systems"][system]["ci95"]}
                                 for arm in arms}
        for arm in list(arms)[1:]:
            other = correct_by_question(folder[arm] / "eval", task, system)
            if sorted(other) != ids:
                sys.exit("error: the runs were evaluated on different questions.")
            entry[f"{arm}_minus_all"] = paired_difference([other[i] for i in ids], [base[i] for i in ids], p_value=True)
        entry["thought_calls_per_question"] = {arm: results[arm]["systems"][system].get("thought_calls_per_question") for arm in arms}
        report["systems"][system] = entry
    for arm in arms:
        teacher_metrics = folder[arm] / "teacher" / "metrics.json"
        if teacher_metrics.is_file():
            m = json.loads(teacher_metrics.read_text())
            report.setdefault("teacher_val_loss", {})[arm] = m.get("eval_loss") or m.get("val_loss")
    if args.markdown:
        others = list(arms)[1:]
        print("| system | all candidates | " + " | ".join(f"{arm} | {arm} - all [95% CI]" for arm in others) + " |")
        print("| --- | --- | " + " | ".join("--- | ---" for _ in others) + " |")
        for system, r in report["systems"].items():
            cells = [f"{100 * r['all']['accuracy']:.1f}%"]
            for arm in others:
                d = r[f"{arm}_minus_all"]
                cells += [f"{100 * r[arm]['accuracy']:.1f}%", f"{100 * d['difference']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"]
            print(f"| {system} | " + " | ".join(cells) + " |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
