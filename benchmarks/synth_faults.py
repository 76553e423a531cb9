"""Benchmark: `pseudocot synth` against a DeepSeek-R1-style endpoint that misbehaves, killed mid-run.

Serves `fake_teacher.FakeTeacher` (this folder) on 127.0.0.1 with the GSM8K questions of `--data`
(default: the 100 test questions shipped with pseudocot; `../shared/data/gsm8k/test.jsonl` has 1,319).
It answers like DeepSeek-R1 (thinking in `reasoning_content`, the solution's steps, `Final answer: N`),
plants errors (`--error-rate`: one intermediate result off by one, the final answer kept;
`--wrong-rate`: a wrong final answer with a consistent chain), and injects faults on the first try of
a request: 429 with Retry-After, 500, answers slower than the client's timeout, dropped connections.

`pseudocot synth` runs as its own process, is killed with SIGKILL once `--kill-after` solutions are
written, and is run again to the end. Checked and reported:

- nothing lost, nothing duplicated: every (question, sample) exactly once in candidates.jsonl;
- the second run asked only for what was missing (requests it sent vs solutions still missing);
- the retries its stats.json counts, by cause, equal the faults the server injected during it;
- what the filter did with the planted errors: share of the rows with a changed intermediate result
  rejected by `arithmetic`, of the wrong answers rejected by `answer`, of the clean rows kept
  (clean samples of one question are the same text, so all but the first are duplicates).

    HF_HUB_OFFLINE=1 python benchmarks/synth_faults.py [--data ../shared/data/gsm8k/test.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_teacher import FakeTeacher  # noqa: E402
from pseudocot.data.loaders import load_gsm8k  # noqa: E402

SHIPPED = Path(__file__).parents[1] / "src/pseudocot/configs/data/gsm8k/test_first100.jsonl"


def synth(cfg: Path, out: Path) -> subprocess.Popen:
    log = (out / "synth.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "pseudocot", "synth", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHIPPED, help="GSM8K JSONL (question, answer with #### N).")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-synth-faults"), help="Work folder (emptied first).")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--faults", default="429=0.1,500=0.1,slow=0.05,drop=0.05", help="Fault shares on a request's first try.")
    ap.add_argument("--error-rate", type=float, default=0.2)
    ap.add_argument("--wrong-rate", type=float, default=0.1)
    ap.add_argument("--kill-after", type=float, default=0.4, help="Kill the first run once this share of the solutions is written.")
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    questions = load_gsm8k(args.data).examples
    total = len(questions) * args.samples
    if args.out.exists():
        import shutil

        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    report: dict = {"questions": len(questions), "samples": args.samples, "faults": args.faults, "error_rate": args.error_rate,
                    "wrong_rate": args.wrong_rate, "data": str(args.data)}
    with FakeTeacher(questions, faults=args.faults, slow_seconds=2.0, error_rate=args.error_rate, wrong_rate=args.wrong_rate,
                     seed=0) as server:
        cfg = args.out / "synth.yaml"
        cfg.write_text("\n".join([
            f"run: {{name: faults, out_dir: {args.out.resolve()}, device: cpu}}",
            "synth:",
            f"  questions: {args.data.resolve()}",
            "  format: gsm8k",
            f"  teacher: {{base_url: '{server.url}', model: fake-r1, concurrency: {args.concurrency}, max_retries: 6, timeout_seconds: 1.0}}",
            f"  samples: {args.samples}",
            "  task: {name: gsm8k, options: {num_fewshot: 0, primary: answer-line}}",
        ]) + "\n")
        target = args.out / "faults" / "synth" / "candidates.jsonl"
        t0 = time.perf_counter()
        proc = synth(cfg, args.out)
        while proc.poll() is None and lines(target) < args.kill_after * total:
            time.sleep(0.02)
        if proc.poll() is not None:
            sys.exit(f"error: synth ended (exit code {proc.returncode}) before it could be killed; see {args.out / 'synth.log'}.")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.wait_idle()
        written = lines(target)
        before = server.stats()
        proc = synth(cfg, args.out)
        code = proc.wait()
        seconds = time.perf_counter() - t0
        server.wait_idle()
        after = server.stats()
    if code != 0:
        sys.exit(f"error: the second synth run failed (exit code {code}); see {args.out / 'synth.log'}.")
    rows = [json.loads(x) for x in target.read_text().splitlines() if x.strip()]
    pairs = [(r["id"], r["sample"]) for r in rows]
    stats = json.loads(target.with_name("stats.json").read_text())
    second = {k: after["faults"].get(k, 0) - before["faults"].get(k, 0) for k in after["faults"]}
    retries = stats["generation"]["retries"]
    report.update({
        "solutions": total, "written_before_kill": written, "rows": len(rows), "unique_rows": len(set(pairs)),
        "lost": total - len(set(pairs)), "duplicated": len(pairs) - len(set(pairs)),
        "second_run": {"requests_sent": stats["generation"]["requests"], "missing_at_start": total - written,
                       "generated": stats["generation"]["generated"], "reused": stats["generation"]["reused"],
                       "faults_injected": second, "retries_counted": retries},
        "retries_match_faults": (retries.get("429", 0) == second.get("429", 0) and retries.get("500", 0) == second.get("500", 0)
                                 and retries.get("timeout", 0) == second.get("slow", 0) and retries.get("connection", 0) == second.get("drop", 0)),
        "server": {"requests": after["requests"], "faults": after["faults"], "duplicates_served": after["duplicates_served"]},
        "wall_seconds": round(seconds, 1),
        "filter": {k: stats[k] for k in ("candidates", "kept", "keep_rate", "rejected")},
    })
    # What happened to the planted errors: compare each row with the gold solution the fake teacher started from.
    gold = {q.id: q for q in questions}
    rejects = {(r["id"], r["sample"]): r["reasons"] for r in
               (json.loads(x) for x in target.with_name("rejects.jsonl").read_text().splitlines() if x.strip())}
    kinds = {"planted_step_error": [0, 0], "wrong_answer": [0, 0], "clean": [0, 0]}
    planted_kept = 0
    for r in rows:
        q = gold[r["id"]]
        steps, _, final = r["completion"].rpartition("\n")
        if final.strip() != f"Final answer: {q.answer}":
            kind, caught = "wrong_answer", any(x.startswith("answer:wrong") for x in rejects.get((r["id"], r["sample"]), []))
        elif steps.strip() != (q.reasoning or "").strip():
            kind, caught = "planted_step_error", any(x.startswith("arithmetic:false") for x in rejects.get((r["id"], r["sample"]), []))
        else:
            kind, caught = "clean", (r["id"], r["sample"]) not in rejects
        kinds[kind][0] += 1
        kinds[kind][1] += int(caught)
        planted_kept += int(kind == "planted_step_error" and (r["id"], r["sample"]) not in rejects)
    report["planted"] = {"planted_step_error": {"rows": kinds["planted_step_error"][0], "rejected_by_arithmetic": kinds["planted_step_error"][1],
                                                "kept": planted_kept},
                         "wrong_answer": {"rows": kinds["wrong_answer"][0], "rejected_by_answer": kinds["wrong_answer"][1]},
                         "clean": {"rows": kinds["clean"][0], "kept": kinds["clean"][1],
                                   "questions_with_a_clean_row_kept": len({r["id"] for r in rows if (r["id"], r["sample"]) not in rejects})}}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
