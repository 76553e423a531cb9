"""The training sections: optimisation (`train`), a model to load, build or cut (`ModelSpec`), LoRA, the
fine-tuned teacher and base (`teacher`, `base`), and the distillation chain that makes the Tiny Thought Model (`distill`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pseudocot.config.base import Count, Dtype, Fraction, Positive, Weight
from pseudocot.config.checks import FieldError, Ge, Gt, Lt, NonEmpty, PlainName, Section, Unique

TinyPreset = Literal["tiny-3xs", "tiny-2xs", "tiny-xs", "tiny-xs-3l", "tiny-s", "tiny-m", "tiny-l"]
"""The tiny Llama sizes of `pseudocot.models.tiny` (its PRESETS table has exactly these keys)."""


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
    fsdp: bool = field(default=False, repr=False)  # repr=False: in no freshness key (`freshness.key_data`)
    """Shard the trained model's weights, gradients and optimizer state across the ranks of `torchrun` / `accelerate
    launch` (PyTorch FSDP2, one unit per decoder layer, a full state dict saved from rank 0); a distillation teacher
    stays whole on each rank. GPUs and CPU processes (gloo) alike; not with on-policy distillation. README "Training
    sharded" has the memory plan."""
    fsdp_cpu_offload: bool = field(default=False, repr=False)
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
        if self.on_policy > 0 and self.train.fsdp:
            raise FieldError("on_policy", "needs the student whole in each process to sample from it, and train.fsdp "
                                          "shards it across them; set on_policy: 0 or train.fsdp: false")
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
