"""The `router` section: what the router reads and learns, its MLP and training, and how its threshold is chosen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pseudocot.config.base import Fraction, Positive, Weight
from pseudocot.config.checks import Ge, Gt, Lt, NonEmpty, Section, Unique
from pseudocot.config.eval import EvalTaskConfig

RouterFeature = Literal["hidden", "logprobs", "entropy", "iteration", "changed", "thought", "thought_logprobs"]


@dataclass
class RouterConfig(Section):
    task: EvalTaskConfig | None = None
    """The task whose scoring labels the router's traces right or wrong (name and options; its data is the run's
    train/val split). Null: the run's first eval task, so the router learns exactly what evaluation counts as
    correct."""
    train_questions: Positive = 1000
    """Training questions whose base-model traces (thoughts forced to max_thoughts) label the router."""
    val_questions: Positive = 300
    """Validation questions: early stopping, the threshold and the cost-accuracy curve."""
    features: Annotated[list[RouterFeature], NonEmpty(), Unique()] = field(default_factory=lambda: ["hidden", "logprobs", "iteration", "changed"])
    """Router inputs: hidden (the base model's final hidden state, pooled; local base models only), logprobs (answer
    token log-probability statistics), entropy (of each answer token's 5 likeliest tokens), iteration, changed (the
    answer differs from the previous one), thought (what the thoughts say about the answer), thought_logprobs (the
    last thought's token log-probability statistics). All but hidden come from an inference engine too."""
    hidden_size: Positive = 64
    """Width of the MLP's hidden layer."""
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.1
    """Dropout in the MLP."""
    lr: Annotated[float, Gt(0)] = 1e-3
    """AdamW learning rate."""
    weight_decay: Weight = 1e-4
    """AdamW weight decay."""
    batch_size: Positive = 256
    """Router training rows per step."""
    max_epochs: Positive = 300
    """Most passes over the training rows."""
    patience: Positive = 25
    """Stop after this many epochs without a better validation loss (the best epoch is kept)."""
    objective: Literal["penalty", "call_rate", "flops"] = "penalty"
    """How the threshold is chosen on validation: maximise accuracy - penalty x call rate, the best accuracy at most
    target_call_rate, or the best accuracy at most target_flops_rate (estimated FLOPs, `pseudocot.cost`)."""
    penalty: Weight = 0.05
    """Accuracy given up per unit of call rate (call rate 1 = as many thoughts as always)."""
    target_call_rate: Fraction = 0.5
    """Call-rate budget (relative to always) for objective call_rate."""
    target_flops_rate: Fraction = 0.5
    """FLOPs budget (relative to always's estimated FLOPs per question) for objective flops."""
    reads: Literal["answer", "thought"] = "answer"
    """When the router decides: after each base answer, before the TTM thinks (`answer`, the paper's loop), or after
    the TTM has written the next thought, before the base re-answers (`thought`: it reads that thought; a rejected
    thought is never shown to the base, and its TTM call is counted). Use `thought` in router.features with it."""
    labels: Literal["helps", "value"] = "helps"
    """What the step router learns: `helps` (the answer is wrong and a later one is right) or `value` (the next
    thought's marginal value: it turns a wrong answer right, a right one wrong, or neither; scored as the expected
    change in correctness, (1 + P(helps) - P(hurts)) / 2)."""
    select: Literal["last", "best"] = "last"
    """Which answer the loop returns in mode router: its last (`last`), or the one the answer head (trained on every
    answer: is it right?) scores highest (`best`); the threshold is chosen for this choice."""
    depth: bool = True
    """Also train the depth router (question only -> number of thoughts) for mode depth."""
    seed: int = 0
    """Seed of the MLP's initialisation and batches."""
