"""The `finetune` stage: supervised fine-tuning of the base LLM (or of the reasoning teacher) on
Example data rendered with the model's chat template, loss on the assistant part only.

Full fine-tuning, LoRA, or QLoRA (4-bit base, CUDA + bitsandbytes). Checkpoints every
`train.save_every_steps`; a killed run started again resumes from the last one, with the same data
order and RNG state, so it ends where an unbroken run would. The stage's key (`freshness`) covers
its config, `run.seed`, the data, the tokenizer and the pretrained weights: a folder complete under
the current key is skipped, and checkpoints written under another key are discarded.

    pseudocot finetune --config demo                # the base LLM  -> runs/<name>/base/
    pseudocot finetune --config demo --role teacher  # the teacher   -> runs/<name>/teacher/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pseudocot.config import Config
from pseudocot.freshness import finetune_key
from pseudocot.layout import RunLayout
from pseudocot.stages import prepare
from pseudocot.train.checkpoints import finished_metrics, train_and_save
from pseudocot.train.rows import PadCollator, read_split, tokenize_examples
from pseudocot.train.setup import load_spec_tokenizer, spec_name, trainable_model, training_args


def main(cfg: Config, role: str = "base") -> dict[str, Any]:
    """Fine-tune `cfg.<role>` (base or teacher) into `<run>/<role>/`; returns its metrics."""
    from transformers import Trainer

    prepare(cfg)
    layout = RunLayout.of(cfg)
    fcfg = cfg.base if role == "base" else cfg.teacher
    out = layout.finetune_dir(role)
    key = finetune_key(cfg, role)
    done = finished_metrics(out, key)
    if done is not None:
        return done
    tokenizer = load_spec_tokenizer(fcfg.model, layout.tokenizer_dir)
    t = fcfg.train
    thoughts = cfg.pipeline if fcfg.thoughts_in_context else None  # rendered as the pipeline renders them

    def rows_of(file: str | None, split: str) -> list[dict[str, Any]]:
        # The teacher learns reasoning: from the synth stage's kept solutions when it ran.
        path = layout.reasoning_train(file) if split == "train" and role == "teacher" else Path(file or layout.split(split))
        examples = read_split(path, f"{role} {split} data", t.val_examples if split == "val" else None)
        return tokenize_examples(examples, tokenizer, fcfg.with_reasoning, fcfg.system_prompt, t.max_length, thoughts)

    train_rows, val_rows = rows_of(fcfg.train_file, "train"), rows_of(fcfg.val_file, "val")
    model = trainable_model(fcfg.model, tokenizer, fcfg.method, fcfg.lora, cfg.run.device, cfg.run.seed, t.gradient_checkpointing)
    args = training_args(t, out, cfg.run.seed, cfg.run.device, has_eval=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    metrics = {"role": role, "model": spec_name(fcfg.model), "method": fcfg.method,
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return train_and_save(trainer, out, key, tokenizer, val_rows, t.batch_size, metrics,
                          merge=fcfg.merge and fcfg.method != "full")
