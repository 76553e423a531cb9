"""Benchmark: training throughput and memory of LoRA against full fine-tuning of one pretrained model.

Both runs are the `finetune` stage's own setup (`pseudocot.stages.finetune`): the stage's default
`FinetuneConfig` (LoRA r 32, alpha 64, dropout 0.05 on q/k/v/up/down; reasoning and answer in the
assistant turn, no system prompt beyond the template's own), rows from
`pseudocot.train.rows.tokenize_examples` rendered with the model's chat template (loss on the
assistant turn only), the model from `pseudocot.train.setup.trainable_model` (method `full` or
`lora`), `training_args` and HF `Trainer` with `PadCollator`. The data are arith problems
(`pseudocot.data.arith.generate`, one row per example seen: steps x batch size), the same rows in
the same order for both methods; same steps, batch size, learning rate and seed.

Each run is its own subprocess (this script with `--only full|lora`): it loads the model, trains,
and reports one JSON line, so the runs' memory never mixes. The runs take turns (full, lora, full,
lora, ...) `--repeats` times and the best of each is reported. Tokens per second, the loop's wall
time and the memory figures are measured exactly as in `benchmarks/distill_throughput.py` (its
`LoopTimer`): non-padding tokens over the seconds from `on_train_begin` to the last `on_step_end`;
`peak_rss_mib` is the process's resident high-water mark up to the end of the loop (weights
included), `loop_start_rss_mib` the resident set when training starts (every weight read once), `loop_increment_mib` what
the loop adds on top (activations, gradients, AdamW's state).

    HF_HUB_OFFLINE=1 python benchmarks/finetune_throughput.py --model /tmp/smol --steps 8 --batch-size 4

`--model` is a HF folder, e.g. SmolLM2-135M-Instruct from `pseudocot models import smollm2 --out /tmp/smol`.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from distill_throughput import LoopTimer, make_resident  # noqa: E402  (benchmarks/ is the script's own folder)

METHODS = ("full", "lora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a pretrained HF model folder with its tokenizer")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per step")
    parser.add_argument("--max-length", type=int, default=256, help="longest row in tokens")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (both methods)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each method (alternating); the best counts")
    parser.add_argument("--seed", type=int, default=0, help="data, data order and LoRA init")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of every run")
    parser.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def rows_for(args: argparse.Namespace, tokenizer: Any, fcfg: Any) -> list[dict[str, Any]]:
    """steps x batch arith rows, rendered and tokenized as the finetune stage does."""
    from pseudocot.config.schema import ArithConfig
    from pseudocot.data.arith import generate
    from pseudocot.train.rows import tokenize_examples

    examples = generate(args.steps * args.batch_size, ArithConfig(), seed=args.seed, split="train")
    return tokenize_examples(examples, tokenizer, fcfg.with_reasoning, fcfg.system_prompt, args.max_length)


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """One run (`--only METHOD`) in this process."""
    import dataclasses

    from transformers import Trainer
    from transformers.trainer_utils import SaveStrategy
    from transformers.utils import logging as hf_logging

    from pseudocot.config.schema import FinetuneConfig, ModelSpec, TrainConfig
    from pseudocot.models.loading import load_tokenizer
    from pseudocot.train.rows import PadCollator
    from pseudocot.train.setup import trainable_model, training_args

    hf_logging.set_verbosity_error()
    fcfg = FinetuneConfig(model=ModelSpec(path=str(args.model)), method=args.only)
    fcfg = dataclasses.replace(fcfg, train=TrainConfig(lr=args.lr, max_steps=args.steps, batch_size=args.batch_size,
                                                       max_length=args.max_length, save_every_steps=10**6,
                                                       log_every_steps=max(1, args.steps), bf16=False))
    tokenizer = load_tokenizer(str(args.model))
    rows = rows_for(args, tokenizer, fcfg)
    model = trainable_model(fcfg.model, tokenizer, fcfg.method, fcfg.lora, "cpu", args.seed, False)
    make_resident(model)
    timer = LoopTimer()
    out = Path(tempfile.mkdtemp(prefix=f"pseudocot-ft-bench-{args.only}-"))
    try:
        targs = training_args(fcfg.train, out, args.seed, "cpu", has_eval=False)
        targs.save_strategy = SaveStrategy.NO  # the stage's final checkpoint is not part of the measured loop
        trainer = Trainer(model=model, args=targs,
                          train_dataset=rows, data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                          callbacks=[timer])
        result = trainer.train()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return timer.result() | {
        "train_loss": result.training_loss,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "rows": len(rows),
        "mean_row_tokens": statistics.mean(len(r["input_ids"]) for r in rows),
    }


def spawn(argv: list[str], method: str) -> dict[str, Any]:
    """Run `--only method` in a fresh process; its last line of output is the result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", method]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {method} run failed (exit code {proc.returncode}); see its error above.")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.only:
        print(json.dumps(measure_one(args)), flush=True)
        return {}
    print(f"finetune throughput: {args.model}, {args.steps} steps of batch {args.batch_size}, lr {args.lr}, "
          f"{args.repeats} x (full, lora), {args.threads} torch thread(s)", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            r = spawn(argv, method)
            runs[method].append(r)
            print(f"  {method:4s}: {r['tokens']} tokens in {r['loop_seconds']:.2f}s = {r['tokens_per_s']:.0f} tok/s "
                  f"(median step {1000 * statistics.median(r['step_seconds']):.0f} ms); trainable {r['trainable_params']:,}; "
                  f"RSS peak {r['peak_rss_mib']:.0f} MiB, at loop start {r['loop_start_rss_mib']:.0f} MiB, "
                  f"loop adds {r['loop_increment_mib']} MiB; train loss {r['train_loss']:.4f}", flush=True)
    if len({r["tokens"] for rs in runs.values() for r in rs}) != 1:
        raise SystemExit("the runs saw different data; the comparison is not like for like.")
    best = {m: max(runs[m], key=lambda r: r["tokens_per_s"]) for m in METHODS}
    stepmin = {m: sum(min(col) for col in zip(*(r["step_seconds"] for r in runs[m]))) for m in METHODS}
    result = {
        "lora_vs_full_tokens_per_s": round(best["lora"]["tokens_per_s"] / best["full"]["tokens_per_s"], 3),
        "lora_vs_full_stepmin": round(stepmin["full"] / stepmin["lora"], 3),
        "full_tokens_per_s": round(best["full"]["tokens_per_s"], 1),
        "lora_tokens_per_s": round(best["lora"]["tokens_per_s"], 1),
        "trainable_params": {m: best[m]["trainable_params"] for m in METHODS},
        "total_params": {m: best[m]["total_params"] for m in METHODS},
        "peak_rss_mib": {m: best[m]["peak_rss_mib"] for m in METHODS},
        "loop_start_rss_mib": {m: best[m]["loop_start_rss_mib"] for m in METHODS},
        "loop_increment_mib": {m: best[m]["loop_increment_mib"] for m in METHODS},
        "loop_seconds_best": {m: round(best[m]["loop_seconds"], 2) for m in METHODS},
        "train_loss": {m: round(best[m]["train_loss"], 4) for m in METHODS},
        "all_tokens_per_s": {m: [round(r["tokens_per_s"], 1) for r in runs[m]] for m in METHODS},
        "tokens_per_run": best["full"]["tokens"],
        "rows": best["full"]["rows"],
        "mean_row_tokens": round(best["full"]["mean_row_tokens"], 1),
        "model": str(args.model), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "repeats": args.repeats, "torch_threads": args.threads,
    }
    print(f"LoRA / full: {result['lora_vs_full_tokens_per_s']:.3f}x tokens/s (step-wise best {result['lora_vs_full_stepmin']:.3f}x); "
          f"trainable {result['trainable_params']['lora']:,} vs {result['trainable_params']['full']:,}", flush=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
