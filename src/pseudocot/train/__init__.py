"""Training, thin over HF Trainer: the pieces the training stages (`pseudocot.stages.finetune`,
`pseudocot.stages.distill`) are built from.

- `rows`: Example JSONL -> tokenized rows with the loss on the answer, the collator, validation CE;
- `setup`: the model and tokenizer a spec names, LoRA, `TrainingArguments`;
- `checkpoints`: resume under the stage's key, save the result, mark it complete;
- `distill`: one distillation stage's Trainer and loss (the model's real head: `pseudocot.models.heads`); `teacher_cache`: the cached top-k teacher.
"""
