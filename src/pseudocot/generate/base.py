"""The `Generator` interface: text in, completions out.

The base LLM, the Tiny Thought Model and the teacher are each a `Generator`, so any of them can be
a local model or a remote endpoint. Prompts are already rendered (chat template applied).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class GenerationParams:
    max_new_tokens: int = 96
    """Most tokens generated per completion."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass, used when temperature > 0."""
    stop: list[str] = field(default_factory=list)
    """Generation ends at the first stop string; it is cut from the returned text."""
    seed: int | None = None
    """Seed for sampling; the same seed and prompts give the same samples."""
    logprobs: bool = False
    """Also return the log-probability of each generated token."""
    hidden: bool = False
    """Also return `Completion.features`: the model's final hidden state pooled over prompt and output
    (backends that can see hidden states only)."""


@dataclass
class Completion:
    text: str
    """Generated text, without the end-of-sequence token or the stop string."""
    prompt_tokens: int
    """Tokens in the prompt (padding not counted)."""
    completion_tokens: int
    """Tokens generated, the final end-of-sequence token included: what the call cost."""
    seconds: float
    """Wall time of the call that produced it, shared equally among the prompts of its batch."""
    finish_reason: str = "length"
    """`stop` (end-of-sequence or a stop string) or `length` (max_new_tokens reached)."""
    stop_string: str | None = None
    """The stop string that ended it (None when end-of-sequence or the length limit did)."""
    token_logprobs: list[float] | None = None
    """Log-probability of each generated token under the model (when asked for)."""
    cached_tokens: int = 0
    """Prompt tokens not encoded again because the session had them already (KV reuse)."""
    features: Any = None
    """(2H,) float32 tensor when `params.hidden`: mean final hidden state over prompt and output, then
    the last one. Not serialised into traces."""
    reasoning: str | None = None
    """Reasoning an endpoint returned apart from the text (`reasoning_content` of a reasoning model)."""


@runtime_checkable
class Generator(Protocol):
    def generate(self, prompts: Sequence[str], params: GenerationParams) -> list[Completion]:
        """One completion per prompt, in the order of `prompts`."""
        ...


@runtime_checkable
class SessionGenerator(Generator, Protocol):
    """A `Generator` that can continue conversations: `sessions[i]` names prompt i's conversation, and
    what that conversation encoded before is reused instead of encoded again."""

    def generate(self, prompts: Sequence[str], params: GenerationParams,
                 sessions: Sequence[Hashable] | None = None) -> list[Completion]:
        ...

    def end_sessions(self, sessions: Sequence[Hashable]) -> None:
        """Forget what these conversations encoded."""
        ...
