"""GRPO rewards: plain functions with TRL's contract, `(prompts, completions, **columns) -> list[float | None]`,
found by name or by dotted path (`package.module:function`) and weighted by `grpo.rewards`.

A reward reads the dataset's columns (`question`, `answer`, `choices`) from its keyword arguments,
and a `RewardContext` (the task, the base model, the budget) when it declares a keyword `ctx`. None
means "does not apply to this completion": TRL leaves it out of the weighted sum.

- `correct`: 1 when the completion's final answer is right under the task's own scoring
  (`Task.reward`, the definition of correct evaluation and the synth filter use);
- `arithmetic`: the share of its arithmetic statements that are true (the synth filter's checker);
  None when it makes none;
- `follows`: 1 when its numeric final answer equals the value its last step computed, 0 when not;
- `format`: 1 when it passes the synth filter's format check (one step per line, a final answer
  line, not cut off at the token limit);
- `length`: minus `length_penalty_per_token` for each token beyond `length_budget_tokens`;
- `base_correct` (for the TTM): its lines are put in the base model's context as thoughts and the base
  answers through the loop's own answer step (`Pipeline.answer_with`: the prompts, stops, sessions and
  returned answer of `pseudocot eval` and `serve`); the reward is 1 when that answer is right. A
  generation batch's answers run as one batch: each question's prompt is encoded once and its group
  of completions reuses it (`generate.sessions`). One difference from the pipeline: a line
  longer than `pipeline.thought_max_new_tokens` is read whole here, where the pipeline would cut it.

`bind` wraps each for the trainer under its registry name; the wrapper also logs, per reward and
step, the share of groups whose rewards all agree (no learning signal from that reward there) and
says so when a reward returns None for a whole batch.

    pseudocot grpo --config demo-grpo
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pseudocot.config.schema import GRPO_REWARDS, PipelineConfig
from pseudocot.data.chat import thoughts_from_text
from pseudocot.data.example import Example
from pseudocot.dotted import lookup
from pseudocot.errors import ConfigError
from pseudocot.generate.base import Generator
from pseudocot.pipeline import Pipeline
from pseudocot.synth.arithmetic import parse_number, statements
from pseudocot.synth.filter import Candidate, FilterSettings, answer_follows, format_check
from pseudocot.tasks.extract import INVALID
from pseudocot.tasks.task import Task

logger = logging.getLogger(__name__)

Reward = Callable[..., list[float | None]]


@dataclass
class RewardContext:
    """What the built-in rewards need besides the dataset's columns."""

    task: Task
    """Scores answers (`correct`, `base_correct`)."""
    extraction: str | None = None
    """How `correct` reads a completion's answer (None: `answer-line` where the task has it, else its primary)."""
    pipeline: PipelineConfig | None = None
    """How the pipeline renders thoughts for the base model and how the base answers (`base_correct`)."""
    base: Generator | None = None
    """The base model (`base_correct`)."""
    base_tokenizer: Any = None
    """The base model's tokenizer, whose chat template renders its prompts."""
    length_budget_tokens: int = 128
    length_penalty_per_token: float = 0.01
    max_completion_length: int | None = None
    """A completion this long was cut off (`format`)."""
    num_generations: int = 1
    """Completions per question: consecutive completions form a group."""

    @functools.cached_property
    def settings(self) -> FilterSettings:
        return FilterSettings(self.task, self.extraction)


def gold_examples(n: int, question: Sequence[str] | None = None, answer: Sequence[str] | None = None,
                  choices: Sequence[list[str] | None] | None = None, **_: Any) -> list[Example | None]:
    """The gold `Example` of each completion from the dataset's columns (None where there is no gold answer)."""
    if question is None or answer is None:
        raise ConfigError("the reward needs the dataset columns `question` and `answer`; the GRPO data has neither.")
    out: list[Example | None] = []
    for i in range(n):
        opts = choices[i] if choices is not None else None
        out.append(Example(id=str(i), question=question[i], answer=str(answer[i]), choices=opts or None) if answer[i] else None)
    return out


