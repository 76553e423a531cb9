"""Checkpoints and completion of a training stage: resume from this key's newest complete checkpoint
(or start over when the checkpoints carry another key), save the result, and mark it done.

A stage folder holds `checkpoints/` (HF Trainer's, with `key.txt`: the stage key they were written
under) and, written last, `metrics.json` with the same key: the stage is complete for that key.
The key is the stage's freshness key (`pseudocot.freshness`), the same whoever runs the stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pseudocot.files import atomic_write_text
from pseudocot.freshness import read_key, write_key
from pseudocot.layout import KEY_FILE, checkpoints_dir, merged_dir, metrics_file
from pseudocot.models.environment import environment
from pseudocot.train.rows import eval_ce
from pseudocot.train.setup import full_state_dict, precision, shard_share


def _complete_checkpoint(folder: Path) -> bool:
    try:
        return isinstance(json.loads((folder / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest complete checkpoint under `<out_dir>/checkpoints/`. The Trainer writes
    `trainer_state.json` last, so a folder without it (or with half of it) was cut off by a kill
    and is passed over."""
    folder = checkpoints_dir(out_dir)
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name) and _complete_checkpoint(p)]
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]))) if done else None


def resume_checkpoint(out_dir: Path, key: str) -> str | None:
    """The checkpoint a stage resumes from: the newest complete one written under this same key.
    Checkpoints left under another key are removed first, so a stage whose config or inputs changed
    trains from scratch instead of resuming the old run's last checkpoint. Call it once the Trainer
    exists (in a distributed run all ranks must call it)."""
    folder = checkpoints_dir(out_dir)
    if is_main_process():
        if folder.is_dir() and read_key(folder / KEY_FILE) != key:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_key(folder / KEY_FILE, key)
    wait_for_everyone()
    return last_checkpoint(out_dir)


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the one process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """In a distributed run, hold every rank here until all arrive: after rank 0 has saved a stage,
    no rank may go on (to the next stage, which loads that folder) before the files are there."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def write_metrics(out_dir: Path, metrics: dict[str, Any], key: str) -> None:
    """`metrics.json`, written last: its key marks the stage complete for these inputs."""
    atomic_write_text(metrics_file(out_dir), json.dumps(dict(metrics, key=key), indent=2) + "\n")


def finished_metrics(out_dir: Path, key: str) -> dict[str, Any] | None:
    """The metrics of a stage already complete under `key` (marked `skipped`), else None."""
    try:
        metrics = json.loads(metrics_file(out_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics | {"skipped": True} if isinstance(metrics, dict) and metrics.get("key") == key else None


MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
               "model.safetensors.index.json", "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",
               "pytorch_model*.bin")
"""Top-level files of a saved model or adapter: a new result removes the old ones first, so a folder that held an
adapter and now holds a full model (or the reverse) is not read as the old one."""


def save_result(model: Any, tokenizer: Any, out: Path, merge: bool = False,
                state_dict: dict[str, torch.Tensor] | None = None) -> Any:
    """The final model (full) or adapter (LoRA) with its tokenizer, loadable on its own; `merged/` on request.
    `state_dict` is the whole model's when `model` is sharded (`setup.full_state_dict`): it is saved in place of the
    shards, and the model is read back whole from `out`. Returns a model that runs on this process alone."""
    for pattern in MODEL_FILES:
        for old in Path(out).glob(pattern):
            old.unlink()
    dtype = str(next(iter(state_dict.values())).dtype).removeprefix("torch.") if state_dict else None
    model.save_pretrained(out, state_dict=state_dict)  # it empties state_dict as it writes
    tokenizer.save_pretrained(out)
    if dtype is not None:  # a sharded model runs only with every rank: read the saved one back (merged)
        from pseudocot.models.lora import load_trained

        # A model whose config maps to its own code (`auto_map`) was loaded for training with trust_remote_code.
        custom = bool(getattr(getattr(model, "config", None), "auto_map", None))
        model = load_trained(out, device=str(model.device), dtype=dtype, trust_remote_code=custom)
        if merge:
            model.save_pretrained(merged_dir(out))
            tokenizer.save_pretrained(merged_dir(out))
        return model
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(merged_dir(out))
        tokenizer.save_pretrained(merged_dir(out))
    return model


def train_and_save(trainer: Any, out_dir: Path, key: str, tokenizer: Any, val_rows: Sequence[dict[str, Any]],
                   batch_size: int, metrics: dict[str, Any], merge: bool = False,
                   after: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train (resuming from this key's last checkpoint), then on rank 0 save the result, measure the
    validation loss and write `metrics.json`; every rank waits until the files are there. `after`
    adds metrics the caller can only know once training is done."""
    from pseudocot.progress import trainer_progress

    trainer_progress(trainer, metrics.get("stage") or metrics.get("role") or Path(out_dir).name)
    resume = resume_checkpoint(out_dir, key)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics = dict(metrics, steps=trainer.state.global_step, train_loss=result.training_loss,
                   resumed_from=Path(resume).name if resume else None, train_seconds=round(seconds, 2),
                   tokens_seen=tokens, tokens_per_second=round(tokens / max(seconds, 1e-9), 1))
    if after is not None:
        metrics.update(after())
    if getattr(trainer, "is_fsdp_enabled", False):
        metrics["fsdp"] = shard_share(trainer.model)
    metrics.update(precision=precision(trainer), environment=environment())
    state = full_state_dict(trainer)  # every rank: FSDP gathers the shards
    if is_main_process():
        model = save_result(trainer.model, tokenizer, out_dir, merge=merge, state_dict=state)
        if val_rows:  # a stage without validation rows (GRPO) has no validation loss
            t0 = time.perf_counter()
            metrics["val_loss"] = eval_ce(model, val_rows, tokenizer.pad_token_id, batch_size)
            metrics["val_seconds"] = round(time.perf_counter() - t0, 2)
            metrics["val_rows"] = len(val_rows)
        write_metrics(out_dir, metrics, key)
    wait_for_everyone()
    return metrics
