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

import json
import logging
from pathlib import Path
from typing import Any

from pseudocot.config import Config
from pseudocot.data.example import Example
from pseudocot.errors import DataError, ModelError
from pseudocot.files import atomic_open
from pseudocot.freshness import finetune_key, read_key, ttm_thoughts_key, write_key
from pseudocot.layout import RunLayout, has_model
from pseudocot.stages import prepare
from pseudocot.train.checkpoints import finished_metrics, train_and_save
from pseudocot.train.rows import PadCollator, read_split, tokenize_examples
from pseudocot.train.setup import load_spec_tokenizer, shardable, spec_name, trainable_model, training_args

logger = logging.getLogger(__name__)


def ttm_thoughts(cfg: Config, examples: list[Example], args: Any) -> list[list[str]]:
    """The Tiny Thought Model's thoughts on the first `base.ttm_questions` training questions, as the pipeline writes
    them (greedy, or sampled at `base.ttm_temperature`), read back from `base/ttm_thoughts/` when they were written
    under the current key (a resumed stage), else written there: by the main process first (`args` are the stage's
    TrainingArguments, which start the process group under torchrun), the others then read them."""
    from pseudocot.data.chat import question_text
    from pseudocot.pipeline import Sampling, ttm_thoughts_of

    layout = RunLayout.of(cfg)
    b = cfg.base
    path, key = layout.base_ttm_thoughts, ttm_thoughts_key(cfg)
    key_file = path.with_suffix(".key")
    questions = examples[: b.ttm_questions]
    # Every rank checks what it needs before the barrier, so none waits there for one that failed.
    if read_key(key_file) != key and (layout.distilled_ttm is None or not has_model(layout.distilled_ttm)):
        raise ModelError(f"base.thoughts_from is {b.thoughts_from}, but there is no Tiny Thought Model at "
                         f"{layout.distilled_ttm}; run `pseudocot distill` first (or set pipeline.ttm).")
    with args.main_process_first(desc="TTM thoughts"):
        if read_key(key_file) != key:
            logger.info("base: the TTM writes its thoughts for %d training questions", len(questions))
            key_file.unlink(missing_ok=True)  # no old key beside new thoughts, should this be killed half-way
            sampling = Sampling(temperature=b.ttm_temperature, seed=cfg.run.seed)
            written = ttm_thoughts_of(cfg, layout.distilled_ttm, [(e.id, question_text(e)) for e in questions], sampling)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as f:
                for e, t in zip(questions, written):
                    f.write(json.dumps({"id": e.id, "thoughts": t}, ensure_ascii=False) + "\n")
            write_key(key_file, key)
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    if [r["id"] for r in rows] != [e.id for e in questions]:
        raise DataError(f"{path}: its questions are not the first {len(questions)} of the training data; delete it.")
    return [r["thoughts"] for r in rows]


def thought_stats(written: list[list[str]], examples: list[Example]) -> dict[str, Any]:
    """How the TTM's thoughts on the training questions look: how many per question, the share of their `a op b = c`
    statements that are true, and the share of questions whose last thought's answer is the gold one."""
    from pseudocot.data.chat import final_answer
    from pseudocot.evaluate.metrics import faithfulness

    true = [f for t in written if (f := faithfulness("\n".join(t))) is not None]
    right = [bool(t) and final_answer(t[-1]) == str(e.answer) for t, e in zip(written, examples)]
    return {"questions": len(written), "thoughts_per_question": round(sum(map(len, written)) / max(len(written), 1), 3),
            "statements_true": round(sum(true) / len(true), 4) if true else None,
            "last_thought_right": round(sum(right) / max(len(right), 1), 4)}


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

    def examples_of(file: str | None, split: str) -> list[Example]:
        # The teacher learns reasoning: from the synth stage's kept solutions when it ran.
        path = layout.reasoning_train(file) if split == "train" and role == "teacher" else Path(file or layout.split(split))
        return read_split(path, f"{role} {split} data", t.val_examples if split == "val" else None)

    train_examples, val_examples = examples_of(fcfg.train_file, "train"), examples_of(fcfg.val_file, "val")
    # With thoughts_from ttm or mix, the TTM's own thoughts on the training questions (validation keeps the gold ones:
    # one validation loss whatever the rows train on).
    args = training_args(t, out, cfg.run.seed, cfg.run.device, has_eval=True)
    written = ttm_thoughts(cfg, train_examples, args) if role == "base" and fcfg.thoughts_from != "gold" else None
    train_rows = tokenize_examples(train_examples, tokenizer, fcfg.with_reasoning, fcfg.system_prompt, t.max_length, thoughts,
                                   written=written, gold=fcfg.thoughts_from != "ttm")
    val_rows = tokenize_examples(val_examples, tokenizer, fcfg.with_reasoning, fcfg.system_prompt, t.max_length, thoughts)
    model = trainable_model(fcfg.model, tokenizer, fcfg.method, fcfg.lora, cfg.run.device, cfg.run.seed, t.gradient_checkpointing)
    trainer = shardable(Trainer)(model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    metrics = {"role": role, "model": spec_name(fcfg.model), "method": fcfg.method,
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "train_rows": len(train_rows), "thoughts_from": fcfg.thoughts_from if fcfg.thoughts_in_context else None}
    if written is not None:
        metrics["ttm_thoughts"] = thought_stats(written, train_examples)
    return train_and_save(trainer, out, key, tokenizer, val_rows, t.batch_size, metrics,
                          merge=fcfg.merge and fcfg.method != "full")
