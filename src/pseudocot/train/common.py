"""Pieces the training stages share: the model and tokenizer a `ModelSpec` names, tokenized
prompt/completion rows with the loss on the completion only, the padding collator, HF
`TrainingArguments` from a `TrainConfig`, validation cross-entropy and the stage's metrics file."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pseudocot.config import ModelSpec, TrainConfig, config_hash
from pseudocot.data.chat import prompt_and_completion
from pseudocot.data.example import DataError, Example
from pseudocot.data.jsonl import read_examples
from pseudocot.files import atomic_write_text
from pseudocot.models.loading import ModelError, load_model, load_tokenizer, resolve_device

IGNORE_INDEX = -100
logger = logging.getLogger(__name__)


def spec_name(spec: ModelSpec) -> str:
    return spec.path or f"preset:{spec.preset}"


def load_spec_tokenizer(spec: ModelSpec, run_dir: Path) -> Any:
    """The tokenizer a spec names: its own `tokenizer`, the checkpoint's, or the run's trained one."""
    if spec.tokenizer:
        return load_tokenizer(spec.tokenizer, spec.trust_remote_code)
    if spec.path:
        return load_tokenizer(spec.path, spec.trust_remote_code)
    folder = run_dir / "tokenizer"
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


def read_split(path: str | Path, what: str) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file for the {what}; run `pseudocot data` first or set the file in the config.")
    return read_examples(path).examples


def thought_pairs(tokenizer: Any, ex: Example, prompts: Any) -> list[tuple[str, str]]:
    """(prompt, answer) with the first j gold thoughts in the base model's context, j = 0..k+1, rendered
    exactly as the pipeline renders them (`prompts` is a `PipelineConfig`)."""
    from pseudocot.data.chat import answer_text, base_messages, question_text, split_last_turn, thought_lines

    answer = {"role": "assistant", "content": answer_text(ex, with_reasoning=False)}
    thoughts = thought_lines(ex)
    return [split_last_turn(tokenizer, base_messages(question_text(ex), thoughts[:j], prompts) + [answer])
            for j in range(len(thoughts) + 1)]


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, with_reasoning: bool, system_prompt: str | None,
                      max_length: int, thoughts: Any = None) -> list[dict[str, Any]]:
    """Rows of `input_ids` and `labels` (prompt tokens masked with -100): the loss is on the answer only.
    With `thoughts` (a `PipelineConfig`), each example gives one row per number of gold thoughts in
    its context (`thought_pairs`)."""
    rows, cut = [], 0
    pairs = [(i, pair) for i, ex in enumerate(examples)
             for pair in (thought_pairs(tokenizer, ex, thoughts) if thoughts is not None
                          else [prompt_and_completion(tokenizer, ex, with_reasoning, system_prompt)])]
    # One batched call per side: the fast tokenizer encodes a list far quicker than one text at a time.
    p_all = tokenizer([p for _, (p, _) in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    c_all = tokenizer([c for _, (_, c) in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    for (i, _), p_ids, c_ids in zip(pairs, p_all, c_all):
        cut += len(p_ids) + len(c_ids) > max_length
        ids = (p_ids + c_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(p_ids) + c_ids)[:max_length]
        if all(t == IGNORE_INDEX for t in labels[1:]):
            continue  # the prompt alone fills max_length: nothing to learn from this row
        rows.append({"input_ids": ids, "labels": labels, "index": i})
    if not rows:
        raise DataError(f"no example fits in train.max_length={max_length} tokens with room for its answer; raise max_length.")
    if cut:
        logger.warning("%d of %d examples are longer than train.max_length=%d tokens and were cut at the end "
                       "(their final answer may be lost); raise max_length to keep them whole.", cut, len(examples), max_length)
    return rows


class PadCollator:
    """Right-pads a list of rows into (B, T) tensors: input_ids, attention_mask, labels (and index)."""

    def __init__(self, pad_id: int, keep_index: bool = False) -> None:
        self.pad_id = pad_id
        self.keep_index = keep_index  # the row's position in the dataset, for looking up a teacher cache

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.keep_index:
            batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        return batch


def on_cpu(device: str) -> bool:
    return resolve_device(device).type == "cpu"


def training_args(train: TrainConfig, out_dir: Path, seed: int, device: str, has_eval: bool, **extra: Any) -> Any:
    """HF TrainingArguments for a stage; checkpoints go to `<out_dir>/checkpoints/`."""
    from transformers import TrainingArguments

    cpu = on_cpu(device)
    bf16 = train.bf16 if train.bf16 is not None else (not cpu and torch.cuda.is_bf16_supported())
    if bf16 and cpu:
        raise ModelError("train.bf16=true needs a GPU here; set it to false or null on CPU.")
    eval_steps = train.eval_every_steps if has_eval and train.eval_every_steps > 0 else None
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
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
        activation_checkpointing=train.gradient_checkpointing,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        **extra,
    )


def _complete_checkpoint(folder: Path) -> bool:
    try:
        return isinstance(json.loads((folder / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest complete checkpoint under `<out_dir>/checkpoints/`. The Trainer writes
    `trainer_state.json` last, so a folder without it (or with half of it) was cut off by a kill
    and is passed over."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name) and _complete_checkpoint(p)]
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]))) if done else None


def resume_checkpoint(out_dir: Path, stage_config: Any, force: bool = False) -> str | None:
    """The checkpoint a stage resumes from: the newest complete one written under this same config.
    Checkpoints left by another config (or any, with `force`) are removed first, so a changed config
    trains from scratch instead of resuming the old run's last checkpoint. Call it once the Trainer
    exists (in a distributed run all ranks must call it)."""
    folder = out_dir / "checkpoints"
    mark = folder / "config_hash.txt"
    want = config_hash(stage_config)
    if is_main_process():
        if folder.is_dir() and (force or not mark.is_file() or mark.read_text().strip() != want):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(mark, want + "\n")
    wait_for_everyone()
    return last_checkpoint(out_dir)


@torch.no_grad()
def eval_ce(model: Any, rows: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 32) -> float:
    """Mean cross-entropy per answer token over `rows` (the model's validation loss)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = PadCollator(pad_id)
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(list(rows[start : start + batch_size]))
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        # position t predicts token t+1: (B, T-1, V) against (B, T-1)
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:].to(device)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
        total += loss.item()
        count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the one process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """In a distributed run, hold every rank here until all arrive: after rank 0 has saved a stage,
    no rank may go on (to the next stage, which loads that folder) before the files are there."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def write_metrics(out_dir: Path, metrics: dict[str, Any], stage_config: Any) -> None:
    """`metrics.json`, written last: its config hash marks the stage complete for this config."""
    metrics = dict(metrics, config_hash=config_hash(stage_config))
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def is_complete(out_dir: Path, stage_config: Any) -> bool:
    f = out_dir / "metrics.json"
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("config_hash") == config_hash(stage_config)
    except (json.JSONDecodeError, OSError):
        return False


def finished_metrics(out_dir: Path, stage_config: Any, force: bool = False) -> dict[str, Any] | None:
    """The metrics of a stage already complete for this config (marked `skipped`), else None."""
    if force or not is_complete(out_dir, stage_config):
        return None
    return json.loads((out_dir / "metrics.json").read_text()) | {"skipped": True}


def split_rows(file: str | None, run_dir: Path, split: str, what: str, tokenizer: Any, with_reasoning: bool,
               system_prompt: str | None, max_length: int, thoughts: Any = None) -> list[dict[str, Any]]:
    """Tokenized rows of `file`, or of the run's `data/<split>.jsonl` when no file is set."""
    examples = read_split(file or run_dir / "data" / f"{split}.jsonl", what)
    return tokenize_examples(examples, tokenizer, with_reasoning, system_prompt, max_length, thoughts)


