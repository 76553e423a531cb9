"""Benchmark: how right are the questions the `docs` preset's writer wrote, and what did the checks let through?

The documents of `pseudocot run docs` are stories made by the arith generator (`configs/data/stories/LICENSE` has the
command), so the truth is known: for a story of k steps, the question after step j restates its first j steps and its
answer is the value after them. Every item of a run's questions stage (kept and rejected) is read back, matched with
its document, and counted:

- `gold`: its question is the start and the first j steps of its own document followed by a question sentence, its
  answer the value after them and its reasoning the generator's j lines;
- `right answer, other reasoning`, `wrong answer`, or `does not restate` (not the start of its own story);
- per outcome (kept, rejected) and, for rejects, per check (an item failing several counts under each).

Kept items that are not gold are what the checks let through. The
last line printed is one JSON object.

    python benchmarks/docs_questions_truth.py --run runs/docs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from pseudocot.config import load_config
from pseudocot.data import arith
from pseudocot.data.documents import parse_source, read_documents
from pseudocot.layout import RunLayout

STORIES_SEED = 7
"""The seed in `configs/data/stories/LICENSE`'s command."""


def truth(cfg: Any) -> dict[str, list[dict[str, Any]]]:
    """Each shipped story's text -> its questions, one after each step (the generator's own)."""
    n = len(read_documents(RunLayout.of(cfg).document_paths, cfg.synth.documents.text_field, warn=None).documents)
    return dict(arith.stories(n, cfg.data.arith, seed=STORIES_SEED))


def judge(item: dict[str, Any], texts: dict[str, str], gold: dict[str, list[dict[str, Any]]]) -> str:
    """`gold` (it restates its story's first j steps, with the generator's answer and reasoning lines), `right answer,
    other reasoning`, `wrong answer`, or `does not restate` (its question is not the start of its own story)."""
    where = parse_source(str(item.get("source") or ""))
    text = texts.get(where[0]) if where else None
    body = str(item.get("question") or "").rsplit(". ", 1)[0]
    for g in gold.get(text or "", []):
        if g["question"].rsplit(". ", 1)[0] == body:
            if str(item.get("answer")).strip() != g["answer"]:
                return "wrong answer"
            return "gold" if str(item.get("reasoning") or "").strip() == "\n".join(g["reasoning"]) else "right answer, other reasoning"
    return "does not restate"


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder of the docs preset (its config.yaml is read)")
    args = parser.parse_args(argv)
    cfg = load_config(args.run / "config.yaml")
    layout = RunLayout.of(cfg)
    for name in ("kept.jsonl", "rejects.jsonl"):
        if not layout.questions_file(name).is_file():
            sys.exit(f"error: {layout.questions_file(name)} is missing; run the questions stage first.")
    gold = truth(cfg)
    texts = {d.name: d.text for d in read_documents(layout.document_paths, cfg.synth.documents.text_field, warn=None).documents}
    out: dict[str, Any] = {"run": str(args.run)}
    kept = [json.loads(line) for line in layout.questions_file("kept.jsonl").read_text().splitlines()]
    rejected = [r for r in map(json.loads, layout.questions_file("rejects.jsonl").read_text().splitlines()) if r.get("question")]
    for name, rows in (("kept", kept), ("rejected", rejected)):
        out[name] = {"items": len(rows), **dict(sorted(Counter(judge(r, texts, gold) for r in rows).items()))}
    by_check: Counter[str] = Counter()
    for r in rejected:
        verdict = judge(r, texts, gold)
        for check in {reason.split(":")[0] for reason in r.get("reasons", [])}:
            by_check[f"{check}: {verdict}"] += 1
    out["rejected_by_check_and_truth"] = dict(sorted(by_check.items()))
    out["gold_items"] = sum(len(v) for v in gold.values())
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
