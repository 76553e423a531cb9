"""The config schema: the top-level `Config`, whose fields are the sections, and the rules that span sections.
Every section is a typed dataclass with a docstring under each field, in the module of its stage; all are
re-exported here.

A YAML file is an instance of `Config` (`pseudocot.config.loader` reads it). Bounds are written in the
type, `Annotated[int, Ge(1)]`; rules that span fields are a section's `validate()`. Both run when a
section is built (`config.checks.Section`), from a file or in Python, and raise `FieldError`, which
the loader turns into one line naming the file:line of the key.

    base.py       the bounded number types, shared choices, field_docs
    run.py        run                       data.py       data, data.arith, data.sources, tokenizer
    train.py      train, teacher, base, distill (ModelSpec, LoraConfig)
    generator.py  a model that writes text  pipeline.py   pipeline      router.py   router
    eval.py       eval, parse_shard         serve.py      serve         synth.py    synth, synth.documents
    writer.py     writer                    grpo.py       grpo

    pseudocot config show demo        # every field, its value and its docstring
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass, field
from typing import Literal

from pseudocot.config.base import MIN_TOKENIZER_VOCAB, Count, Dtype, Fraction, Mode, Positive, Weight, field_docs
from pseudocot.config.checks import FieldError, Ge, Gt, Le, Lt, NonEmpty, PlainName, Section, Unique
from pseudocot.config.data import ArithConfig, ArithOp, DataConfig, SourceConfig, TokenizerConfig
from pseudocot.config.eval import EvalConfig, EvalTaskConfig, SystemConfig, parse_shard
from pseudocot.config.generator import GeneratorConfig
from pseudocot.config.grpo import GRPO_REWARDS, GrpoConfig
from pseudocot.config.pipeline import PipelineConfig
from pseudocot.config.router import RouterConfig, RouterFeature
from pseudocot.config.run import RunConfig
from pseudocot.config.serve import ServeConfig
from pseudocot.config.synth import (
    DOCUMENT_CHECKS,
    GROUNDED_PROMPT,
    JUDGE_PROMPT,
    QUESTION_CHECKS,
    QUESTIONS_PROMPT,
    SELF_CONTAINED_PROMPT,
    SYNTH_CHECKS,
    SYNTH_PROMPT,
    DocumentsConfig,
    SynthConfig,
)
from pseudocot.config.train import (
    DistillConfig,
    DistillStageConfig,
    FinetuneConfig,
    LoraConfig,
    ModelSpec,
    TeacherWritesConfig,
    TinyPreset,
    TrainConfig,
)
from pseudocot.config.writer import WriterConfig

__all__ = [
    # the top level and its parts
    "Config", "RunConfig", "ArithConfig", "SourceConfig", "DataConfig", "TokenizerConfig", "TrainConfig", "ModelSpec", "LoraConfig",
    "FinetuneConfig", "TeacherWritesConfig", "DistillStageConfig", "DistillConfig", "GeneratorConfig", "PipelineConfig",
    "EvalTaskConfig", "RouterConfig", "SystemConfig", "EvalConfig", "ServeConfig", "DocumentsConfig", "WriterConfig", "SynthConfig",
    "GrpoConfig",
    # types, constants and helpers
    "Count", "Positive", "Fraction", "Weight", "TinyPreset", "Dtype", "Mode", "RouterFeature", "ArithOp", "MIN_TOKENIZER_VOCAB",
    "SYNTH_PROMPT", "JUDGE_PROMPT", "SYNTH_CHECKS", "QUESTIONS_PROMPT", "GROUNDED_PROMPT", "SELF_CONTAINED_PROMPT", "DOCUMENT_CHECKS",
    "QUESTION_CHECKS", "GRPO_REWARDS", "field_docs", "parse_shard",
    # the checks, as the section modules use them
    "FieldError", "Ge", "Gt", "Le", "Lt", "NonEmpty", "PlainName", "Section", "Unique",
]


@dataclass
class Config(Section):
    run: RunConfig = field(default_factory=RunConfig)
    """Run name, output folder, seed, device."""
    data: DataConfig = field(default_factory=DataConfig)
    """Which data, how it is split and mixed."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer of the tiny models (ignored when real checkpoints bring their own)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Defaults for every training stage: a stage's own `train` keys override these."""
    teacher: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(method="full", with_reasoning=True))
    """The reasoning teacher, fine-tuned on step-by-step data (`pseudocot finetune --role teacher`)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """The distillation chain that makes the Tiny Thought Model (`pseudocot distill`)."""
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
    """The base LLM, fine-tuned on task data (`pseudocot finetune`)."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """The Pseudo-CoT loop: base answers, router decides, TTM thinks (`pseudocot chat`, evaluation)."""
    router: RouterConfig = field(default_factory=RouterConfig)
    """The router, trained on the base model's traces (`pseudocot router`)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Systems x tasks -> results.json, report.md, figures (`pseudocot eval`)."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """The OpenAI-compatible server over the pipeline (`pseudocot serve`)."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    """Teacher-written reasoning data and its faithfulness filter (`pseudocot synth`)."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    """Reinforcement learning of the TTM (or base) with rewards for correct and faithful reasoning (`pseudocot grpo`)."""
    writer: WriterConfig = field(default_factory=WriterConfig)
    """A question writer trained in the run for the questions stage (`pseudocot synth writer`)."""

    def task_of(self, stage: Literal["synth", "grpo", "router"]) -> EvalTaskConfig:
        """The task a stage scores with (synth: the candidates' answers; grpo: the rewards; router: its traces' labels):
        the stage's own `task`, else the first eval task."""
        return getattr(self, stage).task or self.eval.tasks[0]

    def validate(self) -> None:
        if self.teacher.thoughts_from != "gold":
            raise FieldError("teacher.thoughts_from", "must be gold: only the base model reads the Tiny Thought Model's thoughts")
        if self.base.thoughts_from != "gold":
            if not self.distill.stages and not self.pipeline.ttm:
                raise FieldError("base.thoughts_from", f"is {self.base.thoughts_from}, which needs a Tiny Thought Model: "
                                                       "distill.stages or pipeline.ttm")
            used = {name for _, name, _, _ in string.Formatter().parse(self.pipeline.ttm_prompt) if name}
            if "answer" in used:
                raise FieldError("base.thoughts_from", f"is {self.base.thoughts_from} but pipeline.ttm_prompt uses {{answer}}, "
                                                       "the base model's answer, which does not exist before the base is trained; "
                                                       "use {question} and {thoughts} only")
        if self.router.reads == "thought" and "thought" not in self.router.features:
            raise FieldError("router.reads", "is thought but router.features has no 'thought': the router would pay for each "
                                             "thought before deciding and never read it; add thought to router.features")
        if self.grpo.enabled and self.grpo.target == "ttm":
            p = self.pipeline
            if not p.ttm_continues_thoughts:
                raise FieldError("grpo.target", "is ttm but pipeline.ttm_continues_thoughts is false: GRPO samples the TTM's whole "
                                                "chain of thoughts as one completion, which is how the pipeline calls it only when "
                                                "it continues its own turn")
            used = {name for _, name, _, _ in string.Formatter().parse(p.ttm_prompt) if name}
            if used & {"answer", "thoughts"}:
                raise FieldError("grpo.target", "is ttm but pipeline.ttm_prompt uses {answer} or {thoughts}, which change between "
                                                "thoughts; GRPO samples the whole chain from the first prompt, so use {question} only")
            if list(p.thought_stop) != ["\n"]:
                raise FieldError("grpo.target", "is ttm but pipeline.thought_stop is not [\"\\n\"]: GRPO reads the TTM's chain one "
                                                "thought per line, as the pipeline does only when a thought ends at a newline")

    def for_system(self, s: SystemConfig) -> Config:
        """This config as a pipeline system of `eval.systems` runs: its mode, and its own models (folders or
        engines), threshold and number of thoughts where it sets them."""
        p = self.pipeline
        pipeline = dataclasses.replace(
            p, mode=s.mode, base=s.base or p.base, ttm=s.ttm or p.ttm, router=s.router or p.router,
            threshold=s.threshold if s.threshold is not None else p.threshold,
            max_thoughts=s.max_thoughts if s.max_thoughts is not None else p.max_thoughts)
        grpo = self.grpo
        if grpo.enabled and ((grpo.target == "ttm" and s.ttm) or (grpo.target == "base" and s.base)):
            grpo = dataclasses.replace(grpo, enabled=False)  # the system's own model, not the run's GRPO-tuned one
        return dataclasses.replace(self, pipeline=pipeline, grpo=grpo)
