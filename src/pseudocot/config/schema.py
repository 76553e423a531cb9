"""The config schema: one typed dataclass per section, a docstring under every field, and the
validation that a value can be given (types, `Literal` choices, bounds, cross-field rules).

A YAML file is an instance of `Config` (`pseudocot.config.loader` reads it). Bounds are written in the
type, `Annotated[int, Ge(1)]`; rules that span fields are a section's `validate()`. Both run when a
section is built (`config.checks.Section`), from a file or in Python, and raise `FieldError`, which
the loader turns into one line naming the file:line of the key.

    pseudocot config show demo        # every field, its value and its docstring
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import string
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pseudocot.config.checks import FieldError, Ge, Gt, Le, Lt, NonEmpty, PlainName, Section, Unique

Count = Annotated[int, Ge(0)]
Positive = Annotated[int, Ge(1)]
Fraction = Annotated[float, Ge(0), Le(1)]
Weight = Annotated[float, Ge(0)]

TinyPreset = Literal["tiny-3xs", "tiny-2xs", "tiny-xs", "tiny-xs-3l", "tiny-s", "tiny-m", "tiny-l"]
"""The tiny Llama sizes of `pseudocot.models.tiny` (its PRESETS table has exactly these keys)."""
Dtype = Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]
Mode = Literal["never", "always", "router", "depth"]
RouterFeature = Literal["hidden", "logprobs", "iteration", "changed", "thought"]
ArithOp = Literal["+", "-", "*", "/"]

MIN_TOKENIZER_VOCAB = 256 + 7
"""A trained tokenizer holds the 256 byte symbols and the 7 special tokens of `models.tokenizer`."""


# --------------------------------------------------------------------------------------------
# The sections.
# --------------------------------------------------------------------------------------------
@dataclass
class RunConfig(Section):
    name: Annotated[str, PlainName()] = "demo"
    """Run name: stages write into `<out_dir>/<name>/`."""
    out_dir: str = "runs"
    """Folder that holds run folders."""
    seed: int = 0
    """Global random seed for data order, initialisation and sampling."""
    device: str = "auto"
    """Where models run: `auto` (CUDA if present, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`."""
    threads: Annotated[int, Ge(1)] | None = None
    """Torch CPU threads per process (null: torch's default). On a small shared CPU, 1 per process is often fastest."""
    parallel_stages: bool = False
    """`pseudocot run`: train the base model in a second process beside the teacher and distillation chain."""

    def validate(self) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise FieldError("device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass
class ArithConfig(Section):
    n_train: Count = 4000
    """Number of training problems of the built-in arithmetic task."""
    n_val: Count = 500
    """Number of validation problems."""
    n_test: Count = 1000
    """Number of held-out test problems (disjoint from train and val by question text)."""
    max_steps: Positive = 4
    """Largest number of operations k in one problem; k is drawn from 1..max_steps."""
    step_weights: list[Weight] | None = None
    """Relative frequency of k = 1..max_steps (one weight per k); null means uniform."""
    max_operand: Annotated[int, Ge(2)] = 12
    """Largest operand of a step (operands are drawn from 1..max_operand; the start from 2..2*max_operand)."""
    max_value: int = 99
    """Largest value any intermediate or final result may take (all values stay non-negative); at least 2 * max_operand."""
    operations: Annotated[list[ArithOp], NonEmpty()] = field(default_factory=lambda: ["+", "-", "*", "/"])
    """Operations to draw from: any of `+`, `-`, `*`, `/` (division is always exact)."""
    seed: int = 0
    """Seed of the problem generator; the same seed gives byte-identical files."""

    def validate(self) -> None:
        if self.step_weights is not None and (len(self.step_weights) != self.max_steps or sum(self.step_weights) <= 0):
            raise FieldError("step_weights", f"needs {self.max_steps} non-negative weights (one per k = 1..max_steps) "
                                             "with a positive sum")
        if self.max_value < 2 * self.max_operand:
            raise FieldError("max_value", f"must be at least 2 * max_operand = {2 * self.max_operand}, got {self.max_value}")


@dataclass
class SourceConfig(Section):
    name: Annotated[str, PlainName()] = "arith"
    """Name of this source; it is written into each example's `source` field."""
    format: Literal["arith", "gsm8k", "mmlu", "jsonl", "csv", "hf_disk", "questions"] = "arith"
    """How to read it: the built-in task (`arith`, settings under `data.arith`), GSM8K JSONL, MMLU CSV, generic
    JSONL or CSV, a `datasets` folder saved with `save_to_disk`, or `questions`: the questions stage's kept questions
    from `synth.documents`, split by document (no files to name)."""
    train: str | None = None
    """Training file (for `hf_disk`: `FOLDER` or `FOLDER:SPLIT`); null for a source used only for evaluation."""
    val: str | None = None
    """Validation file; null carves `data.val_fraction` out of the training file."""
    test: str | None = None
    """Test file; null means this source adds nothing to the test split."""
    fields: dict[str, str] = field(default_factory=dict)
    """Field mapping for `jsonl`, `csv` and `hf_disk`: Example field -> column name, e.g. `{question: prompt, answer: label}`."""
    weight: Annotated[float, Gt(0)] = 1.0
    """Relative share of this source in the mixed training split (paper section 4.1)."""


@dataclass
class DataConfig(Section):
    sources: Annotated[list[SourceConfig], NonEmpty()] = field(default_factory=lambda: [SourceConfig()])
    """Datasets to load; several are mixed so every shard holds the same share of each."""
    arith: ArithConfig = field(default_factory=ArithConfig)
    """Settings of the built-in arithmetic task (used by a source of format `arith`)."""
    val_fraction: Annotated[float, Ge(0), Lt(1)] = 0.1
    """Share of a source's training file held out as validation when it has no `val` file."""
    max_train: Count | None = None
    """Cap on the mixed training split (null: everything the sources give)."""
    max_val: Count | None = None
    """Cap on the validation split (null: no cap)."""
    max_test: Count | None = None
    """Cap on the test split (null: no cap)."""
    skip_bad: bool = False
    """Skip malformed rows (written with their reasons to `data/rejects.jsonl`) instead of stopping."""
    seed: int = 0
    """Seed for shuffling, the validation carve-out and mixing."""

    def validate(self) -> None:
        names = [s.name for s in self.sources]
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise FieldError("sources", f"uses the name '{twice}' twice; give each source its own name")


@dataclass
class TokenizerConfig(Section):
    train: bool = False
    """Train a BPE tokenizer on the run's training data into `<run>/tokenizer/` (for tiny models trained from scratch)."""
    vocab_size: Annotated[int, Ge(MIN_TOKENIZER_VOCAB)] = 384
    """Vocabulary size of a trained tokenizer (special tokens and the byte alphabet included: at least 263)."""
    min_frequency: Positive = 2
    """A merge must occur at least this often in the training text to be learned."""


@dataclass
class TrainConfig(Section):
    lr: Annotated[float, Gt(0)] = 1e-3
    """Peak learning rate."""
    max_steps: Positive = 300
    """Optimizer steps."""
    batch_size: Positive = 32
    """Examples per device per micro-batch."""
    grad_accum_steps: Positive = 1
    """Micro-batches accumulated per optimizer step."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: Fraction = 0.05
    """Share of steps spent warming the learning rate up linearly."""
    weight_decay: Weight = 0.0
    """AdamW weight decay."""
    max_grad_norm: Weight = 1.0
    """Gradient clipping norm (0 turns clipping off)."""
    max_length: Annotated[int, Ge(2)] = 256
    """Longest tokenized example; longer ones are cut at the end."""
    save_every_steps: Positive = 100
    """Write a resumable checkpoint every this many steps (a killed run restarts from the last one)."""
    eval_every_steps: Count = 0
    """Validation loss every this many steps during training (0: only at the end)."""
    val_examples: Positive | None = 256
    """Validation uses at most the first this many examples of the split, during and after training (null: all);
    a few hundred suit tiny models, a real model wants fewer (64)."""
    log_every_steps: Positive = 10
    """Log the training loss every this many steps."""
    bf16: bool | None = None
    """bf16 autocast over fp32 weights; null: bf16 on a CUDA GPU that supports it, fp32 on a CPU (bf16 moved the demo's
    result there). true on a CPU needs AVX512-BF16 or AMX and a bf16 matmul measured faster; elsewhere it is refused."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on large models."""
    fsdp: bool = False
    """Shard the trained model's weights, gradients and optimizer state across the ranks of `torchrun` / `accelerate
    launch` (PyTorch FSDP2, one unit per decoder layer, a full state dict saved from rank 0); a distillation teacher
    stays whole on each rank. GPUs only: accelerate runs CPU processes as DDP. README "Training sharded" has the memory
    plan."""
    fsdp_cpu_offload: bool = False
    """With `fsdp`: keep the sharded parameters and optimizer state in CPU memory between uses (slower; for a model
    whose states do not fit the GPUs)."""
    group_by_length: bool = False
    """Batch rows of similar length together: less padding, so faster steps, but less varied batches (on the demo it learnt far less per step)."""


@dataclass
class ModelSpec(Section):
    path: str | None = None
    """A pretrained checkpoint: local HF folder (or hub id when online). Null: build `preset` from scratch."""
    preset: TinyPreset | None = None
    """A tiny Llama preset (tiny-3xs, tiny-2xs, tiny-xs, tiny-xs-3l, tiny-s, tiny-m, tiny-l) initialised from scratch on the
    run's tokenizer."""
    tokenizer: str | None = None
    """Tokenizer folder; null: the checkpoint's own, or the run's trained tokenizer for a preset."""
    dtype: Dtype = "auto"
    """Weights dtype: auto (bf16 on a capable GPU, fp32 on CPU), float32, bfloat16, float16."""
    trust_remote_code: bool = False
    """Run the checkpoint's own Python code (only for checkpoints you trust)."""
    from_: str | None = None
    """(YAML key `from`) A distillation student cut from a model: `teacher` (this stage's teacher) or a model
    folder, keeping `num_layers` or `keep_layers` of its decoder layers (the DistilBERT / Minitron initialisation)."""
    num_layers: Positive | None = None
    """With `from`: keep this many decoder layers, evenly spaced, the first and last kept."""
    keep_layers: Annotated[list[Annotated[int, Ge(0)]], NonEmpty(), Unique()] | None = None
    """With `from`: keep exactly these decoder layers (0-based, increasing)."""

    def validate(self) -> None:
        if self.from_ is None:
            if self.num_layers is not None or self.keep_layers is not None:
                raise FieldError("num_layers" if self.num_layers is not None else "keep_layers",
                                 "needs `from` (teacher or a model folder): the model whose layers are kept")
            return
        if self.path or self.preset:
            raise FieldError("from", "cannot be set with `path` or `preset`: a student is cut from a model, loaded, or built")
        if (self.num_layers is None) == (self.keep_layers is None):
            raise FieldError("from", "needs exactly one of `num_layers` (evenly spaced) or `keep_layers` (a list of layer indices)")
        if self.keep_layers is not None and sorted(self.keep_layers) != self.keep_layers:
            raise FieldError("keep_layers", f"must be increasing, got {self.keep_layers}")


@dataclass
class LoraConfig(Section):
    r: Positive = 32
    """LoRA rank."""
    alpha: Positive = 64
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.05
    """Dropout on the LoRA input."""
    target_modules: Annotated[list[str], NonEmpty()] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])
    """Names of the linear layers that get adapters."""


@dataclass
class FinetuneConfig(Section):
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model to fine-tune."""
    method: Literal["full", "lora", "qlora"] = "lora"
    """Full fine-tuning, LoRA, or QLoRA (4-bit base; needs CUDA and bitsandbytes)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings for `lora` and `qlora`."""
    with_reasoning: bool = True
    """Train on the reference reasoning and the answer (true), or on the answer alone (false)."""
    thoughts_in_context: bool = False
    """Also train on each question with its first j gold reasoning lines as thoughts in the prompt (j = 1..k+1,
    the answer line last), rendered as the pipeline renders them: the Pseudo-CoT base."""
    thoughts_from: Literal["gold", "ttm", "mix"] = "gold"
    """With thoughts_in_context (the base model): whose thoughts its rows carry: the gold reasoning lines, the trained
    Tiny Thought Model's own thoughts on the training questions (right and wrong, as the pipeline writes them, labelled
    with the gold answer), or both. ttm and mix train after the distillation chain and again when the TTM changes."""
    ttm_questions: Positive | None = None
    """thoughts_from ttm or mix: the first this many training questions get the TTM's thoughts (null: all of them)."""
    ttm_temperature: Weight = 0.0
    """thoughts_from ttm or mix: the TTM's sampling temperature (0: greedy, as the pipeline writes thoughts)."""
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

    def validate(self) -> None:
        if self.model.from_:
            raise FieldError("model.from", "is for distillation students (distill.stages[i].student); give a fine-tuned model a `path`")
        if self.method != "full" and self.model.preset and not self.model.path:
            raise FieldError("method", f"{self.method} needs a pretrained model.path; a tiny preset is trained from "
                                       "scratch, so use method: full")
        if self.thoughts_from != "gold" and not self.thoughts_in_context:
            raise FieldError("thoughts_from", f"is {self.thoughts_from}, which needs thoughts_in_context: true (rows with "
                                              "thoughts in the prompt)")
        if self.thoughts_from == "gold":
            for name, value, default in (("ttm_questions", self.ttm_questions, None), ("ttm_temperature", self.ttm_temperature, 0.0)):
                if value != default:
                    raise FieldError(name, f"is {value}, but thoughts_from is gold, which never asks the TTM for thoughts; "
                                           "remove it or set thoughts_from to ttm or mix")


@dataclass
class TeacherWritesConfig(Section):
    """Sequence-level distillation (Kim & Rush 2016): the stage's teacher writes the student's training solutions."""

    questions: Positive | None = None
    """The first this many questions of the stage's training data (null: every one)."""
    max_new_tokens: Positive = 256
    """Most tokens per solution (one cut off here fails the filter's format check)."""
    batch_size: Positive = 64
    """Questions generated together: a killed stage writes its last batch again, and the same batch size gives the
    same solutions (greedy decoding of a padded batch can differ in the last float bits from another size)."""


@dataclass
class DistillStageConfig(Section):
    name: Annotated[str, PlainName()] | None = None
    """Folder name under `<run>/distill/`; null: `stage-<i>`."""
    student: ModelSpec = field(default_factory=ModelSpec)
    """The student of this stage (it becomes the next stage's teacher)."""
    method: Literal["full", "lora", "qlora"] = "full"
    """Train the student fully, with LoRA, or with QLoRA."""
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(target_modules=["q_proj", "k_proj"]))
    """Adapter settings for `lora` and `qlora` (the paper adapts q and k only)."""
    ce_weight: Weight = 0.5
    """Weight of cross-entropy on the data."""
    fkl_weight: Weight = 0.5
    """Weight of forward KL(teacher || student)."""
    rkl_weight: Weight = 0.0
    """Weight of reverse KL(student || teacher)."""
    jsd_weight: Weight = 0.0
    """Weight of the generalised Jensen-Shannon divergence (TRL's GKD loss) between teacher and student."""
    jsd_beta: Fraction = 0.5
    """JSD interpolation: 0 is forward KL, 1 is reverse KL (TRL's convention)."""
    skew_fkl_weight: Weight = 0.0
    """Weight of skew forward KL(teacher || skew_alpha * teacher + (1 - skew_alpha) * student)."""
    skew_rkl_weight: Weight = 0.0
    """Weight of skew reverse KL(student || skew_alpha * student + (1 - skew_alpha) * teacher)."""
    skew_alpha: Fraction = 0.1
    """Skew of the skew KL terms: 0 gives the plain KL."""
    temperature: Annotated[float, Gt(0)] = 1.0
    """Softening temperature of both distributions in the teacher terms (KL, JSD, skew KL)."""
    on_policy: Fraction = 0.0
    """Share of batches on which the student writes its own completions of the batch's prompts and learns from the
    teacher's scores of every token it wrote (on-policy distillation, TRL's `lmbda`); 0: always the data's completions."""
    on_policy_from_step: Count = 0
    """On-policy batches start at this optimizer step; before it every batch is the data's (a student trained from
    scratch writes noise at first, and the teacher's scores of noise teach it little)."""
    on_policy_loss: Literal["rkl", "mix"] = "rkl"
    """On the student's own completions: per-token reverse KL(student || teacher), or the stage's teacher terms with
    their weights (fkl, rkl, jsd, skew); cross-entropy is not applied to the student's own tokens."""
    on_policy_temperature: Annotated[float, Ge(0)] = 1.0
    """Sampling temperature of the student's completions (0: greedy)."""
    on_policy_max_new_tokens: Positive = 128
    """Most tokens per student completion (the row is also cut at train.max_length)."""
    train_file: str | None = None
    """Training data of this stage; null: the run's `data/train.jsonl`."""
    val_file: str | None = None
    """Validation data; null: the run's `data/val.jsonl`."""
    teacher_writes: TeacherWritesConfig | None = None
    """The teacher writes the solutions the student learns from: a greedy solution to each training question, kept when
    the run's faithfulness filter trusts it (`synth.checks`, scored by `synth.task`), in `<stage>/written/`; the data's
    own solutions are not used. The student may then tokenize differently from the teacher (a tiny model with the run's
    tokenizer under a pretrained teacher) when no term needs the teacher's logits: every teacher weight and on_policy
    at 0. Null: the student learns from the data's solutions."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings (keys not given here come from the top-level `train`)."""

    def teacher_weight(self) -> float:
        """The total weight of the terms that need the teacher (0: the stage is cross-entropy only)."""
        return self.fkl_weight + self.rkl_weight + self.jsd_weight + self.skew_fkl_weight + self.skew_rkl_weight

    def needs_teacher(self) -> bool:
        """Whether the stage runs its teacher: a teacher term, or batches the student writes for the teacher to score."""
        return self.teacher_weight() > 0 or self.on_policy > 0

    def validate(self) -> None:
        if self.ce_weight + self.teacher_weight() <= 0:
            raise FieldError("ce_weight", "and every teacher weight are 0, so the loss is 0; give a term a positive weight")
        if self.on_policy > 0 and self.on_policy_from_step >= self.train.max_steps:
            raise FieldError("on_policy_from_step", f"is {self.on_policy_from_step}, at or after the stage's last step "
                                                    f"(train.max_steps = {self.train.max_steps}), so no batch would be on-policy")
        if self.on_policy > 0 and self.on_policy_loss == "mix" and self.teacher_weight() <= 0:
            raise FieldError("on_policy_loss", "is mix but every teacher weight is 0, so the student's own completions "
                                               "would get no loss; give a teacher term a weight or use on_policy_loss: rkl")
        if self.method != "full" and self.student.preset and not self.student.path:
            raise FieldError("method", f"{self.method} needs a pretrained student.path; a tiny preset is trained from "
                                       "scratch, so use method: full")


@dataclass
class DistillConfig(Section):
    teacher: ModelSpec = field(default_factory=ModelSpec)
    """Stage 1's teacher: a trained model folder (`path`); empty: the run's fine-tuned reasoning teacher (`<run>/teacher/`)."""
    stages: list[DistillStageConfig] = field(default_factory=list)
    """The chain: stage i's teacher is stage i-1's student; the last student is the Tiny Thought Model."""
    mode: Literal["online", "cached"] = "online"
    """`online`: one teacher forward per batch; `cached`: the teacher runs once and its top-k log-probabilities are stored."""
    top_k: Positive = 64
    """How many teacher log-probabilities per token the cache keeps."""
    chunk_size: Positive | None = None
    """Tokens per chunk of the loss, so full-vocabulary logits never exist at once; null: about 32 M logits per
    chunk (256 tokens at a 128k vocabulary)."""
    with_reasoning: bool = True
    """Distil on reasoning + answer (true) or the answer alone (false)."""
    system_prompt: str | None = None
    """A system message put before every question (null: none)."""
    ce_only_baseline: bool = False
    """Also train the last stage's student with cross-entropy only, same data and steps, and report it beside."""

    def stage_names(self) -> list[str]:
        """The folder name of each stage under `<run>/distill/`, in order."""
        return [s.name or f"stage-{i + 1}" for i, s in enumerate(self.stages)]

    def validate(self) -> None:
        if self.teacher.preset:
            raise FieldError("teacher.preset", "cannot be set: the teacher must be a trained model (teacher.path), "
                                               "or leave it empty to use the run's teacher")
        names = self.stage_names()
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise FieldError("stages", f"has two stages named '{twice}'; give each its own name")
        on_policy = next((i for i, st in enumerate(self.stages) if st.on_policy > 0), None)
        if on_policy is not None and self.mode == "cached":
            raise FieldError(f"stages.{on_policy}.on_policy", "needs mode: online: the teacher must score the tokens the "
                                                            "student writes during training, which a cache of the data cannot")
        if self.ce_only_baseline and self.stages and f"{names[-1]}-ce-only" in names:
            raise FieldError("stages", f"already has a stage named '{names[-1]}-ce-only', the CE-only baseline's folder; rename it")


@dataclass
class GeneratorConfig(Section):
    """A model that writes text: a local folder (`path`) or an OpenAI-compatible endpoint (`base_url` + `model`). The
    synth teacher, the judge, the questions writer and the pipeline's base and TTM are each one."""

    path: str | None = None
    """A local model folder (HF save_pretrained) that writes the solutions through the batched generator."""
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
    extra_body: dict[str, Any] = field(default_factory=lambda: {"add_special_tokens": False})
    """Endpoint: fields added to every /completions request. The default tells vLLM and SGLang not to add a second
    BOS to text that already holds the chat template's; set {} for a server that refuses unknown fields."""
    batch_size: Positive = 32
    """Local model: prompts generated together."""

    def validate(self) -> None:
        if bool(self.path) == bool(self.base_url):
            raise FieldError("path", "or `base_url` must be given, not both: a local model folder or an endpoint")
        if self.base_url and not self.model:
            raise FieldError("model", "is needed with base_url: the model name the endpoint serves")


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
            spec = getattr(self, role)
            if isinstance(spec, GeneratorConfig) and spec.base_url and not spec.tokenizer:
                raise FieldError(f"{role}.tokenizer", "is needed with base_url: the folder whose chat template renders the "
                                                      "prompts sent to the engine (the model's own tokenizer)")


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
class RouterConfig(Section):
    task: EvalTaskConfig | None = None
    """The task whose scoring labels the router's traces right or wrong (name and options; its data is the run's
    train/val split). Null: the run's first eval task, so the router learns exactly what evaluation counts as
    correct."""
    train_questions: Positive = 1000
    """Training questions whose base-model traces (thoughts forced to max_thoughts) label the router."""
    val_questions: Positive = 300
    """Validation questions: early stopping, the threshold and the cost-accuracy curve."""
    features: Annotated[list[RouterFeature], NonEmpty(), Unique()] = field(default_factory=lambda: ["hidden", "logprobs", "iteration", "changed"])
    """Router inputs: hidden (the base model's final hidden state, pooled), logprobs (answer token log-
    probability statistics), iteration, changed (the answer differs from the previous one)."""
    hidden_size: Positive = 64
    """Width of the MLP's hidden layer."""
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.1
    """Dropout in the MLP."""
    lr: Annotated[float, Gt(0)] = 1e-3
    """AdamW learning rate."""
    weight_decay: Weight = 1e-4
    """AdamW weight decay."""
    batch_size: Positive = 256
    """Router training rows per step."""
    max_epochs: Positive = 300
    """Most passes over the training rows."""
    patience: Positive = 25
    """Stop after this many epochs without a better validation loss (the best epoch is kept)."""
    objective: Literal["penalty", "call_rate", "flops"] = "penalty"
    """How the threshold is chosen on validation: maximise accuracy - penalty x call rate, the best accuracy at most
    target_call_rate, or the best accuracy at most target_flops_rate (estimated FLOPs, `pseudocot.cost`)."""
    penalty: Weight = 0.05
    """Accuracy given up per unit of call rate (call rate 1 = as many thoughts as always)."""
    target_call_rate: Fraction = 0.5
    """Call-rate budget (relative to always) for objective call_rate."""
    target_flops_rate: Fraction = 0.5
    """FLOPs budget (relative to always's estimated FLOPs per question) for objective flops."""
    reads: Literal["answer", "thought"] = "answer"
    """When the router decides: after each base answer, before the TTM thinks (`answer`, the paper's loop), or after
    the TTM has written the next thought, before the base re-answers (`thought`: it reads that thought; a rejected
    thought is never shown to the base, and its TTM call is counted). Use `thought` in router.features with it."""
    labels: Literal["helps", "value"] = "helps"
    """What the step router learns: `helps` (the answer is wrong and a later one is right) or `value` (the next
    thought's marginal value: it turns a wrong answer right, a right one wrong, or neither; scored as the expected
    change in correctness, (1 + P(helps) - P(hurts)) / 2)."""
    select: Literal["last", "best"] = "last"
    """Which answer the loop returns in mode router: its last (`last`), or the one the answer head (trained on every
    answer: is it right?) scores highest (`best`); the threshold is chosen for this choice."""
    depth: bool = True
    """Also train the depth router (question only -> number of thoughts) for mode depth."""
    seed: int = 0
    """Seed of the MLP's initialisation and batches."""


@dataclass
class SystemConfig(Section):
    name: Annotated[str, PlainName()]
    """Name of the system in results, tables and figures (never, always, router, ...)."""
    kind: Literal["pipeline", "hf", "openai"] = "pipeline"
    """pipeline: the run's base + TTM + router in `mode`; hf: one local model (with `adapter`: a LoRA adapter
    merged in); openai: an OpenAI-compatible endpoint."""
    mode: Mode = "router"
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
    max_thoughts: Count | None = None
    """pipeline: most thoughts per question (null: pipeline.max_thoughts; a trained router's own for router/depth)."""
    base_url: str | None = None
    """openai: the endpoint, e.g. http://localhost:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: the environment variable that holds the API key (keys never go into configs or results)."""
    chat: bool = True
    """hf/openai: chat messages (the tokenizer's chat template, or /chat/completions) rather than plain text (/completions)."""
    max_new_tokens: Positive = 256
    """hf/openai: most tokens generated per answer."""
    temperature: Weight = 0.0
    """hf/openai: sampling temperature; 0 is greedy, and then one generation stands for every seed."""
    top_p: Annotated[float, Gt(0), Le(1)] = 1.0
    """hf/openai: nucleus sampling mass (temperature > 0)."""
    stop: list[str] = field(default_factory=list)
    """hf/openai: stop strings, added to the task's own."""
    concurrency: Positive = 8
    """openai: requests in flight at once."""
    parameters: Positive | None = None
    """Parameter count for the accuracy-against-size figure; null: counted from the local models (endpoints: left out)."""

    def validate(self) -> None:
        if self.kind == "hf" and not (self.model or self.adapter):
            raise FieldError("model", "is needed for kind hf: a model folder (or set `adapter`, a LoRA adapter folder)")
        if self.kind == "openai" and not (self.base_url and self.model):
            raise FieldError("base_url", "and `model` are needed for kind openai: the endpoint and its model name")


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


SYNTH_PROMPT = ("Solve the following problem step by step. Write one step per line, each a short sentence with its "
                "calculation written out (like `48 / 2 = 24`). End with a last line `Final answer: <answer>` and "
                "nothing after it.\n\nProblem: {question}")
"""`synth.prompt`'s default: one step per line and a final answer line, for an instruction-following teacher."""

JUDGE_PROMPT = ("You check worked solutions. Read the problem and the solution below. Answer 1 if every step is "
                "logically and arithmetically correct and the final answer follows from the steps; answer 0 if any "
                "step is wrong, unjustified or does not lead to the answer. Reply with the single digit 0 or 1.\n\n"
                "Problem: {question}\n\nSolution:\n{solution}")
"""`synth.judge_prompt`'s default: a logical-correctness rubric with a 0/1 verdict."""

SYNTH_CHECKS = ("format", "answer", "arithmetic", "follows", "consistency", "grounded", "self_contained", "well_formed", "duplicate",
                "judge")
"""The checks of `pseudocot.synth.filter`, in the order they run: per question, then over the whole set
(`grounded`, `self_contained`), then over what is left (`duplicate`; `judge` last: it costs calls)."""

QUESTIONS_PROMPT = (
    "Read the text below and write up to {k} questions a reader could answer from it, each with its answer and the "
    "reasoning that reaches the answer from the text. Mix the kinds: a fact the text states, a computation of several "
    "steps from the text's numbers, a concept the text explains. Each question must stand on its own: name what it asks "
    "about and never refer to \"the text\", \"the passage\" or \"the document\". Write the reasoning as short steps, "
    "one per line, with each calculation written out (like `48 / 2 = 24`).\n\n"
    "Reply with only a JSON list, no other text: "
    '[{{"question": "...", "answer": "...", "reasoning": ["step 1", "step 2"]}}]\n\n'
    "Text:\n{text}")
"""`synth.documents.prompt`'s default: up to {k} self-contained questions of three kinds, as a JSON list."""

GROUNDED_PROMPT = ("Here is a text, a question about it and an answer. Answer 1 if the text states the answer or it "
                   "follows from what the text says; answer 0 if it does not. Reply with the single digit 0 or 1.\n\n"
                   "Text:\n{text}\n\nQuestion: {question}\nAnswer: {answer}")
"""`synth.documents.grounded_prompt`'s default: is the answer supported by the chunk (0/1)."""

SELF_CONTAINED_PROMPT = ("Here is a question written from a document the reader has not seen. Answer 1 if it names "
                         "everything it asks about, so it can be understood and answered without that document; "
                         "answer 0 if it refers to a text, passage, section or figure the reader cannot see. Reply "
                         "with the single digit 0 or 1.\n\nQuestion: {question}")
"""`synth.documents.self_contained_prompt`'s default: does the question stand on its own (0/1)."""

DOCUMENT_CHECKS = ("grounded", "self_contained", "well_formed")
"""Checks that read an item written from a document (its chunk, its own answer): not for `synth.checks`."""

QUESTION_CHECKS = ["grounded", "self_contained", "well_formed", "duplicate", "format", "arithmetic", "follows"]
"""`synth.documents.checks`' default."""


@dataclass
class DocumentsConfig(Section):
    paths: list[str] = field(default_factory=list)
    """Files or folders of documents (.txt, .md, .pdf, .html, .jsonl) the teacher writes questions from (`builtin:docs`,
    `builtin:stories`: those shipped with pseudocot; empty: none; `pseudocot run` runs the questions stage before `data`
    when this is set)."""
    text_field: Annotated[str, NonEmpty()] = "text"
    """.jsonl documents: the field that holds each row's text."""
    chunk_tokens: Annotated[int, Ge(16)] = 384
    """Tokens per chunk (a chunk ends early at a sentence or line break in its second half)."""
    chunk_overlap: Count = 48
    """Tokens a chunk shares with the one before it."""
    tokenizer: str | None = None
    """The tokenizer that counts chunk tokens (a folder); null: the local teacher's, else whitespace-separated words."""
    max_chunks: Positive | None = None
    """Use the first this many chunks (null: all)."""
    items_per_chunk: Positive = 3
    """Questions asked per chunk ({k} in the prompt); a reply's items beyond it are dropped."""
    prompt: str = QUESTIONS_PROMPT
    """The user turn sent to the teacher per chunk ({text}: the chunk, {k}: items_per_chunk); the reply must hold a
    JSON list of {question, answer, reasoning} objects."""
    retry_temperature: Annotated[float, Gt(0)] = 0.7
    """A malformed reply is asked once more, sampled at this temperature (and another seed); then it is rejected."""
    checks: list[str] = field(default_factory=lambda: list(QUESTION_CHECKS))
    """Checks an item must pass: grounded, self_contained, well_formed, duplicate, format, arithmetic, follows, judge (with synth.judge:
    it also decides grounding and self-containment where the rules cannot), or package.module:function."""
    duplicate_threshold: Annotated[float, Gt(0), Le(1)] = 0.6
    """duplicate: Jaccard similarity of two questions' character 4-grams (after lower-casing and dropping punctuation,
    numbers kept and required equal) at which the later one is a near-duplicate."""
    min_word_overlap: Fraction = 0.6
    """grounded, an answer without numbers: share of its content words that must appear in the chunk."""
    min_topic_overlap: Fraction = 0.15
    """grounded: share of the question's and reasoning's distinct content words that must appear in the chunk."""
    grounded_prompt: str = GROUNDED_PROMPT
    """judge: is the answer supported by the chunk ({text}, {question}, {answer})."""
    self_contained_prompt: str = SELF_CONTAINED_PROMPT
    """judge: does the question stand without the chunk ({question})."""
    split: Literal["document", "question"] = "document"
    """How the kept questions are split into train/val/test: by document (every question of a document in one split,
    so evaluation never asks about a text the model trained on), or by question (evaluation on the trained texts)."""
    val_documents: Fraction = 0.1
    """Share of the documents (or, with split: question, of the questions) that form the validation split."""
    test_documents: Fraction = 0.2
    """Share of the documents (or, with split: question, of the questions) that form the test split."""
    seed: int = 0
    """Seed of the split."""

    def prompt_for(self, text: str) -> str:
        """The user turn asked about one chunk: `prompt` with the chunk and `items_per_chunk`."""
        return self.prompt.format(text=text, k=self.items_per_chunk)

    def validate(self) -> None:
        for name, allowed in (("prompt", ("text", "k")), ("grounded_prompt", ("text", "question", "answer")),
                              ("self_contained_prompt", ("question",))):
            try:
                getattr(self, name).format(**{k: "" for k in allowed})
            except (KeyError, IndexError, ValueError) as e:
                raise FieldError(name, f"cannot be filled ({type(e).__name__}: {e}); use only "
                                       f"{', '.join('{' + k + '}' for k in allowed)} and write literal braces as {{{{ }}}}") from None
        if self.chunk_overlap >= self.chunk_tokens:
            raise FieldError("chunk_overlap", f"must be smaller than chunk_tokens = {self.chunk_tokens}")
        _check_names(self.checks)
        if self.val_documents + self.test_documents >= 1:
            raise FieldError("test_documents", "and val_documents must leave some documents for training (their sum below 1)")


def _check_names(checks: list[str]) -> None:
    unknown = next((c for c in checks if c not in SYNTH_CHECKS and ":" not in c), None)
    if unknown:
        raise FieldError("checks", f"has unknown check '{unknown}'; use {', '.join(SYNTH_CHECKS)} or package.module:function")
    twice = next((c for i, c in enumerate(checks) if c in checks[:i]), None)
    if twice:
        raise FieldError("checks", f"names '{twice}' twice")


@dataclass
class WriterConfig(Section):
    """A question writer trained in the run (Bonito's idea: a model fine-tuned to turn text into tasks), which the
    questions stage then uses as its teacher in place of `synth.teacher`."""

    enabled: bool = False
    """`pseudocot run` trains the writer before the questions stage, which then asks it (not `synth.teacher`)."""
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="tiny-xs-3l"))
    """The writer: a tiny preset trained from scratch (on its own tokenizer, trained on the pairs) or a checkpoint."""
    method: Literal["full", "lora", "qlora"] = "full"
    """Full fine-tuning, LoRA or QLoRA (a preset trains in full)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings for lora and qlora."""
    pairs: str | None = None
    """What it learns from: a JSONL of `{text, items: [{question, answer, reasoning}]}` rows; null: stories of the
    built-in arith task (with `data.arith`'s operations, operands and steps), none of them the text of a document."""
    n_train: Positive = 4000
    """Training pairs (the first this many rows of `pairs`, or this many stories)."""
    n_val: Positive = 200
    """Validation pairs (the rows after the training ones, or as many more stories)."""
    vocab_size: Annotated[int, Ge(MIN_TOKENIZER_VOCAB)] = 512
    """A preset writer's tokenizer: its vocabulary, trained on the pairs' prompts and replies."""
    seed: int = 0
    """Seed of the stories, the writer's initialisation and its data order (not `run.seed`: the questions, like the
    data, stay the same for every training seed of the system)."""
    batch_size: Positive = 64
    """Chunks it writes for at once in the questions stage."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_length=320))
    """Optimisation settings (keys not given here come from the top-level `train`)."""

    def validate(self) -> None:
        if self.model.from_:
            raise FieldError("model.from", "is for distillation students; give the writer a `path` or a `preset`")
        if self.method != "full" and self.model.preset and not self.model.path:
            raise FieldError("method", f"{self.method} needs a pretrained model.path; a tiny preset is trained from scratch, so use method: full")


@dataclass
class SynthConfig(Section):
    enabled: bool = False
    """`pseudocot run` runs the synth stage after `data`, and the teacher and the distillation chain train on its
    kept solutions (`<run>/synth/kept.jsonl`) wherever their `train_file` is null."""
    questions: str | None = None
    """The questions to solve (gold answers optional); null: the run's `data/train.jsonl`."""
    format: Literal["jsonl", "gsm8k", "mmlu", "csv", "hf_disk"] = "jsonl"
    """How `questions` is read (an Example JSONL needs no mapping; a question-only file is fine)."""
    fields: dict[str, str] = field(default_factory=dict)
    """Field mapping for `jsonl`, `csv` and `hf_disk`: Example field -> column name."""
    max_questions: Positive | None = None
    """Solve the first this many questions (null: all)."""
    teacher: GeneratorConfig | None = None
    """Who writes the solutions: a local model (`path`) or an endpoint (`base_url` + `model`)."""
    prompt: str = SYNTH_PROMPT
    """The user turn sent to the teacher ({question}: the question, with lettered options for multiple choice)."""
    system_prompt: str | None = None
    """A system message for the teacher (null: none)."""
    samples: Positive = 4
    """Solutions asked per question."""
    temperature: Weight = 0.7
    """Sampling temperature (each sample has its own seed, so samples differ and a rerun gives the same ones)."""
    top_p: Annotated[float, Gt(0), Le(1)] = 0.95
    """Nucleus sampling mass."""
    max_new_tokens: Positive = 1024
    """Most tokens per solution (a reasoning model's thinking counts where the endpoint counts it)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings."""
    seed: int = 0
    """Seed of every sample's seed."""
    reasoning_from: Literal["content", "thinking"] = "content"
    """Where the steps are: the answer's content (an instruction model; a reasoning model's summary), or the
    thinking (`reasoning_content`, `reasoning`, `<think>`) followed by the content's answer line (`pseudocot serve`)."""
    chunk_questions: Positive = 16
    """Local model: questions generated together (each with all its samples); a killed run loses at most one chunk."""
    task: EvalTaskConfig | None = None
    """The task whose scoring decides whether a solution's answer is right (name and options); null: the run's
    first eval task."""
    extraction: str | None = None
    """The task's extraction that reads a solution's answer (null: `answer-line` where the task has it, which reads the
    default prompt's `Final answer: N` as well as `The answer is N` and `#### N`; else the task's primary)."""
    checks: list[str] = field(default_factory=lambda: ["format", "answer", "arithmetic", "follows", "consistency"])
    """Faithfulness checks a solution must pass to be kept: format, answer, arithmetic, follows, consistency, judge, or
    package.module:function for your own (empty: keep every candidate, the unfiltered baseline)."""
    min_agreement: Fraction = 0.5
    """consistency: the question's majority answer must hold at least this share of its samples."""
    min_steps: Positive = 1
    """format: fewest reasoning lines before the final answer line."""
    max_steps: Positive = 40
    """format: most reasoning lines."""
    max_step_chars: Positive = 600
    """format: longest reasoning line (a paragraph is not a step)."""
    judge: GeneratorConfig | None = None
    """judge: the model that grades each solution (an endpoint or a local model); needed when `checks` has judge."""
    judge_prompt: str = JUDGE_PROMPT
    """judge: the rubric ({question}, {solution}); the reply's first 0 or 1 is the verdict."""
    shard: str | None = None
    """This process's share of the questions, `i/n` (whole chunks); `pseudocot synth merge` filters once all are done."""
    documents: DocumentsConfig = field(default_factory=DocumentsConfig)
    """Questions from your own documents (`pseudocot synth questions`): the teacher above writes question, answer and
    reasoning per chunk, with this section's prompt, and its sampling (temperature, top_p, max_new_tokens, seed)."""

    def validate(self) -> None:
        for name, allowed in (("prompt", ("question",)), ("judge_prompt", ("question", "solution"))):
            try:
                getattr(self, name).format(**{k: "" for k in allowed})
            except (KeyError, IndexError, ValueError) as e:
                raise FieldError(name, f"cannot be filled ({type(e).__name__}: {e}); use only "
                                       f"{', '.join('{' + k + '}' for k in allowed)} and write literal braces as {{{{ }}}}") from None
        _check_names(self.checks)
        only_items = next((c for c in self.checks if c in DOCUMENT_CHECKS), None)
        if only_items:
            raise FieldError("checks", f"has '{only_items}', a check of questions written from documents; put it in "
                                       "synth.documents.checks (or `pseudocot synth qfilter --checks`)")
        if ("judge" in self.checks or "judge" in self.documents.checks) and self.judge is None:
            raise FieldError("judge", "is needed when checks has judge: an endpoint (base_url, model) or a local path")
        if self.min_steps > self.max_steps:
            raise FieldError("min_steps", f"must be at most max_steps = {self.max_steps}")
        if self.shard is not None:
            parse_shard(self.shard)


GRPO_REWARDS = ("correct", "arithmetic", "follows", "format", "length", "base_correct")
"""The rewards of `pseudocot.rewards` (its registry has exactly these names)."""


@dataclass
class GrpoConfig(Section):
    enabled: bool = False
    """`pseudocot run` runs the grpo stage after the base model and before the router; the pipeline, the router and
    evaluation then load its model in place of the TTM (target ttm) or of the base model (target base)."""
    target: Literal["ttm", "base"] = "ttm"
    """Which model learns: the Tiny Thought Model (one completion is its whole chain of thoughts) or the base model."""
    method: Literal["full", "lora"] = "full"
    """Train every weight, or LoRA adapters on the model (the output is then an adapter folder)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings for `lora`."""
    rewards: Annotated[dict[str, float], NonEmpty()] = field(default_factory=lambda: {"base_correct": 1.0, "arithmetic": 1.0})
    """Reward -> weight; a completion's reward is the weighted sum. correct, arithmetic, follows, format, length,
    base_correct (target ttm: the base model answers right with the thoughts in context), or package.module:function."""
    task: EvalTaskConfig | None = None
    """The task whose scoring decides `correct` and `base_correct` (name and options); null: the run's first eval task."""
    extraction: str | None = None
    """The extraction `correct` reads a completion's answer with (null: `answer-line` where the task has it, as the
    synth filter; else the task's primary). `base_correct` scores the base model's answer as evaluation does."""
    length_budget_tokens: Positive = 128
    """length: completion tokens allowed before the penalty starts."""
    length_penalty_per_token: Weight = 0.01
    """length: reward taken off per token beyond the budget."""
    train_file: str | None = None
    """The questions (Example JSONL with gold answers); null: the run's `data/train.jsonl`."""
    max_questions: Positive | None = None
    """Use the first this many questions (null: all)."""
    num_generations: Annotated[int, Ge(2)] = 8
    """TRL: completions sampled per question (a group); must divide train.batch_size x train.grad_accum_steps."""
    max_completion_length: Positive = 256
    """TRL: most tokens per completion."""
    temperature: Annotated[float, Gt(0)] = 1.0
    """TRL: sampling temperature of the completions."""
    beta: Weight = 0.0
    """TRL: weight of the KL penalty to the starting model (0: none, and no reference model is kept)."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    """TRL: how token losses are aggregated (dapo: over the active tokens of the batch, no length bias)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """TRL: divide advantages by the reward's standard deviation in the group, the batch, or not at all."""
    mask_truncated_completions: bool = False
    """TRL: leave completions cut at max_completion_length out of the loss."""
    learning_rate: Annotated[float, Gt(0)] = 1e-6
    """TRL: peak learning rate (`train.lr` is not read here)."""
    seed: int | None = None
    """Seed of GRPO's sampling, data order and LoRA initialisation (null: `run.seed`); another seed re-runs only GRPO."""
    trl: dict[str, Any] = field(default_factory=dict)
    """Any other `trl.GRPOConfig` field by its name (e.g. epsilon, num_iterations, top_p); one that pseudocot sets itself (a
    key above, or grpo.train's) is refused when the run starts."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=200, batch_size=64, save_every_steps=50))
    """Steps, batch (completions per micro-batch), checkpoints and logging; not inherited from the top-level `train`."""

    def validate(self) -> None:
        unknown = next((r for r in self.rewards if r not in GRPO_REWARDS and ":" not in r), None)
        if unknown:
            raise FieldError("rewards", f"has unknown reward '{unknown}'; use {', '.join(GRPO_REWARDS)} or package.module:function")
        if self.target == "base" and "base_correct" in self.rewards:
            raise FieldError("rewards", "has base_correct, which rewards the TTM's thoughts by the base model's answer; "
                                        "with target base use correct")
        per_step = self.train.batch_size * self.train.grad_accum_steps
        if per_step % self.num_generations:
            raise FieldError("num_generations", f"is {self.num_generations}, which does not divide train.batch_size x "
                                                f"train.grad_accum_steps = {per_step}, the completions sampled per step; "
                                                "every question needs its whole group in one step")
        if self.train.lr != TrainConfig.lr:
            raise FieldError("train.lr", "is not read by GRPO; set grpo.learning_rate (TRL's name) instead")
        unread = {"max_length": "grpo.max_completion_length bounds what it generates", "val_examples": "it has no validation",
                  "eval_every_steps": "it has no validation"}
        for key, why in unread.items():
            if getattr(self.train, key) != getattr(TrainConfig, key):
                raise FieldError(f"train.{key}", f"is not read by GRPO ({why}); remove it")


@dataclass
class Config(Section):
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
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """The Pseudo-CoT loop: base answers, router decides, TTM thinks (`pseudocot chat`, evaluation)."""
    router: RouterConfig = field(default_factory=RouterConfig)
    """The router, trained on the base model's traces (`pseudocot router`)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Systems x tasks -> results.json, report.md, figures (`pseudocot eval`)."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """The OpenAI-compatible server over the pipeline (`pseudocot serve`)."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    """Teacher-written reasoning data and its faithfulness filter (`pseudocot synth`)."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    """Reinforcement learning of the TTM (or base) with rewards for correct and faithful reasoning (`pseudocot grpo`)."""
    writer: WriterConfig = field(default_factory=WriterConfig)
    """A question writer trained in the run for the questions stage (`pseudocot synth writer`)."""

    def task_of(self, stage: Literal["synth", "grpo", "router"]) -> EvalTaskConfig:
        """The task a stage scores with (synth: the candidates' answers; grpo: the rewards; router: its traces' labels):
        the stage's own `task`, else the first eval task."""
        return getattr(self, stage).task or self.eval.tasks[0]

    def validate(self) -> None:
        if self.teacher.thoughts_from != "gold":
            raise FieldError("teacher.thoughts_from", "must be gold: only the base model reads the Tiny Thought Model's thoughts")
        if self.base.thoughts_from != "gold":
            if not self.distill.stages and not self.pipeline.ttm:
                raise FieldError("base.thoughts_from", f"is {self.base.thoughts_from}, which needs a Tiny Thought Model: "
                                                       "distill.stages or pipeline.ttm")
            used = {name for _, name, _, _ in string.Formatter().parse(self.pipeline.ttm_prompt) if name}
            if "answer" in used:
                raise FieldError("base.thoughts_from", f"is {self.base.thoughts_from} but pipeline.ttm_prompt uses {{answer}}, "
                                                       "the base model's answer, which does not exist before the base is trained; "
                                                       "use {question} and {thoughts} only")
        if self.router.reads == "thought" and "thought" not in self.router.features:
            raise FieldError("router.reads", "is thought but router.features has no 'thought': the router would pay for each "
                                             "thought before deciding and never read it; add thought to router.features")
        if self.grpo.enabled and self.grpo.target == "ttm":
            p = self.pipeline
            if not p.ttm_continues_thoughts:
                raise FieldError("grpo.target", "is ttm but pipeline.ttm_continues_thoughts is false: GRPO samples the TTM's whole "
                                                "chain of thoughts as one completion, which is how the pipeline calls it only when "
                                                "it continues its own turn")
            used = {name for _, name, _, _ in string.Formatter().parse(p.ttm_prompt) if name}
            if used & {"answer", "thoughts"}:
                raise FieldError("grpo.target", "is ttm but pipeline.ttm_prompt uses {answer} or {thoughts}, which change between "
                                                "thoughts; GRPO samples the whole chain from the first prompt, so use {question} only")
            if list(p.thought_stop) != ["\n"]:
                raise FieldError("grpo.target", "is ttm but pipeline.thought_stop is not [\"\\n\"]: GRPO reads the TTM's chain one "
                                                "thought per line, as the pipeline does only when a thought ends at a newline")

    def for_system(self, s: SystemConfig) -> Config:
        """This config as a pipeline system of `eval.systems` runs: its mode, and its own model folders,
        threshold and number of thoughts where it sets them."""
        p = self.pipeline
        pipeline = dataclasses.replace(
            p, mode=s.mode, base=s.model or p.base, ttm=s.ttm or p.ttm, router=s.router or p.router,
            threshold=s.threshold if s.threshold is not None else p.threshold,
            max_thoughts=s.max_thoughts if s.max_thoughts is not None else p.max_thoughts)
        grpo = self.grpo
        if grpo.enabled and ((grpo.target == "ttm" and s.ttm) or (grpo.target == "base" and s.model)):
            grpo = dataclasses.replace(grpo, enabled=False)  # the system's own model, not the run's GRPO-tuned one
        return dataclasses.replace(self, pipeline=pipeline, grpo=grpo)


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
