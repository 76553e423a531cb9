"""Tiny Llama-architecture causal LMs built from named size presets, for offline runs and tests.

They are ordinary `LlamaForCausalLM`s: `save_pretrained` writes safetensors, and
`AutoModelForCausalLM.from_pretrained(folder)` loads them back with no network.
"""

from __future__ import annotations

import typing
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pseudocot.config.schema import TinyPreset
from pseudocot.errors import ConfigError

# name -> LlamaConfig size fields. Parameter counts are for a 384-token vocabulary.
PRESETS: dict[str, dict[str, int]] = {
    "tiny-3xs": dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "tiny-2xs": dict(hidden_size=48, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "tiny-xs": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    # tiny-xs with a third layer (163k): a base model more than twice a tiny-2xs Tiny Thought Model, at ~1.3x tiny-xs's step time
    "tiny-xs-3l": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    "tiny-s": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "tiny-m": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4),
    "tiny-l": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
}


assert set(PRESETS) == set(typing.get_args(TinyPreset)), "the config's model.preset choices are these presets"


def tiny_config(preset: str, tokenizer: Any, max_position_embeddings: int = 1024) -> LlamaConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown tiny model preset '{preset}'; use one of {', '.join(PRESETS)}.")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        **PRESETS[preset],
    )


def build_tiny_model(preset: str, tokenizer: Any, seed: int = 0, max_position_embeddings: int = 1024) -> LlamaForCausalLM:
    """A randomly initialised Llama of the named size whose vocabulary and special ids match `tokenizer`."""
    config = tiny_config(preset, tokenizer, max_position_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
