"""Batching across requests: one worker thread owns the pipeline and answers waiting requests together.

A request becomes a `Job` on a bounded queue (full: 429 with Retry-After; shutting down: 503). The
worker takes the oldest job, waits up to `serve.batch_wait_ms` (from that job's arrival) for others
with the same settings (mode, max_thoughts, threshold, max_tokens, stop, sampling) to join, up to
`serve.max_batch`, and runs them as one `Pipeline.run` batch, which shrinks as questions stop. While
it runs, jobs with the same settings that arrive later take the places of finished questions at its
next base-model call (continuous batching; modes never, always, router), unless a job with other
settings is first in line, which then gets the next batch. Each job receives its own events
(answers, router decisions, thoughts, the returned answer's text as the base model writes it, done) as its
question advances, so a stream sends its deltas without waiting for the batch. A job whose client went away is dropped before the pipeline's next
model call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pseudocot.config.schema import ServeConfig
from pseudocot.errors import PseudocotError, RequestError
from pseudocot.pipeline import Pipeline, Question, Sampling, Trace
from pseudocot.serve.protocol import ChatRequest

log = logging.getLogger("pseudocot.serve")


@dataclass(eq=False)
class Job:
    """One request in flight: its events go to `events`, an asyncio queue of the server's loop."""

    request: ChatRequest
    id: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]]
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    batch_size: int = 0
    cancelled: bool = False

    def emit(self, kind: str, payload: Any) -> None:
        """Hand an event to the server's loop (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the loop has closed: the server is gone, nobody is listening
            pass

    def question(self) -> Question:
        """The request as the loop's question (its earlier turns as history)."""
        return Question(self.id, self.request.question, self.request.history_messages())

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.perf_counter()) - self.enqueued


