"""Generation: the `Generator` interface and its backends (local HF here; HTTP and vLLM later)."""

from pseudocot.generate.base import Completion, GenerationParams, Generator

__all__ = ["Completion", "GenerationParams", "Generator"]
