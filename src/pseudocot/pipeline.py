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

import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pseudocot.config.schema import Config, Mode, PipelineConfig
from pseudocot.data.chat import base_messages, final_answer, render, ttm_prompt
from pseudocot.errors import ConfigError, DataError, ModelError
from pseudocot.generate.base import Completion, GenerationParams, Generator, SessionGenerator
from pseudocot.layout import RunLayout, has_model

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
    """The last answer's committed value."""
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

    @property
    def thought_calls(self) -> int:
        return len(self.thoughts)

    @property
    def final_text(self) -> str:
        return self.answers[-1].text if self.answers else ""

    @property
    def tokens(self) -> dict[str, int]:
        """Generated tokens per model: `base` (every answer) and `ttm` (every thought)."""
        return {"base": sum(a.tokens for a in self.answers), "ttm": sum(t.tokens for t in self.thoughts)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("features")
        d.pop("history")
        d["thought_calls"] = self.thought_calls
        d["tokens"] = self.tokens
        d["final_text"] = self.final_text
        return d

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Trace:
        row = {k: v for k, v in row.items() if k not in ("thought_calls", "tokens", "final_text")}
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


class Pipeline:
    """Base `Generator` + TTM `Generator` + router, answering batches of questions."""

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

    # -- prompts ---------------------------------------------------------------------------

    def base_prompt(self, question: str, thoughts: list[str], history: Sequence[dict[str, str]] = ()) -> str:
        return render(self.base_tokenizer, base_messages(question, thoughts, self.cfg, history), add_generation_prompt=True)

    def ttm_prompt(self, question: str, thoughts: list[str], last_answer: str) -> str:
        return ttm_prompt(self.ttm_tokenizer, question, thoughts, last_answer, self.cfg)

    # -- generation ------------------------------------------------------------------------

    def _call(self, gen: Generator, prompts: list[str], params: GenerationParams, keys: list[Any]) -> list[Completion]:
        if self.cfg.kv_reuse and isinstance(gen, SessionGenerator):
            return gen.generate(prompts, params, sessions=keys)
        return gen.generate(prompts, params)

    def _needs_features(self, collect: bool) -> bool:
        return collect or self.cfg.mode in ("router", "depth")

    def answer_params(self, collect: bool) -> GenerationParams:
        feats = self._needs_features(collect)
        needs_hidden = feats and (collect or "hidden" in getattr(self.router, "features", ()))
        s = self.sampling
        return GenerationParams(max_new_tokens=self.cfg.answer_max_new_tokens, stop=list(self.cfg.answer_stop),
                                logprobs=feats, hidden=needs_hidden, temperature=s.temperature, top_p=s.top_p, seed=s.seed)

    def thought_params(self) -> GenerationParams:
        s = self.sampling
        return GenerationParams(max_new_tokens=self.cfg.thought_max_new_tokens, stop=list(self.cfg.thought_stop),
                                temperature=s.temperature, top_p=s.top_p, seed=s.seed)

    # -- the loop --------------------------------------------------------------------------

    def run(self, questions: Sequence[tuple[str, str]], collect: bool = False,
            on_event: Callable[[str, Trace], None] | None = None,
            histories: Sequence[Sequence[dict[str, str]]] | None = None,
            keep: Callable[[Trace], bool] | None = None,
            admit: Callable[[int], Sequence[tuple[str, str, Sequence[dict[str, str]]]]] | None = None) -> list[Trace]:
        """Answer `(id, question)` pairs; returns one trace per question, in order.

        `collect` forces thoughts up to `max_thoughts` whatever the mode says and keeps every answer's
        router features (router training). `on_event(kind, trace)` is called after each answer
        (`answer`), router decision (`decision`) and thought (`thought`), and once when a question is
        finished (`done`, its final answer set), for live display. `histories[i]` are earlier chat turns
        put before question i in the base model's context. A question for which `keep(trace)` turns false
        is dropped before the next model call (stop reason `cancelled`).

        `admit(free)` lets new questions join a running batch (continuous batching, modes never, always and
        router): before each base-model call it is asked for at most `free` more `(id, question, history)`,
        with `free` = `batch_size` minus the questions still going; they get their first answer in that same
        call and continue with the rest. Their traces are returned after the others.
        """
        if histories is not None and len(histories) != len(questions):
            raise ValueError(f"got {len(histories)} histories for {len(questions)} questions.")
        out: list[Trace] = []
        size = max(1, self.cfg.batch_size)
        for start in range(0, len(questions), size):
            traces = [Trace(id=qid, question=q, mode="always" if collect else self.cfg.mode,
                            history=list(histories[start + j]) if histories is not None else [])
                      for j, (qid, q) in enumerate(questions[start:start + size])]
            last = start + size >= len(questions)
            out += self._run_batch(traces, collect, on_event, keep, admit if last else None)
        return out

    def _run_batch(self, traces: list[Trace], collect: bool, on_event: Callable[[str, Trace], None] | None,
                   keep: Callable[[Trace], bool] | None = None,
                   admit: Callable[[int], Sequence[tuple[str, str, Sequence[dict[str, str]]]]] | None = None) -> list[Trace]:
        mode = traces[0].mode
        thoughts: list[list[str]] = [[] for _ in traces]
        self._batches += 1
        keys = [("pcot", self._batches, i) for i in range(len(traces))]
        active = list(range(len(traces)))
        finished: set[int] = set()

        def done(ids: Iterable[int]) -> None:
            for i in ids:
                if i not in finished:
                    finished.add(i)
                    traces[i].final_answer = traces[i].answers[-1].final if traces[i].answers else ""
                    self._end_sessions([keys[i]])  # its cached context is no longer needed
                    if on_event:
                        on_event("done", traces[i])

        def kept(ids: list[int]) -> list[int]:
            if keep is None:
                return ids
            gone = [i for i in ids if not keep(traces[i])]
            for i in gone:
                traces[i].stop_reason = "cancelled"
            done(gone)
            return [i for i in ids if i not in gone]

        def admitted(going: int) -> list[int]:
            """New questions joining the batch (their traces, thoughts and session keys appended)."""
            free = max(0, self.cfg.batch_size - going)
            if admit is None or not free:
                return []
            new = list(admit(free))[:free]
            for qid, q, history in new:
                traces.append(Trace(id=qid, question=q, mode=mode, history=list(history)))
                thoughts.append([])
                keys.append(("pcot", self._batches, len(keys)))
            return list(range(len(traces) - len(new), len(traces)))

        try:
            if mode == "depth":
                active = kept(active)
                sessions = ([keys[i] + ("base",) for i in active]
                            if self.cfg.kv_reuse and isinstance(self.base, SessionGenerator) else None)
                depth = self.router.depth([self.base_prompt(traces[i].question, [], traces[i].history) for i in active],
                                          self.base, sessions, self.cfg.max_thoughts) if active else []
                for i, d in zip(active, depth):
                    traces[i].depth = d
                for round_ in range(max(depth, default=0)):
                    self._think(kept([i for i in active if round_ < traces[i].depth and not self._ttm_done(traces[i])]),
                                traces, thoughts, keys, on_event)
                active = kept(active)
                for i in active:
                    traces[i].stop_reason = "depth"
                self._answer(active, traces, thoughts, keys, collect, on_event)
                done(active)
            else:
                active = kept(active)
                active += admitted(len(active))
                self._answer(active, traces, thoughts, keys, collect, on_event)
                while active:
                    go = self._decide(active, traces, mode, on_event)
                    done(i for i in active if not go[i])
                    active = kept([i for i in active if go[i]])
                    if active:
                        before = {i: len(traces[i].thoughts) for i in active}
                        self._think(active, traces, thoughts, keys, on_event)
                        # A TTM that wrote nothing has nothing more to say; skip the re-answer.
                        wrote = [i for i in active if len(traces[i].thoughts) > before[i]]
                        for i in set(active) - set(wrote):
                            traces[i].stop_reason = "ttm_done"
                        done(sorted(set(active) - set(wrote)))
                        active = kept(wrote)
                    new = admitted(len(active))
                    self._answer(active + new, traces, thoughts, keys, collect, on_event)
                    active += new
                done(active)
        finally:
            self._end_sessions(keys)
        done(range(len(traces)))
        return traces

    def ttm_thoughts(self, questions: Sequence[tuple[str, str]]) -> list[list[str]]:
        """The thoughts the TTM writes for each `(id, question)` when the loop calls it up to `max_thoughts` times
        without base answers in between (the base model's training rows, `base.thoughts_from`): batched, with KV
        reuse, each thought written exactly as `_think` writes it in the loop. Needs a TTM prompt without {answer}."""
        out: list[list[str]] = []
        size = max(1, self.cfg.batch_size)
        for start in range(0, len(questions), size):
            traces = [Trace(id=qid, question=q, mode="always") for qid, q in questions[start:start + size]]
            thoughts: list[list[str]] = [[] for _ in traces]
            self._batches += 1
            keys = [("pcot", self._batches, i) for i in range(len(traces))]
            try:
                for _ in range(self.cfg.max_thoughts):
                    active = [i for i in range(len(traces)) if not self._ttm_done(traces[i])]
                    if not active:
                        break
                    self._think(active, traces, thoughts, keys, None)
            finally:
                self._end_sessions(keys)
            out += thoughts
        return out

    def _end_sessions(self, keys: Sequence[Any]) -> None:
        """Forget what both models encoded for these questions."""
        for gen, role in ((self.base, "base"), (self.ttm, "ttm")):
            if isinstance(gen, SessionGenerator):
                gen.end_sessions([k + (role,) for k in keys])

    def _ttm_done(self, trace: Trace) -> bool:
        return trace.stop_reason == "ttm_done"

    def _decide(self, active: list[int], traces: list[Trace], mode: str,
                on_event: Callable[[str, Trace], None] | None = None) -> dict[int, bool]:
        """Whether each active question gets another thought after its last answer."""
        go: dict[int, bool] = {}
        for i in active:
            t = traces[i]
            if mode == "never":
                t.stop_reason = "never"
            elif len(t.thoughts) >= self.cfg.max_thoughts:
                t.stop_reason = "max_thoughts"
            elif self._ttm_done(t):
                pass
            else:
                go[i] = True
        if mode == "router":
            ask = [i for i in active if go.get(i)]
            if ask:
                steps = [self._step_input(traces[i]) for i in ask]
                scores = self.router.score(steps)
                threshold = self.cfg.threshold if self.cfg.threshold is not None else self.router.threshold
                for i, s in zip(ask, scores):
                    traces[i].answers[-1].router_score = float(s)
                    if s < threshold:
                        go[i] = False
                        traces[i].stop_reason = "router"
                    if on_event:
                        on_event("decision", traces[i])
        return {i: go.get(i, False) for i in active}

    def _step_input(self, trace: Trace) -> StepInput:
        return trace.features[-1]

    def _think(self, active: list[int], traces: list[Trace], thoughts: list[list[str]], keys: list[Any],
               on_event: Callable[[str, Trace], None] | None) -> None:
        if not active:
            return
        prompts = [self.ttm_prompt(traces[i].question, thoughts[i], traces[i].answers[-1].text if traces[i].answers else "")
                   for i in active]
        outs = self._call(self.ttm, prompts, self.thought_params(), [keys[i] + ("ttm",) for i in active])
        for i, c in zip(active, outs):
            text = c.text.strip()
            # The TTM ended its turn (end-of-sequence, not a stop string): this is its last thought.
            ended = c.finish_reason == "stop" and c.stop_string is None
            if text:
                thoughts[i].append(text)
                traces[i].thoughts.append(Thought(text=text, tokens=c.completion_tokens, seconds=c.seconds,
                                                  prompt_tokens=c.prompt_tokens, cached_tokens=c.cached_tokens))
                traces[i].seconds += c.seconds
                if on_event:
                    on_event("thought", traces[i])
            if ended or not text:
                traces[i].stop_reason = "ttm_done"

    def _answer(self, active: list[int], traces: list[Trace], thoughts: list[list[str]], keys: list[Any], collect: bool,
                on_event: Callable[[str, Trace], None] | None) -> None:
        if not active:
            return
        prompts = [self.base_prompt(traces[i].question, thoughts[i], traces[i].history) for i in active]
        outs = self._call(self.base, prompts, self.answer_params(collect), [keys[i] + ("base",) for i in active])
        for i, c in zip(active, outs):
            t = traces[i]
            final = final_answer(c.text)
            lp = c.token_logprobs
            t.answers.append(Answer(text=c.text, final=final, tokens=c.completion_tokens, prompt_tokens=c.prompt_tokens,
                                    cached_tokens=c.cached_tokens, seconds=c.seconds,
                                    logprob_mean=sum(lp) / len(lp) if lp else None, finish_reason=c.finish_reason))
            t.seconds += c.seconds
            if self._needs_features(collect):
                changed = len(t.answers) > 1 and t.answers[-2].final != final
                t.features.append(StepInput(t.question, len(t.answers) - 1, c, changed))
            if on_event:
                on_event("answer", t)


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
    from pseudocot.generate.hf import HFGenerator
    from pseudocot.models.loading import load_tokenizer
    from pseudocot.models.lora import load_trained

    if not has_model(folder):
        raise ModelError(f"{folder}: no {what} model here; train it first (see `pseudocot --help`) or set pipeline.{what}.")
    model = load_trained(folder, device=cfg.run.device)
    model.eval()
    return HFGenerator(model, load_tokenizer(str(folder)), batch_size=cfg.pipeline.batch_size,
                       kv_reuse=cfg.pipeline.kv_reuse)


def ttm_thoughts_of(cfg: Config, folder: Path, questions: Sequence[tuple[str, str]], sampling: Sampling | None = None) -> list[list[str]]:
    """The thoughts the TTM in `folder` writes for each `(id, question)` on its own (`Pipeline.ttm_thoughts`)."""
    import dataclasses

    ttm = _local_generator(folder, "ttm", cfg)
    return Pipeline(None, ttm, dataclasses.replace(cfg.pipeline, mode="always"), sampling=sampling).ttm_thoughts(questions)


def load_pipeline(cfg: Config, mode: str | None = None, need_router: bool | None = None,
                  need_ttm: bool | None = None) -> Pipeline:
    """The run's Pseudo-CoT system in `mode` (default: `pipeline.mode`), built from local folders
    (`RunLayout`: the run's own, or those `pipeline.base/ttm/router` name); `need_ttm` /
    `need_router` load those even when the mode does not use them (to switch later)."""
    import dataclasses

    from pseudocot.router.model import Router

    pcfg = dataclasses.replace(cfg.pipeline, mode=mode or cfg.pipeline.mode)
    layout = RunLayout.of(cfg)
    base = _local_generator(layout.base, "base", cfg)
    ttm = None
    if pcfg.mode != "never" or need_router or need_ttm:
        if layout.ttm is None:
            raise ConfigError("the config has no distillation stages, so there is no Tiny Thought Model; set pipeline.ttm.")
        ttm = _local_generator(layout.ttm, "ttm", cfg)
    router = None
    if pcfg.mode in ("router", "depth") or need_router:
        if layout.router is None:
            raise ModelError(f"{layout.router_dir}: no trained router; run `pseudocot router` first or set pipeline.router.")
        router = Router.load(layout.router)
        pcfg = dataclasses.replace(pcfg, max_thoughts=router.info.get("max_thoughts", pcfg.max_thoughts))
    return Pipeline(base, ttm, pcfg, router)
