"""Benchmark: router variants on finished runs: each variant's router is trained again on the run's own forced traces
(no new traces) and evaluated against `always` on the test questions.

For each run and `--variant NAME=KEY=VALUE;KEY=VALUE` (the run's own router is the variant `as-run`), the run is
copied to `<out-dir>/<NAME>/<run name>/` (the original is not touched), `pseudocot router` and `pseudocot eval` run
there with the overrides (only the router system answers again: the other systems' answers are cached), and
`eval/results.json` gives the router's accuracy, its paired difference against `always` with the eval's paired
bootstrap interval (`comparisons.router_vs_always`), its thought calls and estimated FLOPs per question, both as a
rate of `always`'s.

    HF_HUB_OFFLINE=1 python benchmarks/router_variants.py runs/gain/preset/seed-{0,1,2,3,4} --out-dir runs/router-variants \\
        --variant "flops-0.85=router.objective=flops;router.target_flops_rate=0.85;router.features=[hidden, logprobs, iteration, changed, thought]" \\
        --variant "thought-first-0.85=router.objective=flops;router.target_flops_rate=0.85;router.reads=thought;\\
router.features=[hidden, logprobs, iteration, changed, thought]" \\
        --markdown

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (never, always and router evaluated)")
    parser.add_argument("--out-dir", type=Path, required=True, help="where the copies go")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="a name and dotted overrides separated by ';' (repeatable)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    return parser.parse_args(argv)


def variant(run: Path, out: Path, overrides: list[str]) -> dict[str, Any]:
    folder = out / run.name
    if not folder.exists():
        shutil.copytree(run, folder)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for command in ("router", "eval"):
        args = [sys.executable, "-m", "pseudocot", command, "--config", str(folder / "config.yaml"),
                f"run.out_dir={folder.parent}", f"run.name={folder.name}", *overrides]
        done = subprocess.run(args, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"error: `pseudocot {command}` on {folder} failed:\n{done.stderr[-2000:]}")
    results = json.loads((folder / "eval" / "results.json").read_text())
    s, c = results["systems"], results["comparisons"]["router_vs_always"]
    a, r = s["always"], s["router"]
    return {"run": str(run), "always": a["accuracy"], "router": r["accuracy"], "delta": c["delta"], "ci95": c["ci95"],
            "call_rate": r["thought_calls_per_question"] / a["thought_calls_per_question"],
            "flops_rate": r["flops_per_question"] / a["flops_per_question"] if r.get("flops_per_question") else None}


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    variants = [("as-run", [])]
    for spec in args.variant:
        name, sep, rest = spec.partition("=")
        if not sep or not name:
            sys.exit(f"error: --variant {spec!r} must be NAME=KEY=VALUE[;KEY=VALUE...]")
        variants.append((name, [o for o in rest.split(";") if o]))
    out: dict[str, Any] = {}
    for name, overrides in variants:
        out[name] = [variant(run, args.out_dir / name, overrides) for run in args.runs]
        for r in out[name]:
            print(f"{name} {r['run']}: always {100 * r['always']:.1f}, router {100 * r['router']:.1f} "
                  f"({100 * r['delta']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}]), call rate {r['call_rate']:.2f}, "
                  f"FLOPs rate {r['flops_rate']}", file=sys.stderr, flush=True)
    if args.markdown:
        print("| variant | run | always | router | router − always [95%] | call rate | FLOPs rate |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for name, rows in out.items():
            for r in rows:
                fl = "–" if r["flops_rate"] is None else f"{r['flops_rate']:.2f}"
                print(f"| {name} | {Path(r['run']).name} | {100 * r['always']:.1f} | {100 * r['router']:.1f} | "
                      f"{100 * r['delta']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}] | {r['call_rate']:.2f} | {fl} |")
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
