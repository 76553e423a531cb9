"""Evaluation: systems × tasks → results (accuracy with confidence intervals, BLEU, ROUGE-L,
faithfulness, cost). `metrics` holds the pure functions, `score` scores given predictions without a
model, `cli` the `pseudocot eval` commands.

    pseudocot eval score --task gsm8k --data test.jsonl --predictions predictions.jsonl
"""
