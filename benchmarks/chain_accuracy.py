"""Benchmark: how good a reasoning model is alone: a teacher or a Tiny Thought Model writes its whole chain greedily.

For each model folder, every question of the run's test split (the first `--questions`) is put to the model exactly as
the pipeline prompts the TTM for its first thought (`pipeline.ttm_prompt`, no thoughts yet), and it writes until it
stops (at most `--max-new-tokens`). Reported per folder: the share of chains whose answer is right by the run's
primary task (`Task.is_correct`, the task's own extraction), the share of their `a op b = c` statements that are true
(`evaluate.metrics.faithfulness`), and the accuracy by the number of gold steps. No base model is involved: this
separates "the TTM is wrong" from "the base reads it wrong" when `always` disappoints.

    HF_HUB_OFFLINE=1 python benchmarks/chain_accuracy.py --run runs/demo runs/demo/teacher runs/demo/distill/stage-1
    HF_HUB_OFFLINE=1 python benchmarks/chain_accuracy.py --run runs/gain/preset/seed-1 runs/gain/preset/seed-1/teacher

The last line printed is one JSON object (one entry per folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pseudocot.config import load_config
from pseudocot.data.chat import ttm_prompt
from pseudocot.evaluate.metrics import faithfulness
from pseudocot.generate.base import GenerationParams
from pseudocot.generate.hf import HFGenerator
from pseudocot.layout import RunLayout
from pseudocot.models.loading import load_tokenizer
from pseudocot.models.lora import load_trained
from pseudocot.tasks.registry import task_from
from pseudocot.train.rows import read_split


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder: its data/test.jsonl is asked")
    parser.add_argument("--config", default=None, help="the run's config (default: <run>/config.yaml, else the demo preset)")
    parser.add_argument("folders", nargs="+", type=Path, help="reasoning model folders (full or LoRA)")
    parser.add_argument("--questions", type=int, default=None, help="the first this many test questions (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="longest chain")
    parser.add_argument("--batch-size", type=int, default=256, help="questions per generation batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def chain_accuracy(cfg: Any, folder: Path, questions: int | None, max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    examples = read_split(RunLayout.of(cfg).split("test"), "test", questions)
    task = task_from(cfg.eval.tasks[0])
    model = load_trained(str(folder), device="cpu").eval()
    tok = load_tokenizer(str(folder))
    prompts = [ttm_prompt(tok, e.question, [], "", cfg.pipeline) for e in examples]
    t0 = time.perf_counter()
    outs = HFGenerator(model, tok, batch_size=batch_size).generate(prompts, GenerationParams(max_new_tokens=max_new_tokens))
    right = [task.is_correct(o.text, e) for o, e in zip(outs, examples)]
    true = [f for f in (faithfulness(o.text) for o in outs) if f is not None]
    by_steps: dict[int, list[bool]] = {}
    for ok, e in zip(right, examples):
        by_steps.setdefault(len((e.reasoning or "").splitlines()), []).append(ok)
    return {"model": str(folder), "questions": len(examples), "answer_accuracy": round(sum(right) / len(right), 4),
            "statements_true": round(sum(true) / len(true), 4) if true else None,
            "by_steps": {str(k): round(sum(v) / len(v), 3) for k, v in sorted(by_steps.items())},
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    source = args.config or (args.run / "config.yaml" if (args.run / "config.yaml").is_file() else "demo")
    cfg = load_config(source, [f"run.out_dir={args.run.parent}", f"run.name={args.run.name}"])
    results = []
    for folder in args.folders:
        r = chain_accuracy(cfg, folder, args.questions, args.max_new_tokens, args.batch_size)
        print(f"{folder}: right {r['answer_accuracy']:.1%}, statements true {r['statements_true']}, by steps {r['by_steps']}",
              file=sys.stderr, flush=True)
        results.append(r)
    out = {"run": str(args.run), "results": results}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
