"""The `eval` section: its tasks (`EvalTaskConfig`, also the task a stage scores with), its systems, seeds and
shards (`parse_shard`, which synth's shards use too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pseudocot.config.base import Count, Mode, Positive, Weight
from pseudocot.config.checks import FieldError, Gt, Le, NonEmpty, PlainName, Section
from pseudocot.config.generator import GeneratorConfig, check_renders


@dataclass
class EvalTaskConfig(Section):
    name: str = "arith"
    """Task name: arith, gsm8k, gsm8k_cot, mmlu:<subject>, jsonl, or package.module:attribute."""
    data: str | None = None
    """The task's data (a file, or for MMLU the folder of CSVs; `builtin:gsm8k/test_first100.jsonl` or `builtin:mmlu`: the
    small public subsets shipped with pseudocot); null: the run's data/test.jsonl."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of the task (num_fewshot, fewshot, fields, extraction, primary, ...), as `pseudocot.tasks.get_task` takes them."""
    loglikelihood: bool = False
    """Multiple-choice tasks: the answer is the option letter the (base) model finds most likely after its final
    prompt, thoughts included (lm-evaluation-harness's MMLU number); the letter in the generated text is reported beside."""

    def identity(self) -> dict[str, Any]:
        """What names the task in a freshness key: its name and options."""
        return {"name": self.name, "options": self.options}


@dataclass
class SystemConfig(Section):
    name: Annotated[str, PlainName()]
    """Name of the system in results, tables and figures (never, always, router, ...)."""
    kind: Literal["pipeline", "model"] = "pipeline"
    """pipeline: the run's base + TTM + router in `mode`; model: one model answering alone (`model`)."""
    mode: Mode = "router"
    """Pipeline mode (kind pipeline)."""
    base: str | GeneratorConfig | None = None
    """pipeline: the base model, a folder or an engine serving it, as `pipeline.base` (null: pipeline.base, else the run's)."""
    ttm: str | GeneratorConfig | None = None
    """pipeline: the Tiny Thought Model, as `base` (null: pipeline.ttm, else the run's last distillation stage)."""
    router: str | None = None
    """pipeline: the router folder (null: pipeline.router, else the run's router/)."""
    threshold: float | None = None
    """pipeline, mode router: override the router's threshold (null: pipeline.threshold, else the trained one)."""
    max_thoughts: Count | None = None
    """pipeline: most thoughts per question (null: pipeline.max_thoughts; a trained router's own for router/depth)."""
    model: str | GeneratorConfig | None = None
    """model: the model that answers: a folder, or a mapping as `synth.teacher` takes: `{path, adapter}` (a LoRA
    adapter merged into its base), or an OpenAI-compatible endpoint `{base_url, model, api_key_env, chat,
    concurrency}`. Its `chat` (default true) sends chat messages (a local model's chat template, or
    /chat/completions) rather than the task's plain few-shot text (/completions)."""
    max_new_tokens: Positive = 256
    """model: most tokens generated per answer."""
    temperature: Weight = 0.0
    """model: sampling temperature; 0 is greedy, and then one generation stands for every seed."""
    top_p: Annotated[float, Gt(0), Le(1)] = 1.0
    """model: nucleus sampling mass (temperature > 0)."""
    stop: list[str] = field(default_factory=list)
    """model: stop strings, added to the task's own."""
    parameters: Positive | None = None
    """Parameter count for the accuracy-against-size figure; null: counted from the local models (endpoints: left out)."""

    def validate(self) -> None:
        if self.kind == "model" and self.model is None:
            raise FieldError("model", "is needed for kind model: a model folder, or {base_url, model} for an endpoint")
        if self.kind == "pipeline":
            if self.model is not None:
                raise FieldError("model", "is for kind model; a pipeline system's base model is `base`")
            for role in ("base", "ttm"):
                check_renders(role, getattr(self, role))

    def generator(self) -> GeneratorConfig:
        """Kind model: its model as a `GeneratorConfig` (a folder given alone is its `path`)."""
        return GeneratorConfig(path=self.model) if isinstance(self.model, str) else self.model  # type: ignore[return-value]


@dataclass
class EvalConfig(Section):
    tasks: Annotated[list[EvalTaskConfig], NonEmpty()] = field(default_factory=lambda: [EvalTaskConfig()])
    """Tasks to evaluate on; the first is the primary one (the top-level view of results.json)."""
    systems: Annotated[list[SystemConfig], NonEmpty()] = field(default_factory=lambda: [
        SystemConfig(name="never", mode="never"), SystemConfig(name="always", mode="always"),
        SystemConfig(name="router", mode="router")])
    """Systems to evaluate; each pair of them is compared on the same questions."""
    seeds: Annotated[list[int], NonEmpty()] = field(default_factory=lambda: [0])
    """Sampling seeds: a system with temperature > 0 generates once per seed and its numbers are averaged; greedy systems generate once."""
    max_questions: Positive | None = None
    """Evaluate the first this many questions of each task (null: all)."""
    n_boot: Positive = 10000
    """Bootstrap resamples of every interval."""
    chunk_questions: Positive = 64
    """Questions generated between two writes of the generation cache (a killed evaluation loses at most one chunk)."""
    batch_size: Positive = 32
    """Prompts a local model of kind hf generates together."""
    shard: str | None = None
    """This process's share of the questions, `i/n` (0 <= i < n; contiguous blocks); null: all. Results are
    written once every shard is done (or by `pseudocot eval merge`)."""
    out: str | None = None
    """Output folder; null: the run's eval/."""

    def validate(self) -> None:
        for what, names in (("tasks", [t.name for t in self.tasks]), ("systems", [s.name for s in self.systems])):
            twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
            if twice is not None:
                raise FieldError(what, f"names '{twice}' twice; give each its own name")
        if self.shard is not None:
            parse_shard(self.shard)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`"1/4"` -> (1, 4); None or "" -> None (every question)."""
    if text is None or text == "":
        return None
    i, sep, n = str(text).partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise FieldError("shard", f"must be i/n with 0 <= i < n (e.g. 0/4 for the first of four), got {text!r}")
    return index, count