def _read(ctx: RewardContext, completions: Sequence[str], golds: Sequence[Example | None],
          completion_ids: Sequence[Sequence[int]] | None = None) -> list[Candidate]:
    cut = [ctx.max_completion_length is not None and completion_ids is not None and len(ids) >= ctx.max_completion_length
           for ids in (completion_ids or [[]] * len(completions))]
    return [ctx.settings.read(Candidate(id="", sample=i, question=g.question if g else "", completion=c, gold=g,
                                        finish_reason="length" if cut[i] else "stop"))
            for i, (c, g) in enumerate(zip(completions, golds))]


# --------------------------------------------------------------------------------------------
# The rewards.
# --------------------------------------------------------------------------------------------


def correct(prompts: Sequence[Any], completions: Sequence[str], *, ctx: RewardContext, **columns: Any) -> list[float | None]:
    """1.0 when the completion's answer is right (`Task.reward`), 0.0 when not, None without a gold answer."""
    golds = gold_examples(len(completions), **columns)
    return [None if g is None else ctx.task.reward(c, g, ctx.settings.extraction) for c, g in zip(completions, golds)]


def arithmetic(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float | None]:
    """The share of true arithmetic statements; None when there are none.

    >>> arithmetic([], ["3 + 4 = 7\\n7 * 2 = 15\\nThe answer is 15.", "The answer is 9."])
    [0.5, None]
    """
    out: list[float | None] = []
    for c in completions:
        found = statements(c)
        out.append(sum(st.ok for st in found) / len(found) if found else None)
    return out


def follows(prompts: Sequence[Any], completions: Sequence[str], *, ctx: RewardContext, **columns: Any) -> list[float | None]:
    """1.0 when the numeric final answer equals the last step's value, 0.0 when it does not (or no step
    computes a value), None when the answer is not a number."""
    out: list[float | None] = []
    for c in _read(ctx, completions, [None] * len(completions)):
        if c.answer == INVALID or parse_number(c.answer) is None:
            out.append(None)
        else:
            out.append(1.0 if answer_follows(c.steps, c.answer) else 0.0)
    return out


def format(prompts: Sequence[Any], completions: Sequence[str], *, ctx: RewardContext,  # noqa: A001 (the reward's name)
           completion_ids: Sequence[Sequence[int]] | None = None, **_: Any) -> list[float | None]:
    """1.0 when the completion passes the synth filter's format check, else 0.0."""
    cands = _read(ctx, completions, [None] * len(completions), completion_ids)
    return [0.0 if format_check([c], ctx.settings)[0] else 1.0 for c in cands]


def length(prompts: Sequence[Any], completions: Sequence[str], *, ctx: RewardContext,
           completion_ids: Sequence[Sequence[int]] | None = None, **_: Any) -> list[float | None]:
    """Minus `length_penalty_per_token` per completion token beyond `length_budget_tokens` (0.0 within it), counted
    in the trained model's own tokens, which TRL passes as `completion_ids`."""
    if completion_ids is None:
        raise ConfigError("the length reward needs the completions' token ids (TRL's GRPOTrainer passes them).")
    return [-ctx.length_penalty_per_token * max(0, len(ids) - ctx.length_budget_tokens) for ids in completion_ids]


