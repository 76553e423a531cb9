"""The `distill` stage: a chain of distillation stages that makes the Tiny Thought Model.

Stage i's teacher is stage i-1's student (stage 1's is `distill.teacher.path`, by default the run's
fine-tuned reasoning teacher). With `teacher_writes` the teacher first writes the solutions the student
learns from (sequence-level distillation, filtered for faithfulness: `<stage>/written/`). Each stage checks,
before any weights load, that teacher and student share one vocabulary (unless the teacher only writes);
then that both output heads are reproduced exactly (bias, logit scaling, soft-capping); then trains
(`train.distill`; with `on_policy` a share of the batches are the student's own completions, scored by
the teacher: `train.onpolicy`). A stage complete under its key (its config, `run.seed`, its teacher's
content, the data, the tokenizer) is skipped; checkpoints of another key are discarded.

    pseudocot distill --config demo      -> runs/<name>/distill/stage-1/, stage-2/, ..., summary.json
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pseudocot.config import Config, DistillStageConfig, GeneratorConfig, ModelSpec
from pseudocot.data.example import Example
from pseudocot.data.jsonl import write_jsonl
from pseudocot.errors import DataError, ModelError
from pseudocot.files import atomic_write_text
from pseudocot.freshness import distill_stage_key, model_fingerprint, teacher_written_key
from pseudocot.generate.base import GenerationParams
from pseudocot.layout import RunLayout, has_model, metrics_file, teacher_cache_dir, teacher_written_file
from pseudocot.models.loading import load_tokenizer
from pseudocot.models.tokenizer import vocabulary_mismatch
from pseudocot.stages import prepare
from pseudocot.synth.candidates import CandidateFile, canonical, done_pairs, generate
from pseudocot.synth.filter import kept_example, run_filter
from pseudocot.synth.rows import settings_of, to_candidates, write_outputs
from pseudocot.synth.teacher import Teacher
from pseudocot.tasks.registry import task_from
from pseudocot.train import teacher_cache
from pseudocot.train.checkpoints import finished_metrics, is_main_process, train_and_save
from pseudocot.train.distill import check_heads, collator, load_teacher, trainer_class
from pseudocot.train.rows import read_split, tokenize_examples
from pseudocot.train.setup import cut_source, cut_student, load_spec_tokenizer, spec_name, trainable_model, training_args


def train_stage(cfg: Config, stage: DistillStageConfig, out: Path, teacher_path: Path, teacher_spec: ModelSpec) -> dict[str, Any]:
    """One stage: check tokenizers and heads, load teacher and student, train, save, report validation loss."""
    layout = RunLayout.of(cfg)
    key = distill_stage_key(cfg, stage, teacher_path)
    done = finished_metrics(out, key)
    if done is not None:
        return done
    # Tokenizers first: a mismatch must stop the stage before gigabytes of weights load.
    t_tok = load_tokenizer(str(teacher_path), teacher_spec.trust_remote_code)
    source = cut_source(stage.student, teacher_path)  # a student cut from a model (`student.from`)
    s_tok = load_tokenizer(str(source), stage.student.trust_remote_code) if source else load_spec_tokenizer(stage.student, layout.tokenizer_dir)
    problem = vocabulary_mismatch(t_tok, s_tok, str(teacher_path), spec_name(stage.student))
    if problem and (stage.needs_teacher() or not stage.teacher_writes):
        way = ("or set every teacher weight and on_policy to 0 (the teacher's written solutions need no shared vocabulary)"
               if stage.teacher_writes else "or let the teacher write the student's solutions (teacher_writes) with every "
               "teacher weight and on_policy at 0")
        raise ModelError(problem[0].upper() + problem[1:-1]
                         + f"; the teacher's logits need one shared vocabulary, so pick a student of the teacher's family, {way}.")

    t, d = stage.train, cfg.distill
    args = training_args(t, out, cfg.run.seed, cfg.run.device, has_eval=False)

    def rows_of(file: str | None, split: str) -> list[dict[str, Any]]:
        path = layout.reasoning_train(file) if split == "train" else Path(file or layout.split(split))
        examples = read_split(path, f"distillation {split} data", t.val_examples if split == "val" else None)
        if split == "train" and stage.teacher_writes:
            with args.main_process_first(desc="the teacher writes"):
                examples = teacher_written(cfg, stage, out, teacher_path, teacher_spec, examples)
        return tokenize_examples(examples, s_tok, d.with_reasoning, d.system_prompt, t.max_length)

    rows, val_rows = rows_of(stage.train_file, "train"), rows_of(stage.val_file, "val")
    teacher, cache = None, None
    if stage.teacher_weight() and d.mode == "cached":
        cache_key = teacher_cache.cache_key(rows, model_fingerprint(teacher_path), d.top_k)
        with args.main_process_first(desc="teacher cache"):
            cache = teacher_cache.TeacherCache.load(teacher_cache_dir(out), cache_key)
            if cache is None:
                teacher = load_teacher(teacher_path, teacher_spec.dtype, teacher_spec.trust_remote_code, cfg.run.device)
                check_heads(rows, teacher, str(teacher_path))
                cache = teacher_cache.build(teacher_cache_dir(out), cache_key, rows, teacher, d.top_k,
                                            t_tok.pad_token_id, batch_size=t.batch_size)
                teacher = None  # training reads the cache; free the teacher
    elif stage.needs_teacher():
        teacher = load_teacher(teacher_path, teacher_spec.dtype, teacher_spec.trust_remote_code, cfg.run.device)

    student_spec = cut_student(stage.student, source, s_tok, out, key) if source else stage.student
    student = trainable_model(student_spec, s_tok, stage.method, stage.lora, cfg.run.device, cfg.run.seed,
                              t.gradient_checkpointing)
    check_heads(rows, student, spec_name(stage.student), teacher, str(teacher_path))
    trainer = trainer_class()(
        model=student, args=args, train_dataset=rows, data_collator=collator(s_tok.pad_token_id),
        processing_class=s_tok, teacher=teacher, cache=cache, stage=stage, chunk_size=d.chunk_size, max_length=t.max_length)
    metrics = {
        "stage": out.name, "teacher": str(teacher_path), "student": spec_name(stage.student), "mode": d.mode,
        "weights": {"ce": stage.ce_weight, "fkl": stage.fkl_weight, "rkl": stage.rkl_weight, "jsd": stage.jsd_weight,
                    "skew_fkl": stage.skew_fkl_weight, "skew_rkl": stage.skew_rkl_weight,
                    "temperature": stage.temperature},
        "on_policy": {"share": stage.on_policy, "from_step": stage.on_policy_from_step, "loss": stage.on_policy_loss,
                      "temperature": stage.on_policy_temperature}
        if stage.on_policy else None,
        "student_parameters": sum(p.numel() for p in student.parameters()),
    }
    return train_and_save(trainer, out, key, s_tok, val_rows, t.batch_size, metrics,
                          after=lambda: dict(trainer.counter.counts))


def teacher_written(cfg: Config, stage: DistillStageConfig, out: Path, teacher_path: Path, teacher_spec: ModelSpec,
                    examples: Sequence[Example]) -> list[Example]:
    """Sequence-level distillation (`teacher_writes`): the teacher writes a greedy solution to each question (appended
    to `<stage>/written/candidates.jsonl` batch by batch, so a killed stage asks only for the rest), the run's
    faithfulness filter keeps those it trusts, and they are what the student learns from. Under torchrun rank 0
    writes (it goes first); the other ranks read its solutions and filter them the same way."""
    w = stage.teacher_writes
    assert w is not None
    questions = list(examples[: w.questions] if w.questions else examples)
    main = is_main_process()

    def at(name: str) -> Path:
        return teacher_written_file(out, name)

    file = CandidateFile(at("candidates.jsonl"), teacher_written_key(cfg, stage, teacher_path, teacher_spec.dtype))
    moved = file.open() if main else None
    gen: dict[str, Any] = {"generated": 0, "reused": len(questions), "seconds": 0.0}
    if main and len(done_pairs(file.rows(), questions)) < len(questions):
        teacher = Teacher(GeneratorConfig(path=str(teacher_path), dtype=teacher_spec.dtype, batch_size=w.batch_size,
                                                trust_remote_code=teacher_spec.trust_remote_code),
                          cfg.run.device, system_prompt=cfg.distill.system_prompt)
        gen = generate(questions, teacher, file, prompt="{question}", samples=1,
                       params=GenerationParams(max_new_tokens=w.max_new_tokens, temperature=0.0),
                       chunk_questions=w.batch_size, shard=None, desc=f"{out.name}: the teacher writes").to_dict()
    rows = canonical(file.rows(), questions, 1)
    done, s = done_pairs(rows, questions), cfg.synth
    missing = [q.id for q in questions if (q.id, 0) not in done]
    if missing:  # only a rank that is not rank 0 can get here, reading a file rank 0 did not finish
        raise DataError(f"{file.path}: no solution to question {missing[0]} ({len(missing)} missing); run the stage again.")
    result = run_filter(to_candidates([done[(q.id, 0)] for q in questions], questions),
                        settings_of(s, task_from(cfg.task_of("synth"))), s.checks)
    if main:
        write_jsonl(file.path, rows)  # question order, as an unbroken run writes it
        write_outputs(result, at("kept.jsonl"), at("rejects.jsonl"), str(teacher_path), s.checks)
        stats = {"teacher": str(teacher_path), "questions": len(questions), "checks": list(s.checks), **result.summary(),
                 "generation": {**gen, "stale_files": [moved] if moved else []}}
        atomic_write_text(at("stats.json"), json.dumps(stats, indent=2) + "\n")
        print(f"{out.name}: the teacher's solutions: kept {stats['kept']} of {stats['candidates']} ({stats['keep_rate']}) "
              f"-> {at('kept.jsonl')}")
    if not result.kept:
        raise DataError(f"{at('rejects.jsonl')}: none of the teacher's {len(questions)} solutions passed the checks "
                        f"({', '.join(s.checks)}); read the reasons there, and train the teacher longer or change synth.checks.")
    return [kept_example(c, str(teacher_path), s.checks) for c in result.kept]


def main(cfg: Config) -> dict[str, Any]:
    """Run every stage of the chain (skipping finished ones) and write `distill/summary.json`."""
    prepare(cfg)
    layout = RunLayout.of(cfg)
    if not cfg.distill.stages:
        raise ModelError("distill.stages is empty; list at least one stage with its student.")
    teacher_path = layout.distill_teacher
    if not has_model(teacher_path):
        raise ModelError(f"no teacher at {teacher_path}; run `pseudocot finetune --role teacher` first or set distill.teacher.path.")
    spec = cfg.distill.teacher
    teacher_spec = ModelSpec(path=str(teacher_path), dtype=spec.dtype, trust_remote_code=spec.trust_remote_code)
    summary: dict[str, Any] = {"teacher": str(teacher_path), "stages": []}
    last_teacher = (teacher_path, teacher_spec)
    for stage, (_, out) in zip(cfg.distill.stages, layout.distill_stages()):
        last_teacher = (teacher_path, teacher_spec)
        summary["stages"].append(train_stage(cfg, stage, out, teacher_path, teacher_spec))
        teacher_path = out
        teacher_spec = ModelSpec(path=str(out), dtype=stage.student.dtype, trust_remote_code=stage.student.trust_remote_code)
    if cfg.distill.ce_only_baseline:
        last = cfg.distill.stages[-1]
        baseline = DistillStageConfig(name=layout.ce_only_dir().name, student=last.student, method=last.method, lora=last.lora,
                                      ce_weight=1.0, fkl_weight=0.0, rkl_weight=0.0, temperature=1.0,
                                      train_file=last.train_file, val_file=last.val_file, train=last.train)
        # Same student, data, seed and steps as the last stage: only the loss differs (no teacher is run).
        summary["ce_only_baseline"] = train_stage(cfg, baseline, layout.ce_only_dir(), *last_teacher)
    if is_main_process():
        teacher_metrics = metrics_file(layout.teacher_dir)
        if teacher_metrics.is_file():
            summary["teacher_val_loss"] = json.loads(teacher_metrics.read_text()).get("val_loss")
        atomic_write_text(layout.distill_summary, json.dumps(summary, indent=2) + "\n")
    return summary
