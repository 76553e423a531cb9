"""Router inputs: one vector per base answer, built from what the generator returned.

- `hidden`: the base model's final hidden state, mean over question, thoughts and answer, then the
  last one (2H values; local models only);
- `logprobs`: statistics of the answer tokens' log-probabilities (mean, min, max, sum, first, last,
  length / 10);
- `entropy`: the entropy of each answer position's `ENTROPY_TOP_K` likeliest tokens (renormalised): mean, max, first,
  last;
- `iteration`: the answer's number over `max_thoughts`, and whether it is the first;
- `changed`: whether the committed answer differs from the previous one;
- `thought`: what the thoughts in the answer's context say about it (`pipeline.thought_features`): whether
  the answer is the last thought's value, whether the last thought's arithmetic is true, how much of the
  question's numbers the thoughts have used, the last thought's length;
- `thought_logprobs`: the `logprobs` statistics of the last thought in the answer's context, as the TTM wrote it
  (those of an empty list before the first thought).

Every input but `hidden` is something an inference engine returns, so a router without `hidden` runs on engines.
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


ENTROPY_TOP_K = 5
"""How many of each position's likeliest tokens `entropy` reads: what any engine lists (OpenAI's API up to 20), so a
local model and an engine give the router the same number."""


def logprob_stats(logprobs: Sequence[float] | None) -> list[float]:
    lp = list(logprobs or [0.0])
    return [sum(lp) / len(lp), min(lp), max(lp), sum(lp), lp[0], lp[-1], len(lp) / 10]


def top_entropy(top: dict[str, float]) -> float:
    """Entropy (nats) of one position's next-token distribution cut to its `ENTROPY_TOP_K` likeliest tokens and
    renormalised (an engine may list the chosen token as one more: the k largest are kept)."""
    lps = torch.tensor(sorted(top.values(), reverse=True)[:ENTROPY_TOP_K], dtype=torch.float64)
    log_p = torch.log_softmax(lps, dim=0)
    return float(-(log_p.exp() * log_p).sum())


def entropy_stats(top_logprobs: Sequence[dict[str, float]] | None) -> list[float]:
    e = [top_entropy(t) for t in top_logprobs or [] if t] or [0.0]
    return [sum(e) / len(e), max(e), e[0], e[-1]]


def step_parts(completion: Any, iteration: int, changed: bool, thought: Sequence[float] | None = None,
               thought_logprobs: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The raw inputs of one answer, before `assemble` picks and shapes them (`thought_logprobs`: `logprob_stats` of
    the last thought in the answer's context)."""
    parts = {"logprobs": torch.tensor(logprob_stats(completion.token_logprobs)),
             "iteration": torch.tensor([float(iteration)]), "changed": torch.tensor([float(changed)])}
    if completion.top_logprobs is not None:
        parts["entropy"] = torch.tensor(entropy_stats(completion.top_logprobs))
    if completion.features is not None:
        parts["hidden"] = completion.features.float()
    if thought is not None:
        parts["thought"] = torch.tensor([float(x) for x in thought])
    if thought_logprobs is not None:
        parts["thought_logprobs"] = torch.tensor([float(x) for x in thought_logprobs])
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
        elif name in ("thought", "thought_logprobs", "entropy") and name not in parts:
            raise ModelError(f"the router reads '{name}' (router.features), but this step has none; the pipeline asks "
                             "for it when its router lists it.")
        elif name == "iteration":
            i = float(parts["iteration"][0])
            out.append(torch.tensor([i / max(1, max_thoughts), float(i == 0)]))
        else:
            out.append(parts[name])
    return torch.cat(out)


def step_vector(step: Any, names: Sequence[str], max_thoughts: int) -> torch.Tensor:
    """(D,) float32 inputs for one answer; `step` has .completion, .iteration, .changed and .thought."""
    return assemble(step_parts(step.completion, step.iteration, step.changed, getattr(step, "thought", None),
                               getattr(step, "thought_logprobs", None)), names, max_thoughts)
def question_vector(completion: Any) -> torch.Tensor:
    """Depth-router input: the pooled hidden state over the question prompt alone."""
    if completion.features is None:
        raise ModelError("the depth router needs the base model's hidden states; use a local base model.")
    return completion.features.float()
