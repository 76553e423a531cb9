"""What answering a question costs in compute: estimated forward FLOPs, one definition for every surface.

A model call processes the prompt tokens it did not reuse from a cache (prefill) and the tokens it generates
(decode); each processed token costs about 2 x parameters FLOPs (a multiply and an add per weight: Kaplan et al.
2020's forward estimate). The attention over the context and the embedding lookup are not charged: at the context
lengths of this loop they are a few percent at most. Cached prefix tokens (`generate.sessions`: a re-answer encodes
only the new thought) cost nothing, which is the point of reusing them.

    >>> processed_tokens(prompt_tokens=50, cached_tokens=30, generated_tokens=8)
    28
    >>> flops({"base": 28, "ttm": 10}, {"base": 1000, "ttm": 100})
    58000.0
"""

from __future__ import annotations

from collections.abc import Mapping


def processed_tokens(prompt_tokens: int, cached_tokens: int, generated_tokens: int) -> int:
    """Tokens one call runs through the model: the prompt less what a cache held, plus what it generated."""
    return max(0, prompt_tokens - cached_tokens) + generated_tokens


def flops(tokens: Mapping[str, int | float], parameters: Mapping[str, int] | None) -> float | None:
    """2 x parameters x processed tokens, summed over the models (`base`, `ttm`, or `model`); None when a model's
    parameter count is unknown (an endpoint)."""
    if not parameters:
        return None
    total = 0.0
    for model, n in tokens.items():
        if n and model not in parameters:
            return None
        total += 2.0 * parameters.get(model, 0) * n
    return total
