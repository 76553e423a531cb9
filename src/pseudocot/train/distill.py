"""The `distill` stage: a chain of distillation stages that makes the Tiny Thought Model.

Stage i's teacher is stage i-1's student (stage 1's is `distill.teacher`, by default the run's
fine-tuned reasoning teacher). Each stage trains its student with
`ce_weight * CE + fkl_weight * KL(teacher||student) + rkl_weight * KL(student||teacher)` on the
answer tokens, through the chunked loss, so the student's full-vocabulary logits never exist at
once. Before any weights load, the teacher's and student's tokenizers must agree.

`online` runs exactly one teacher forward per batch, under no_grad, and only the decoder (the
teacher's logits are formed chunk by chunk inside the loss). `cached` runs the teacher once and trains
from its stored top-k log-probabilities (`teacher_cache`).

    pseudocot distill --config demo      -> runs/<name>/distill/stage-1/, stage-2/, ..., summary.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pseudocot.config import Config, DistillStageConfig, ModelSpec, config_hash
from pseudocot.files import atomic_write_text
from pseudocot.losses import chunked_distill_loss
from pseudocot.models.loading import ModelError, load_tokenizer
from pseudocot.models.tokenizer import vocabulary_mismatch
from pseudocot.train import teacher_cache
from pseudocot.train.common import (
    IGNORE_INDEX,
    PadCollator,
    finished_metrics,
    is_main_process,
    load_spec_tokenizer,
    spec_name,
    split_rows,
    train_and_save,
    trainable_model,
    training_args,
)


def _trainer_class() -> type:
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """HF Trainer whose loss is the chunked distillation loss against a frozen teacher or its cache."""

        def __init__(self, *args: Any, teacher: Any = None, cache: teacher_cache.TeacherCache | None = None,
                     stage: DistillStageConfig, chunk_size: int | None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.teacher, self.cache, self.stage, self.chunk_size = teacher, cache, stage, chunk_size
            self.teacher_forwards = 0
            # Our loss is already a mean per micro-batch: let the Trainer scale it for accumulation.
            self.model_accepts_loss_kwargs = False
            self._hidden: list[torch.Tensor] = []
            # The student's final hidden states are caught on their way out of its decoder, so the
            # forward still goes through the (DDP-)wrapped model and gradients are synchronised.
            # Only while compute_loss runs: other forwards (validation, generation) keep nothing.
            self._capture = False
            self._student_lm().get_decoder().register_forward_hook(
                lambda _m, _i, out: self._hidden.append(out.last_hidden_state) if self._capture else None)

        def _student_lm(self) -> Any:
            model = self.model
            return model.get_base_model() if hasattr(model, "get_base_model") else model

        def compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            self._hidden.clear()
            self._capture = True
            try:
                # logits_to_keep=1: the model's own logits are for one position only; ours are chunked.
                outputs = model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
            finally:
                self._capture = False
            hidden = self._hidden.pop()
            pos = teacher_cache.answer_positions(labels)  # (B, T-1): hidden at t predicts label t+1
            h = hidden[:, :-1][pos]  # (n, H)
            y = labels[:, 1:][pos]  # (n,)
            s = self.stage
            teacher_kw: dict[str, Any] = {}
            if s.fkl_weight or s.rkl_weight:
                if self.cache is not None:
                    lp, tid = self.cache.gather(inputs["index"].cpu())
                    teacher_kw = {"teacher_topk_logprobs": lp.to(h.device), "teacher_topk_ids": tid.to(h.device)}
                else:
                    with torch.no_grad():
                        t_hidden = teacher_cache.decoder_hidden(self.teacher, ids, mask)
                    self.teacher_forwards += 1
                    teacher_kw = {"teacher_hidden": t_hidden[:, :-1][pos],
                                  "teacher_lm_head_weight": self.teacher.get_output_embeddings().weight}
            loss = chunked_distill_loss(
                h, self._student_lm().get_output_embeddings().weight, y,
                ce_weight=s.ce_weight, fkl_weight=s.fkl_weight, rkl_weight=s.rkl_weight,
                temperature=s.temperature, ignore_index=IGNORE_INDEX, chunk_size=self.chunk_size, **teacher_kw)
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def stage_names(cfg: Config) -> list[str]:
    names = [s.name or f"stage-{i + 1}" for i, s in enumerate(cfg.distill.stages)]
    if len(set(names)) != len(names):
        raise ModelError("distill.stages: two stages share a name; give each its own.")
    return names


def first_teacher(cfg: Config) -> tuple[str, ModelSpec]:
    """Stage 1's teacher: `distill.teacher.path`, else the run's fine-tuned teacher folder."""
    spec = cfg.distill.teacher
    if spec.path:
        return spec.path, spec
    if spec.preset:
        raise ModelError("distill.teacher must be a trained model (path), not a preset; leave it empty to use the run's teacher.")
    folder = cfg.run_dir / "teacher"
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ModelError(f"no teacher at {folder}; run `pseudocot finetune --role teacher` first or set distill.teacher.path.")
    return str(folder), ModelSpec(path=str(folder), dtype=spec.dtype, trust_remote_code=spec.trust_remote_code)


def load_teacher(path: str, spec: ModelSpec, device: str) -> Any:
    from pseudocot.models.lora import load_trained

    teacher = load_trained(path, device=device, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def train_stage(cfg: Config, stage: DistillStageConfig, out: Path, teacher_path: str, teacher_spec: ModelSpec,
                force: bool = False) -> dict[str, Any]:
    """One stage: check tokenizers, load teacher and student, train, save, report validation loss."""
    run_dir = cfg.run_dir
    identity = {"stage": stage, "teacher": teacher_cache.teacher_identity(teacher_path), "mode": cfg.distill.mode,
                "top_k": cfg.distill.top_k, "with_reasoning": cfg.distill.with_reasoning, "system": cfg.distill.system_prompt}
    done = finished_metrics(out, identity, force)
    if done is not None:
        return done
    # Tokenizers first: a mismatch must stop the stage before gigabytes of weights load.
    t_tok = load_tokenizer(teacher_path, teacher_spec.trust_remote_code)
    s_tok = load_spec_tokenizer(stage.student, run_dir)
    problem = vocabulary_mismatch(t_tok, s_tok, teacher_path, spec_name(stage.student))
    if problem:
        raise ModelError(problem[0].upper() + problem[1:-1] + "; distillation needs one shared vocabulary, so pick a student of the teacher's family.")
    if stage.method != "full" and not stage.student.path:
        raise ModelError(f"distill stage '{out.name}': method {stage.method} needs a pretrained student.path; use method: full for a preset.")

    t = stage.train
    rows_of = lambda file, split: split_rows(file, run_dir, split, f"distillation {split} data", s_tok,  # noqa: E731
                                             cfg.distill.with_reasoning, cfg.distill.system_prompt, t.max_length)
    rows, val_rows = rows_of(stage.train_file, "train"), rows_of(stage.val_file, "val")
    args = training_args(t, out, cfg.run.seed, cfg.run.device, has_eval=False)
    needs_teacher = bool(stage.fkl_weight or stage.rkl_weight)
    teacher, cache = None, None
    if needs_teacher and cfg.distill.mode == "cached":
        key = teacher_cache.cache_key(rows, identity["teacher"], cfg.distill.top_k)
        with args.main_process_first(desc="teacher cache"):
            cache = teacher_cache.TeacherCache.load(out / "teacher_cache", key)
            if cache is None:
                teacher = load_teacher(teacher_path, teacher_spec, cfg.run.device)
                cache = teacher_cache.build(out / "teacher_cache", key, rows, teacher, cfg.distill.top_k, t_tok.pad_token_id,
                                            batch_size=t.batch_size)
                teacher = None  # training reads the cache; free the teacher
    elif needs_teacher:
        teacher = load_teacher(teacher_path, teacher_spec, cfg.run.device)

    student = trainable_model(stage.student, s_tok, stage.method, stage.lora, cfg.run.device, cfg.run.seed,
                              t.gradient_checkpointing)
    trainer = _trainer_class()(
        model=student, args=args, train_dataset=rows, data_collator=PadCollator(s_tok.pad_token_id, keep_index=True),
        processing_class=s_tok, teacher=teacher, cache=cache, stage=stage, chunk_size=cfg.distill.chunk_size)
    metrics = {
        "stage": out.name, "teacher": teacher_path, "student": spec_name(stage.student), "mode": cfg.distill.mode,
        "weights": {"ce": stage.ce_weight, "fkl": stage.fkl_weight, "rkl": stage.rkl_weight, "temperature": stage.temperature},
        "student_parameters": sum(p.numel() for p in student.parameters()),
    }
    return train_and_save(trainer, out, identity, s_tok, val_rows, t.batch_size, metrics, force,
                          after=lambda: {"teacher_forwards": trainer.teacher_forwards})


def main(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Run every stage of the chain (skipping finished ones) and write `distill/summary.json`."""
    if not cfg.distill.stages:
        raise ModelError("distill.stages is empty; list at least one stage with its student.")
    names = stage_names(cfg)
    teacher_path, teacher_spec = first_teacher(cfg)
    summary: dict[str, Any] = {"teacher": teacher_path, "stages": []}
    root = cfg.run_dir / "distill"
    for stage, name in zip(cfg.distill.stages, names):
        last_teacher = (teacher_path, teacher_spec)
        metrics = train_stage(cfg, stage, root / name, teacher_path, teacher_spec, force)
        summary["stages"].append(metrics)
        teacher_path = str(root / name)
        teacher_spec = ModelSpec(path=teacher_path, dtype=stage.student.dtype, trust_remote_code=stage.student.trust_remote_code)
    if cfg.distill.ce_only_baseline:
        last = cfg.distill.stages[-1]
        baseline = DistillStageConfig(name=f"{names[-1]}-ce-only", student=last.student, method=last.method, lora=last.lora,
                                      ce_weight=1.0, fkl_weight=0.0, rkl_weight=0.0, temperature=1.0,
                                      train_file=last.train_file, val_file=last.val_file, train=last.train)
        # Same student, data, seed and steps as the last stage: only the loss differs (no teacher is run).
        summary["ce_only_baseline"] = train_stage(cfg, baseline, root / baseline.name, *last_teacher, force=force)
    if is_main_process():
        teacher_metrics = cfg.run_dir / "teacher" / "metrics.json"
        if teacher_metrics.is_file():
            summary["teacher_val_loss"] = json.loads(teacher_metrics.read_text()).get("val_loss")
        summary["config_hash"] = config_hash(cfg.distill)
        atomic_write_text(root / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
