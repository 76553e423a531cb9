"""The `serve` section: the OpenAI-compatible server's address, API key, batching and limits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pseudocot.config.base import Count, Positive
from pseudocot.config.checks import FieldError, Ge, Le, NonEmpty, Section


@dataclass
class ServeConfig(Section):
    host: str = "127.0.0.1"
    """Address the server binds (`--host`); anything but loopback needs an API key."""
    port: Annotated[int, Ge(0), Le(65535)] = 8000
    """TCP port (`--port`; 0 picks a free one)."""
    api_key_env: Annotated[str, NonEmpty()] = "PSEUDOCOT_API_KEY"
    """Environment variable holding the API key (`--api-key-env`); when it is set, `/v1/*` needs `Authorization: Bearer KEY`."""
    max_batch: Positive = 16
    """Most requests answered together in one pipeline batch."""
    batch_wait_ms: Annotated[float, Ge(0)] = 20.0
    """How long the first waiting request waits for others to join its batch."""
    max_queue: Positive = 64
    """Requests waiting for a batch; one more is answered 429 with Retry-After."""
    max_body_bytes: Positive = 1_000_000
    """Largest request body; a bigger one is answered 413."""
    max_tokens: Positive = 2048
    """Largest `max_tokens` a request may ask for (tokens per base answer; a larger one is a 400)."""
    max_prompt_tokens: Positive | None = None
    """Longest base-model prompt a request may make, in tokens (null: the base model's max_position_embeddings
    minus the answer's max_tokens); a longer one is a 400 `context_length_exceeded`."""
    max_admitted: Count = 256
    """Requests that may join one running batch (continuous batching) before it must end (0: none join)."""
    max_thoughts: Positive = 16
    """Largest `pseudocot.max_thoughts` a request may ask for."""
    shutdown_grace_seconds: Annotated[float, Ge(0)] = 30.0
    """On SIGTERM, how long requests already accepted may take to finish."""

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise FieldError("api_key_env", f"must be an environment variable name, got {self.api_key_env!r}")
