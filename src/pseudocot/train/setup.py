"""Setting a training stage up: the model and tokenizer a `ModelSpec` names (a checkpoint, or a tiny
preset on the run's tokenizer), LoRA/QLoRA adapters, and HF `TrainingArguments` from a `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path
from typing import Any

import torch

from pseudocot.config.schema import ModelSpec, TrainConfig
from pseudocot.errors import ConfigError, ModelError
from pseudocot.layout import KEY_FILE, checkpoints_dir, has_model, student_init_dir
from pseudocot.models.loading import cpu_bf16_fast, load_model, load_tokenizer, resolve_device

logger = logging.getLogger(__name__)


def spec_name(spec: ModelSpec) -> str:
    if spec.from_:
        kept = f"{spec.num_layers} layers" if spec.num_layers else f"layers {spec.keep_layers}"
        return f"{spec.from_}, cut to {kept}"
    return spec.path or f"preset:{spec.preset}"


def cut_source(spec: ModelSpec, teacher: Path) -> Path | None:
    """The model a student is cut from (`student.from`: the stage's teacher or a folder); None if it is not cut."""
    if not spec.from_:
        return None
    source = Path(teacher) if spec.from_ == "teacher" else Path(spec.from_)
    if not has_model(source):
        raise ModelError(f"student.from is {spec.from_!r} but {source} holds no model; give a trained model folder or `teacher`.")
    return source


def cut_student(spec: ModelSpec, source: Path, tokenizer: Any, stage_dir: Path, key: str) -> ModelSpec:
    """A cut student made concrete: `source` (an adapter is merged first) with only the kept decoder
    layers, saved with `tokenizer` (the source's) to `<stage>/student-init/` once per stage key; returns a spec
    that loads it."""
    from pseudocot.files import atomic_dir
    from pseudocot.freshness import read_key, write_key
    from pseudocot.models.cut import cut_layers
    from pseudocot.models.lora import load_trained
    from pseudocot.train.checkpoints import is_main_process, wait_for_everyone

    folder = student_init_dir(stage_dir)
    if is_main_process() and not (has_model(folder) and read_key(folder / KEY_FILE) == key):
        source_model = load_trained(source, device="cpu", dtype=spec.dtype, trust_remote_code=spec.trust_remote_code)
        student = cut_layers(source_model, num_layers=spec.num_layers, keep_layers=spec.keep_layers)
        del source_model
        with atomic_dir(folder) as tmp:  # a killed cut leaves no half-written folder
            student.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_key(Path(tmp) / KEY_FILE, key)
    wait_for_everyone()
    return dataclasses.replace(spec, path=str(folder), from_=None, num_layers=None, keep_layers=None)


def load_spec_tokenizer(spec: ModelSpec, run_tokenizer: Path) -> Any:
    """The tokenizer a spec names: its own `tokenizer`, the checkpoint's, or the run's trained one
    (`run_tokenizer`, the folder the data stage writes)."""
    if spec.tokenizer:
        return load_tokenizer(spec.tokenizer, spec.trust_remote_code)
    if spec.path:
        return load_tokenizer(spec.path, spec.trust_remote_code)
    folder = Path(run_tokenizer)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ModelError(f"model preset '{spec.preset}' needs the run's tokenizer at {folder}; run `pseudocot data` "
                         "with tokenizer.train=true first, or set the model's tokenizer path.")
    return load_tokenizer(str(folder))


def build_model(spec: ModelSpec, tokenizer: Any, device: str, seed: int, load_in_4bit: bool = False) -> Any:
    """A pretrained checkpoint (`path`) or a tiny preset initialised from `seed`."""
    if spec.path:
        return load_model(spec.path, device=device, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code,
                          load_in_4bit=load_in_4bit)
    if not spec.preset:
        raise ModelError("a model needs either `path` (a checkpoint) or `preset` (a tiny model from scratch).")
    from pseudocot.models.loading import resolve_dtype
    from pseudocot.models.tiny import build_tiny_model

    dev = resolve_device(device)
    return build_tiny_model(spec.preset, tokenizer, seed=seed).to(dev, resolve_dtype(spec.dtype, dev))


def on_cpu(device: str) -> bool:
    return resolve_device(device).type == "cpu"


def use_bf16(setting: bool | None, cpu: bool) -> bool:
    """Whether training runs under bf16 autocast (`train.bf16`: true, false, or null); the choice and its
    reason are logged in one line.

    Precision is chosen for what it does to the result, not only for speed: null means fp32 on a CPU (bf16
    autocast bought tiny models no speed and cost the demo 27 points of accuracy on a CPU with AVX512-BF16)
    and bf16 on a CUDA GPU that supports it. `true` on a CPU is honoured only where bf16 matrix instructions
    make it fast (`cpu_bf16_fast`); elsewhere it would be several to a hundred times slower, so it is refused."""
    given = {None: "null", True: "true", False: "false"}[setting]  # as the YAML spells it
    if not cpu:
        bf16 = setting if setting is not None else torch.cuda.is_bf16_supported()
        logger.info("training precision: %s (train.bf16=%s, not on a CPU)", "bf16 autocast" if bf16 else "fp32", given)
        return bf16
    if not setting:
        logger.info("training precision: fp32 on CPU (train.bf16=%s; bf16 autocast on a CPU only with train.bf16=true)", given)
        return False
    fast, why = cpu_bf16_fast()
    if not fast:
        raise ModelError(f"train.bf16=true on this CPU ({why}) would train several to a hundred times slower than fp32; "
                         "set train.bf16 to null or false (fp32).")
    logger.info("training precision: bf16 autocast on CPU (train.bf16=true; %s)", why)
    return True


def training_args(train: TrainConfig, out_dir: Path, seed: int, device: str, has_eval: bool, **extra: Any) -> Any:
    """HF TrainingArguments for a stage; checkpoints go to `<out_dir>/checkpoints/`; `extra` adds or replaces fields
    (GRPO builds TRL's `GRPOConfig` from `training_fields` itself)."""
    from transformers import TrainingArguments

    return TrainingArguments(**(training_fields(train, out_dir, seed, device, has_eval) | extra))


def fsdp_fields(train: TrainConfig, cpu: bool) -> dict[str, Any]:
    """TrainingArguments' FSDP fields for `train.fsdp`: FSDP2 over each decoder layer (the model's `_no_split_modules`),
    parameters resharded after each forward, a full state dict for the saved model; none without it. On CPU
    processes the Trainer needs `ShardsOnCpu` to act on them."""
    if not train.fsdp:
        return {}
    if cpu and train.fsdp_cpu_offload:
        raise ConfigError("train.fsdp_cpu_offload moves sharded weights from GPU to CPU memory, and on a CPU they are "
                          "there already; set train.fsdp_cpu_offload=false.")
    return {"fsdp": True, "fsdp_config": {
        "version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": False,
        "cpu_offload": train.fsdp_cpu_offload, "activation_checkpointing": train.gradient_checkpointing}}


class ShardsOnCpu:
    """Mixin for an HF Trainer class (listed before it): under `train.fsdp`, CPU processes shard with FSDP2 as GPUs do.

    accelerate turns FSDP on only for GPU process types and runs CPU processes (gloo) as DDP, a whole copy in each,
    although torch's `fully_shard` works over gloo. Once the Trainer's accelerator exists, this makes its CPU state an
    FSDP one with the plugin the Trainer built from `fsdp_config`, before any model is prepared."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()  # type: ignore[misc]
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state  # type: ignore[attr-defined]
        if self.args.fsdp_plugin_args is None:  # type: ignore[attr-defined]
            return
        if state.distributed_type == DistributedType.NO:
            logger.info("train.fsdp: one process, so there is nothing to shard; training as usual")
            return
        if state.distributed_type != DistributedType.MULTI_CPU:
            return
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)  # type: ignore[attr-defined]
        state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True
        logger.info("train.fsdp: FSDP2 across %d CPU processes (gloo)", state.num_processes)


@functools.cache
def shardable(trainer_class: type) -> type:
    """`trainer_class` with `ShardsOnCpu`."""
    return type(trainer_class.__name__, (ShardsOnCpu, trainer_class), {"__doc__": trainer_class.__doc__})


def shard_share(model: Any) -> dict[str, Any]:
    """How FSDP split `model` in this process: the processes, and the share of the parameters' elements this one holds."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return {"processes": torch.distributed.get_world_size(), "parameter_share": round(local / max(total, 1), 4)}


def precision(trainer: Any) -> dict[str, Any]:
    """How the stage computed: the autocast it trained under (`bf16`, `fp16` or None) and the dtypes of its
    weights, all and trainable (a 4-bit base with float32 LoRA weights shows both)."""
    args = trainer.args
    params = list(trainer.model.parameters())

    def names(ps: Any) -> list[str]:
        return sorted({str(p.dtype).removeprefix("torch.") for p in ps})

    return {"autocast": "bf16" if args.bf16 else "fp16" if args.fp16 else None,
            "weights": names(params), "trainable": names(p for p in params if p.requires_grad)}


def full_state_dict(trainer: Any) -> dict[str, torch.Tensor] | None:
    """The whole trained model's state dict, gathered from its shards when FSDP trained it (every rank must call
    this: it is a collective; rank 0 gets the tensors, on the CPU); None when the model is not sharded."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    state = trainer.accelerator.get_state_dict(trainer.model)
    seen: set[int] = set()
    for name, p in trainer.model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # a tied weight (the head shares the embedding's) is saved once, as it is unsharded
            state.pop(name, None)
        seen.add(id(p))
    return state


def training_fields(train: TrainConfig, out_dir: Path, seed: int, device: str, has_eval: bool) -> dict[str, Any]:
    """The TrainingArguments fields a stage's `train` section sets (`training_args` builds them)."""
    cpu = on_cpu(device)
    bf16 = use_bf16(train.bf16, cpu)
    eval_steps = train.eval_every_steps if has_eval and train.eval_every_steps > 0 else None
    fsdp = fsdp_fields(train, cpu)
    return fsdp | dict(
        output_dir=str(checkpoints_dir(out_dir)),
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum_steps,
        learning_rate=train.lr,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=math.ceil(train.warmup_ratio * train.max_steps),
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        logging_steps=train.log_every_steps,
        save_strategy="steps",
        save_steps=train.save_every_steps,
        save_total_limit=2,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        seed=seed,
        data_seed=seed,
        use_cpu=cpu,
        bf16=bf16,
        activation_checkpointing=train.gradient_checkpointing and not fsdp,  # FSDP checkpoints through its own config
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
    )


def trainable_model(spec: ModelSpec, tokenizer: Any, method: str, lora: Any, device: str, seed: int,
                    gradient_checkpointing: bool) -> Any:
    """The model a stage trains: built or loaded (4-bit for qlora), with LoRA adapters for lora/qlora."""
    model = build_model(spec, tokenizer, device, seed, load_in_4bit=method == "qlora")
    if method in ("lora", "qlora"):
        from pseudocot.models.lora import attach_lora

        # The adapters' random init follows `seed` (the Trainer seeds only after the model exists), so one
        # config and seed give one run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = attach_lora(model, lora, quantized=method == "qlora", gradient_checkpointing=gradient_checkpointing)
    return model


