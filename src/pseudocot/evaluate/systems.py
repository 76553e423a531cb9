"""Systems under evaluation: anything that answers a task's questions.

- `PipelineSystem`: the Pseudo-CoT pipeline (base + TTM + router) in one mode; the question is the
  task's plain prompt, rendered by the pipeline through the base model's chat template.
- `GeneratorSystem`: one `Generator` (a local model, a model with a LoRA adapter merged in, or an
  OpenAI-compatible endpoint) answering the task's chat or plain prompts.

Every system returns one `Response` per question: the final text (what the task's extraction
reads), everything it wrote (thoughts, then the final text: what BLEU, ROUGE-L and faithfulness
read), generated tokens per model, thought calls, seconds, and the pipeline's trace.

`system_entries(cfg)` turns the `eval.systems` config into `SystemEntry`s: a name, a cache key that
changes when the system's settings or model files change, and a `build()` that loads the models
only when something is left to generate.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pseudocot.config import Config, SystemConfig
from pseudocot.cost import processed_tokens
from pseudocot.data.example import Example
from pseudocot.errors import DataError
from pseudocot.freshness import eval_system_key
from pseudocot.generate.base import GenerationParams, Generator
from pseudocot.layout import ROUTER_INFO, RunLayout
from pseudocot.tasks.task import Task


@dataclass
class Response:
    id: str
    text: str
    """The final text: what the task's answer extraction reads."""
    reasoning: str
    """Everything the system wrote for the question (thoughts, one per line, then the final text)."""
    tokens: dict[str, int]
    """Generated tokens per model (`base`, `ttm`; `model` for a single model)."""
    thought_calls: int = 0
    """Thoughts the TTM wrote."""
    processed: dict[str, int] | None = None
    """Tokens each model ran through: prompts less what a cache held, plus generated (`pseudocot.cost`)."""
    seconds: float = 0.0
    """This question's share of the generation calls' wall time."""
    trace: dict[str, Any] | None = None
    """The pipeline's trace (`Trace.to_dict()`), for pipeline systems."""
    loglikelihoods: list[float] | None = None
    """Multiple-choice tasks scored by log-likelihood: one value per option, in letter order."""


def option_loglikelihoods(gen: Any, task: Task, examples: Sequence[Example], contexts: Sequence[str]) -> list[list[float]]:
    """Per example, the log-likelihood of each option's continuation (`task.loglikelihood_requests`) after
    `contexts[i]`, by a local model (`HFGenerator.loglikelihoods`)."""
    if not callable(getattr(gen, "loglikelihoods", None)):
        raise DataError(f"task '{task.name}' is scored by log-likelihood, which needs a local model; "
                        "an endpoint gives none: set loglikelihood: false for this task.")
    requests = [task.loglikelihood_requests(ex, ctx) for ex, ctx in zip(examples, contexts)]
    flat = gen.loglikelihoods([r for rs in requests for r in rs])
    out, at = [], 0
    for rs in requests:
        out.append(flat[at : at + len(rs)])
        at += len(rs)
    return out


class System(Protocol):
    def answer(self, task: Task, examples: Sequence[Example], seed: int, loglikelihood: bool = False) -> list[Response]:
        """One response per example, in order; `seed` seeds sampling (ignored when greedy); with
        `loglikelihood`, each response also scores the task's options after the final prompt."""
        ...

    def parameters(self) -> dict[str, int] | None:
        """Parameter count per model (None where unknown, as for an endpoint)."""
        ...


def _model_of(gen: Any) -> Any:
    """The torch model behind a local generator; None for an endpoint (whose `model` is a name)."""
    model = getattr(gen, "model", None)
    return model if callable(getattr(model, "parameters", None)) else None


def count_parameters(model: Any) -> int:
    from pseudocot.models.tiny import count_parameters as count  # tied weights are counted once

    return int(count(model))


