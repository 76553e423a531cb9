"""Benchmark: the Pseudo-CoT loop's speed (KV reuse, batching) and the router's cost-accuracy trade.

Needs a run folder whose base model, Tiny Thought Model and router are trained (the stages
`data`, `finetune --role teacher`, `distill`, `finetune`, `router`, or `pseudocot demo`):

    HF_HUB_OFFLINE=1 python benchmarks/pipeline.py --run runs/demo
    HF_HUB_OFFLINE=1 python benchmarks/pipeline.py --run runs/demo --questions 200 --repeats 1

or, for part 1 only, two plain model folders (HF `save_pretrained`, e.g. SmolLM2-135M-Instruct from
`pseudocot models import smollm2 --out /tmp/smol`, and a student cut from it):

    HF_HUB_OFFLINE=1 python benchmarks/pipeline.py --base /tmp/smol --ttm /tmp/smol8 --speed-questions 16 \
        --answer-max-new-tokens 24 --thought-max-new-tokens 24

With plain folders the questions are arith problems (`pseudocot.data.arith.generate`, `--seed`),
prompted as the arith task prompts them, and the pipeline's prompts are the config defaults. An
untrained TTM writes whatever it writes; what is measured is the base model re-answering the same
contexts with reuse on and off, and the benchmark checks that those answers are identical.

1. `kv_reuse_speedup`: 32 test questions, their 3 thoughts written once by the TTM; then the base
   model answers them as one batch after 0, 1, 2 and 3 thoughts, greedy, and the three re-answers
   (after 1, 2, 3 thoughts) are timed: the same decoding loop with reuse off (every call encodes
   the whole context) / with reuse on (a call encodes only what its session has not seen). HF
   `generate` on the same prompts is timed too (`kv_reuse_speedup_vs_hf_generate`). The three
   modes take turns (reuse, no reuse, HF, reuse, ...). Greedy re-answers must not depend on reuse:
   their text, token count and finish reason are compared (`reuse_outputs_identical`, and how many
   differ from reuse off and from HF `generate`). With
   `--prefill-breakdown` the same calls are also timed with one new token each (the context's
   encoding and one step), which splits the time into prefill and decoding.
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


REUSE_MODES = ("reuse", "no_reuse", "hf_generate")
"""How the base model re-answers: our decoder with KV reuse, the same decoder without, HF `generate`."""


def _reanswers(base, rounds: list[list[str]], params, mode: str) -> tuple[float, list]:
    """Seconds of the re-answers (rounds 1..k; round 0 is run, untimed, to open the sessions) and
    their completions, one list per timed round."""
    base.kv_reuse = mode == "reuse"
    keys = [("bench", i) for i in range(len(rounds[0]))]
    spent, outs = 0.0, []
    try:
        for i, prompts in enumerate(rounds):
            t0 = time.perf_counter()
            if mode == "hf_generate":
                done = base.generate(prompts, params)
            else:
                done = base.generate(prompts, params, sessions=keys)
            if i > 0:
                spent += time.perf_counter() - t0
                outs.append(done)
    finally:
        base.end_sessions(keys)
    return spent, outs


def _signature(outs: list) -> list[tuple[str, int, str]]:
    """What must not change with reuse: every re-answer's text, token count and finish reason."""
    return [(c.text, c.completion_tokens, c.finish_reason) for done in outs for c in done]


def kv_reuse_timings(pipe, qs: list[tuple[str, str]], thoughts: int, repeats: int, prefill_breakdown: bool = False) -> dict:
    """Part 1: the TTM writes `thoughts` thoughts per question once (mode always); then the base model
    answers after 0..k thoughts as one batch, and the re-answers (after 1..k) are timed with reuse
    on, off, and through HF `generate`, the modes taking turns, best of `repeats` each."""
    from pseudocot.generate.base import GenerationParams
    from pseudocot.pipeline import Pipeline

    forced = dataclasses.replace(pipe.cfg, mode="always", max_thoughts=thoughts)
    traces = Pipeline(pipe.base, pipe.ttm, forced).run(qs)
    written = [[t.text for t in tr.thoughts] for tr in traces]
    base = pipe.base
    params = GenerationParams(max_new_tokens=pipe.cfg.answer_max_new_tokens, stop=list(pipe.cfg.answer_stop))
    rounds = [[pipe.base_prompt(q, th[:i]) for (_, q), th in zip(qs, written)] for i in range(thoughts + 1)]
    calls = [(mode, params) for mode in REUSE_MODES]
    if prefill_breakdown:  # one new token: the context's encoding (and one step) alone
        calls += [(mode + "_1tok", dataclasses.replace(params, max_new_tokens=1)) for mode in ("reuse", "no_reuse")]
    seconds: dict[str, list[float]] = {m: [] for m, _ in calls}
    outputs: dict[str, list] = {}
    was = base.kv_reuse
    try:
        for _ in range(repeats):
            for mode, p in calls:
                t, outs = _reanswers(base, rounds, p, mode.removesuffix("_1tok"))
                seconds[mode].append(t)
                outputs.setdefault(mode, outs)
    finally:
        base.kv_reuse = was
    best = {m: min(ts) for m, ts in seconds.items()}
    sig = {m: _signature(outputs[m]) for m in REUSE_MODES}
    differ = sum(a != b for a, b in zip(sig["reuse"], sig["no_reuse"]))
    differ_hf = sum(a != b for a, b in zip(sig["reuse"], sig["hf_generate"]))
    reuse_outs = [c for done in outputs["reuse"] for c in done]
    tok = base.tokenizer
    out = {
        "kv_reuse_seconds": round(best["reuse"], 4), "no_reuse_seconds": round(best["no_reuse"], 4),
        "hf_generate_seconds": round(best["hf_generate"], 4),
        "kv_reuse_speedup": round(best["no_reuse"] / best["reuse"], 3),
        "kv_reuse_speedup_vs_hf_generate": round(best["hf_generate"] / best["reuse"], 3),
        "reuse_outputs_identical": differ == 0, "reuse_outputs_differing": differ,
        "hf_generate_outputs_differing": differ_hf, "reanswers": len(reuse_outs),
        "thoughts_per_question": round(float(np.mean([len(th) for th in written])), 3),
        "mean_context_tokens": round(float(np.mean([len(tok(p)["input_ids"]) for p in rounds[-1]])), 1),
        "mean_reanswer_context_tokens": round(float(np.mean([c.prompt_tokens for c in reuse_outs])), 1),
        "mean_reused_tokens": round(float(np.mean([c.cached_tokens for c in reuse_outs])), 1),
        "mean_reanswer_tokens": round(float(np.mean([c.completion_tokens for c in reuse_outs])), 2),
        "all_seconds": {m: [round(t, 4) for t in ts] for m, ts in seconds.items()},
    }
    if prefill_breakdown:
        out["one_token_seconds"] = {m: round(best[m + "_1tok"], 4) for m in ("reuse", "no_reuse")}
    print(f"kv reuse: {best['no_reuse']:.3f} s without / {best['reuse']:.3f} s with = {out['kv_reuse_speedup']:.2f}x "
          f"(HF generate {best['hf_generate']:.3f} s); {differ} of {len(reuse_outs)} re-answers differ with reuse off",
          file=sys.stderr)
    return out


