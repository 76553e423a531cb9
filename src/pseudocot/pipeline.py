"""The Pseudo-CoT system: the base model answers, the router decides, the Tiny Thought Model thinks,
the base model answers again (the paper's section 3, Fig. 3.3).

Per question: base answer 0; then, while the router says continue and fewer than `max_thoughts`
thoughts exist, the TTM writes thought i from the question, the earlier thoughts and the last
answer, and the base model answers again with the question and all thoughts in its context. Modes:

- `never`: the base model alone (answer 0);
- `always`: `max_thoughts` thoughts, one base answer after each;
- `router`: the trained router scores each answer and the loop continues while the score reaches
  its threshold;
- `depth`: the depth router reads only the question and picks how many thoughts the TTM writes
  before the base model's one answer.

Questions are answered as a batch that shrinks as questions stop. With local HF models each
question is a session of its generator, so a re-answer encodes only the new thought
(`generate.sessions`). Every question yields a `Trace` (JSONL), which evaluation, router training,
the chat and the report read.

    pseudocot chat --run runs/demo
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pseudocot.config.schema import Config, Mode, PipelineConfig
from pseudocot.cost import processed_tokens
from pseudocot.data.chat import base_messages, final_answer, render, ttm_prompt
from pseudocot.errors import ConfigError, DataError, ModelError
from pseudocot.generate.base import Completion, GenerationParams, Generator, SessionGenerator
from pseudocot.layout import RunLayout, has_model
from pseudocot.router.features import ENTROPY_TOP_K, logprob_stats

MODES = typing.get_args(Mode)
"""never, always, router, depth (the config schema's choices)."""


class RouterPolicy(Protocol):
    """What the pipeline asks of a router (`pseudocot.router.model.Router` is one)."""

    features: list[str]
    """Which router inputs it reads (`router.features`): the pipeline asks the base for hidden states only if listed."""
    threshold: float
    """Continue while the score is at least this (`pipeline.threshold` overrides it)."""

    def score(self, steps: Sequence[StepInput]) -> list[float]:
        """Probability, per answer, that another thought turns it right."""
        ...

    def depth(self, prompts: Sequence[str], base: Generator, sessions: Sequence[Any] | None, max_thoughts: int) -> list[int]:
        """Thoughts to write before the one answer, per question prompt (mode depth)."""
        ...


@dataclass
class Answer:
    text: str
    """The base model's response."""
    final: str
    """The answer it commits to (`data.chat.final_answer`)."""
    tokens: int
    """Tokens generated."""
    prompt_tokens: int
    """Tokens in its context."""
    cached_tokens: int
    """Context tokens reused from the previous call instead of encoded again."""
    seconds: float
    """Wall time of the call, shared among its batch."""
    logprob_mean: float | None = None
    """Mean log-probability of its tokens (when the router asked for them)."""
    router_score: float | None = None
    """The router's probability that another thought helps (router mode)."""
    answer_score: float | None = None
    """The answer head's probability that this answer is right (mode router with `router.select: best`)."""
    finish_reason: str = ""
    """`stop` (end of turn or a stop string) or `length` (answer_max_new_tokens reached)."""


@dataclass
class Thought:
    text: str
    """What the TTM wrote."""
    tokens: int
    """Tokens generated."""
    seconds: float
    """Wall time of the call, shared among its batch."""
    prompt_tokens: int = 0
    """Tokens in its context."""
    cached_tokens: int = 0
    """Context tokens reused from the previous call instead of encoded again."""
    rejected: bool = False
    """A router that reads each thought before the re-answer (`router.reads: thought`) turned it down: the base model
    never saw it (its TTM call is still counted)."""
    logprobs: list[float] | None = None
    """`router.features.logprob_stats` of its tokens' log-probabilities, where a router reads them (`thought_logprobs`)
    or its traces are collected."""


@dataclass
class Sampling:
    """How both models pick tokens (the server sets it per request batch; evaluation keeps greedy)."""

    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass, used when temperature > 0."""
    seed: int | None = None
    """The same seed and questions give the same samples."""


@dataclass
class Trace:
    id: str
    question: str
    mode: str
    answers: list[Answer] = field(default_factory=list)
    """Every base answer, in order: answer i has the first i thoughts in its context."""
    thoughts: list[Thought] = field(default_factory=list)
    final_answer: str = ""
    """The returned answer's committed value."""
    stop_reason: str = ""
    """never, router, max_thoughts, ttm_done (the TTM ended its reasoning), depth, or cancelled (the caller
    dropped the question, e.g. a server client that went away)."""
    depth: int | None = None
    """Thoughts the depth router chose (depth mode)."""
    seconds: float = 0.0
    """Sum of this question's shares of every call."""
    features: list[Any] = field(default_factory=list, repr=False)
    """Router inputs of each answer (not serialised)."""
    history: list[dict[str, str]] = field(default_factory=list, repr=False)
    """Earlier turns of a conversation, put before the question in the base model's context (not serialised)."""
    selected: int | None = None
    """Which answer the loop returned (`Pipeline.select`); None: the last."""

    @property
    def thought_calls(self) -> int:
        return len(self.thoughts)

    @property
    def shown_thoughts(self) -> list[str]:
        """The thoughts the base model had in its context (every one but a rejected one), in order."""
        return [t.text for t in self.thoughts if not t.rejected]

    @property
    def returned(self) -> Answer | None:
        """The answer the loop returned: `selected`, else the last."""
        if not self.answers:
            return None
        return self.answers[self.selected if self.selected is not None else -1]

    @property
    def final_text(self) -> str:
        a = self.returned
        return a.text if a is not None else ""

    @property
    def returned_thoughts(self) -> list[str]:
        """The thoughts in the returned answer's context: in the loop answer i has the first i shown thoughts; in mode
        depth the one answer has them all."""
        shown = self.shown_thoughts
        return shown if self.selected is None or self.mode == "depth" else shown[: self.selected]

    @property
    def tokens(self) -> dict[str, int]:
        """Generated tokens per model: `base` (every answer) and `ttm` (every thought)."""
        return {"base": sum(a.tokens for a in self.answers), "ttm": sum(t.tokens for t in self.thoughts)}

    @property
    def processed(self) -> dict[str, int]:
        """Tokens each model ran through, prompts less what its cache held plus what it generated (`cost`: FLOPs are
        2 x parameters x these)."""
        return {"base": sum(processed_tokens(a.prompt_tokens, a.cached_tokens, a.tokens) for a in self.answers),
                "ttm": sum(processed_tokens(t.prompt_tokens, t.cached_tokens, t.tokens) for t in self.thoughts)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("features")
        d.pop("history")
        d["thought_calls"] = self.thought_calls
        d["tokens"] = self.tokens
        d["processed"] = self.processed
        d["final_text"] = self.final_text
        return d

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Trace:
        row = {k: v for k, v in row.items() if k not in ("thought_calls", "tokens", "processed", "final_text")}
        row["answers"] = [Answer(**a) for a in row.get("answers", [])]
        row["thoughts"] = [Thought(**t) for t in row.get("thoughts", [])]
        return cls(**row)


@dataclass
class StepInput:
    """What the router sees after answer `iteration` of a question."""

    question: str
    iteration: int
    completion: Completion
    changed: bool
    """The committed answer differs from the previous one (False for the first)."""
    thought: list[float] | None = None
    """`thought_features` of the thoughts in the answer's context."""
    thought_logprobs: list[float] | None = None
    """`Thought.logprobs` of the last thought in the answer's context (`logprob_stats` of none before the first)."""


def last_thought_logprobs(thoughts: Sequence[Thought]) -> list[float]:
    """The `thought_logprobs` router input: the last thought's `Thought.logprobs` (`logprob_stats` of none when there is
    no thought, or its log-probabilities were not asked for)."""
    return (thoughts[-1].logprobs if thoughts else None) or logprob_stats(None)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def thought_features(question: str, thoughts: Sequence[str], final: str) -> list[float]:
    """What the thoughts before an answer say about it (the router's `thought` feature), 6 values: a thought exists;
    the answer equals the last number the last thought wrote; the last thought has an arithmetic statement
    (`synth.arithmetic`); the share of its statements that are true (1 with none); the share of the question's
    distinct numbers that appear in the thoughts; the last thought's length in words / 10.

    >>> thought_features("Ann has 5 pens and gets 3.", ["5 + 3 = 8"], "8")
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    """
    from pseudocot.synth.arithmetic import statements

    if not thoughts:
        return [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    last = thoughts[-1]
    values = _NUMBER.findall(last)
    found = statements(last)
    asked = set(_NUMBER.findall(question))
    used = set(_NUMBER.findall("\n".join(thoughts)))
    return [1.0, float(bool(values) and values[-1] == final.strip()), float(bool(found)),
            sum(st.ok for st in found) / len(found) if found else 1.0, len(asked & used) / len(asked) if asked else 1.0,
            len(last.split()) / 10]


@dataclass(frozen=True)
class Question:
    """One question for the loop: its id, its text and the conversation before it (put before the question in the
    base model's context)."""

    id: str
    text: str
    history: Sequence[dict[str, str]] = ()


class Serving(Protocol):
    """What a server adds around the loop (`serve.batcher`): it drops questions whose client went away and lets new
    questions join a running batch (continuous batching; modes never, always and router)."""

    def keep(self, trace: Trace) -> bool:
        """False once the question's client has gone: it is dropped before the next model call (stop reason
        `cancelled`)."""
        ...

    def admit(self, free: int) -> Sequence[Question]:
        """At most `free` new questions (`batch_size` minus the questions still going), asked before each base-model
        call: they get their first answer in that call and go on with the rest."""
        ...


@dataclass
class Batch:
    """One batch on its way through the loop: the settings it runs with, its questions' traces, the thoughts the base
    model is shown, each question's session keys, and which questions are finished."""

    cfg: PipelineConfig
    sampling: Sampling
    mode: str
    number: int
    """Numbers the batch's sessions (a session key is `("pcot", number, i)`)."""
    traces: list[Trace]
    collect: bool = False
    on_event: Callable[[str, Trace], None] | None = None
    on_text: Callable[[Trace, str], None] | None = None
    serving: Serving | None = None
    admits: bool = False
    """Whether `serving` may add questions to this batch (only the last batch of a call takes them)."""
    thoughts: list[list[str]] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)
    finished: set[int] = field(default_factory=set)
    own_sessions: bool = True
    """Free each question's sessions when it finishes (False: the caller named the sessions and frees them)."""

    def __post_init__(self) -> None:
        self.thoughts = [[] for _ in self.traces]
        self.keys = [("pcot", self.number, i) for i in range(len(self.traces))]

    def add(self, q: Question) -> int:
        """A question joining the batch; returns its index."""
        self.traces.append(Trace(id=q.id, question=q.text, mode=self.mode, history=list(q.history)))
        self.thoughts.append([])
        self.keys.append(("pcot", self.number, len(self.keys)))
        return len(self.traces) - 1

    def emit(self, kind: str, i: int) -> None:
        if self.on_event:
            self.on_event(kind, self.traces[i])


def as_question(q: tuple[str, str] | Question) -> Question:
    return q if isinstance(q, Question) else Question(*q)


class Pipeline:
    """Base `Generator` + TTM `Generator` + router, answering batches of questions.

    `cfg` and `sampling` are the defaults; `run` takes a batch's own (the server's per-request settings) as arguments."""

    def __init__(self, base: Generator | None, ttm: Generator | None, cfg: PipelineConfig, router: RouterPolicy | None = None,
                 base_tokenizer: Any = None, ttm_tokenizer: Any = None, sampling: Sampling | None = None) -> None:
        if cfg.mode != "never" and ttm is None:
            raise ConfigError(f"pipeline.mode={cfg.mode} needs a Tiny Thought Model; set pipeline.ttm or train one with `pseudocot distill`.")
        if cfg.mode in ("router", "depth") and router is None:
            raise ConfigError(f"pipeline.mode={cfg.mode} needs a router; train one with `pseudocot router`.")
        self.base, self.ttm, self.cfg, self.router = base, ttm, cfg, router
        self.sampling = sampling or Sampling()
        self._batches = 0  # numbers each batch's sessions
        self.base_tokenizer = base_tokenizer if base_tokenizer is not None else getattr(base, "tokenizer", None)
        self.ttm_tokenizer = ttm_tokenizer if ttm_tokenizer is not None else getattr(ttm, "tokenizer", None)

    @property
    def gives_hidden(self) -> bool:
        """Whether the base model can give its hidden states (a local model; an engine cannot)."""
        return callable(getattr(getattr(self.base, "model", None), "parameters", None))

    # -- prompts ---------------------------------------------------------------------------

    def base_prompt(self, question: str, thoughts: list[str], history: Sequence[dict[str, str]] = (),
                    cfg: PipelineConfig | None = None) -> str:
        return render(self.base_tokenizer, base_messages(question, thoughts, cfg or self.cfg, history), add_generation_prompt=True)

    def ttm_prompt(self, question: str, thoughts: list[str], last_answer: str, cfg: PipelineConfig | None = None) -> str:
        return ttm_prompt(self.ttm_tokenizer, question, thoughts, last_answer, cfg or self.cfg)

    # -- generation ------------------------------------------------------------------------

    def _call(self, b: Batch, gen: Generator, prompts: list[str], params: GenerationParams, keys: list[Any]) -> list[Completion]:
        if b.cfg.kv_reuse and isinstance(gen, SessionGenerator):
            return gen.generate(prompts, params, sessions=keys)
        return gen.generate(prompts, params)

    def _needs_features(self, b: Batch) -> bool:
        return b.collect or b.mode in ("router", "depth")

    def _selects(self, b: Batch) -> bool:
        """Whether the router's answer head scores every answer, to return the best (`router.select: best`)."""
        return b.mode == "router" and not b.collect and getattr(self.router, "select", "last") == "best"

    def _reads(self, b: Batch, feature: str) -> bool:
        """Whether the loop computes a router input: collecting traces (every input) or the router lists it."""
        return self._needs_features(b) and (b.collect or feature in getattr(self.router, "features", ()))

    def answer_params(self, b: Batch) -> GenerationParams:
        s = b.sampling
        return GenerationParams(max_new_tokens=b.cfg.answer_max_new_tokens, stop=list(b.cfg.answer_stop),
                                logprobs=self._needs_features(b), hidden=self._reads(b, "hidden"),
                                top_logprobs=ENTROPY_TOP_K if self._reads(b, "entropy") else 0,
                                temperature=s.temperature, top_p=s.top_p, seed=s.seed)

    def thought_params(self, b: Batch, attempt: int = 0) -> GenerationParams:
        """How the TTM writes a thought; a second or later try (`attempt` > 0, best-of-k) is sampled at
        `resample_temperature` (or the batch's own, if higher), seeded by the batch's seed and the try."""
        s = b.sampling
        temperature, seed = (max(s.temperature, b.cfg.resample_temperature), (s.seed or 0) * 1009 + attempt) if attempt \
            else (s.temperature, s.seed)
        return GenerationParams(max_new_tokens=b.cfg.thought_max_new_tokens, stop=list(b.cfg.thought_stop),
                                logprobs=self._reads(b, "thought_logprobs"), temperature=temperature, top_p=s.top_p, seed=seed)

    # -- the loop --------------------------------------------------------------------------

    def run(self, questions: Sequence[tuple[str, str] | Question], collect: bool = False,
            on_event: Callable[[str, Trace], None] | None = None, *, cfg: PipelineConfig | None = None,
            sampling: Sampling | None = None, serving: Serving | None = None,
            on_text: Callable[[Trace, str], None] | None = None) -> list[Trace]:
        """Answer `(id, question)` pairs or `Question`s; returns one trace per question, in order.

        `collect` forces thoughts up to `max_thoughts` whatever the mode says and keeps every answer's router
        features (router training). `on_event(kind, trace)` is called after each answer (`answer`), router decision
        (`decision`) and thought (`thought`), and once when a question is finished (`done`, its final answer set),
        for live display. `cfg` and `sampling` are this call's settings (default: the pipeline's). `serving` drops
        cancelled questions and admits new ones into the last batch (`Serving`); their traces come after the others.
        `on_text(trace, delta)` streams an answer the loop will return as the base model writes it, where that is known
        before it is written (`_returns`); the deltas add up to its text.
        """
        cfg = cfg or self.cfg
        items = [as_question(q) for q in questions]
        out: list[Trace] = []
        size = max(1, cfg.batch_size)
        for start in range(0, len(items), size):
            self._batches += 1
            mode = "always" if collect else cfg.mode
            b = Batch(cfg, sampling or self.sampling, mode, self._batches,
                      [Trace(id=q.id, question=q.text, mode=mode, history=list(q.history)) for q in items[start:start + size]],
                      collect, on_event, on_text, serving, admits=start + size >= len(items))
            try:
                self._depth_loop(b) if mode == "depth" else self._loop(b)
            finally:
                self.end_sessions(b.keys)
            self._finish(b, range(len(b.traces)))
            out += b.traces
        return out

    def _loop(self, b: Batch) -> None:
        """The paper's loop: the base answers; while the router says go, the TTM thinks and the base answers again.
        A router that reads the thought (`router.reads: thought`) decides after the TTM has written it instead: the
        base re-answers only with the thoughts it accepts."""
        first = b.mode == "router" and getattr(self.router, "reads", "answer") == "thought"
        ids = self._kept(b, list(range(len(b.traces))))
        ids += self._admitted(b, ids)
        self._answer(b, ids)
        while ids:
            ids = self._kept(b, self._decide(b, ids, ask_router=not first))
            wrote = self._think(b, ids, show=not first)
            self._finish(b, [i for i in ids if i not in wrote])  # a TTM with nothing more to say: no re-answer
            if first:
                wrote = self._accept(b, wrote)
            ids = self._kept(b, wrote)
            ids += self._admitted(b, ids)
            self._answer(b, ids)

    def _depth_loop(self, b: Batch) -> None:
        """Depth mode: the depth router reads the question, the TTM writes that many thoughts, the base answers once."""
        ids = self._kept(b, list(range(len(b.traces))))
        sessions = [b.keys[i] + ("base",) for i in ids] if b.cfg.kv_reuse and isinstance(self.base, SessionGenerator) else None
        assert self.router is not None
        prompts = [self.base_prompt(b.traces[i].question, [], b.traces[i].history, b.cfg) for i in ids]
        depth = self.router.depth(prompts, self.base, sessions, b.cfg.max_thoughts) if ids else []
        for i, d in zip(ids, depth):
            b.traces[i].depth = d
        for round_ in range(max(depth, default=0)):
            self._think(b, self._kept(b, [i for i in ids if round_ < b.traces[i].depth and not self._ttm_done(b.traces[i])]))
        ids = self._kept(b, ids)
        for i in ids:
            b.traces[i].stop_reason = "depth"
        self._answer(b, ids)

    def select(self, trace: Trace) -> int:
        """Which of the trace's answers the loop returns: the one the router's answer head scores highest (the later
        one on a tie) where it scored them (`router.select: best`), else the last."""
        best = len(trace.answers) - 1
        for i, a in enumerate(trace.answers):
            if a.answer_score is not None and (trace.answers[best].answer_score is None
                                               or a.answer_score >= trace.answers[best].answer_score):
                best = i
        return best

    def _finish(self, b: Batch, ids: Iterable[int]) -> None:
        """Questions that stop: their final answer is set, their cached context freed, `done` sent."""
        for i in ids:
            if i not in b.finished:
                b.finished.add(i)
                t = b.traces[i]
                t.selected = self.select(t) if t.answers else None
                t.final_answer = t.answers[t.selected].final if t.selected is not None else ""
                if b.own_sessions:
                    self.end_sessions([b.keys[i]])
                b.emit("done", i)

    def _kept(self, b: Batch, ids: list[int]) -> list[int]:
        """The questions still wanted (`Serving.keep`); the others stop as `cancelled`."""
        if b.serving is None:
            return ids
        gone = [i for i in ids if not b.serving.keep(b.traces[i])]
        for i in gone:
            b.traces[i].stop_reason = "cancelled"
        self._finish(b, gone)
        return [i for i in ids if i not in gone]

    def _admitted(self, b: Batch, going: list[int]) -> list[int]:
        """New questions joining the batch (`Serving.admit`), up to `batch_size` questions in all."""
        free = max(0, b.cfg.batch_size - len(going))
        if b.serving is None or not b.admits or not free:
            return []
        return [b.add(as_question(q)) for q in list(b.serving.admit(free))[:free]]

    def answer_with(self, questions: Sequence[tuple[str, str] | Question], thoughts: Sequence[Sequence[str]],
                    sessions: Sequence[tuple[Any, ...]] | None = None) -> list[Trace]:
        """The loop's answer step alone: the base model answers each question with the given thoughts in its context
        (GRPO's `base_correct` reward reads a TTM completion's lines as the thoughts the loop would show), rendered,
        generated and returned exactly as `run` does it, one answer per question. `sessions` names each question's
        session (questions that share a prefix may share one); the caller then frees them (`end_sessions`)."""
        self._batches += 1
        items = [as_question(q) for q in questions]
        b = Batch(self.cfg, self.sampling, "always", self._batches,
                  [Trace(id=q.id, question=q.text, mode="always", history=list(q.history)) for q in items],
                  own_sessions=sessions is None)
        if sessions is not None:
            b.keys = [tuple(k) for k in sessions]
        for i, ts in enumerate(thoughts):
            b.thoughts[i] = [str(x) for x in ts]
            b.traces[i].thoughts = [Thought(text=x, tokens=0, seconds=0.0) for x in b.thoughts[i]]  # written elsewhere
        ids = list(range(len(b.traces)))
        try:
            self._answer(b, ids)
        finally:
            if sessions is None:
                self.end_sessions(b.keys)
        for i in ids:
            b.traces[i].stop_reason = "max_thoughts"
        self._finish(b, ids)
        return b.traces

    def ttm_thoughts(self, questions: Sequence[tuple[str, str]]) -> list[list[str]]:
        """The thoughts the TTM writes for each `(id, question)` when the loop calls it up to `max_thoughts` times
        without base answers in between (the base model's training rows, `base.thoughts_from`): batched, with KV
        reuse, each thought written exactly as `_think` writes it in the loop. Needs a TTM prompt without {answer}."""
        out: list[list[str]] = []
        size = max(1, self.cfg.batch_size)
        for start in range(0, len(questions), size):
            self._batches += 1
            b = Batch(self.cfg, self.sampling, "always", self._batches,
                      [Trace(id=qid, question=q, mode="always") for qid, q in questions[start:start + size]])
            try:
                ids = list(range(len(b.traces)))
                for _ in range(self.cfg.max_thoughts):
                    ids = [i for i in self._think(b, ids) if not self._ttm_done(b.traces[i])]
                    if not ids:
                        break
            finally:
                self.end_sessions(b.keys)
            out += b.thoughts
        return out

    def end_sessions(self, keys: Sequence[Any]) -> None:
        """Forget what both models encoded for these questions (their session keys, as `answer_with` takes them)."""
        for gen, role in ((self.base, "base"), (self.ttm, "ttm")):
            if isinstance(gen, SessionGenerator):
                gen.end_sessions([k + (role,) for k in keys])

    def _ttm_done(self, trace: Trace) -> bool:
        return trace.stop_reason == "ttm_done"

    def _decide(self, b: Batch, ids: list[int], ask_router: bool = True) -> list[int]:
        """The questions that get another thought after their last answer; the others stop (never, max_thoughts, the
        TTM has ended, or, with `ask_router` in mode router, the router's score is under its threshold)."""
        go: list[int] = []
        for i in ids:
            t = b.traces[i]
            if b.mode == "never":
                t.stop_reason = "never"
            elif len(b.thoughts[i]) >= b.cfg.max_thoughts:  # thoughts shown (best-of-k's rejected tries not counted)
                t.stop_reason = "max_thoughts"
            elif not self._ttm_done(t):
                go.append(i)
        if b.mode == "router" and ask_router and go:
            go = self._routed(b, go, [b.traces[i].features[-1] for i in go])
        self._finish(b, [i for i in ids if i not in go])
        return go

    def _routed(self, b: Batch, ids: list[int], steps: list[StepInput]) -> list[int]:
        """The router scores each question's step; those under the threshold stop (stop reason `router`)."""
        assert self.router is not None
        scores = self.router.score(steps)
        threshold = b.cfg.threshold if b.cfg.threshold is not None else self.router.threshold
        go = []
        for i, s in zip(ids, scores):
            b.traces[i].answers[-1].router_score = float(s)
            if s >= threshold:
                go.append(i)
            else:
                b.traces[i].stop_reason = "router"
            b.emit("decision", i)
        return go

    def _accept(self, b: Batch, ids: list[int]) -> list[int]:
        """A router that reads the thought: it scores each question's last answer with the thought the TTM has just
        written; an accepted thought joins what the base model sees. A rejected one is marked `rejected` (never shown
        to the base); the TTM writes it again, sampled, up to `thought_samples` tries in all (best-of-k: the first
        try the router accepts is kept), and a question with none accepted stops."""
        go: list[int] = []
        trying, attempt = ids, 0
        while trying:
            steps = []
            for i in trying:
                t = b.traces[i]
                steps.append(dataclasses.replace(t.features[-1], thought=thought_features(
                    t.question, [*b.thoughts[i], t.thoughts[-1].text], t.answers[-1].final),
                    thought_logprobs=last_thought_logprobs([t.thoughts[-1]])))
            took = self._routed(b, trying, steps)
            go += took
            rejected = [i for i in trying if i not in took]
            for i in rejected:
                b.traces[i].thoughts[-1].rejected = True
            attempt += 1
            if attempt >= b.cfg.thought_samples:
                break
            for i in rejected:  # best-of-k: the TTM writes it again, sampled
                b.traces[i].stop_reason = ""
            trying = self._think(b, rejected, show=False, attempt=attempt)
            for i in rejected:
                if i not in trying and not b.traces[i].stop_reason:
                    b.traces[i].stop_reason = "router"
        for i in go:
            b.thoughts[i].append(b.traces[i].thoughts[-1].text)
        self._finish(b, [i for i in ids if i not in go])
        return sorted(go)

    def _think(self, b: Batch, ids: list[int], show: bool = True, attempt: int = 0) -> list[int]:
        """The TTM writes the next thought of each question; returns those that got one. A TTM that wrote nothing, or
        ended its turn with this thought, has nothing more to say (stop reason `ttm_done`). With `show` false the
        thought is not yet among those the base model sees (`_accept` decides); `attempt` > 0 writes it again after
        the router rejected one (`thought_params`)."""
        if not ids:
            return []
        prompts = [self.ttm_prompt(b.traces[i].question, b.thoughts[i], b.traces[i].answers[-1].text if b.traces[i].answers else "",
                                   b.cfg) for i in ids]
        outs = self._call(b, self.ttm, prompts, self.thought_params(b, attempt), [b.keys[i] + ("ttm",) for i in ids])
        wrote: list[int] = []
        for i, c in zip(ids, outs):
            t, text = b.traces[i], c.text.strip()
            # The TTM ended its turn (end-of-sequence, not a stop string): this is its last thought.
            ended = c.finish_reason == "stop" and c.stop_string is None
            if text:
                if show:
                    b.thoughts[i].append(text)
                t.thoughts.append(Thought(text=text, tokens=c.completion_tokens, seconds=c.seconds,
                                          prompt_tokens=c.prompt_tokens, cached_tokens=c.cached_tokens,
                                          logprobs=logprob_stats(c.token_logprobs) if c.token_logprobs is not None else None))
                t.seconds += c.seconds
                wrote.append(i)
                b.emit("thought", i)
            if ended or not text:
                t.stop_reason = "ttm_done"
        return wrote

    def _returns(self, b: Batch, i: int) -> bool:
        """Whether question i's next answer is the one the loop returns, known before it is written: the only answer
        (never, depth), or the last one allowed (max_thoughts thoughts shown, or the TTM has ended), unless the router
        chooses among the answers afterwards (`router.select: best`)."""
        if b.collect or self._selects(b):
            return False
        return b.mode in ("never", "depth") or len(b.thoughts[i]) >= b.cfg.max_thoughts or self._ttm_done(b.traces[i])

    def _answer(self, b: Batch, ids: list[int]) -> None:
        """The base model answers each question with its thoughts so far in context."""
        if not ids:
            return
        prompts = [self.base_prompt(b.traces[i].question, b.thoughts[i], b.traces[i].history, b.cfg) for i in ids]
        params = self.answer_params(b)
        if b.on_text is not None:
            streamed = {k: b.traces[i] for k, i in enumerate(ids) if self._returns(b, i)}
            on_text = b.on_text
            if streamed:
                params.on_text = lambda k, delta: on_text(streamed[k], delta) if k in streamed else None
        outs = self._call(b, self.base, prompts, params, [b.keys[i] + ("base",) for i in ids])
        for i, c in zip(ids, outs):
            t = b.traces[i]
            final = final_answer(c.text)
            lp = c.token_logprobs
            t.answers.append(Answer(text=c.text, final=final, tokens=c.completion_tokens, prompt_tokens=c.prompt_tokens,
                                    cached_tokens=c.cached_tokens, seconds=c.seconds,
                                    logprob_mean=sum(lp) / len(lp) if lp else None, finish_reason=c.finish_reason))
            t.seconds += c.seconds
            if self._needs_features(b):
                changed = len(t.answers) > 1 and t.answers[-2].final != final
                t.features.append(StepInput(  # inputs no router reads are not computed
                    t.question, len(t.answers) - 1, c, changed,
                    thought_features(t.question, b.thoughts[i], final) if self._reads(b, "thought") else None,
                    # of the thoughts in this answer's context (`Trace.shown_thoughts`: all but a rejected one)
                    last_thought_logprobs([x for x in t.thoughts if not x.rejected])
                    if self._reads(b, "thought_logprobs") else None))
        if self._selects(b):
            assert self.router is not None
            for i, s in zip(ids, self.router.answer_scores([b.traces[i].features[-1] for i in ids])):
                b.traces[i].answers[-1].answer_score = float(s)
        for i in ids:
            b.emit("answer", i)


def write_traces(traces: Iterable[Trace], path: Any) -> None:
    """Traces as JSONL, written atomically."""
    import json

    from pseudocot.files import atomic_open

    with atomic_open(path) as f:
        for t in traces:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")


def read_traces(path: Any) -> list[Trace]:
    from pseudocot.data.jsonl import iter_json_lines

    out = []
    for lineno, _, row in iter_json_lines(path):
        if isinstance(row, Exception):
            raise row
        try:
            out.append(Trace.from_dict(row))
        except TypeError as e:
            raise DataError(f"{path}:{lineno}: not a pipeline trace ({e}).") from None
    return out


def _local_generator(folder: Path | None, what: str, cfg: Config) -> Any:
    from pseudocot.config.schema import GeneratorConfig
    from pseudocot.generate.base import open_generator

    if not has_model(folder):
        raise ModelError(f"{folder}: no {what} model here; train it first (see `pseudocot --help`) or set pipeline.{what}.")
    spec = GeneratorConfig(path=str(folder))
    return open_generator(spec, device=cfg.run.device, batch_size=cfg.pipeline.batch_size, kv_reuse=cfg.pipeline.kv_reuse)


def pipeline_generator(cfg: Config, role: str) -> Any:
    """The pipeline's `role` (base or ttm): the engine `pipeline.<role>` names, sent text rendered with its tokenizer's
    chat template (`/completions`), else the local folder `RunLayout` gives."""
    from pseudocot.generate.base import open_generator

    layout = RunLayout.of(cfg)
    engine = layout.engine(role)
    if engine is not None:
        return open_generator(engine, chat=False, rendered=True)
    folder = layout.base if role == "base" else layout.ttm
    if folder is None:
        raise ConfigError("the config has no distillation stages, so there is no Tiny Thought Model; set pipeline.ttm.")
    return _local_generator(folder, role, cfg)


def ttm_thoughts_of(cfg: Config, folder: Path, questions: Sequence[tuple[str, str]], sampling: Sampling | None = None) -> list[list[str]]:
    """The thoughts the TTM in `folder` writes for each `(id, question)` on its own (`Pipeline.ttm_thoughts`)."""
    ttm = _local_generator(folder, "ttm", cfg)
    return Pipeline(None, ttm, dataclasses.replace(cfg.pipeline, mode="always"), sampling=sampling).ttm_thoughts(questions)


def load_pipeline(cfg: Config, mode: str | None = None, need_router: bool | None = None,
                  need_ttm: bool | None = None) -> Pipeline:
    """The run's Pseudo-CoT system in `mode` (default: `pipeline.mode`), built from local folders
    (`RunLayout`: the run's own, or those `pipeline.base/ttm/router` name); `need_ttm` /
    `need_router` load those even when the mode does not use them (to switch later)."""
    from pseudocot.router.model import Router

    pcfg = dataclasses.replace(cfg.pipeline, mode=mode or cfg.pipeline.mode)
    layout = RunLayout.of(cfg)
    base = pipeline_generator(cfg, "base")
    ttm = pipeline_generator(cfg, "ttm") if pcfg.mode != "never" or need_router or need_ttm else None
    router = None
    if pcfg.mode in ("router", "depth") or need_router:
        if layout.router is None:
            raise ModelError(f"{layout.router_dir}: no trained router; run `pseudocot router` first or set pipeline.router.")
        router = Router.load(layout.router)
        if "hidden" in router.features and layout.engine("base") is not None:
            raise ConfigError(f"the router in {layout.router_dir} reads the base model's hidden states, which an engine "
                              "(pipeline.base.base_url) does not give; train one without them (router.features without hidden).")
        pcfg = dataclasses.replace(pcfg, max_thoughts=router.info.get("max_thoughts", pcfg.max_thoughts))
    return Pipeline(base, ttm, pcfg, router)
