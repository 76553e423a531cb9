"""The `grpo` section: reinforcement learning of the Tiny Thought Model (or the base model), and the names of
its rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pseudocot.config.base import Positive, Weight
from pseudocot.config.checks import FieldError, Ge, Gt, NonEmpty, Section
from pseudocot.config.eval import EvalTaskConfig
from pseudocot.config.train import LoraConfig, TrainConfig

GRPO_REWARDS = ("correct", "arithmetic", "follows", "format", "length", "base_correct")
"""The rewards of `pseudocot.rewards` (its registry has exactly these names)."""


@dataclass
class GrpoConfig(Section):
    enabled: bool = False
    """`pseudocot run` runs the grpo stage after the base model and before the router; the pipeline, the router and
    evaluation then load its model in place of the TTM (target ttm) or of the base model (target base)."""
    target: Literal["ttm", "base"] = "ttm"
    """Which model learns: the Tiny Thought Model (one completion is its whole chain of thoughts) or the base model."""
    method: Literal["full", "lora"] = "full"
    """Train every weight, or LoRA adapters on the model (the output is then an adapter folder)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings for `lora`."""
    rewards: Annotated[dict[str, float], NonEmpty()] = field(default_factory=lambda: {"base_correct": 1.0, "arithmetic": 1.0})
    """Reward -> weight; a completion's reward is the weighted sum. correct, arithmetic, follows, format, length,
    base_correct (target ttm: the base model answers right with the thoughts in context), or package.module:function."""
    task: EvalTaskConfig | None = None
    """The task whose scoring decides `correct` and `base_correct` (name and options); null: the run's first eval task."""
    extraction: str | None = None
    """The extraction `correct` reads a completion's answer with (null: `answer-line` where the task has it, as the
    synth filter; else the task's primary). `base_correct` scores the base model's answer as evaluation does."""
    length_budget_tokens: Positive = 128
    """length: completion tokens allowed before the penalty starts."""
    length_penalty_per_token: Weight = 0.01
    """length: reward taken off per token beyond the budget."""
    train_file: str | None = None
    """The questions (Example JSONL with gold answers); null: the run's `data/train.jsonl`."""
    max_questions: Positive | None = None
    """Use the first this many questions (null: all)."""
    num_generations: Annotated[int, Ge(2)] = 8
    """TRL: completions sampled per question (a group); must divide train.batch_size x train.grad_accum_steps."""
    max_completion_length: Positive = 256
    """TRL: most tokens per completion."""
    temperature: Annotated[float, Gt(0)] = 1.0
    """TRL: sampling temperature of the completions."""
    beta: Weight = 0.0
    """TRL: weight of the KL penalty to the starting model (0: none, and no reference model is kept)."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    """TRL: how token losses are aggregated (dapo: over the active tokens of the batch, no length bias)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """TRL: divide advantages by the reward's standard deviation in the group, the batch, or not at all."""
    mask_truncated_completions: bool = False
    """TRL: leave completions cut at max_completion_length out of the loss."""
    learning_rate: Annotated[float, Gt(0)] = 1e-6
    """TRL: peak learning rate (`train.lr` is not read here)."""
    seed: int | None = None
    """Seed of GRPO's sampling, data order and LoRA initialisation (null: `run.seed`); another seed re-runs only GRPO."""
    trl: dict[str, Any] = field(default_factory=dict)
    """Any other `trl.GRPOConfig` field by its name (e.g. epsilon, num_iterations, top_p); one that pseudocot sets itself (a
    key above, or grpo.train's) is refused when the run starts."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=200, batch_size=64, save_every_steps=50))
    """Steps, batch (completions per micro-batch), checkpoints and logging; not inherited from the top-level `train`."""

    def validate(self) -> None:
        unknown = next((r for r in self.rewards if r not in GRPO_REWARDS and ":" not in r), None)
        if unknown:
            raise FieldError("rewards", f"has unknown reward '{unknown}'; use {', '.join(GRPO_REWARDS)} or package.module:function")
        if self.target == "base" and "base_correct" in self.rewards:
            raise FieldError("rewards", "has base_correct, which rewards the TTM's thoughts by the base model's answer; "
                                        "with target base use correct")
        per_step = self.train.batch_size * self.train.grad_accum_steps
        if per_step % self.num_generations:
            raise FieldError("num_generations", f"is {self.num_generations}, which does not divide train.batch_size x "
                                                f"train.grad_accum_steps = {per_step}, the completions sampled per step; "
                                                "every question needs its whole group in one step")
        if self.train.lr != TrainConfig.lr:
            raise FieldError("train.lr", "is not read by GRPO; set grpo.learning_rate (TRL's name) instead")
        unread = {"max_length": "grpo.max_completion_length bounds what it generates", "val_examples": "it has no validation",
                  "eval_every_steps": "it has no validation"}
        for key, why in unread.items():
            if getattr(self.train, key) != getattr(TrainConfig, key):
                raise FieldError(f"train.{key}", f"is not read by GRPO ({why}); remove it")
