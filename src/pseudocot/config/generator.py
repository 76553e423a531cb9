"""A model that writes text (`GeneratorConfig`): a local folder or an OpenAI-compatible endpoint; the synth
teacher, the judge, the questions writer and the pipeline's models are each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pseudocot.config.base import Count, Dtype, Positive
from pseudocot.config.checks import FieldError, Gt, NonEmpty, Section


@dataclass
class GeneratorConfig(Section):
    """A model that writes text: a local folder (`path`) or an OpenAI-compatible endpoint (`base_url` + `model`). The
    synth teacher, the judge, the questions writer and the pipeline's base and TTM are each one."""

    path: str | None = None
    """A local model folder (HF save_pretrained), or a LoRA adapter folder (merged into the base it names), generating
    through pseudocot's batched loop."""
    adapter: str | None = None
    """Local model: a LoRA adapter folder merged into `path` (for an adapter trained on another copy of that base)."""
    tokenizer: str | None = None
    """The tokenizer folder. A local model: its own when null. An endpoint in the pipeline (`pipeline.base`,
    `pipeline.ttm`): needed; pseudocot renders each prompt with its chat template and sends the text to /completions."""
    dtype: Dtype = "auto"
    """Local model: weights dtype (auto: bf16 on a capable GPU, fp32 on CPU)."""
    trust_remote_code: bool = False
    """Local model: run the checkpoint's own Python code (only for checkpoints you trust)."""
    base_url: str | None = None
    """An OpenAI-compatible endpoint instead of a local model, e.g. http://localhost:8000/v1 (vLLM, llama.cpp,
    SGLang, DeepSeek's API, `pseudocot serve`, `pseudocot models serve`)."""
    model: str | None = None
    """Endpoint: the model name it serves (e.g. deepseek-reasoner)."""
    api_key_env: Annotated[str, NonEmpty()] = "OPENAI_API_KEY"
    """Endpoint: the environment variable that holds the API key (keys never go into configs or outputs)."""
    chat: bool = True
    """Chat messages (the tokenizer's chat template, or /chat/completions) rather than plain text (/completions). The
    pipeline's models always get text rendered through `tokenizer`."""
    concurrency: Positive = 8
    """Endpoint: requests in flight at once."""
    max_retries: Count = 6
    """Endpoint: retries of a request after a 429, a 5xx, a timeout or a dropped connection (exponential backoff)."""
    timeout_seconds: Annotated[float, Gt(0)] = 300.0
    """Endpoint: how long one request may take before it is retried."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Endpoint: fields added to every /completions request, e.g. {verbose: true} for llama.cpp's server (it then says
    which stop ended a line). Where pseudocot sends text rendered with the chat template (the pipeline's models) it adds
    add_special_tokens: false (vLLM's and SGLang's field; a second BOS changes answers): set it to null here for a server
    that refuses unknown fields."""
    batch_size: Positive = 32
    """Local model: prompts generated together."""

    def validate(self) -> None:
        if bool(self.path) == bool(self.base_url):
            raise FieldError("path", "or `base_url` must be given, not both: a local model folder or an endpoint")
        if self.base_url and not self.model:
            raise FieldError("model", "is needed with base_url: the model name the endpoint serves")
        if self.adapter and not self.path:
            raise FieldError("adapter", "needs `path`, the model it is merged into (an adapter alone: give it as `path`)")


def check_renders(role: str, spec: str | GeneratorConfig | None) -> None:
    """A model the pipeline sends rendered text to (`role`: base or ttm) needs a tokenizer when it is an endpoint."""
    if isinstance(spec, GeneratorConfig) and spec.base_url and not spec.tokenizer:
        raise FieldError(f"{role}.tokenizer", "is needed with base_url: the folder whose chat template renders the "
                                              "prompts sent to the engine (the model's own tokenizer)")