def plain_folders(args: argparse.Namespace):
    """A pipeline (mode always) over two model folders with the config's default prompts, and arith questions."""
    from pseudocot.config.schema import ArithConfig, PipelineConfig
    from pseudocot.data.arith import generate
    from pseudocot.generate.hf import HFGenerator
    from pseudocot.models.loading import load_model, load_tokenizer
    from pseudocot.pipeline import Pipeline
    from pseudocot.tasks import get_task

    n = args.speed_questions

    def generator(path: Path) -> HFGenerator:
        return HFGenerator(load_model(str(path), device="cpu"), load_tokenizer(str(path)), batch_size=n)

    base = generator(args.base)
    ttm = base if args.ttm.resolve() == args.base.resolve() else generator(args.ttm)
    defaults = PipelineConfig()
    cfg = PipelineConfig(mode="always", max_thoughts=args.thoughts, batch_size=n,
                         answer_max_new_tokens=args.answer_max_new_tokens or defaults.answer_max_new_tokens,
                         thought_max_new_tokens=args.thought_max_new_tokens or defaults.thought_max_new_tokens)
    exs = generate(n, ArithConfig(), seed=args.seed, split="bench")
    task = get_task("arith")
    return Pipeline(base, ttm, cfg), list(zip((e.id for e in exs), task.prompts(exs)))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, help="run folder with base/, distill/ and router/")
    where.add_argument("--base", type=Path, help="a base model folder (part 1 only; needs --ttm)")
    ap.add_argument("--ttm", type=Path, help="a Tiny Thought Model folder, with --base (may be the same folder)")
    ap.add_argument("--questions", type=int, default=None, help="test questions for the accuracy part (default: all)")
    ap.add_argument("--speed-questions", type=int, default=32)
    ap.add_argument("--thoughts", type=int, default=3, help="thoughts in the speed parts")
    ap.add_argument("--answer-max-new-tokens", type=int, default=None, help="with --base (default: the pipeline config's)")
    ap.add_argument("--thought-max-new-tokens", type=int, default=None, help="with --base (default: the pipeline config's)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the arith questions, with --base")
    ap.add_argument("--prefill-breakdown", action="store_true", help="also time the re-answers with one new token")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.base is not None and args.ttm is None:
        ap.error("--base needs --ttm")
    torch.set_num_threads(args.threads)

    if args.base is not None:
        pipe, qs = plain_folders(args)
        out: dict = {"base": str(args.base), "ttm": str(args.ttm), "task": "arith", "questions": len(qs),
                     "answer_max_new_tokens": pipe.cfg.answer_max_new_tokens,
                     "thought_max_new_tokens": pipe.cfg.thought_max_new_tokens,
                     "threads": args.threads, "repeats": args.repeats}
        out.update(kv_reuse_timings(pipe, qs, args.thoughts, args.repeats, args.prefill_breakdown))
        print(json.dumps(out))
        return out

    from pseudocot.layout import RunLayout, run_config
    from pseudocot.pipeline import Pipeline, load_pipeline
    from pseudocot.router import policy
    from pseudocot.router.labels import outcomes
    from pseudocot.tasks import get_task
    from pseudocot.train.rows import read_split

    cfg = run_config(args.run)
    task_cfg = cfg.task_of("router")
    task = get_task(task_cfg.name, **task_cfg.options)
    pipe = load_pipeline(cfg, mode="router")
    router = pipe.router
    test = read_split(RunLayout.of(cfg).split("test"), "test questions")
    out = {"run": str(args.run), "task": task.name, "threads": args.threads, "repeats": args.repeats}

    # 1. KV reuse on the base model's re-answers --------------------------------------------------
    speed = test[: args.speed_questions]
    qs = list(zip((e.id for e in speed), task.prompts(speed)))
    out.update(kv_reuse_timings(pipe, qs, args.thoughts, args.repeats, args.prefill_breakdown))
    forced = dataclasses.replace(pipe.cfg, mode="always", max_thoughts=args.thoughts)

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
