"""The `finetune` stage: supervised fine-tuning of the base LLM (or of the reasoning teacher) on
Example data rendered with the model's chat template, loss on the assistant part only.

Full fine-tuning, LoRA, or QLoRA (4-bit base, CUDA + bitsandbytes). Checkpoints every
`train.save_every_steps`; a killed run started again resumes from the last one, with the same data
order and RNG state, so it ends where an unbroken run would.

    pseudocot finetune --config demo                # the base LLM  -> runs/<name>/base/
    pseudocot finetune --config demo --role teacher  # the teacher   -> runs/<name>/teacher/
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pseudocot.config import Config, FinetuneConfig
from pseudocot.train.common import (
    PadCollator,
    build_model,
    eval_ce,
    is_complete,
    is_main_process,
    load_spec_tokenizer,
    read_split,
    resume_checkpoint,
    spec_name,
    tokenize_examples,
    training_args,
    wait_for_everyone,
    write_metrics,
)


def stage_config(cfg: Config, role: str) -> FinetuneConfig:
    if role not in ("base", "teacher"):
        raise ValueError(f"role must be base or teacher, got {role!r}.")
    return cfg.base if role == "base" else cfg.teacher


def main(cfg: Config, role: str = "base", force: bool = False) -> dict[str, Any]:
    """Fine-tune `cfg.<role>` into `<run>/<role>/`; returns its metrics."""
    from transformers import Trainer

    from pseudocot.models.loading import ModelError

    fcfg = stage_config(cfg, role)
    run_dir = cfg.run_dir
    out = run_dir / role
    if not force and is_complete(out, fcfg):
        import json

        return json.loads((out / "metrics.json").read_text()) | {"skipped": True}
    if fcfg.method != "full" and not fcfg.model.path:
        raise ModelError(f"{role}.method={fcfg.method} needs a pretrained {role}.model.path; a tiny preset is trained "
                         "from scratch, so use method: full.")
    tokenizer = load_spec_tokenizer(fcfg.model, run_dir)
    t = fcfg.train
    train_rows = tokenize_examples(read_split(fcfg.train_file or run_dir / "data" / "train.jsonl", f"{role} training data"),
                                   tokenizer, fcfg.with_reasoning, fcfg.system_prompt, t.max_length)
    val_rows = tokenize_examples(read_split(fcfg.val_file or run_dir / "data" / "val.jsonl", f"{role} validation data"),
                                 tokenizer, fcfg.with_reasoning, fcfg.system_prompt, t.max_length)

    model = build_model(fcfg.model, tokenizer, cfg.run.device, cfg.run.seed, load_in_4bit=fcfg.method == "qlora")
    if fcfg.method in ("lora", "qlora"):
        from pseudocot.models.lora import attach_lora

        model = attach_lora(model, fcfg.lora, quantized=fcfg.method == "qlora", gradient_checkpointing=t.gradient_checkpointing)
    args = training_args(t, out, cfg.run.seed, cfg.run.device, has_eval=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    resume = resume_checkpoint(out, fcfg, force)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "role": role, "model": spec_name(fcfg.model), "method": fcfg.method, "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "resumed_from": Path(resume).name if resume else None,
        "train_seconds": round(seconds, 2), "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if is_main_process():
        save_result(trainer.model, tokenizer, out, merge=fcfg.merge and fcfg.method != "full")
        metrics["val_loss"] = eval_ce(trainer.model, val_rows, tokenizer.pad_token_id, t.batch_size)
        write_metrics(out, metrics, fcfg)
    wait_for_everyone()
    return metrics


def save_result(model: Any, tokenizer: Any, out: Path, merge: bool = False) -> None:
    """The final model (full) or adapter (LoRA) with its tokenizer, loadable on its own; `merged/` on request."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
