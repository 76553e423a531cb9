"""Teacher-written reasoning data: prompting a teacher (a local model or an OpenAI-compatible
endpoint), resumable and sharded writing of its solutions, and the faithfulness checks that keep
only the solutions you can trust.

    pseudocot synth --config C                   # the synth stage: candidates, kept, rejects, stats
    pseudocot synth filter --task gsm8k --data GOLD.jsonl --candidates C.jsonl --out KEPT.jsonl

- `arithmetic`: a small parser (never `eval`) that finds and checks explicit arithmetic statements.
"""
