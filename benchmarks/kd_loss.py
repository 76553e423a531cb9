"""Benchmark: `chunked_distill_loss` against `distill_loss` on full logits, forward + backward.

Both compute CE + forward KL + reverse KL (all weights > 0) of a student head `hidden @ W.T` against
a teacher head `teacher_hidden @ teacher_W.T`, and backpropagate into `hidden` and `W`:

- plain: student logits (N, V) with autograd, teacher logits (N, V) under no_grad, `distill_loss`;
- chunked: `chunked_distill_loss(hidden, W, labels, teacher_hidden=..., teacher_lm_head_weight=...)`.

Each variant lives in its own fresh worker process (so their memory never mixes), built from the
same seed. The parent alternates them step by step (plain, chunked, plain, ...): the first step of
each is a warm-up, the next `--repeats` are timed, and the medians are compared. Peak memory of the
loss step is the worker's `ru_maxrss` (the kernel's exact high-water mark of resident memory, no
sampling) minus its resident memory just before the first step, when the inputs are allocated and
touched; every step is the same computation, so the first one sets the peak. Both variants end a
step holding the same gradients, so those count on both sides. The gradients of the last step are
compared in the parent.

    python benchmarks/kd_loss.py                      # vocab 128256, 2048 tokens, hidden 1024
    python benchmarks/kd_loss.py --chunk-size 256,128,512   # one chunked worker per size
    python benchmarks/kd_loss.py --vocab 4096 --tokens 256 --hidden 128 --repeats 3

The last line printed is one JSON object with the ratios and the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pseudocot.losses import chunked_distill_loss, default_chunk_size, distill_loss

LOSS_WEIGHTS = {"ce_weight": 1.0, "fkl_weight": 0.5, "rkl_weight": 0.5}
"""The mix both variants compute: every one of CE, forward KL and reverse KL is on."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=128_256, help="vocabulary size V")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step N (all labels valid)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size H of student and teacher")
    parser.add_argument(
        "--chunk-size",
        type=lambda text: [int(x) for x in text.split(",")],
        default=None,
        help="tokens per chunk (default: the library's default for --vocab); a comma-separated list runs one "
        "chunked worker per size, the first is reported",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--temperature", type=float, default=1.0, help="KL temperature")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--worker", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.chunk_size is None:
        args.chunk_size = [default_chunk_size(args.vocab)]
    return args


# --------------------------------------------------------------------------------------------
# Worker: one variant in its own process, driven one line at a time over stdin/stdout.
# --------------------------------------------------------------------------------------------


def resident_kib() -> int:
    """Current resident set size of this process in KiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def make_inputs(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Student and teacher hidden states and heads, scaled so logits have a std of about 2.

    Scaled in place: a temporary here would raise the high-water mark above the resident baseline
    and hide a step peak below it.
    """
    g = torch.Generator().manual_seed(args.seed)
    n, h, v = args.tokens, args.hidden, args.vocab
    scale = 2.0 / h**0.5
    return {
        "hidden": torch.randn(n, h, generator=g).requires_grad_(),  # (N, H)
        "weight": torch.randn(v, h, generator=g).mul_(scale).requires_grad_(),  # (V, H)
        "teacher_hidden": torch.randn(n, h, generator=g),  # (N, H)
        "teacher_weight": torch.randn(v, h, generator=g).mul_(scale),  # (V, H)
        "labels": torch.randint(0, v, (n,), generator=g),  # (N,)
    }


def loss_step(variant: str, x: dict[str, torch.Tensor], args: argparse.Namespace) -> float:
    """One forward + backward of the variant; returns the loss."""
    kw = dict(LOSS_WEIGHTS, temperature=args.temperature)
    if variant == "plain":
        student_logits = x["hidden"] @ x["weight"].T  # (N, V), autograd reaches hidden and W
        with torch.no_grad():
            teacher_logits = x["teacher_hidden"] @ x["teacher_weight"].T  # (N, V)
        loss = distill_loss(student_logits, teacher_logits, x["labels"], **kw)
    else:
        loss = chunked_distill_loss(
            x["hidden"], x["weight"], x["labels"], teacher_hidden=x["teacher_hidden"],
            teacher_lm_head_weight=x["teacher_weight"], chunk_size=args.chunk_size[0], **kw,
        )  # fmt: skip
    loss.backward()
    return loss.item()


def worker(args: argparse.Namespace) -> None:
    """Serve `step`, `save PATH` and `quit` commands for one variant; answer each with a JSON line."""
    torch.manual_seed(args.seed)
    x = make_inputs(args)
    baseline_kib = resident_kib()
    # How far the high-water mark already sits above the baseline: a step peak below it is invisible.
    hidden_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib
    for line in sys.stdin:
        command, _, path = line.strip().partition(" ")
        if command == "step":
            x["hidden"].grad = x["weight"].grad = None
            start = time.perf_counter()
            loss = loss_step(args.worker, x, args)
            seconds = time.perf_counter() - start
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            reply = {
                "seconds": seconds,
                "loss": loss,
                "step_peak_kib": peak_kib - baseline_kib,
                "maxrss_above_baseline_before_kib": hidden_kib,
            }
        elif command == "save":
            torch.save({"hidden": x["hidden"].grad, "weight": x["weight"].grad}, path)
            reply = {"saved": path}
        else:
            return
        print(json.dumps(reply), flush=True)


# --------------------------------------------------------------------------------------------
# Parent: start both workers, alternate their steps, compare.
# --------------------------------------------------------------------------------------------


def start_worker(variant: str, argv: list[str]) -> subprocess.Popen:
    """variant: `plain` or `chunked:SIZE`."""
    kind, _, chunk_size = variant.partition(":")
    extra = ["--chunk-size", chunk_size] if chunk_size else []
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, *extra, "--worker", kind]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a benchmark worker died (exit code {proc.wait()}); see its error above.")
    return json.loads(line)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    sizes = ",".join(map(str, args.chunk_size))
    print(
        f"kd_loss: V={args.vocab} N={args.tokens} H={args.hidden} chunk_size={sizes} fp32 "
        f"threads={torch.get_num_threads()} repeats={args.repeats} (+1 warm-up each)",
        flush=True,
    )
    variants = ["plain", *(f"chunked:{c}" for c in args.chunk_size)]
    procs = {v: start_worker(v, argv) for v in variants}
    steps: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for i in range(args.repeats + 1):
            for v in variants:
                steps[v].append(ask(procs[v], "step"))
                label = "warm-up" if i == 0 else f"run {i}"
                r = steps[v][-1]
                print(f"  {v:13s} {label:8s} {r['seconds']:8.3f} s  loss {r['loss']:.6f}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            grads = {}
            for v in variants:
                path = os.path.join(tmp, f"{v.replace(':', '-')}.pt")
                ask(procs[v], f"save {path}")
                grads[v] = torch.load(path)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait()

    seconds = {v: statistics.median(s["seconds"] for s in steps[v][1:]) for v in variants}
    peak_mib = {v: max(s["step_peak_kib"] for s in steps[v]) / 1024 for v in variants}
    print(f"plain:         {seconds['plain']:8.3f} s median, step peak {peak_mib['plain']:6.0f} MiB")
    results = []
    for c in args.chunk_size:
        v = f"chunked:{c}"
        grad_err = {k: max_rel_err(grads[v][k], grads["plain"][k]) for k in ("hidden", "weight")}
        plain_loss = steps["plain"][-1]["loss"]
        results.append(
            {
                "peak_mem_ratio": round(peak_mib[v] / peak_mib["plain"], 4),
                "time_ratio": round(seconds[v] / seconds["plain"], 4),
                "max_grad_rel_err": max(grad_err.values()),
                "loss_rel_err": abs(steps[v][-1]["loss"] - plain_loss) / abs(plain_loss),
                "plain_seconds": round(seconds["plain"], 3),
                "chunked_seconds": round(seconds[v], 3),
                "plain_peak_mib": round(peak_mib["plain"], 1),
                "chunked_peak_mib": round(peak_mib[v], 1),
                "grad_rel_err_hidden": grad_err["hidden"],
                "grad_rel_err_weight": grad_err["weight"],
                "chunk_size": c,
            }
        )
        r = results[-1]
        print(
            f"{v:13s} {seconds[v]:8.3f} s median, step peak {peak_mib[v]:6.0f} MiB; chunked/plain: memory "
            f"{r['peak_mem_ratio']:.3f} (target <= 0.15), time {r['time_ratio']:.3f} (target <= 1.3), "
            f"max grad rel err {r['max_grad_rel_err']:.2e} (target <= 1e-5)"
        )
    # The high-water mark above the baseline before the first step; a step peak below it would be hidden.
    slack_mib = max(steps[v][0]["maxrss_above_baseline_before_kib"] for v in variants) / 1024
    result = {
        **results[0],
        "maxrss_slack_mib": round(slack_mib, 1),
        "vocab": args.vocab,
        "tokens": args.tokens,
        "hidden": args.hidden,
        "repeats": args.repeats,
        "temperature": args.temperature,
        "threads": torch.get_num_threads(),
    }
    if len(results) > 1:
        result["sweep"] = results
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
