"""Router inputs: one vector per base answer, built from what the generator returned.

- `hidden`: the base model's final hidden state, mean over question, thoughts and answer, then the
  last one (2H values; local models only);
- `logprobs`: statistics of the answer tokens' log-probabilities (mean, min, max, sum, first, last,
  length / 10);
- `iteration`: the answer's number over `max_thoughts`, and whether it is the first;
- `changed`: whether the committed answer differs from the previous one.
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


def step_parts(completion: Any, iteration: int, changed: bool) -> dict[str, torch.Tensor]:
    """The raw inputs of one answer, before `assemble` picks and shapes them."""
    parts = {"logprobs": torch.tensor(logprob_stats(completion.token_logprobs)),
             "iteration": torch.tensor([float(iteration)]), "changed": torch.tensor([float(changed)])}
    if completion.features is not None:
        parts["hidden"] = completion.features.float()
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
        elif name == "iteration":
            i = float(parts["iteration"][0])
            out.append(torch.tensor([i / max(1, max_thoughts), float(i == 0)]))
        else:
            out.append(parts[name])
    return torch.cat(out)


def step_vector(step: Any, names: Sequence[str], max_thoughts: int) -> torch.Tensor:
    """(D,) float32 inputs for one answer; `step` has .completion, .iteration and .changed."""
    return assemble(step_parts(step.completion, step.iteration, step.changed), names, max_thoughts)
def question_vector(completion: Any) -> torch.Tensor:
    """Depth-router input: the pooled hidden state over the question prompt alone."""
    if completion.features is None:
        raise ModelError("the depth router needs the base model's hidden states; use a local base model.")
    return completion.features.float()
