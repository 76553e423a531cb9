"""Generation: the `Generator` interface and its backends: local HF (`hf`), any OpenAI-compatible HTTP
endpoint (`openai`: vLLM, SGLang, llama.cpp, `pseudocot models serve`). `open_generator` builds either from a
`GeneratorConfig`."""

from pseudocot.generate.base import Completion, GenerationParams, Generator, open_generator

__all__ = ["Completion", "GenerationParams", "Generator", "open_generator"]
