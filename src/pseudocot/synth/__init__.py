"""Teacher-written reasoning data: prompting a teacher (a local model or an OpenAI-compatible
endpoint), resumable and sharded writing of its solutions, and the faithfulness checks that keep
only the solutions you can trust.

    pseudocot synth --config C                   # the synth stage: candidates, kept, rejects, stats
    pseudocot synth filter --task gsm8k --data GOLD.jsonl --candidates C.jsonl --out KEPT.jsonl

- `teacher`: the teacher (and the judge), a local model or an endpoint, with a reasoning model's thinking kept apart;
- `candidates`: writing the solutions, resumable and sharded, nothing lost and nothing asked twice;
- `arithmetic`: a small parser (never `eval`) that finds and checks explicit arithmetic statements;
- `filter`: the checks (format, answer, arithmetic, follows, consistency, judge) and running them.

The stage that puts them together is `pseudocot.stages.synth`.
"""
