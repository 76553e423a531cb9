"""Benchmark: `pseudocot serve` under load, against the same questions sent one at a time.

Starts `pseudocot serve --run RUN` in its own process (so the clients here do not share its CPU time
slices under one interpreter lock) and sends the run's first `--requests` test questions through
`/v1/chat/completions` (model `--model`, default `pseudocot`: the run's router mode), greedy:

1. sequential: one client, one request after the other, to a server with `serve.batch_wait_ms=0`
   (a lone request then waits for nobody: the best a one-at-a-time client can get);
2. concurrent: `--clients` clients (threads here, one HTTP connection each) share the questions, to a
   server with the run's serve settings (default `serve.max_batch` 16, `serve.batch_wait_ms` 20):
   requests that arrive together are answered as one pipeline batch;
3. overload: `--overload-clients` clients each send `--overload-requests` requests at once to a
   server with `serve.max_queue=--overload-queue`: some get 429 (with Retry-After), and every
   accepted request must succeed.

Reported: errors, latency p50/p95 (seconds, per request, from send to the last byte), throughput
(requests/s) and `concurrent_vs_sequential` = concurrent throughput / sequential throughput (target >= 4),
the accuracy of the answers by the run's router task (the same questions, both ways: greedy batches must
not change them), and the server's batch sizes. The last line printed is one JSON object.

    HF_HUB_OFFLINE=1 python benchmarks/serve.py --run runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`pseudocot serve` in a subprocess, waited for until /health says ready."""

    def __init__(self, run: Path, overrides: list[str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("pseudocot")
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([str(exe), "serve", "--run", str(run), "--port", str(self.port), *overrides],
                                     env={**os.environ, "PSEUDOCOT_API_KEY": KEY, "HF_HUB_OFFLINE": "1"},
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {log}")
            time.sleep(0.25)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _ask(http: httpx.Client, model: str, question: str) -> tuple[int, float, dict]:
    t0 = time.perf_counter()
    r = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": question}]})
    seconds = time.perf_counter() - t0
    try:
        body = r.json()
    except ValueError:
        body = {"raw": r.text[:200]}
    return r.status_code, seconds, body


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)


def _run_load(url: str, model: str, questions: list[str], clients: int) -> dict:
    """`clients` threads, each with its own connection, take the next question until none is left."""
    results: list[tuple[int, float, dict] | None] = [None] * len(questions)
    pending = iter(range(len(questions)))

    def worker() -> None:
        with _client(url) as http:
            for i in pending:  # a shared iterator: each index is taken once
                results[i] = _ask(http, model, questions[i])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    done = [r for r in results if r is not None]
    ok = [r for r in done if r[0] == 200]
    lat = np.array([r[1] for r in ok]) if ok else np.array([np.nan])
    return {"requests": len(questions), "clients": clients, "ok": len(ok), "errors": len(done) - len(ok),
            "error_statuses": sorted({r[0] for r in done if r[0] != 200}),
            "seconds": round(wall, 3), "requests_per_second": round(len(ok) / wall, 3),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 4), "latency_p95_s": round(float(np.percentile(lat, 95)), 4),
            "answers": [r[2]["choices"][0]["message"]["content"] if r[0] == 200 else None for r in results],
            "thought_calls": float(np.mean([r[2]["pseudocot"]["thought_calls"] for r in ok])) if ok else None,
            "batch_sizes": [r[2]["pseudocot"]["batch_size"] for r in ok]}


def _overload(url: str, model: str, questions: list[str], clients: int, per_client: int) -> dict:
    """Every client fires its requests back to back; 429s are expected, any other failure is not."""
    def worker(c: int) -> list[tuple[int, str | None]]:
        out = []
        with _client(url) as http:
            for k in range(per_client):
                status, _, body = _ask(http, model, questions[(c * per_client + k) % len(questions)])
                out.append((status, body.get("error", {}).get("code") if status != 200 else None))
        return out

    retry_after = set()
    with ThreadPoolExecutor(clients) as pool:
        replies = [x for f in [pool.submit(worker, c) for c in range(clients)] for x in f.result()]
    with _client(url) as http:  # the header itself, once the queue is surely full again
        with ThreadPoolExecutor(clients) as pool:
            for r in pool.map(lambda q: http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": q}]}),
                              questions[: clients * 2]):
                if r.status_code == 429:
                    retry_after.add(r.headers.get("retry-after"))
    statuses = [s for s, _ in replies]
    return {"requests": len(replies), "clients": clients, "ok": statuses.count(200), "rejected_429": statuses.count(429),
            "failed_other": sum(s not in (200, 429) for s in statuses), "retry_after_values": sorted(v for v in retry_after if v)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--model", default="pseudocot")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="run.threads of the server (default: the run's)")
    ap.add_argument("--overload-clients", type=int, default=32)
    ap.add_argument("--overload-requests", type=int, default=4)
    ap.add_argument("--overload-queue", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()

    from pseudocot.layout import RunLayout, run_config
    from pseudocot.tasks import get_task
    from pseudocot.train.rows import read_split

    cfg = run_config(args.run)
    exs = read_split(RunLayout.of(cfg).split("test"), "test")[: args.requests]
    if len(exs) < args.requests:
        raise SystemExit(f"{args.run} has only {len(exs)} test questions; pass --requests {len(exs)}.")
    task_cfg = cfg.task_of("router")
    task = get_task(task_cfg.name, **task_cfg.options)
    questions = task.prompts(exs)
    extra = [f"run.threads={args.threads}"] if args.threads else []
    logs = Path(os.environ.get("TMPDIR", "/tmp"))

    def accuracy(answers: list[str | None]) -> float:
        return round(float(np.mean([a is not None and task.is_correct(a, e) for a, e in zip(answers, exs)])), 4)

    server = Server(args.run, ["serve.batch_wait_ms=0", *extra], logs / "bench-serve-sequential.log")
    try:
        _run_load(server.url, args.model, questions[:8], 1)  # warm-up
        seq = _run_load(server.url, args.model, questions, 1)
    finally:
        server.stop()
    server = Server(args.run, extra, logs / "bench-serve-concurrent.log")
    try:
        _run_load(server.url, args.model, questions[:16], args.clients)  # warm-up
        conc = _run_load(server.url, args.model, questions, args.clients)
        conc["server"] = server.health()
    finally:
        server.stop()
    server = Server(args.run, [f"serve.max_queue={args.overload_queue}", *extra], logs / "bench-serve-overload.log")
    try:
        over = _overload(server.url, args.model, questions, args.overload_clients, args.overload_requests)
    finally:
        server.stop()

    same = sum(a == b for a, b in zip(seq["answers"], conc["answers"]))
    sizes = conc.pop("batch_sizes")
    seq.pop("batch_sizes")
    result = {
        "run": str(args.run), "model": args.model, "threads": args.threads or cfg.run.threads,
        "serve": {"max_batch": cfg.serve.max_batch, "batch_wait_ms": cfg.serve.batch_wait_ms},
        "sequential": {k: v for k, v in seq.items() if k != "answers"} | {"accuracy": accuracy(seq["answers"])},
        "concurrent": {k: v for k, v in conc.items() if k != "answers"} | {
            "accuracy": accuracy(conc["answers"]), "mean_batch_size": round(float(np.mean(sizes)), 2), "largest_batch": max(sizes)},
        "answers_identical": same, "concurrent_vs_sequential": round(conc["requests_per_second"] / seq["requests_per_second"], 2),
        "overload": over | {"max_queue": args.overload_queue},
    }
    print(f"sequential: {seq['requests_per_second']} req/s, p50 {seq['latency_p50_s']} s, p95 {seq['latency_p95_s']} s, {seq['errors']} errors")
    print(f"concurrent ({args.clients} clients): {conc['requests_per_second']} req/s, p50 {conc['latency_p50_s']} s, "
          f"p95 {conc['latency_p95_s']} s, {conc['errors']} errors, mean batch {result['concurrent']['mean_batch_size']}")
    print(f"concurrent / sequential: {result['concurrent_vs_sequential']}x; identical answers {same}/{len(questions)}")
    print(f"overload (queue {args.overload_queue}): {over['ok']} ok, {over['rejected_429']} x 429, {over['failed_other']} other failures")
    text = json.dumps(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