class PipelineSystem:
    """The Pseudo-CoT pipeline in its configured mode."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def answer(self, task: Task, examples: Sequence[Example], seed: int, loglikelihood: bool = False) -> list[Response]:
        questions = task.prompts(examples)
        traces = self.pipeline.run(list(zip([e.id for e in examples], questions)))
        lls: list[list[float] | None] = [None] * len(examples)
        if loglikelihood:  # the returned answer's prompt: the question and the thoughts before that answer
            contexts = [self.pipeline.base_prompt(q, t.returned_thoughts) for q, t in zip(questions, traces)]
            lls = list(option_loglikelihoods(self.pipeline.base, task, examples, contexts))
        out = []
        for t, ll in zip(traces, lls):
            thoughts = t.returned_thoughts  # those the returned answer read
            out.append(Response(id=t.id, text=t.final_text, reasoning="\n".join(thoughts + [t.final_text]),
                                tokens=t.tokens, thought_calls=t.thought_calls, processed=t.processed, seconds=t.seconds,
                                trace=t.to_dict(),
                                loglikelihoods=ll))
        return out

    def parameters(self) -> dict[str, int] | None:
        """The base model's, plus the TTM's when the mode can call it (the paper's Fig. 5.4 counts both)."""
        base = _model_of(self.pipeline.base)
        if base is None:
            return None
        out = {"base": count_parameters(base)}
        ttm = _model_of(self.pipeline.ttm) if self.pipeline.cfg.mode != "never" else None
        if ttm is not None:
            out["ttm"] = count_parameters(ttm)
        return out


class GeneratorSystem:
    """One generator answering the task's prompts: chat-rendered through `tokenizer` (local models),
    chat messages (an endpoint with chat=True), or the plain few-shot text."""

    def __init__(self, generator: Generator, params: GenerationParams, chat: bool = True, tokenizer: Any = None,
                 parameter_count: int | None = None) -> None:
        self.generator, self.params, self.chat, self.tokenizer = generator, params, chat, tokenizer
        self.parameter_count = parameter_count

    def prompts(self, task: Task, examples: Sequence[Example]) -> list[Any]:
        if not self.chat:
            return task.prompts(examples)
        if self.tokenizer is not None:
            return task.chat_prompts(self.tokenizer, examples)
        return task.messages(examples)

    def answer(self, task: Task, examples: Sequence[Example], seed: int, loglikelihood: bool = False) -> list[Response]:
        params = dataclasses.replace(self.params, seed=seed, stop=list(dict.fromkeys([*self.params.stop, *task.stop])))
        prompts = self.prompts(task, examples)
        outs = self.generator.generate(prompts, params)
        lls: list[list[float] | None] = [None] * len(examples)
        if loglikelihood:  # a local model (its prompts are text); an endpoint is refused inside
            lls = list(option_loglikelihoods(self.generator, task, examples, prompts))
        return [Response(id=e.id, text=c.text, reasoning="\n".join(p for p in (c.reasoning, c.text) if p),
                         tokens={"model": c.completion_tokens}, seconds=c.seconds, loglikelihoods=ll,
                         processed={"model": processed_tokens(c.prompt_tokens, c.cached_tokens, c.completion_tokens)})
                for e, c, ll in zip(examples, outs, lls)]

    def parameters(self) -> dict[str, int] | None:
        if self.parameter_count is not None:
            return {"model": self.parameter_count}
        model = _model_of(self.generator)
        return {"model": count_parameters(model)} if model is not None else None


# ------------------------------------------------------------------------------- from the config


@dataclass
class SystemEntry:
    """A system as the runner sees it before loading anything."""

    name: str
    key: str
    """Changes whenever the system's settings or model files change: the generation cache's key."""
    build: Callable[[], System]
    """Loads the models (called only when something is left to generate)."""
    sampled: bool = False
    """temperature > 0: one generation per seed; otherwise one generation stands for every seed."""
    info: dict[str, Any] = field(default_factory=dict)
    """What results.json says about the system: kind, mode, models, parameters from the config, router curve."""


def _generation_params(s: SystemConfig) -> GenerationParams:
    return GenerationParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, stop=list(s.stop))


def _build_pipeline(cfg: Config, s: SystemConfig) -> System:
    from pseudocot.pipeline import load_pipeline

    pipe = load_pipeline(cfg.for_system(s), s.mode)
    if s.max_thoughts is not None:
        pipe.cfg = dataclasses.replace(pipe.cfg, max_thoughts=s.max_thoughts)
    return PipelineSystem(pipe)


def _build_model(cfg: Config, s: SystemConfig) -> System:
    """A model answering alone: a local folder (chat-rendered through its tokenizer) or an endpoint."""
    from pseudocot.generate.base import open_generator

    spec = s.generator()
    gen = open_generator(spec, device=cfg.run.device, batch_size=cfg.eval.batch_size)
    local = spec.path is not None
    return GeneratorSystem(gen, _generation_params(s), chat=spec.chat,
                           tokenizer=gen.tokenizer if local and spec.chat else None,
                           parameter_count=s.parameters)


def _router_info(folder: Path | None) -> dict[str, Any]:
    meta = folder / ROUTER_INFO if folder else None
    if meta is None or not meta.is_file():
        return {}
    return json.loads(meta.read_text())


def system_entries(cfg: Config) -> list[SystemEntry]:
    """The configured systems, keyed (`freshness.eval_system_key`: their settings, the pipeline
    settings they answer with and their models' contents) and ready to build; nothing is loaded here."""
    entries = []
    for s in cfg.eval.systems:
        info: dict[str, Any] = {"kind": s.kind}
        if s.kind == "pipeline":
            where = RunLayout.of(cfg.for_system(s))
            engines = {r: e and f"{e.base_url}#{e.model}" for r in ("base", "ttm") for e in [where.engine(r)]}
            models = {"base": engines["base"] or str(where.base),
                      "ttm": (engines["ttm"] or (str(where.ttm) if where.ttm else None)) if s.mode != "never" else None,
                      "router": str(where.router) if where.router and s.mode in ("router", "depth") else None}
            info.update(mode=s.mode, models={k: v for k, v in models.items() if v})
            if s.mode == "router":
                router = _router_info(where.router)
                info["router_curve"], info["router_validation"] = router.get("curve"), router.get("validation")
                info["router_calibration"] = router.get("calibration")
            build: Callable[[], System] = lambda cfg=cfg, s=s: _build_pipeline(cfg, s)  # noqa: E731
        else:
            g = s.generator()
            info.update(models={k: v for k, v in (("model", g.path or g.model), ("adapter", g.adapter),
                                                  ("base_url", g.base_url)) if v})
            build = lambda cfg=cfg, s=s: _build_model(cfg, s)  # noqa: E731
        if s.parameters is not None:
            info["parameters"] = {"total": s.parameters}
        sampled = s.kind != "pipeline" and s.temperature > 0
        entries.append(SystemEntry(name=s.name, key=eval_system_key(cfg, s), build=build, sampled=sampled, info=info))
    return entries
