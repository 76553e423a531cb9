"""The `pipeline` section: the Pseudo-CoT loop's mode, prompts, stops and batching, and its models (folders or
engines).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pseudocot.config.base import Count, Mode, Positive
from pseudocot.config.checks import FieldError, Gt, Section
from pseudocot.config.generator import GeneratorConfig, check_renders


@dataclass
class PipelineConfig(Section):
    mode: Mode = "router"
    """never: the base alone; always: max_thoughts thoughts; router: the router decides after each answer; depth:
    the depth router picks the number of thoughts from the question."""
    max_thoughts: Count = 4
    """Most thoughts the Tiny Thought Model writes per question."""
    base_prompt: str = "{question}"
    """The base model's user turn before any thought ({question})."""
    base_prompt_with_thoughts: str = "{question}\nThoughts:\n{thoughts}"
    """The base model's user turn once there are thoughts ({question}; {thoughts}: one per line)."""
    system_prompt: str | None = None
    """A system message for the base model (null: none)."""
    ttm_prompt: str = "{question}"
    """The TTM's user turn ({question}; {answer}: the base model's last answer; {thoughts})."""
    ttm_continues_thoughts: bool = True
    """Open the TTM's own turn with the thoughts so far, one per line, so it writes the next line (how a
    reasoning model trained on step-by-step answers continues)."""
    ttm_system_prompt: str | None = None
    """A system message for the TTM (null: none)."""
    thought_stop: list[str] = field(default_factory=lambda: ["\n"])
    """A thought ends at the first of these strings (or at the TTM's end of turn, after which it writes no more)."""
    thought_max_new_tokens: Positive = 64
    """Most tokens per thought."""
    answer_stop: list[str] = field(default_factory=list)
    """Stop strings for the base model's answers."""
    answer_max_new_tokens: Positive = 48
    """Most tokens per base answer."""
    batch_size: Positive = 32
    """Questions answered together; the batch shrinks as questions finish."""
    kv_reuse: bool = True
    """Local models reuse the keys/values of the context they have already encoded."""
    thought_samples: Positive = 1
    """A router that reads the thought (`router.reads: thought`) and rejects it has the TTM write it again, up to this
    many tries in all, sampled at `resample_temperature`, before the question stops (best-of-k; 1: no second try)."""
    resample_temperature: Annotated[float, Gt(0)] = 0.7
    """Sampling temperature of a thought written again after the router rejected one."""
    threshold: float | None = None
    """Override the router's threshold: continue while its score is at least this (null: the trained one)."""
    base: str | GeneratorConfig | None = None
    """Base model folder (null: the run's base/, merged/ if there), or an engine serving it:
    `{base_url, model, tokenizer, api_key_env}` (vLLM, SGLang, llama.cpp, `pseudocot models serve`)."""
    ttm: str | GeneratorConfig | None = None
    """Tiny Thought Model folder (null: the run's last distillation stage), or an engine serving it, as `base`."""
    router: str | None = None
    """Router folder (null: the run's router/)."""

    def validate(self) -> None:
        fields = {"base_prompt": ("question",), "base_prompt_with_thoughts": ("question", "thoughts"),
                  "ttm_prompt": ("question", "answer", "thoughts")}
        for name, allowed in fields.items():
            template = getattr(self, name)
            try:
                template.format(**{k: "" for k in allowed})
            except (KeyError, IndexError, ValueError) as e:
                raise FieldError(name, f"cannot be filled ({type(e).__name__}: {e}); use only "
                                       f"{', '.join('{' + k + '}' for k in allowed)} and write literal braces as {{{{ }}}}") from None
        for role in ("base", "ttm"):
            check_renders(role, getattr(self, role))
