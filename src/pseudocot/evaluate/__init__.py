"""Evaluation: systems × tasks → results (accuracy with confidence intervals, BLEU, ROUGE-L,
faithfulness, cost) and a report.

- `metrics`: the pure functions; `score`: scoring given predictions without a model;
- `systems`: what answers questions (the pipeline in a mode, a local model with or without a LoRA
  adapter, an OpenAI-compatible endpoint); `cache`: their answers on disk, resumable and shardable;
- `runner`: running an evaluation (answer, check, build results) and the results.json schema;
  `results`: metrics per system and the paired comparisons; `report` and `figures`: report.md,
  CSV, JSON and PNG figures.

The `eval` stage is `pseudocot.stages.eval`; the `pseudocot eval` commands are `pseudocot.cli.eval`.

    pseudocot eval --config demo [--shard i/n]
    pseudocot eval merge --config demo
    pseudocot eval report runs/a/eval/results.json runs/b/eval/results.json --out compare/
    pseudocot eval score --task gsm8k --data test.jsonl --predictions predictions.jsonl
"""
