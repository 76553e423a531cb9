"""Benchmark: the Pseudo-CoT loop's speed (KV reuse, batching) and the router's cost-accuracy trade.

Needs a run folder whose base model, Tiny Thought Model and router are trained (the stages
`data`, `finetune --role teacher`, `distill`, `finetune`, `router`, or `pseudocot demo`):

    HF_HUB_OFFLINE=1 python benchmarks/pipeline.py --run runs/demo
    HF_HUB_OFFLINE=1 python benchmarks/pipeline.py --run runs/demo --questions 200 --repeats 1

1. `kv_reuse_speedup`: 32 test questions, their 3 thoughts written once by the TTM; then the base
   model answers them as one batch after 0, 1, 2 and 3 thoughts, greedy, and the three re-answers
   (after 1, 2, 3 thoughts) are timed: the same decoding loop with reuse off (every call encodes
   the whole context) / with reuse on (a call encodes only what its session has not seen). HF
   `generate` on the same prompts is timed too (`kv_reuse_speedup_vs_hf_generate`).
2. `batch_speedup`: the same 32 questions through the whole loop (mode always, 3 thoughts), one
   question at a time / as one batch.
3. Accuracy on `--questions` test questions (default: the run's whole test split). The base model
   answers with thoughts forced up to the router's max_thoughts, keeping each answer's router
   inputs; since decoding is greedy and the TTM does not read the base model's answers, every
   policy's final answer is one of these (`pseudocot.router.policy`), so never, always, the router
   at its trained threshold, random routing and the digit/'=' heuristic at the router's call
   rate, and the depth router, are all scored on the same questions. Each answer is right or
   wrong by the router task's `Task.is_correct` (`pseudocot.router.labels.outcomes`). The router
   is also run live (mode router) on the same questions as a check: `router_live_accuracy` must
   equal the simulated one.

Questions are prompted as the router task prompts them (`task.prompts`, the router stage's and
evaluation's prompts; for the arith task, the question text). Every path in the run folder comes
from `pseudocot.layout.RunLayout`; the benchmark only reads the run folder.

Timings take the best of `--repeats` runs (noise from other work only slows a run down), with
`--threads` torch threads (default 1: on a shared 2-core machine two OpenMP threads wait on each
other whenever one is descheduled). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="run folder with base/, distill/ and router/")
    ap.add_argument("--questions", type=int, default=None, help="test questions for the accuracy part (default: all)")
    ap.add_argument("--speed-questions", type=int, default=32)
    ap.add_argument("--thoughts", type=int, default=3, help="thoughts in the speed parts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pseudocot.generate.base import GenerationParams
    from pseudocot.layout import RunLayout, run_config
    from pseudocot.pipeline import Pipeline, load_pipeline
    from pseudocot.router import policy
    from pseudocot.router.labels import outcomes
    from pseudocot.tasks import get_task
    from pseudocot.train.rows import read_split

    cfg = run_config(args.run)
    task_cfg = cfg.router_task()
    task = get_task(task_cfg.name, **task_cfg.options)
    pipe = load_pipeline(cfg, mode="router")
    router = pipe.router
    test = read_split(RunLayout.of(cfg).split("test"), "test questions")
    out: dict = {"run": str(args.run), "task": task.name, "threads": args.threads, "repeats": args.repeats}

    # 1. KV reuse on the base model's re-answers --------------------------------------------------
    speed = test[: args.speed_questions]
    qs = list(zip((e.id for e in speed), task.prompts(speed)))
    forced = dataclasses.replace(pipe.cfg, mode="always", max_thoughts=args.thoughts)
    traces = Pipeline(pipe.base, pipe.ttm, forced).run(qs)
    thoughts = [[t.text for t in tr.thoughts] for tr in traces]
    base = pipe.base
    params = GenerationParams(max_new_tokens=pipe.cfg.answer_max_new_tokens, stop=list(pipe.cfg.answer_stop))
    rounds = [[pipe.base_prompt(q, th[:i]) for (_, q), th in zip(qs, thoughts)] for i in range(args.thoughts + 1)]

    def reanswers(reuse: bool | None) -> float:
        """Seconds of the re-answers (after 1..k thoughts); None: HF generate without sessions."""
        base.kv_reuse = bool(reuse)
        keys = [("bench", i) for i in range(len(qs))]
        spent = 0.0
        for i, prompts in enumerate(rounds):
            t0 = time.perf_counter()
            if reuse is None:
                base.generate(prompts, params)
            else:
                base.generate(prompts, params, sessions=keys)
            if i > 0:
                spent += time.perf_counter() - t0
        base.end_sessions(keys)
        return spent

    t_reuse, t_plain, t_hf = (min(reanswers(mode) for _ in range(args.repeats)) for mode in (True, False, None))
    base.kv_reuse = pipe.cfg.kv_reuse
    out.update(kv_reuse_seconds=round(t_reuse, 4), no_reuse_seconds=round(t_plain, 4), hf_generate_seconds=round(t_hf, 4),
               kv_reuse_speedup=round(t_plain / t_reuse, 3), kv_reuse_speedup_vs_hf_generate=round(t_hf / t_reuse, 3),
               mean_context_tokens=round(float(np.mean([len(base.tokenizer(p)["input_ids"]) for p in rounds[-1]])), 1))
    print(f"kv reuse: {t_plain:.3f} s without / {t_reuse:.3f} s with = {t_plain / t_reuse:.2f}x "
          f"(HF generate {t_hf:.3f} s)", file=sys.stderr)

    # 2. Batching through the whole loop ------------------------------------------------------------
    one_batch = Pipeline(pipe.base, pipe.ttm, dataclasses.replace(forced, batch_size=len(qs)))
    singly = Pipeline(pipe.base, pipe.ttm, dataclasses.replace(forced, batch_size=1))
    t_batch = _best(lambda: one_batch.run(qs), args.repeats)
    t_single = _best(lambda: singly.run(qs), max(1, args.repeats - 1))
    out.update(batch_seconds=round(t_batch, 4), one_at_a_time_seconds=round(t_single, 4),
               batch_speedup=round(t_single / t_batch, 3), batch_questions=len(qs))
    print(f"batching: {t_single:.2f} s one at a time / {t_batch:.2f} s as one batch = {t_single / t_batch:.2f}x", file=sys.stderr)

    # 3. Accuracy of every policy on the test questions -------------------------------------------
    n = len(test) if args.questions is None else min(args.questions, len(test))
    exs = test[:n]
    qs = list(zip((e.id for e in exs), task.prompts(exs)))
    by_id = {e.id: e for e in exs}
    M = router.info["max_thoughts"]
    collect = Pipeline(pipe.base, pipe.ttm, dataclasses.replace(pipe.cfg, mode="always", max_thoughts=M), router)
    t0 = time.perf_counter()
    forced_traces = collect.run(qs, collect=True)
    forced_seconds = time.perf_counter() - t0
    correct, available = outcomes(forced_traces, exs, task, M)
    scores = np.full((n, M), -np.inf)
    for q, tr in enumerate(forced_traces):
        steps = tr.features[: available[q]]
        if steps:
            scores[q, : len(steps)] = router.score(steps)
    thr = router.threshold
    never = policy.outcome_at_depth(correct, available, np.zeros(n, dtype=int))
    always = policy.outcome_at_depth(correct, available, available)
    routed = policy.outcome_at_depth(correct, available, policy.stop_depths(scores, available, np.array([thr]))[0])
    rand = policy.random_at_rate(correct, available, routed.calls_per_question)
    heur = policy.heuristic_at_rate(correct, available, [q for _, q in qs], routed.calls_per_question)
    oracle = policy.outcome_at_depth(correct, available, policy.depth_labels(correct, available))
    res = {"never": never, "always": always, "router": routed, "random_same_calls": rand,
           "heuristic_same_calls": heur, "oracle": oracle}
    if router.depth_router is not None:
        depths = np.array(router.depth([pipe.base_prompt(q, []) for _, q in qs], pipe.base, None, M))
        res["depth"] = policy.outcome_at_depth(correct, available, depths)

    t0 = time.perf_counter()
    live = pipe.run(qs)
    live_seconds = time.perf_counter() - t0
    live_acc = float(np.mean([task.is_correct(t.final_text, by_id[t.id]) for t in live]))
    live_calls = float(np.mean([t.thought_calls for t in live]))
    gain = always.accuracy - never.accuracy
    out.update(
        questions=n, max_thoughts=M, threshold=thr,
        accuracy={k: v.as_dict() for k, v in res.items()},
        always_gain=round(gain, 4),
        router_gain_retained=round((routed.accuracy - never.accuracy) / gain, 4) if gain > 0 else None,
        router_call_rate=round(routed.call_rate, 4),
        router_beats_random=bool(routed.accuracy > rand.accuracy),
        router_beats_heuristic=bool(routed.accuracy > heur.accuracy),
        router_live_accuracy=round(live_acc, 6), router_live_calls_per_question=round(live_calls, 4),
        router_live_matches_simulation=bool(abs(live_acc - routed.accuracy) < 1e-9 and abs(live_calls - routed.calls_per_question) < 1e-9),
        forced_seconds=round(forced_seconds, 2), router_live_seconds=round(live_seconds, 2),
    )
    for k, v in res.items():
        print(f"{k:22s} accuracy={v.accuracy:.4f} thoughts/question={v.calls_per_question:.3f} call_rate={v.call_rate:.3f}",
              file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
