"""The `finetune` stage: supervised fine-tuning of the base LLM (or of the reasoning teacher) on
Example data rendered with the model's chat template, loss on the assistant part only.

Full fine-tuning, LoRA, or QLoRA (4-bit base, CUDA + bitsandbytes). Checkpoints every
`train.save_every_steps`; a killed run started again resumes from the last one, with the same data
order and RNG state, so it ends where an unbroken run would.

    pseudocot finetune --config demo                # the base LLM  -> runs/<name>/base/
    pseudocot finetune --config demo --role teacher  # the teacher   -> runs/<name>/teacher/
"""

from __future__ import annotations

from typing import Any

from pseudocot.config import Config, FinetuneConfig
from pseudocot.train.common import (
    PadCollator,
    finished_metrics,
    load_spec_tokenizer,
    spec_name,
    split_rows,
    train_and_save,
    trainable_model,
    training_args,
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
    done = finished_metrics(out, fcfg, force)
    if done is not None:
        return done
    if fcfg.method != "full" and not fcfg.model.path:
        raise ModelError(f"{role}.method={fcfg.method} needs a pretrained {role}.model.path; a tiny preset is trained "
                         "from scratch, so use method: full.")
    tokenizer = load_spec_tokenizer(fcfg.model, run_dir)
    t = fcfg.train
    rows_of = lambda file, split: split_rows(file, run_dir, split, f"{role} {split} data", tokenizer,  # noqa: E731
                                             fcfg.with_reasoning, fcfg.system_prompt, t.max_length,
                                             cfg.pipeline if fcfg.thoughts_in_context else None)
    train_rows, val_rows = rows_of(fcfg.train_file, "train"), rows_of(fcfg.val_file, "val")
    model = trainable_model(fcfg.model, tokenizer, fcfg.method, fcfg.lora, cfg.run.device, cfg.run.seed, t.gradient_checkpointing)
    args = training_args(t, out, cfg.run.seed, cfg.run.device, has_eval=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    metrics = {"role": role, "model": spec_name(fcfg.model), "method": fcfg.method,
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return train_and_save(trainer, out, fcfg, tokenizer, val_rows, t.batch_size, metrics, force,
                          merge=fcfg.merge and fcfg.method != "full")