class Batcher:
    """The worker thread, its queue and the pipeline it loads (`load()` runs in the thread, so the
    server answers /health with 503 while models load)."""

    def __init__(self, load: Callable[[], Pipeline], limits: ServeConfig) -> None:
        self._load, self.limits = load, limits
        self.pipeline: Pipeline | None = None
        self.state = "loading"
        """loading, ready, failed (loading raised; `error` says why) or stopped."""
        self.error: str | None = None
        self.draining = False
        self._queue: list[Job] = []
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._main, name="pseudocot-batcher", daemon=True)
        self._batch_seconds = 1.0  # running mean of a batch's wall time, for Retry-After
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "admitted": 0}
        """batches run, requests answered, the most a batch started with, requests that joined a running batch."""

    # -- called from the server --------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (once; later calls do nothing)."""
        if self._thread.ident is None:
            self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse it: 503 while loading, failed or shutting down, 429 when the queue is full."""
        with self._cond:
            if self.draining or self.state == "stopped":
                raise RequestError("the server is shutting down; send the request to another instance or retry later.",
                                   status=503, code="shutting_down", type="server_error")
            if self.state == "loading":
                raise RequestError("the models are still loading; retry in a few seconds (GET /health says when ready).",
                                   status=503, code="loading", type="server_error", headers={"Retry-After": "5"})
            if self.state == "failed":
                raise RequestError(f"the models failed to load ({self.error}); fix the run and restart the server.",
                                   status=503, code="not_ready", type="server_error")
            if len(self._queue) >= self.limits.max_queue:
                wait = self.retry_after_seconds()
                raise RequestError(f"the server is busy: {len(self._queue)} requests are waiting (serve.max_queue); retry after {wait} s.",
                                   status=429, code="queue_full", type="rate_limit_error", headers={"Retry-After": str(wait)})
            self._queue.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job from the queue, or from its batch before the next model call."""
        with self._cond:
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)
            self._cond.notify_all()

    def drain(self) -> None:
        """Refuse new jobs; the worker answers the accepted ones, then stops."""
        with self._cond:
            self.draining = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to finish; True if it did."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def retry_after_seconds(self) -> int:
        batches_ahead = math.ceil((len(self._queue) + 1) / self.limits.max_batch)
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    # -- the worker --------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self.pipeline = self._load()
        except Exception as e:  # the server keeps answering (503 with the reason) instead of dying silently
            log.exception("loading the pipeline failed")
            with self._cond:
                self.state, self.error = "failed", str(e) if isinstance(e, PseudocotError) else f"{type(e).__name__}: {e}"
                self._fail(self._queue, RequestError(f"the models failed to load ({self.error}).", status=503, type="server_error"))
                self._queue.clear()
            return
        self._defaults = self.pipeline.cfg
        with self._cond:
            self.state = "ready"
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                batch = self._admissible(batch)
                if batch:  # empty when every job that opened it was cancelled or refused
                    self._run(batch)
        except Exception as e:  # a bug: say so to everyone waiting rather than leave them hanging
            log.exception("the batcher stopped")
            with self._cond:
                self.state, self.error = "failed", f"{type(e).__name__}: {e}"
                self._fail(self._queue + self._running, RequestError("the server failed to answer this request; its log has the details.",
                                                                     status=500, type="server_error", code="internal_error"))
                self._queue, self._running = [], []
            return
        with self._cond:
            self.state = "stopped"

    def _next_batch(self) -> list[Job] | None:
        wait_s = self.limits.batch_wait_ms / 1000
        with self._cond:
            while not self._queue:
                if self.draining:
                    return None
                self._cond.wait()
            first = self._queue[0]
            key = first.request.batch_key()
            deadline = first.enqueued + wait_s
            while not self.draining:
                same = sum(1 for j in self._queue if j.request.batch_key() == key)
                left = deadline - time.perf_counter()
                if same >= self.limits.max_batch or left <= 0 or first.cancelled:
                    break
                self._cond.wait(left)
            batch = [j for j in self._queue if j.request.batch_key() == key][: self.limits.max_batch]
            self._queue = [j for j in self._queue if j not in batch]
            self._running = batch
            return batch

    def _admissible(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose conversation the base model can take; the others get a 400 and leave."""
        ok = []
        for j in jobs:
            error = self._check(j.request)
            if error is None:
                ok.append(j)
            else:
                j.emit("error", error)
        if len(ok) < len(jobs):
            with self._cond:
                self._running = [j for j in self._running if j in ok or j not in jobs]
        return ok

    def _check(self, r: ChatRequest) -> RequestError | None:
        pipe = self.pipeline
        assert pipe is not None
        try:
            prompt = pipe.base_prompt(r.question, [], r.history_messages())
        except Exception as e:  # e.g. a template that wants user and assistant turns to alternate
            return RequestError(f"the base model's chat template cannot render these messages ({type(e).__name__}: {e}).",
                                param="messages", code="invalid_messages")
        tokenizer = pipe.base_tokenizer
        config = getattr(getattr(pipe.base, "model", None), "config", None)
        limit = self.limits.max_prompt_tokens
        if limit is None and config is not None and getattr(config, "max_position_embeddings", None):
            limit = config.max_position_embeddings - (r.max_tokens or self._defaults.answer_max_new_tokens)
        # Every token covers at least one byte of the text, so a prompt no longer in bytes than the limit
        # needs no tokenizing here (the pipeline tokenizes it anyway).
        if limit is None or tokenizer is None or len(prompt.encode()) <= limit:
            return None
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n > limit:
            return RequestError(f"the conversation is {n} tokens in the base model's prompt; this server takes at most {limit} "
                                "(serve.max_prompt_tokens, or the model's length less max_tokens); send a shorter one.",
                                param="messages", code="context_length_exceeded")
        return None

    def _settings(self, r: ChatRequest) -> Any:
        d = self._defaults
        return dataclasses.replace(
            d, mode=r.mode, max_thoughts=d.max_thoughts if r.max_thoughts is None else r.max_thoughts,
            threshold=d.threshold if r.threshold is None else r.threshold,
            answer_max_new_tokens=r.max_tokens or d.answer_max_new_tokens, answer_stop=[*d.answer_stop, *r.stop])

    def _run(self, batch: list[Job]) -> None:
        pipe = self.pipeline
        assert pipe is not None
        r = batch[0].request
        settings = dataclasses.replace(self._settings(r), batch_size=self.limits.max_batch)
        key = r.batch_key()
        sampling = Sampling(temperature=r.temperature, top_p=r.top_p, seed=r.seed)
        threshold = settings.threshold if settings.threshold is not None else getattr(pipe.router, "threshold", None)
        reads = getattr(pipe.router, "reads", "answer")  # thought: the decision comes after the thought it judges
        started = time.perf_counter()
        with self._cond:  # counted before any answer goes out, so a client that reads them sees its request
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        by_id = {}
        for j in batch:
            j.started, j.batch_size = started, len(batch)
            by_id[j.id] = j

        def on_event(kind: str, trace: Trace) -> None:
            job = by_id[trace.id]
            if kind == "answer":
                a = trace.answers[-1]
                job.emit("answer", {"event": "answer", "index": len(trace.answers) - 1, "text": a.text, "final": a.final,
                                    "tokens": a.tokens, "score": a.answer_score})
            elif kind == "decision":
                job.emit("router", {"event": "router", "index": len(trace.answers) - 1, "score": trace.answers[-1].router_score,
                                    "threshold": threshold, "continue": trace.stop_reason != "router", "reads": reads})
            elif kind == "thought":
                t = trace.thoughts[-1]
                job.emit("thought", {"event": "thought", "index": len(trace.thoughts) - 1, "text": t.text, "tokens": t.tokens})
            elif kind == "done":
                job.emit("done", trace)
                del by_id[trace.id]
                with self._cond:  # its place is free: /health stops counting it
                    self._running = [j for j in self._running if j is not job]

        def on_text(trace: Trace, delta: str) -> None:  # the returned answer, as the base model writes it
            job = by_id.get(trace.id)
            if job is not None and job.request.stream:
                job.emit("content", delta)

        try:
            pipe.run([j.question() for j in batch], on_event=on_event, cfg=settings, sampling=sampling,
                     serving=_Serving(self, key, by_id), on_text=on_text)
        except RequestError as e:
            self._fail(list(by_id.values()), e)
        except PseudocotError as e:  # the server's set-up, not the request (e.g. a model without a chat template)
            log.error("a batch of %d requests failed: %s", len(batch), e)
            self._fail(list(by_id.values()), RequestError(f"the server cannot answer: {e}", status=500, type="server_error",
                                                          code="server_setup"))
        except Exception:
            log.exception("a batch of %d requests failed", len(batch))
            self._fail(list(by_id.values()), RequestError("the server failed to answer this request; its log has the details.", status=500,
                                           type="server_error", code="internal_error"))
        finally:
            seconds = time.perf_counter() - started
            with self._cond:
                self._running = []
                self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
            log.info("batch of %d (%s, %d joined while it ran) answered in %.2f s", len(batch), r.mode, len(by_id) - len(batch), seconds)

    @staticmethod
    def _fail(jobs: list[Job], error: RequestError) -> None:
        for j in jobs:
            j.emit("error", error)


class _Serving:
    """What the batcher adds to one batch's loop (`pipeline.Serving`): a job whose client went away is dropped, and
    waiting jobs with the batch's settings take the places of finished questions (continuous batching)."""

    def __init__(self, batcher: Batcher, key: Any, by_id: dict[str, Job]) -> None:
        self.batcher, self.key, self.by_id = batcher, key, by_id
        self.admitted = 0

    def keep(self, trace: Trace) -> bool:
        return not self.by_id[trace.id].cancelled

    def admit(self, free: int) -> list[Question]:
        b = self.batcher
        with b._cond:
            free = min(free, b.limits.max_admitted - self.admitted)
            if free <= 0 or not b._queue or b._queue[0].request.batch_key() != self.key:
                # Nothing to add, this batch has taken its share (it must end some time, so that its
                # finished questions' traces are freed), or a job with other settings is first in line.
                return []
            new = [j for j in b._queue if j.request.batch_key() == self.key][:free]
            b._queue = [j for j in b._queue if j not in new]
            b._running = b._running + new
            b.stats["requests"] += len(new)
            b.stats["admitted"] += len(new)
            self.admitted += len(new)
        new = b._admissible(new)
        joined = time.perf_counter()
        for j in new:
            j.started, j.batch_size = joined, b.limits.max_batch - free + len(new)
            self.by_id[j.id] = j
        return [j.question() for j in new]
