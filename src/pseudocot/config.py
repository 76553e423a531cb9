"""Typed configuration: dataclasses with a docstring under every field, YAML in and out.

A YAML file is an instance of `Config`. Loading checks every key against the dataclasses, so an
unknown key, a wrong type or a missing required value is one sentence naming the file, its line,
the key and what is valid. Dotted overrides (`train.lr=1e-4`, `data.sources.0.train=x.jsonl`) are
applied after the file. A file may start from a preset with `extends: PRESET_OR_FILE`.

    pseudocot config show demo train.lr=1e-4
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pseudocot.files import atomic_write_text

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "demo"


class ConfigError(ValueError):
    """A config problem the user can fix; the message is one sentence saying what and where."""


# --------------------------------------------------------------------------------------------
# The schema. Later stages add their own sections here.
# --------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    name: str = "demo"
    """Run name: stages write into `<out_dir>/<name>/`."""
    out_dir: str = "runs"
    """Folder that holds run folders."""
    seed: int = 0
    """Global random seed for data order, initialisation and sampling."""
    device: str = "auto"
    """Where models run: `auto` (CUDA if present, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`."""
    threads: int | None = None
    """Torch CPU threads per process (null: torch's default). On a small shared CPU, 1 per process is often fastest."""
    parallel_stages: bool = False
    """`pseudocot run`: train the base model in a second process beside the teacher and distillation chain."""


@dataclass
class ArithConfig:
    n_train: int = 4000
    """Number of training problems of the built-in arithmetic task."""
    n_val: int = 500
    """Number of validation problems."""
    n_test: int = 1000
    """Number of held-out test problems (disjoint from train and val by question text)."""
    max_steps: int = 4
    """Largest number of operations k in one problem; k is drawn from 1..max_steps."""
    step_weights: list[float] | None = None
    """Relative frequency of k = 1..max_steps (one weight per k); null means uniform."""
    max_operand: int = 12
    """Largest operand of a step (operands are drawn from 1..max_operand; the start from 2..2*max_operand)."""
    max_value: int = 99
    """Largest value any intermediate or final result may take (all values stay non-negative)."""
    operations: list[str] = field(default_factory=lambda: ["+", "-", "*", "/"])
    """Operations to draw from: any of `+`, `-`, `*`, `/` (division is always exact)."""
    seed: int = 0
    """Seed of the problem generator; the same seed gives byte-identical files."""


@dataclass
class SourceConfig:
    name: str = "arith"
    """Name of this source; it is written into each example's `source` field."""
    format: Literal["arith", "gsm8k", "mmlu", "jsonl", "csv", "hf_disk"] = "arith"
    """How to read it: the built-in task (`arith`, settings under `data.arith`), GSM8K JSONL, MMLU CSV, generic JSONL or CSV, or a `datasets` folder saved with `save_to_disk`."""
    train: str | None = None
    """Training file (for `hf_disk`: `FOLDER` or `FOLDER:SPLIT`); null for a source used only for evaluation."""
    val: str | None = None
    """Validation file; null carves `data.val_fraction` out of the training file."""
    test: str | None = None
    """Test file; null means this source adds nothing to the test split."""
    fields: dict[str, str] = field(default_factory=dict)
    """Field mapping for `jsonl`, `csv` and `hf_disk`: Example field -> column name, e.g. `{question: prompt, answer: label}`."""
    weight: float = 1.0
    """Relative share of this source in the mixed training split (paper section 4.1)."""


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    """Datasets to load; several are mixed so every shard holds the same share of each."""
    arith: ArithConfig = field(default_factory=ArithConfig)
    """Settings of the built-in arithmetic task (used by a source of format `arith`)."""
    val_fraction: float = 0.1
    """Share of a source's training file held out as validation when it has no `val` file."""
    max_train: int | None = None
    """Cap on the mixed training split (null: everything the sources give)."""
    max_val: int | None = None
    """Cap on the validation split (null: no cap)."""
    max_test: int | None = None
    """Cap on the test split (null: no cap)."""
    skip_bad: bool = False
    """Skip malformed rows (written with their reasons to `data/rejects.jsonl`) instead of stopping."""
    seed: int = 0
    """Seed for shuffling, the validation carve-out and mixing."""


@dataclass
class TokenizerConfig:
    train: bool = False
    """Train a BPE tokenizer on the run's training data into `<run>/tokenizer/` (for tiny models trained from scratch)."""
    vocab_size: int = 384
    """Vocabulary size of a trained tokenizer (special tokens and the byte alphabet included)."""
    min_frequency: int = 2
    """A merge must occur at least this often in the training text to be learned."""


@dataclass
class TrainConfig:
    lr: float = 1e-3
    """Peak learning rate."""
    max_steps: int = 300
    """Optimizer steps."""
    batch_size: int = 32
    """Examples per device per micro-batch."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = 0.05
    """Share of steps spent warming the learning rate up linearly."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 turns clipping off)."""
    max_length: int = 256
    """Longest tokenized example; longer ones are cut at the end."""
    save_every_steps: int = 100
    """Write a resumable checkpoint every this many steps (a killed run restarts from the last one)."""
    eval_every_steps: int = 0
    """Validation loss every this many steps during training (0: only at the end)."""
    log_every_steps: int = 10
    """Log the training loss every this many steps."""
    bf16: bool | None = None
    """bf16 mixed precision; null turns it on where a CUDA GPU supports it and off on CPU."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on large models."""
    group_by_length: bool = False
    """Batch rows of similar length together: less padding, so faster steps, but less varied batches (on the demo it learnt far less per step)."""


@dataclass
class ModelSpec:
    path: str | None = None
    """A pretrained checkpoint: local HF folder (or hub id when online). Null: build `preset` from scratch."""
    preset: str | None = None
    """A tiny Llama preset (tiny-xs, tiny-s, tiny-m, tiny-l) initialised from scratch on the run's tokenizer."""
    tokenizer: str | None = None
    """Tokenizer folder; null: the checkpoint's own, or the run's trained tokenizer for a preset."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on a capable GPU, fp32 on CPU), float32, bfloat16, float16."""
    trust_remote_code: bool = False
    """Run the checkpoint's own Python code (only for checkpoints you trust)."""


@dataclass
class LoraConfig:
    r: int = 32
    """LoRA rank."""
    alpha: int = 64
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])
    """Names of the linear layers that get adapters."""


@dataclass
class FinetuneConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model to fine-tune."""
    method: Literal["full", "lora", "qlora"] = "lora"
    """Full fine-tuning, LoRA, or QLoRA (4-bit base; needs CUDA and bitsandbytes)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings for `lora` and `qlora`."""
    with_reasoning: bool = True
    """Train on the reference reasoning and the answer (true), or on the answer alone (false)."""
    thoughts_in_context: bool = False
    """Also train on each question with its first j gold reasoning lines as thoughts in the prompt (j = 1..k+1, the answer line last), rendered as the pipeline renders them: the Pseudo-CoT base."""
    system_prompt: str | None = None
    """A system message put before every question (null: none)."""
    train_file: str | None = None
    """Training data (Example JSONL); null: the run's `data/train.jsonl`."""
    val_file: str | None = None
    """Validation data; null: the run's `data/val.jsonl`."""
    merge: bool = False
    """With LoRA, also save the merged full model in `<out>/merged/`."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings (keys not given here come from the top-level `train`)."""


@dataclass
class DistillStageConfig:
    name: str | None = None
    """Folder name under `<run>/distill/`; null: `stage-<i>`."""
    student: ModelSpec = field(default_factory=ModelSpec)
    """The student of this stage (it becomes the next stage's teacher)."""
    method: Literal["full", "lora", "qlora"] = "full"
    """Train the student fully, with LoRA, or with QLoRA."""
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(target_modules=["q_proj", "k_proj"]))
    """Adapter settings for `lora` and `qlora` (the paper adapts q and k only)."""
    ce_weight: float = 0.5
    """Weight of cross-entropy on the data."""
    fkl_weight: float = 0.5
    """Weight of forward KL(teacher || student)."""
    rkl_weight: float = 0.0
    """Weight of reverse KL(student || teacher)."""
    temperature: float = 1.0
    """Softening temperature of both distributions in the KL terms."""
    train_file: str | None = None
    """Training data of this stage; null: the run's `data/train.jsonl`."""
    val_file: str | None = None
    """Validation data; null: the run's `data/val.jsonl`."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings (keys not given here come from the top-level `train`)."""


@dataclass
class DistillConfig:
    teacher: ModelSpec = field(default_factory=ModelSpec)
    """Stage 1's teacher; with path and preset null, the run's fine-tuned reasoning teacher (`<run>/teacher/`)."""
    stages: list[DistillStageConfig] = field(default_factory=list)
    """The chain: stage i's teacher is stage i-1's student; the last student is the Tiny Thought Model."""
    mode: Literal["online", "cached"] = "online"
    """`online`: one teacher forward per batch; `cached`: the teacher runs once and its top-k log-probabilities are stored."""
    top_k: int = 64
    """How many teacher log-probabilities per token the cache keeps."""
    chunk_size: int | None = None
    """Tokens per chunk of the loss, so full-vocabulary logits never exist at once; null: about 32 M logits per chunk (256 tokens at a 128k vocabulary)."""
    with_reasoning: bool = True
    """Distil on reasoning + answer (true) or the answer alone (false)."""
    system_prompt: str | None = None
    """A system message put before every question (null: none)."""
    ce_only_baseline: bool = False
    """Also train the last stage's student with cross-entropy only, same data and steps, and report it beside."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 96
    """Most tokens generated per completion."""
    temperature: float = 0.0
    """Sampling temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (used when temperature > 0)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends at the first one, which is not part of the returned text."""
    batch_size: int = 32
    """Prompts generated together in one batch."""


@dataclass
class PipelineConfig:
    mode: Literal["never", "always", "router", "depth"] = "router"
    """never: the base alone; always: max_thoughts thoughts; router: the router decides after each answer; depth: the depth router picks the number of thoughts from the question."""
    max_thoughts: int = 4
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
    """Open the TTM's own turn with the thoughts so far, one per line, so it writes the next line (how a reasoning model trained on step-by-step answers continues)."""
    ttm_system_prompt: str | None = None
    """A system message for the TTM (null: none)."""
    thought_stop: list[str] = field(default_factory=lambda: ["\n"])
    """A thought ends at the first of these strings (or at the TTM's end of turn, after which it writes no more)."""
    thought_max_new_tokens: int = 64
    """Most tokens per thought."""
    answer_stop: list[str] = field(default_factory=list)
    """Stop strings for the base model's answers."""
    answer_max_new_tokens: int = 48
    """Most tokens per base answer."""
    batch_size: int = 32
    """Questions answered together; the batch shrinks as questions finish."""
    kv_reuse: bool = True
    """Local models reuse the keys/values of the context they have already encoded."""
    threshold: float | None = None
    """Override the router's threshold: continue while its score is at least this (null: the trained one)."""
    base: str | None = None
    """Base model folder (null: the run's base/, merged/ if there)."""
    ttm: str | None = None
    """Tiny Thought Model folder (null: the run's last distillation stage)."""
    router: str | None = None
    """Router folder (null: the run's router/)."""


@dataclass
class RouterConfig:
    train_questions: int = 1000
    """Training questions whose base-model traces (thoughts forced to max_thoughts) label the router."""
    val_questions: int = 300
    """Validation questions: early stopping, the threshold and the cost-accuracy curve."""
    features: list[str] = field(default_factory=lambda: ["hidden", "logprobs", "iteration", "changed"])
    """Router inputs: hidden (the base model's final hidden state, pooled), logprobs (answer token log-probability statistics), iteration, changed (the answer differs from the previous one)."""
    hidden_size: int = 64
    """Width of the MLP's hidden layer."""
    dropout: float = 0.1
    """Dropout in the MLP."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    batch_size: int = 256
    """Router training rows per step."""
    max_epochs: int = 300
    """Most passes over the training rows."""
    patience: int = 25
    """Stop after this many epochs without a better validation loss (the best epoch is kept)."""
    objective: Literal["penalty", "call_rate"] = "penalty"
    """How the threshold is chosen on validation: maximise accuracy - penalty x call rate, or the best accuracy at most target_call_rate."""
    penalty: float = 0.05
    """Accuracy given up per unit of call rate (call rate 1 = as many thoughts as always)."""
    target_call_rate: float = 0.5
    """Call-rate budget (relative to always) for objective call_rate."""
    depth: bool = True
    """Also train the depth router (question only -> number of thoughts) for mode depth."""
    seed: int = 0
    """Seed of the MLP's initialisation and batches."""


@dataclass
class EvalTaskConfig:
    name: str = "arith"
    """Task name: arith, gsm8k, gsm8k_cot, mmlu:<subject>, jsonl, or package.module:attribute."""
    data: str | None = None
    """The task's data (a file, or for MMLU the folder of CSVs); null: the run's data/test.jsonl."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of the task (num_fewshot, fewshot, fields, extraction, ...), as `pseudocot.tasks.get_task` takes them."""


@dataclass
class SystemConfig:
    name: str
    """Name of the system in results, tables and figures (never, always, router, ...)."""
    kind: Literal["pipeline", "hf", "openai"] = "pipeline"
    """pipeline: the run's base + TTM + router in `mode`; hf: one local model (with `adapter`: a LoRA adapter merged in); openai: an OpenAI-compatible endpoint."""
    mode: Literal["never", "always", "router", "depth"] = "router"
    """Pipeline mode (kind pipeline)."""
    model: str | None = None
    """hf: the model folder; openai: the endpoint's model name; pipeline: the base model folder (null: pipeline.base, else the run's)."""
    adapter: str | None = None
    """hf: a LoRA adapter folder merged into `model` (null `model`: the base the adapter names)."""
    ttm: str | None = None
    """pipeline: the Tiny Thought Model folder (null: pipeline.ttm, else the run's last distillation stage)."""
    router: str | None = None
    """pipeline: the router folder (null: pipeline.router, else the run's router/)."""
    threshold: float | None = None
    """pipeline, mode router: override the router's threshold (null: pipeline.threshold, else the trained one)."""
    max_thoughts: int | None = None
    """pipeline: most thoughts per question (null: pipeline.max_thoughts; a trained router's own for router/depth)."""
    base_url: str | None = None
    """openai: the endpoint, e.g. http://localhost:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: the environment variable that holds the API key (keys never go into configs or results)."""
    chat: bool = True
    """hf/openai: chat messages (the tokenizer's chat template, or /chat/completions) rather than plain text (/completions)."""
    max_new_tokens: int = 256
    """hf/openai: most tokens generated per answer."""
    temperature: float = 0.0
    """hf/openai: sampling temperature; 0 is greedy, and then one generation stands for every seed."""
    top_p: float = 1.0
    """hf/openai: nucleus sampling mass (temperature > 0)."""
    stop: list[str] = field(default_factory=list)
    """hf/openai: stop strings, added to the task's own."""
    concurrency: int = 8
    """openai: requests in flight at once."""
    parameters: int | None = None
    """Parameter count for the accuracy-against-size figure; null: counted from the local models (endpoints: left out)."""


@dataclass
class EvalConfig:
    tasks: list[EvalTaskConfig] = field(default_factory=lambda: [EvalTaskConfig()])
    """Tasks to evaluate on; the first is the primary one (the top-level view of results.json)."""
    systems: list[SystemConfig] = field(default_factory=lambda: [
        SystemConfig(name="never", mode="never"), SystemConfig(name="always", mode="always"),
        SystemConfig(name="router", mode="router")])
    """Systems to evaluate; each pair of them is compared on the same questions."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Sampling seeds: a system with temperature > 0 generates once per seed and its numbers are averaged; greedy systems generate once."""
    max_questions: int | None = None
    """Evaluate the first this many questions of each task (null: all)."""
    n_boot: int = 10000
    """Bootstrap resamples of every interval."""
    chunk_questions: int = 64
    """Questions generated between two writes of the generation cache (a killed evaluation loses at most one chunk)."""
    shard: str | None = None
    """This process's share of the questions, `i/n` (0 <= i < n; contiguous blocks); null: all. Results are written once every shard is done (or by `pseudocot eval merge`)."""
    out: str | None = None
    """Output folder; null: the run's eval/."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Run name, output folder, seed, device."""
    data: DataConfig = field(default_factory=DataConfig)
    """Which data, how it is split and mixed."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer of the tiny models (ignored when real checkpoints bring their own)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Defaults for every training stage: a stage's own `train` keys override these."""
    teacher: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(method="full", with_reasoning=True))
    """The reasoning teacher, fine-tuned on step-by-step data (`pseudocot finetune --role teacher`)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """The distillation chain that makes the Tiny Thought Model (`pseudocot distill`)."""
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
    """The base LLM, fine-tuned on task data (`pseudocot finetune`)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Decoding settings."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """The Pseudo-CoT loop: base answers, router decides, TTM thinks (`pseudocot chat`, evaluation)."""
    router: RouterConfig = field(default_factory=RouterConfig)
    """The router, trained on the base model's traces (`pseudocot router`)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Systems x tasks -> results.json, report.md, figures (`pseudocot eval`)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


# --------------------------------------------------------------------------------------------
# Field docstrings (read from the source, so the docs live in one place).
# --------------------------------------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Return {field name: docstring} for a dataclass whose fields carry a string literal below."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


# --------------------------------------------------------------------------------------------
# YAML with line numbers.
# --------------------------------------------------------------------------------------------


class _Src:
    """Where a value came from: a file and the line of each dotted key, for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self.overrides: dict[str, str] = {}

    def where(self, key: str) -> str:
        for k, text in self.overrides.items():
            if key == k or key.startswith(k + "."):
                return f"override '{text}'"
        line = self.lines.get(key)
        return f"{self.file}:{line}" if line else self.file


def _node_to_python(node: yaml.Node, prefix: str, src: _Src) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for k_node, v_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(k_node)))
            path = f"{prefix}.{key}" if prefix else key
            if key in out:
                raise ConfigError(f"{src.file}:{k_node.start_mark.line + 1}: key '{path}' appears twice; keep one.")
            src.lines[path] = k_node.start_mark.line + 1
            out[key] = _node_to_python(v_node, path, src)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            path = f"{prefix}.{i}"
            src.lines[path] = item.start_mark.line + 1
            items.append(_node_to_python(item, path, src))
        return items
    return yaml.safe_load(yaml.serialize(node))


def _read_yaml(path: Path, src: _Src) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax.") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror}).") from None
    if node is None:
        return {}
    data = _node_to_python(node, "", src)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of sections, not a {type(data).__name__}.")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A path to an existing file, or the name of a preset in `configs/`."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    preset = PRESET_DIR / f"{p.name}.yaml"
    if not p.suffix and preset.is_file():
        return preset
    raise ConfigError(
        f"no config file or preset named '{name_or_path}'; give a YAML file or one of the presets: {', '.join(presets())}."
    )


def _load_raw(path: Path, src: _Src, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back to a file that extends it; remove the cycle.")
    data = _read_yaml(path, src)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{src.where('extends')}: 'extends' must be a preset name or a file path.")
    parent_path = resolve_config_path(parent if Path(parent).is_absolute() or not (path.parent / parent).is_file() else path.parent / parent)
    parent_src = _Src(str(parent_path))
    base = _load_raw(parent_path, parent_src, seen + (path.resolve(),))
    # Lines of the child win; keys only in the parent keep the parent's file in messages.
    for k, line in parent_src.lines.items():
        src.lines.setdefault(k, line)
    return _deep_merge(base, data)


# --------------------------------------------------------------------------------------------
# Overrides.
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (["a", "b", "c"], VALUE parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' is not of the form section.key=value (e.g. train.lr=1e-4).")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _apply_override(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ConfigError(f"override '{text}': '{'.'.join(keys[: i + 1])}' is not an index of a list of {len(node)}.")
            node = node[int(k)]
        else:
            if not isinstance(node.get(k), (dict, list)):
                node[k] = {}
            node = node[k]
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override '{text}': '{last}' is not an index of a list of {len(node)}.")
        node[int(last)] = value
    else:
        node[last] = value


# --------------------------------------------------------------------------------------------
# Typed conversion.
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, src: _Src) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"{src.where(key)}: key '{key}' must be {_type_name(tp)}, got {value!r}.")

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, key, src)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, src)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise bad()
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad()
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}.{i}", src) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        _, v_tp = typing.get_args(tp)
        return {str(k): _convert(v, v_tp, f"{key}.{k}", src) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        # PyYAML reads `1e-4` (no dot) as a string: accept any string that is a number.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    raise bad()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict[str, Any], prefix: str, src: _Src) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            where = f"under '{prefix}'" if prefix else "at the top level"
            raise ConfigError(f"{src.where(key)}: unknown key '{key}'; valid keys {where}: {', '.join(fields)}.")
        f = fields[k]
        if isinstance(v, dict) and dataclasses.is_dataclass(hints[k]) and f.default_factory is not dataclasses.MISSING:
            # A partial section starts from the field's own default (which may differ from the class defaults).
            v = _deep_merge(dataclasses.asdict(f.default_factory()), v)
        elif isinstance(v, dict) and v and all(str(i).isdigit() for i in v) and typing.get_origin(hints[k]) is list \
                and f.default_factory is not dataclasses.MISSING:
            v = _patch_default_list(f.default_factory(), v, key, src)
        kwargs[k] = _convert(v, hints[k], key, src)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{src.file}: missing required key '{key}' ({field_docs(cls).get(name, '')}).")
    return cls(**kwargs)


def _patch_default_list(default: list[Any], items: dict[str, Any], key: str, src: _Src) -> list[Any]:
    """An override such as `eval.systems.2.threshold=0.3` on a list the file does not write out: the
    field's default list with item 2 changed."""
    out = [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x for x in default]
    for i, item in items.items():
        if int(i) >= len(out):
            where = next((f"override '{text}'" for k, text in src.overrides.items() if k.startswith(f"{key}.{i}")), src.where(key))
            raise ConfigError(f"{where}: '{key}.{i}' is not an index of the default list of {len(out)}; "
                              f"write the list '{key}' out in the config file.")
        out[int(i)] = _deep_merge(out[int(i)], item) if isinstance(item, dict) and isinstance(out[int(i)], dict) else item
    return out


def from_dict(data: dict[str, Any], cls: type = Config, file: str = "<dict>") -> Any:
    """Build a config dataclass from plain data, with the same checks as a YAML file."""
    return _build(cls, data, "", _Src(file))


def load_config(name_or_path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset or YAML file, apply dotted overrides, and check every key and type."""
    path = resolve_config_path(name_or_path or DEFAULT_PRESET)
    src = _Src(str(path))
    data = _load_raw(path, src)
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value, text)
        src.overrides[".".join(keys)] = text
    _inherit_train(data)
    return _build(Config, data, "", src)


def _inherit_train(data: dict[str, Any]) -> None:
    """Give every stage's `train` the top-level `train` keys it does not set itself."""
    shared = data.get("train")
    if not isinstance(shared, dict) or not shared:
        return
    stages: list[Any] = [data.setdefault(role, {}) for role in ("teacher", "base")]
    distill = data.get("distill")
    if isinstance(distill, dict) and isinstance(distill.get("stages"), list):
        stages += distill["stages"]
    for stage in stages:
        if isinstance(stage, dict) and isinstance(stage.get("train", {}), dict):
            stage["train"] = _deep_merge(shared, stage.get("train") or {})


# --------------------------------------------------------------------------------------------
# Writing configs back out.
# --------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def to_yaml(cfg: Any, comments: bool = True, indent: int = 0) -> str:
    """The config as YAML, each field preceded by its docstring as a comment; loads back equal."""
    lines: list[str] = []
    pad = " " * indent
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if comments and docs.get(f.name):
            lines.append(f"{pad}# {docs[f.name]}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(to_yaml(value, comments, indent + 2).rstrip("\n"))
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            # A list of sections as a block sequence: "- " opens each item's mapping.
            lines.append(f"{pad}{f.name}:")
            for item in value:
                body = to_yaml(item, False, indent + 4).rstrip("\n")
                lines.append(f"{pad}  - " + body[indent + 4 :])
        else:
            lines.append(f"{pad}{f.name}: {_scalar(to_dict(value) if not isinstance(value, list) else [to_dict(v) for v in value])}")
    return "\n".join(lines) + "\n"


def config_hash(section: Any) -> str:
    """A short stable hash of a config (or part of one), for telling whether a stage's output is current."""
    blob = json.dumps(to_dict(section), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config atomically (every default written out)."""
    return atomic_write_text(path, to_yaml(cfg))
