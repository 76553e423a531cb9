"""The table of stages: every stage `pseudocot run` knows, in the order it runs them, each in one row:
its name, the function that runs it, its freshness key, what `--force` removes, when it is enabled,
which stages' outputs it reads, and the command that runs it alone. `pseudocot run`, its `--stage`
option, `--force`, the stage commands and `pseudocot stages` all read this table; nothing else spells
the list of stages.

    pseudocot stages --config demo     # the table for a config: order, enabled, reads, key, outputs
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pseudocot import freshness
from pseudocot.config.schema import Config
from pseudocot.layout import RunLayout


@dataclass(frozen=True)
class Stage:
    name: str
    """The stage's name in `run_state.json`, `--stage`, logs and the freshness table."""
    what: str
    """One line: what it makes, for help texts."""
    command: str
    """The command that runs it alone."""
    main: Callable[[Config], Any]
    """Runs the stage on a config and returns its metrics (the stage module is imported on the first call)."""
    key: Callable[[Config], str]
    """Its freshness key as its inputs are now (`pseudocot.freshness`)."""
    outputs: Callable[[RunLayout], Sequence[Path]]
    """What `--force` removes before it runs again from scratch."""
    enabled: Callable[[Config], bool]
    """Whether `pseudocot run` runs it for this config."""
    reads: Callable[[Config], tuple[str, ...]]
    """The stages whose outputs it reads for this config: they must be finished before its key is computed."""
    switch: str | None = None
    """The config key that turns an optional stage on (`synth.enabled`); None for a stage every run has."""
    beside: bool = False
    """With `run.parallel_stages` it may train in a second process while the stages before it run, as soon
    as every stage it reads is finished (`command` is then what that process runs)."""


def _main(module: str, *args: Any) -> Callable[[Config], Any]:
    """`pseudocot.stages.<module>.main(cfg, *args)`, imported when the stage runs (some imports are slow)."""
    return lambda cfg: importlib.import_module(f"pseudocot.stages.{module}").main(cfg, *args)


def _owned(layout: RunLayout, folder: Path, markers: Sequence[Path]) -> Sequence[Path]:
    """A stage folder inside the run is removed whole; one the config points outside the run keeps everything
    but the stage's done and resume markers."""
    return (folder,) if layout.inside_run(folder) else markers


def _base_reads(cfg: Config) -> tuple[str, ...]:
    """The base model reads the data, and the Tiny Thought Model when its rows carry the TTM's thoughts."""
    return ("data", "distill") if cfg.base.thoughts_from != "gold" else ("data",)


def _reasoning_reads(cfg: Config) -> tuple[str, ...]:
    return ("data", "synth") if cfg.synth.enabled else ("data",)


STAGES: tuple[Stage, ...] = (
    Stage("writer", "a question writer trained for the questions stage (writer.enabled)", "pseudocot synth writer",
          _main("writer"), freshness.writer_key, lambda lay: (lay.writer_dir,),
          enabled=lambda cfg: cfg.writer.enabled and bool(cfg.synth.documents.paths), reads=lambda cfg: (), switch="writer.enabled"),
    Stage("questions", "questions written from your documents, checked (synth.documents.paths)", "pseudocot synth questions",
          _main("questions"), freshness.questions_key, lambda lay: (lay.questions_dir,),
          enabled=lambda cfg: bool(cfg.synth.documents.paths), reads=lambda cfg: ("writer",) if cfg.writer.enabled else (),
          switch="synth.documents.paths"),
    Stage("data", "train/val/test splits (and the tokenizer of tiny models)", "pseudocot data",
          _main("data"), freshness.data_key, lambda lay: (lay.data_dir, lay.tokenizer_dir),
          enabled=lambda cfg: True, reads=lambda cfg: ("questions",) if any(s.format == "questions" for s in cfg.data.sources) else ()),
    Stage("synth", "teacher-written reasoning, filtered for faithfulness (synth.enabled)", "pseudocot synth",
          _main("synth"), freshness.synth_key, lambda lay: (lay.synth_dir,),
          enabled=lambda cfg: cfg.synth.enabled, reads=lambda cfg: () if cfg.synth.questions else ("data",),
          switch="synth.enabled"),
    Stage("teacher", "the reasoning teacher", "pseudocot finetune --role teacher",
          _main("finetune", "teacher"), lambda cfg: freshness.finetune_key(cfg, "teacher"), lambda lay: (lay.teacher_dir,),
          enabled=lambda cfg: bool(cfg.distill.stages), reads=_reasoning_reads),
    Stage("distill", "the distillation chain; its last student is the Tiny Thought Model", "pseudocot distill",
          _main("distill"), freshness.distill_key, lambda lay: (lay.distill_dir,),
          enabled=lambda cfg: bool(cfg.distill.stages),
          reads=lambda cfg: (*_reasoning_reads(cfg), *(("teacher",) if not cfg.distill.teacher.path else ()))),
    Stage("base", "the base model (with base.thoughts_from ttm or mix, on the TTM's own thoughts)", "pseudocot finetune",
          _main("finetune", "base"), lambda cfg: freshness.finetune_key(cfg, "base"), lambda lay: (lay.base_dir,),
          enabled=lambda cfg: True, reads=_base_reads, beside=True),
    Stage("grpo", "the RL-tuned TTM or base (grpo.enabled)", "pseudocot grpo",
          _main("grpo"), freshness.grpo_key, lambda lay: (lay.grpo_dir,),
          enabled=lambda cfg: cfg.grpo.enabled, reads=lambda cfg: ("data", "distill", "base"), switch="grpo.enabled"),
    Stage("router", "the router, trained on the base model's traces", "pseudocot router",
          _main("router"), freshness.router_key,
          lambda lay: _owned(lay, lay.router_dir, (lay.router_file, lay.router_traces_dir)),
          enabled=lambda cfg: True, reads=lambda cfg: ("data", "distill", "base", "grpo")),
    Stage("eval", "every system on every task: results, report, figures", "pseudocot eval",
          _main("eval"), freshness.eval_key,
          lambda lay: _owned(lay, lay.eval_dir, (lay.eval.results, lay.eval.cache)),
          enabled=lambda cfg: True, reads=lambda cfg: ("data", "distill", "base", "grpo", "router")),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
"""Every stage's name, in the order `pseudocot run` runs them."""


def get(name: str) -> Stage:
    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(NAMES)}")
    return BY_NAME[name]


def stage_key(cfg: Config, name: str) -> str:
    """The key of stage `name` as its inputs are now."""
    return get(name).key(cfg)


def stage_outputs(layout: RunLayout, name: str) -> list[Path]:
    """What `--force` removes before stage `name` runs again from scratch."""
    return list(get(name).outputs(layout))


def chain() -> str:
    """The stages in order, optional ones in brackets: `[writer] -> [questions] -> data -> [synth] -> ...`."""
    return " -> ".join(f"[{s.name}]" if s.switch else s.name for s in STAGES)


def enabled(cfg: Config) -> list[Stage]:
    """The stages `pseudocot run` runs for this config, in order."""
    return [s for s in STAGES if s.enabled(cfg)]