def base_correct(prompts: Sequence[Any], completions: Sequence[str], *, ctx: RewardContext, **columns: Any) -> list[float | None]:
    """1.0 when the base model answers right with the completion's lines as its thoughts, else 0.0."""
    if ctx.base is None or ctx.pipeline is None or ctx.base_tokenizer is None:
        raise ConfigError("base_correct needs the base model; it rewards the TTM (grpo.target: ttm) by the base model's answer.")
    golds = gold_examples(len(completions), **columns)
    p = ctx.pipeline
    questions = list(columns["question"])
    # The loop's own answer step (`Pipeline.answer_with`). One session per question: its prompt without thoughts is
    # encoded once (the answer the loop starts from), then every completion of its group reuses that prefix and
    # encodes only its thoughts.
    pipe = Pipeline(ctx.base, None, dataclasses.replace(p, mode="never"), base_tokenizer=ctx.base_tokenizer)
    first = {q: i for i, q in reversed(list(enumerate(questions)))}
    keys = [("grpo", first[q]) for q in questions]
    try:
        unique = sorted(set(first.values()))
        answers0 = pipe.answer_with([(str(i), questions[i]) for i in unique], [[] for _ in unique], [keys[i] for i in unique])
        answers = pipe.answer_with([(str(i), q) for i, q in enumerate(questions)],
                                   [thoughts_from_text(c, p.max_thoughts) for c in completions], keys)
    finally:
        pipe.end_sessions(sorted(set(keys)))
    log_metric = columns.get("log_metric")
    if log_metric is not None:
        scored0 = [ctx.task.reward(a.final_text, golds[i]) for i, a in zip(unique, answers0) if golds[i] is not None]
        if scored0:
            log_metric("base_correct/without_thoughts", sum(scored0) / len(scored0))
    return [None if g is None else ctx.task.reward(a.final_text, g) for a, g in zip(answers, golds)]


REWARDS: dict[str, Reward] = {"correct": correct, "arithmetic": arithmetic, "follows": follows, "format": format,
                              "length": length, "base_correct": base_correct}
assert tuple(REWARDS) == GRPO_REWARDS, "the config schema lists the registry's rewards"


# --------------------------------------------------------------------------------------------
# Lookup and binding.
# --------------------------------------------------------------------------------------------


def get_reward(name: str) -> Reward:
    """A reward by registry name, or a user's function by `package.module:function`."""
    return lookup(name, REWARDS, "reward", "(prompts, completions, **columns) -> list[float | None]")


def zero_spread_share(values: Sequence[float | None], group: int) -> float | None:
    """The share of groups (`group` consecutive values) whose non-None values all agree (None if no group has two).

    >>> zero_spread_share([1, 1, 0, 1, None, 0.5], 2)
    0.5
    """
    groups = [[v for v in values[i:i + group] if v is not None] for i in range(0, len(values), group)]
    counted = [g for g in groups if len(g) >= 2]
    return sum(max(g) == min(g) for g in counted) / len(counted) if counted else None


def bind(name: str, fn: Reward, ctx: RewardContext) -> Reward:
    """`fn` as the trainer calls it, named `name` (TRL logs `rewards/<name>/mean`): given `ctx` when it takes one,
    its output checked, and its groups without spread logged as `rewards/<name>/zero_spread_groups`."""
    takes_ctx = "ctx" in inspect.signature(fn).parameters
    said_none = False
    shown = name.replace(":", ".")  # TRL names a reward's metrics by the function's __name__

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        nonlocal said_none
        values = fn(prompts, completions, ctx=ctx, **kwargs) if takes_ctx else fn(prompts, completions, **kwargs)
        values = list(values)
        if len(values) != len(completions):
            raise ConfigError(f"reward '{name}' returned {len(values)} values for {len(completions)} completions; return one per completion.")
        if values and all(v is None for v in values):
            if not said_none:
                logger.warning("reward '%s' returned None for every completion of a batch: it does not apply to them and adds "
                               "nothing to their reward (said once)", name)
                said_none = True
        share = zero_spread_share(values, ctx.num_generations)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and share is not None:
            log_metric(f"rewards/{shown}/zero_spread_groups", share)
        return values

    reward.__name__ = reward.__qualname__ = shown
    return reward


def build_rewards(weights: dict[str, float], ctx: RewardContext) -> list[Reward]:
    """The bound reward functions of `grpo.rewards`, in the config's order (their weights go to TRL's `reward_weights`)."""
    return [bind(name, get_reward(name), ctx) for name in weights]
