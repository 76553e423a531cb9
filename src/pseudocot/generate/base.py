"""The `Generator` interface: text in, completions out.

The base LLM, the Tiny Thought Model and the teacher are each a `Generator`, so any of them can be
a local model or a remote endpoint. Prompts are already rendered (chat template applied).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
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
    top_logprobs: int = 0
    """With `logprobs`: also the k most likely tokens at each position and their log-probabilities."""
    hidden: bool = False
    """Also return `Completion.features`: the model's final hidden state pooled over prompt and output
    (backends that can see hidden states only)."""
    on_text: Callable[[int, str], None] | None = field(default=None, compare=False, repr=False)
    """Streaming: called as `on_text(i, delta)` while prompt i's completion is written, each delta text that will not
    change (a possible start of a stop string is held back); the deltas of a prompt add up to its `Completion.text`."""


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
    top_logprobs: list[dict[str, float]] | None = None
    """With `params.top_logprobs` k: at each generated position, the k most likely tokens and their log-probabilities
    (OpenAI's legacy completions format; an engine may add the chosen token as a k+1st)."""
    cached_tokens: int = 0
    """Prompt tokens not encoded again because the session had them already (KV reuse)."""
    features: Any = None
    """(2H,) float32 tensor when `params.hidden`: mean final hidden state over prompt and output, then
    the last one. Not serialised into traces."""
    reasoning: str | None = None
    """Reasoning an endpoint returned apart from the text (`reasoning_content` of a reasoning model)."""


class TextStream:
    """What one completion has streamed so far (`GenerationParams.on_text`): `update` with the text decoded so far gives
    the part that is safe to send: up to a stop string met, and short of any tail that might begin one or that is an
    unfinished character."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.sent = ""

    def update(self, text: str) -> str:
        cuts = [text.find(s) for s in self.stops if s in text]
        if cuts:
            safe = text[: min(cuts)]
        else:
            hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            safe = text[: len(text) - hold]
            while safe.endswith("\ufffd"):  # a character whose bytes are not all written yet
                safe = safe[:-1]
        return self._advance(safe)

    def finish(self, text: str) -> str:
        """The rest of the final text (`Completion.text`)."""
        return self._advance(text)

    def _advance(self, safe: str) -> str:
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta


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


def _tokenizer_folder(spec: Any) -> str:
    """A local model's tokenizer: `spec.tokenizer`, else the adapter's own, else the model folder's, else (an adapter
    folder as `path`, saved without one) the base model's it names."""
    import json
    from pathlib import Path

    if spec.tokenizer:
        return str(spec.tokenizer)
    for folder in (spec.adapter, spec.path):
        if folder and ((Path(folder) / "tokenizer_config.json").is_file() or (Path(folder) / "tokenizer.json").is_file()):
            return str(folder)
    config = Path(spec.adapter or spec.path) / "adapter_config.json"
    if config.is_file():
        return str(json.loads(config.read_text()).get("base_model_name_or_path") or spec.path)
    return str(spec.path)


def open_generator(spec: Any, *, device: str = "auto", batch_size: int | None = None, kv_reuse: bool = True,
                   chat: bool | None = None, rendered: bool = False) -> Any:
    """The `Generator` a `GeneratorConfig` names: an `HFGenerator` over its local folder, or an `OpenAIGenerator` over
    its endpoint (with the tokenizer of `spec.tokenizer` loaded as `.tokenizer`, for callers that render prompts).
    `batch_size` overrides the spec's (local); `chat` overrides its chat flag (the pipeline sends rendered text).

    `rendered`: the prompts are text rendered with the tokenizer's chat template, which holds its special tokens
    already, so an endpoint is told not to add its own (`add_special_tokens: false`, vLLM's and SGLang's field: a second
    BOS changes answers). Plain text gets the engine's usual BOS. `spec.extra_body` is added on top; a key set to null
    there is left out of the request."""
    import os

    if spec.path:
        from pseudocot.generate.hf import HFGenerator
        from pseudocot.models.loading import load_model, load_tokenizer
        from pseudocot.models.lora import load_trained, merged_adapter

        if spec.adapter:
            model = merged_adapter(load_model(spec.path, device=device, dtype=spec.dtype,
                                              trust_remote_code=spec.trust_remote_code), spec.adapter)
        else:
            model = load_trained(spec.path, device=device, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code)
        model.eval()
        tokenizer = load_tokenizer(_tokenizer_folder(spec), trust_remote_code=spec.trust_remote_code)
        return HFGenerator(model, tokenizer, batch_size=batch_size or spec.batch_size, kv_reuse=kv_reuse)
    from pseudocot.generate.openai import OpenAIGenerator

    tokenizer = None
    if spec.tokenizer:
        from pseudocot.models.loading import load_tokenizer

        tokenizer = load_tokenizer(spec.tokenizer, trust_remote_code=spec.trust_remote_code)
    extra = ({"add_special_tokens": False} if rendered else {}) | dict(spec.extra_body)
    return OpenAIGenerator(spec.base_url, spec.model, api_key=os.environ.get(spec.api_key_env),
                           chat=spec.chat if chat is None else chat, concurrency=spec.concurrency,
                           max_retries=spec.max_retries, timeout=spec.timeout_seconds,
                           extra_body={k: v for k, v in extra.items() if v is not None}, tokenizer=tokenizer)
