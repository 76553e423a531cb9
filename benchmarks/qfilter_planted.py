"""`pseudocot synth qfilter` on a planted set built from real text: GSM8K problems split into a narrative
"document" and its question (issue 23).

    .venv/bin/python benchmarks/qfilter_planted.py --gsm8k ../shared/data/gsm8k/test.jsonl --out /tmp/qfilter-planted

How the set is built (seeded, from GSM8K's test file):
- each problem is split at its last sentence with a question mark: the sentences before it are the
  narrative, that sentence is the question (problems with no narrative are left out);
- the narratives are written ten to a document (`doc-NNN.md`, one paragraph each), so a source span
  `doc-NNN.md#START-END` names one narrative;
- the items: question, the GSM8K answer after `####`, the solution's lines as the reasoning. The problems
  are shuffled and dealt into four disjoint groups:
  - intact: the item with its own narrative's span;
  - wrong document: the item pointed at a narrative of another document;
  - leaning: the item with its question rewritten to lean on the text (`According to the passage, ...`,
    one of several openings);
  - near-duplicate: a copy of an intact item (written after all the intact ones) whose question differs in
    case, punctuation and spacing, or in one added word.
Runs the CLI once with every default check, then once per check alone, and prints (and writes to
OUT/summary.json) the share of each group kept or rejected.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

LEANING = ["According to the passage, {q}", "Based on the text above, {q}", "As described in the document, {q}",
           "In the story in this section, {q}", "Using the information in the excerpt, {q}", "{Q} Answer using the passage."]
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9$])")


def split_problem(question: str) -> tuple[str, str] | None:
    """(narrative, question sentence): the question is the last sentence with a `?`."""
    parts = _SENTENCE.split(" ".join(question.split()))
    last = max((i for i, p in enumerate(parts) if "?" in p), default=None)
    if last is None or last == 0:
        return None
    return " ".join(parts[:last]), " ".join(parts[last:])


def near_copy(q: str, rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["case-punct", "word"])
    if kind == "case-punct":
        out = q.lower() if rng.random() < 0.5 else q.upper()
        out = out.replace(",", "").replace("?", " ?").replace("'", "") + ("!" if rng.random() < 0.3 else "")
        return "  ".join(out.split(" ")), kind
    words = q.split()
    i = rng.randrange(1, len(words))
    return " ".join([*words[:i], rng.choice(["exactly", "then", "now", "altogether", "really"]), *words[i:]]), kind


def build(gsm8k: Path, out: Path, seed: int, per_doc: int = 10) -> dict[str, int]:
    rng = random.Random(seed)
    from pseudocot.synth.grounding import normalize

    problems, seen = [], set()
    for line in gsm8k.read_text().splitlines():
        row = json.loads(line)
        split = split_problem(row["question"])
        if split and normalize(split[1]) not in seen:
            seen.add(normalize(split[1]))
            solution, answer = row["answer"].split("####")
            problems.append((split[0], split[1], answer.strip().replace(",", ""), solution.strip()))
    docs_dir = out / "docs"
    docs_dir.mkdir(parents=True, exist_ok=True)
    spans = []  # (doc name, start, end) per problem
    for d in range(0, len(problems), per_doc):
        name, text = f"doc-{d // per_doc:03d}.md", ""
        for narrative, *_ in problems[d: d + per_doc]:
            if text:
                text += "\n\n"
            spans.append((name, len(text), len(text) + len(narrative)))
            text += narrative
        (docs_dir / name).write_text(text + "\n")
    order = list(range(len(problems)))
    rng.shuffle(order)
    n = len(order)
    groups = {"intact": order[: n // 2], "wrong_document": order[n // 2: n * 3 // 4], "leaning": order[n * 3 // 4:]}
    rows = []

    def item(i: int, group: str, question: str | None = None, span: tuple[str, int, int] | None = None, kind: str = "") -> dict:
        narrative, q, answer, solution = problems[i]
        doc, a, b = span or spans[i]
        return {"id": f"{group}/{i}" + (f"/{kind}" if kind else ""), "question": question or q, "answer": answer,
                "reasoning": solution, "source": f"{doc}#{a}-{b}", "group": group}

    for i in groups["intact"]:
        rows.append(item(i, "intact"))
    for i in groups["wrong_document"]:
        other = rng.choice([j for j in range(len(problems)) if spans[j][0] != spans[i][0]])
        rows.append(item(i, "wrong_document", span=spans[other]))
    for i in groups["leaning"]:
        q = problems[i][1]
        template = rng.choice(LEANING)
        rows.append(item(i, "leaning", template.format(q=q[0].lower() + q[1:], Q=q)))
    for i in rng.sample(groups["intact"], k=len(groups["leaning"])):
        question, kind = near_copy(problems[i][1], rng)
        rows.append(item(i, "near_duplicate", question, kind=kind))
    with (out / "candidates.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return {g: sum(r["group"] == g for r in rows) for g in ("intact", "wrong_document", "leaning", "near_duplicate")}


def run(out: Path, checks: str, name: str) -> dict[str, dict[str, float]]:
    kept_path = out / f"kept-{name}.jsonl"
    cmd = [sys.executable, "-m", "pseudocot", "synth", "qfilter", "--docs", str(out / "docs"), "--candidates",
           str(out / "candidates.jsonl"), "--out", str(kept_path), "--checks", checks]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    seconds = time.perf_counter() - t0
    kept = {json.loads(line)["id"] for line in kept_path.read_text().splitlines()}
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    reasons: dict[str, list[str]] = {}
    for line in kept_path.with_name(kept_path.name.removesuffix(".jsonl") + ".rejects.jsonl").read_text().splitlines():
        r = json.loads(line)
        reasons[r["id"]] = r["reasons"]
    table: dict[str, dict[str, float]] = {}
    for g in ("intact", "wrong_document", "leaning", "near_duplicate"):
        mine = [r for r in rows if r["group"] == g]
        k = sum(r["id"] in kept for r in mine)
        codes: dict[str, int] = {}
        for r in mine:
            for code in {x.split(":", 1)[0] for x in reasons.get(r["id"], [])}:
                codes[code] = codes.get(code, 0) + 1
        table[g] = {"n": len(mine), "kept": round(k / len(mine), 4), "rejected": round(1 - k / len(mine), 4), "by_check": codes}
    table["_seconds"] = round(seconds, 1)  # type: ignore[assignment]
    table["_summary"] = json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[assignment]
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsm8k", type=Path, required=True, help="GSM8K JSONL (question, answer with ####).")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = build(args.gsm8k, args.out, args.seed)
    print("planted:", json.dumps(sizes))
    results = {"sizes": sizes, "seed": args.seed}
    default = "grounded,self_contained,well_formed,duplicate,format,arithmetic,follows"
    results["all"] = run(args.out, default, "all")
    for check in default.split(","):
        results[check] = run(args.out, check, check)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'checks':16} {'intact kept':>12} {'wrong doc rej':>14} {'leaning rej':>12} {'near-dup rej':>13} {'seconds':>8}")
    for name in ["all", *default.split(",")]:
        t = results[name]
        print(f"{name:16} {t['intact']['kept']:12.3f} {t['wrong_document']['rejected']:14.3f} {t['leaning']['rejected']:12.3f} "
              f"{t['near_duplicate']['rejected']:13.3f} {t['_seconds']:8.1f}")
    print(json.dumps({g: results["all"][g]["by_check"] for g in sizes}))


if __name__ == "__main__":
    main()
