"""Router inputs: one vector per base answer, built from what the generator returned.

- `hidden`: the base model's final hidden state, mean over question, thoughts and answer, then the
  last one (2H values; local models only);
- `logprobs`: statistics of the answer tokens' log-probabilities (mean, min, max, sum, first, last,
  length / 10);
- `iteration`: the answer's number over `max_thoughts`, and whether it is the first;
- `changed`: whether the committed answer differs from the previous one;
- `thought`: what the thoughts in the answer's context say about it (`pipeline.thought_features`): whether
  the answer is the last thought's value, whether the last thought's arithmetic is true, how much of the
  question's numbers the thoughts have used, the last thought's length.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

import torch

from pseudocot.config.schema import RouterFeature
from pseudocot.errors import ModelError

FEATURES = typing.get_args(RouterFeature)
"""The feature names `router.features` may list (the config schema's choices)."""


def logprob_stats(logprobs: Sequence[float] | None) -> list[float]:
    lp = list(logprobs or [0.0])
    return [sum(lp) / len(lp), min(lp), max(lp), sum(lp), lp[0], lp[-1], len(lp) / 10]


def step_parts(completion: Any, iteration: int, changed: bool, thought: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The raw inputs of one answer, before `assemble` picks and shapes them."""
    parts = {"logprobs": torch.tensor(logprob_stats(completion.token_logprobs)),
             "iteration": torch.tensor([float(iteration)]), "changed": torch.tensor([float(changed)])}
    if completion.features is not None:
        parts["hidden"] = completion.features.float()
    if thought is not None:
        parts["thought"] = torch.tensor([float(x) for x in thought])
    return parts


def assemble(parts: dict[str, torch.Tensor], names: Sequence[str], max_thoughts: int) -> torch.Tensor:
    """(D,) float32 router input from `step_parts`, the features in `names` in that order."""
    out: list[torch.Tensor] = []
    for name in names:
        if name == "hidden":
            if "hidden" not in parts:
                raise ModelError("the router uses the base model's hidden states, which this generator does not return; "
                                 "train it without 'hidden' in router.features.")
            out.append(parts["hidden"])
        elif name == "thought" and "thought" not in parts:
            raise ModelError("the router reads the thoughts ('thought' in router.features), but this step has none; "
                             "the pipeline computes them (`pipeline.thought_features`).")
        elif name == "iteration":
            i = float(parts["iteration"][0])
            out.append(torch.tensor([i / max(1, max_thoughts), float(i == 0)]))
        else:
            out.append(parts[name])
    return torch.cat(out)


def step_vector(step: Any, names: Sequence[str], max_thoughts: int) -> torch.Tensor:
    """(D,) float32 inputs for one answer; `step` has .completion, .iteration, .changed and .thought."""
    return assemble(step_parts(step.completion, step.iteration, step.changed, getattr(step, "thought", None)), names, max_thoughts)
def question_vector(completion: Any) -> torch.Tensor:
    """Depth-router input: the pooled hidden state over the question prompt alone."""
    if completion.features is None:
        raise ModelError("the depth router needs the base model's hidden states; use a local base model.")
    return completion.features.float()
