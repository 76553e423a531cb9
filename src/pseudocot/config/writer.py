"""The `writer` section: a question writer trained in the run, which the questions stage then asks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pseudocot.config.base import MIN_TOKENIZER_VOCAB, Positive
from pseudocot.config.checks import FieldError, Ge, Section
from pseudocot.config.train import LoraConfig, ModelSpec, TrainConfig


@dataclass
class WriterConfig(Section):
    """A question writer trained in the run (Bonito's idea: a model fine-tuned to turn text into tasks), which the
    questions stage then uses as its teacher in place of `synth.teacher`."""

    enabled: bool = False
    """`pseudocot run` trains the writer before the questions stage, which then asks it (not `synth.teacher`)."""
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="tiny-xs-3l"))
    """The writer: a tiny preset trained from scratch (on its own tokenizer, trained on the pairs) or a checkpoint."""
    method: Literal["full", "lora", "qlora"] = "full"
    """Full fine-tuning, LoRA or QLoRA (a preset trains in full)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings for lora and qlora."""
    pairs: str | None = None
    """What it learns from: a JSONL of `{text, items: [{question, answer, reasoning}]}` rows; null: stories of the
    built-in arith task (with `data.arith`'s operations, operands and steps), none of them the text of a document."""
    n_train: Positive = 4000
    """Training pairs (the first this many rows of `pairs`, or this many stories)."""
    n_val: Positive = 200
    """Validation pairs (the rows after the training ones, or as many more stories)."""
    vocab_size: Annotated[int, Ge(MIN_TOKENIZER_VOCAB)] = 512
    """A preset writer's tokenizer: its vocabulary, trained on the pairs' prompts and replies."""
    seed: int = 0
    """Seed of the stories, the writer's initialisation and its data order (not `run.seed`: the questions, like the
    data, stay the same for every training seed of the system)."""
    batch_size: Positive = 64
    """Chunks it writes for at once in the questions stage."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_length=320))
    """Optimisation settings (keys not given here come from the top-level `train`)."""

    def validate(self) -> None:
        if self.model.from_:
            raise FieldError("model.from", "is for distillation students; give the writer a `path` or a `preset`")
        if self.method != "full" and self.model.preset and not self.model.path:
            raise FieldError("method", f"{self.method} needs a pretrained model.path; a tiny preset is trained from scratch, so use method: full")
