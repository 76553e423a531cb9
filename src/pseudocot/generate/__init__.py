"""Generation: the `Generator` interface and its backends: local HF (`hf`), any OpenAI-compatible HTTP
endpoint (`openai`); vLLM later."""

from pseudocot.generate.base import Completion, GenerationParams, Generator

__all__ = ["Completion", "GenerationParams", "Generator"]