def trainable_model(spec: ModelSpec, tokenizer: Any, method: str, lora: Any, device: str, seed: int,
                    gradient_checkpointing: bool) -> Any:
    """The model a stage trains: built or loaded (4-bit for qlora), with LoRA adapters for lora/qlora."""
    model = build_model(spec, tokenizer, device, seed, load_in_4bit=method == "qlora")
    if method in ("lora", "qlora"):
        from pseudocot.models.lora import attach_lora

        model = attach_lora(model, lora, quantized=method == "qlora", gradient_checkpointing=gradient_checkpointing)
    return model


def save_result(model: Any, tokenizer: Any, out: Path, merge: bool = False) -> None:
    """The final model (full) or adapter (LoRA) with its tokenizer, loadable on its own; `merged/` on request."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")


def train_and_save(trainer: Any, out_dir: Path, stage_config: Any, tokenizer: Any, val_rows: Sequence[dict[str, Any]],
                   batch_size: int, metrics: dict[str, Any], force: bool = False, merge: bool = False,
                   after: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train (resuming from this config's last checkpoint), then on rank 0 save the result, measure the
    validation loss and write `metrics.json`; every rank waits until the files are there. `after`
    adds metrics the caller can only know once training is done."""
    import time

    resume = resume_checkpoint(out_dir, stage_config, force)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics = dict(metrics, steps=trainer.state.global_step, train_loss=result.training_loss,
                   resumed_from=Path(resume).name if resume else None, train_seconds=round(seconds, 2),
                   tokens_seen=tokens, tokens_per_second=round(tokens / max(seconds, 1e-9), 1))
    if after is not None:
        metrics.update(after())
    if is_main_process():
        save_result(trainer.model, tokenizer, out_dir, merge=merge)
        metrics["val_loss"] = eval_ce(trainer.model, val_rows, tokenizer.pad_token_id, batch_size)
        write_metrics(out_dir, metrics, stage_config)
    wait_for_everyone()
    return metrics
