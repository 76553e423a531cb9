"""Benchmark: distillation training throughput and memory of pseudocot (online and cached) against TRL's GKDTrainer.

In a temporary run folder:

1. `pseudocot.stages.data.main` builds the arith data (one training row per example the runs will
   see: steps x batch size) and, for tiny models, trains the run's tokenizer.
2. The teacher. Tiny (default): a `tiny-m` (at least 4x the student's parameters) trained briefly
   with `pseudocot.stages.finetune.main` (role teacher, full) so its distribution is not uniform.
   Real (`--teacher PATH`): a trained HF folder, e.g. SmolLM2-135M-Instruct from
   `pseudocot models import smollm2 --out /tmp/smol`, with its own tokenizer and chat template; the
   student is `--student PATH` or `--student-layers N` layers cut from the teacher
   (`pseudocot.models.cut.cut_layers`, saved into the run folder). Not timed.
3. Three trainers distil the same student init (same preset and seed, or the same folder) from that
   teacher on the same rows, batch size, max_length, learning-rate schedule and number of steps, with
   pure forward KL(teacher || student) at temperature 1 on the answer tokens:

   - online: `pseudocot.stages.distill.train_stage`, mode online, ce_weight=0, fkl_weight=1,
     rkl_weight=0 (one teacher decoder forward per batch, chunked fused loss);
   - cached: the same stage in mode cached (the teacher runs once over the training rows and its
     top-k log-probabilities are stored; training reads them). The one-time cache build is timed
     on its own and reported beside;
   - trl: `trl.experimental.gkd.GKDTrainer` with lmbda=0 (never generates on-policy, so every batch
     is the dataset's own completion), beta=0, temperature=1. In the installed TRL,
     `generalized_jsd_loss` with beta == 0 is `F.kl_div(student_log_probs, teacher_log_probs,
     log_target=True)` = sum_v p_teacher (log p_teacher - log q_student), i.e. forward
     KL(teacher || student), averaged over the tokens whose label is not -100 (the completion); beta
     == 1 would be reverse KL. (GKDTrainer's `temperature` only affects generation; the loss is
     always computed at temperature 1.) Its dataset is `messages` chats rendered by the tokenizer's
     chat template through TRL's own `DataCollatorForChatML` (labels = the assistant turn); the
     benchmark checks that this gives exactly pseudocot's token ids and labels for every row, and
     that TRL's loss equals pseudocot's on one batch.

   Each trainer run is its own subprocess (this script with `--only MODE`), which loads its models,
   trains, and reports one JSON line; so the runs' memory never mixes. The runs take turns
   `--repeats` times (trl, online, cached, trl, online, cached, ...), so that load from other work on
   the machine hits them alike; the best run of each is reported (noise only ever slows a run down),
   the others are printed (see also "Noise" below).

Tokens per second: the non-padding tokens (prompt + answer, `attention_mask.sum()`) of the batches
the training loop consumed, as the HF Trainer counts them (`include_num_input_tokens_seen =
"non_padding"`), divided by the wall seconds of the loop: from the Trainer's `on_train_begin` to
the `on_step_end` of the last step. Model loading, the teacher-cache build, the final checkpoint
save and validation are outside it; every trainer sees the same rows in the same order, so the token
counts are equal (checked). `cached_vs_trl` compares training throughput alone;
`cached_vs_trl_incl_build` charges the one-time cache build (teacher forwards over the training
rows, writing and re-reading the shards) to the cached run: tokens / (loop + build seconds).

Memory (CPU): the resident set of each run's process, from the kernel (`/proc/self/status`), not
sampled. `peak_rss_mib`: the process's high-water mark (VmHWM) up to the end of the training loop
(the last step's end, before the Trainer saves its final checkpoint), model loading, the optimizer
and (cached) the cache build included. `loop_start_rss_mib`: the resident set at `on_train_begin`,
with both models loaded, every weight read once (`make_resident`: transformers maps safetensors
weights from the file, so a weight counts only once read) and the trainer built. There the
high-water mark is reset (`/proc/self/clear_refs` 5), so `loop_increment_mib` = the loop's own
high-water mark minus that start: what training adds on top of the weights (activations, logits,
loss, gradients, AdamW's state), which is what a chunked loss saves. The memory ratios are of the
best run's process (the same numbers repeat run to run within a few MiB).

Threads: every run uses `--threads` torch threads (default 1). On a CPU shared with other work, two
or more OpenMP threads wait on each other whenever one is descheduled (a tiny-m forward took 3 s
with 2 threads against 0.2 s with 1 on the 2-core machine of BENCHMARKS.md).

Noise: besides the best whole run of each trainer (`*_vs_trl`), the JSON gives `*_vs_trl_stepmin`:
every run consumes the same batches in the same order, so step j of every repeat does the same
work; summing each step's fastest repeat takes out the bursts of other load that hit one repeat
only. Both are printed; they agree when the machine is quiet.

Validation loss: `pseudocot.train.rows.eval_ce` (cross-entropy per answer token) of each run's
final student on the run's validation rows.

    HF_HUB_OFFLINE=1 python benchmarks/distill_throughput.py
    HF_HUB_OFFLINE=1 python benchmarks/distill_throughput.py --steps 30 --batch-size 8 --repeats 1
    HF_HUB_OFFLINE=1 python benchmarks/distill_throughput.py --teacher /tmp/smol --student-layers 8 \\
        --steps 10 --batch-size 4 --val-rows 16

The last line printed is one JSON object with the ratios and the raw numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from pseudocot.config import Config, DistillStageConfig, ModelSpec, load_config  # noqa: E402
from pseudocot.data.chat import messages_for  # noqa: E402
from pseudocot.layout import RunLayout  # noqa: E402
from pseudocot.losses import chunked_distill_loss  # noqa: E402
from pseudocot.models.heads import decoder_hidden  # noqa: E402
from pseudocot.models.loading import load_tokenizer  # noqa: E402
from pseudocot.models.tiny import build_tiny_model, count_parameters  # noqa: E402
from pseudocot.stages import data as data_stage  # noqa: E402
from pseudocot.stages import distill as distill_stage  # noqa: E402
from pseudocot.stages import finetune  # noqa: E402
from pseudocot.stages.run import clear  # noqa: E402
from pseudocot.train import teacher_cache  # noqa: E402
from pseudocot.train.distill import load_teacher  # noqa: E402
from pseudocot.train.rows import (  # noqa: E402
    IGNORE_INDEX,
    PadCollator,
    answer_positions,
    eval_ce,
    read_split,
    tokenize_examples,
)
from pseudocot.train.setup import build_model, load_spec_tokenizer, training_args  # noqa: E402

MODES = ("trl", "online", "cached")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of every measured run")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per step")
    parser.add_argument("--teacher-preset", default="tiny-m", help="tiny preset of the teacher")
    parser.add_argument("--student-preset", default="tiny-s", help="tiny preset of the student")
    parser.add_argument("--teacher-steps", type=int, default=30, help="steps of the (untimed) teacher training")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="a trained teacher folder (HF save_pretrained, with its tokenizer) instead of a tiny preset")
    parser.add_argument("--student", type=Path, default=None, help="with --teacher: the student's folder")
    parser.add_argument("--student-layers", type=int, default=None,
                        help="with --teacher: a student of this many decoder layers cut from the teacher")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer (alternating); the best counts")
    parser.add_argument("--max-length", type=int, default=256, help="longest row in tokens (no row is cut)")
    parser.add_argument("--val-rows", type=int, default=100, help="validation rows (each run's final validation CE)")
    parser.add_argument("--top-k", type=int, default=64, help="teacher log-probs per token in the cache (cached mode)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the distillation runs")
    parser.add_argument("--seed", type=int, default=0, help="run seed: data order and student init")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for every run (default 1: on a CPU shared with other work, "
                             "2+ OpenMP threads wait on each other and run up to 15x slower)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run folder and print its path")
    # One measured run in its own process (the parent starts these).
    parser.add_argument("--only", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rep", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.teacher is None and (args.student is not None or args.student_layers is not None):
        parser.error("--student and --student-layers need --teacher")
    if args.teacher is not None and (args.student is None) == (args.student_layers is None):
        parser.error("--teacher needs exactly one of --student PATH or --student-layers N")
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Timing and memory: one callback for every trainer, so the loops are measured the same way.
# --------------------------------------------------------------------------------------------


def proc_status_kib(field: str) -> int:
    """A memory line of /proc/self/status in KiB, by its field name (`VmRSS`: resident now; `VmHWM`: its high-water mark)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Set the high-water mark (VmHWM) back to the resident set now (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_resident(*models: Any) -> None:
    """Read every weight once. transformers maps safetensors weights from the file, so they become
    resident (and count in RSS) only when first read; reading them before the loop keeps the loading
    out of the loop's memory increment, for every trainer alike."""
    with torch.no_grad():
        for model in models:
            if model is not None:
                for t in [*model.parameters(), *model.buffers()]:
                    t.sum()


class LoopTimer(TrainerCallback):
    """Wall time and non-padding tokens from `on_train_begin` to the last `on_step_end`, step by step,
    and the process's resident memory: at the loop's start, and its peak before and during the loop."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.marks: list[tuple[float, int, int]] = []  # (wall time, global_step, tokens seen) at each step's end
        self.memory: dict[str, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        before_kib = proc_status_kib("VmHWM")
        start_kib = proc_status_kib("VmRSS")
        self.memory = {"before_kib": before_kib, "start_kib": start_kib, "peak_reset": reset_peak_rss()}
        self.t0 = time.perf_counter()
        self.marks = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks.append((time.perf_counter(), state.global_step, int(state.num_input_tokens_seen)))
        # Read at every step's end, so the Trainer's final checkpoint save (after the last step) is left out.
        self.memory["loop_peak_kib"] = proc_status_kib("VmHWM")

    def result(self) -> dict[str, Any]:
        t_end, steps, tokens = self.marks[-1]
        seconds = t_end - self.t0
        times = [self.t0] + [m[0] for m in self.marks]
        m = self.memory
        mib = 1 / 1024
        return {"steps": steps, "tokens": tokens, "loop_seconds": seconds, "tokens_per_s": tokens / seconds,
                "step_seconds": [b - a for a, b in zip(times, times[1:])],
                "peak_rss_mib": round(max(m["before_kib"], m["loop_peak_kib"]) * mib, 1),
                "loop_start_rss_mib": round(m["start_kib"] * mib, 1),
                "loop_increment_mib": round((m["loop_peak_kib"] - m["start_kib"]) * mib, 1) if m["peak_reset"] else None}


_timer: LoopTimer | None = None
_build_seconds: list[float] = []  # wall seconds of each teacher_cache.build


def _install_hooks() -> None:
    """Give pseudocot's DistillTrainer the loop timer, and time `teacher_cache.build`.

    The distill stage looks both up when it runs (`trainer_class` in its own module, `build` as
    `teacher_cache.build`), so they are replaced there.
    """
    original_class, original_build = distill_stage.trainer_class, teacher_cache.build

    def timed_trainer_class() -> type:
        cls = original_class()

        class TimedDistillTrainer(cls):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                assert _timer is not None
                make_resident(self.model, self.teacher)
                self.add_callback(_timer)

        return TimedDistillTrainer

    def timed_build(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        cache = original_build(*args, **kwargs)
        _build_seconds.append(time.perf_counter() - t0)
        return cache

    distill_stage.trainer_class = timed_trainer_class
    teacher_cache.build = timed_build


# --------------------------------------------------------------------------------------------
# Setup: data, tokenizer, teacher and student (untimed). Parent and runs compute the same.
# --------------------------------------------------------------------------------------------


def make_config(args: argparse.Namespace, root: Path) -> Config:
    n_train = args.steps * args.batch_size
    real = [] if args.teacher is None else ["tokenizer.train=false"]
    return load_config("smoke", [
        f"run.out_dir={root}", "run.name=bench", "run.device=cpu", f"run.seed={args.seed}",
        f"data.arith.n_train={n_train}", f"data.arith.n_val={args.val_rows}", "data.arith.n_test=20",
        f"train.max_length={args.max_length}", "train.save_every_steps=100000", "train.log_every_steps=10",
        "train.bf16=false", "train.eval_every_steps=0",
        f"teacher.model.preset={args.teacher_preset}", "teacher.method=full",
        f"teacher.train.max_steps={args.teacher_steps}", "teacher.train.batch_size=16",
        f"distill.top_k={args.top_k}", "distill.ce_only_baseline=false", *real,
    ])  # fmt: skip


def student_spec(args: argparse.Namespace, root: Path) -> ModelSpec:
    if args.student is not None:
        return ModelSpec(path=str(args.student))
    if args.student_layers is not None:
        return ModelSpec(path=str(root / f"student-{args.student_layers}-layers"))
    return ModelSpec(preset=args.student_preset)


def teacher_folder(args: argparse.Namespace, layout: RunLayout) -> Path:
    return args.teacher if args.teacher is not None else layout.teacher_dir


def stage_for(cfg: Config, args: argparse.Namespace, root: Path) -> DistillStageConfig:
    """One full-student stage of pure forward KL: ce 0, fkl 1, rkl 0, temperature 1."""
    train = dataclasses.replace(cfg.train, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                grad_accum_steps=1, gradient_checkpointing=False, bf16=False)
    return DistillStageConfig(student=student_spec(args, root), method="full", ce_weight=0.0,
                              fkl_weight=1.0, rkl_weight=0.0, temperature=1.0, train=train)


def load_rows(cfg: Config, args: argparse.Namespace) -> tuple[Any, list[Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(tokenizer, training examples, training rows, validation rows), as the distill stage builds them."""
    layout = RunLayout.of(cfg)
    if args.teacher is not None:
        tok = load_tokenizer(str(args.teacher))
    else:
        tok = load_spec_tokenizer(ModelSpec(preset=args.student_preset), layout.tokenizer_dir)
    examples = read_split(layout.split("train"), "training data")
    val_examples = read_split(layout.split("val"), "validation data")
    d = cfg.distill
    rows = tokenize_examples(examples, tok, d.with_reasoning, d.system_prompt, args.max_length)
    val_rows = tokenize_examples(val_examples, tok, d.with_reasoning, d.system_prompt, args.max_length)
    return tok, examples, rows, val_rows


# --------------------------------------------------------------------------------------------
# The three measured trainers.
# --------------------------------------------------------------------------------------------


def run_pseudocot(cfg: Config, stage: DistillStageConfig, mode: str, out: Path, teacher_path: Path) -> dict[str, Any]:
    """One distillation stage into `out`, which must be a fresh folder: a stage whose folder already
    holds metrics under the current key would be skipped, not trained."""
    global _timer
    _timer = LoopTimer()
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, mode=mode))
    builds_before = len(_build_seconds)
    if out.exists():
        shutil.rmtree(out)
    metrics = distill_stage.train_stage(cfg, stage, out, teacher_path, ModelSpec(path=str(teacher_path)))
    result = _timer.result() | {"val_loss": metrics["val_loss"], "teacher_forwards": metrics["teacher_forwards"],
                                "train_seconds": metrics["train_seconds"]}
    if mode == "cached":
        assert len(_build_seconds) == builds_before + 1, "the cached run did not build its teacher cache"
        result["cache_build_seconds"] = _build_seconds[-1]
    _timer = None
    return result


def trl_dataset(examples: list[Any], rows: list[dict[str, Any]], cfg: Config) -> Any:
    """The rows' examples as `messages` chats, in the rows' order (so the sampler sees the same order)."""
    from datasets import Dataset

    return Dataset.from_list([{"messages": messages_for(examples[r["index"]], cfg.distill.with_reasoning,
                                                        cfg.distill.system_prompt)} for r in rows])


def trl_config(cfg: Config, stage: DistillStageConfig, out: Path) -> Any:
    """A GKDConfig with pseudocot's TrainingArguments for the stage, plus GKD's own settings."""
    from trl.experimental.gkd import GKDConfig

    base = training_args(stage.train, out, cfg.run.seed, "cpu", has_eval=False)
    shared = ("output_dir", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
              "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
              "max_grad_norm", "logging_steps", "save_strategy", "save_steps", "save_total_limit", "seed", "data_seed",
              "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "dataloader_num_workers", "dataloader_drop_last",
              "include_num_input_tokens_seen")
    kwargs = {k: getattr(base, k) for k in shared}
    return GKDConfig(
        **kwargs, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to=[],
        remove_unused_columns=False, max_length=stage.train.max_length,
        lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False, disable_dropout=True,
    )  # fmt: skip


def run_trl(cfg: Config, stage: DistillStageConfig, out: Path, teacher: Any, tokenizer: Any, dataset: Any,
            val_rows: list[dict[str, Any]]) -> dict[str, Any]:
    from trl.experimental.gkd import GKDTrainer

    global _timer
    _timer = LoopTimer()
    student = build_model(stage.student, tokenizer, "cpu", cfg.run.seed)
    make_resident(student, teacher)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=trl_config(cfg, stage, out),
                         train_dataset=dataset, processing_class=tokenizer, callbacks=[_timer])
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    result = _timer.result() | {"train_seconds": round(train_seconds, 2)}
    result["val_loss"] = eval_ce(trainer.model, val_rows, tokenizer.pad_token_id, stage.train.batch_size)
    _timer = None
    return result


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """One measured run (`--only MODE`) in this process, in the parent's run folder."""
    root = args.run_dir
    cfg = make_config(args, root)
    layout = RunLayout.of(cfg)
    stage = stage_for(cfg, args, root)
    teacher_path = teacher_folder(args, layout)
    out = layout.root / "bench" / f"{args.only}-{args.rep}"
    try:
        if args.only == "trl":
            tok, examples, rows, val_rows = load_rows(cfg, args)
            teacher = load_teacher(teacher_path, "auto", False, "cpu")
            result = run_trl(cfg, stage, out, teacher, tok, trl_dataset(examples, rows, cfg), val_rows)
        else:
            result = run_pseudocot(cfg, stage, args.only, out, teacher_path)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # checkpoints and the saved student: nothing reads them
    return result


def spawn(argv: list[str], mode: str, root: Path, rep: int) -> dict[str, Any]:
    """Run `--only mode` in a fresh process; its lines are echoed, its last line is the result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", mode, "--run-dir", str(root), "--rep", str(rep)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {mode} run #{rep} failed (exit code {proc.returncode}); see its error above.")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------
# Checks that the comparison is like for like.
# --------------------------------------------------------------------------------------------


def check_tokens(dataset: Any, rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> None:
    """TRL's ChatML collator must give every row exactly pseudocot's input ids and labels."""
    from trl.experimental.utils import DataCollatorForChatML

    collate = DataCollatorForChatML(tokenizer=tokenizer, max_length=max_length)
    bad = 0
    for example, row in zip(dataset, rows):
        b = collate([example])
        if b["input_ids"][0].tolist() != row["input_ids"] or b["labels"][0].tolist() != row["labels"]:
            bad += 1
    if bad:
        raise SystemExit(f"TRL's collator tokenizes {bad} of {len(rows)} rows differently from pseudocot; "
                         "the comparison would not be like for like.")
    if max(len(r["input_ids"]) for r in rows) >= max_length:
        raise SystemExit("some rows reach --max-length; raise it so that no row is cut "
                         "(TRL and pseudocot cut differently).")


def check_loss(teacher: Any, student: Any, rows: list[dict[str, Any]], pad_id: int, chunk_size: int) -> float:
    """TRL's generalized_jsd_loss(beta=0) and pseudocot's chunked loss (fkl=1) on one batch: |difference|."""
    from trl.experimental.gkd import GKDTrainer

    batch = PadCollator(pad_id)(rows[:8])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        s_logits = student(input_ids=ids, attention_mask=mask).logits
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits
        trl_loss = GKDTrainer.generalized_jsd_loss(s_logits[:, :-1], t_logits[:, :-1], labels[:, 1:], beta=0.0)
        s_hidden = decoder_hidden(student, ids, mask)
        t_hidden = decoder_hidden(teacher, ids, mask)
        pos = answer_positions(labels)
        ours = chunked_distill_loss(
            s_hidden[:, :-1][pos], student.get_output_embeddings().weight, labels[:, 1:][pos],
            teacher_hidden=t_hidden[:, :-1][pos], teacher_lm_head_weight=teacher.get_output_embeddings().weight,
            ce_weight=0.0, fkl_weight=1.0, rkl_weight=0.0, temperature=1.0, ignore_index=IGNORE_INDEX,
            chunk_size=chunk_size)  # fmt: skip
    return abs(float(trl_loss) - float(ours))


# --------------------------------------------------------------------------------------------


def prepare_models(args: argparse.Namespace, cfg: Config, tok: Any, root: Path) -> tuple[dict[str, Any], float | None]:
    """The teacher (trained here for tiny presets) and, with --student-layers, the cut student; their sizes."""
    layout = RunLayout.of(cfg)
    if args.teacher is None:
        teacher_params = count_parameters(build_tiny_model(args.teacher_preset, tok))
        student_params = count_parameters(build_tiny_model(args.student_preset, tok))
        ratio = teacher_params / student_params
        log(f"teacher {args.teacher_preset}: {teacher_params:,} parameters; student {args.student_preset}: "
            f"{student_params:,} parameters; ratio {ratio:.2f}")
        if ratio < 4:
            raise SystemExit(f"the teacher has only {ratio:.2f}x the student's parameters; pick presets with >= 4x.")
        t0 = time.perf_counter()
        clear(layout, "teacher")  # train from scratch
        tm = finetune.main(cfg, role="teacher")
        log(f"teacher trained: {tm['steps']} steps in {time.perf_counter() - t0:.1f}s, validation CE "
            f"{tm['val_loss']:.3f} per answer token (uniform would be {math.log(len(tok)):.3f})")
        return {"teacher_params": teacher_params, "student_params": student_params,
                "teacher_preset": args.teacher_preset, "student_preset": args.student_preset}, tm["val_loss"]
    teacher = load_teacher(args.teacher, "auto", False, "cpu")
    spec = student_spec(args, root)
    if args.student_layers is not None:
        from pseudocot.models.cut import cut_layers

        cut_layers(teacher, num_layers=args.student_layers).save_pretrained(spec.path)
        tok.save_pretrained(spec.path)
    sizes = {"teacher": str(args.teacher), "student": str(args.student or f"{args.student_layers} layers cut from the teacher"),
             "teacher_params": count_parameters(teacher),
             "student_params": count_parameters(build_model(spec, tok, "cpu", args.seed)),
             "vocab": len(tok)}
    log(f"teacher {args.teacher}: {sizes['teacher_params']:,} parameters; student {sizes['student']}: "
        f"{sizes['student_params']:,} parameters; vocabulary {len(tok):,}")
    return sizes, None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if args.only:
        _install_hooks()
        print(json.dumps(measure_one(args)), flush=True)
        return {}
    import transformers
    import trl

    root = Path(tempfile.mkdtemp(prefix="pseudocot-distill-bench-"))
    try:
        cfg = make_config(args, root)
        layout = RunLayout.of(cfg)
        log(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
            f"trl {trl.__version__}; run folder {root}")

        # 1. Data and tokenizer.
        t0 = time.perf_counter()
        data_stage.main(cfg)
        tok, examples, rows, val_rows = load_rows(cfg, args)
        lengths = [len(r["input_ids"]) for r in rows]
        answer = [sum(t != IGNORE_INDEX for t in r["labels"]) for r in rows]
        log(f"data: {len(rows)} training rows, {len(val_rows)} validation rows, vocabulary {len(tok)}, "
            f"tokens per row mean {statistics.mean(lengths):.1f} (max {max(lengths)}), answer tokens per row "
            f"mean {statistics.mean(answer):.1f} ({time.perf_counter() - t0:.1f}s)")
        dataset = trl_dataset(examples, rows, cfg)
        check_tokens(dataset, rows, tok, args.max_length)
        log("check: TRL's DataCollatorForChatML gives pseudocot's input ids and labels for every row")

        # 2. Teacher and student (not timed), and the loss check.
        sizes, teacher_val = prepare_models(args, cfg, tok, root)
        stage = stage_for(cfg, args, root)
        teacher_path = teacher_folder(args, layout)
        teacher = load_teacher(teacher_path, "auto", False, "cpu")
        if teacher_val is None:
            teacher_val = eval_ce(teacher, val_rows, tok.pad_token_id, args.batch_size)
            log(f"teacher validation CE {teacher_val:.3f} per answer token (uniform would be {math.log(len(tok)):.3f})")
        gap = check_loss(teacher, build_model(stage.student, tok, "cpu", args.seed), rows, tok.pad_token_id,
                         cfg.distill.chunk_size)
        del teacher
        log(f"check: TRL generalized_jsd_loss(beta=0) vs pseudocot chunked fkl on one batch: |diff| = {gap:.2e}")
        if gap > 1e-4:
            raise SystemExit("TRL's beta=0 loss and pseudocot's forward KL disagree; "
                             "the comparison is not like for like.")

        # 3. The measured runs, alternating, each in its own process.
        log(f"measuring: {args.repeats} x (trl, online, cached), {args.steps} steps of batch {args.batch_size}, "
            f"lr {args.lr}, forward KL at temperature 1, cache top-k {args.top_k}")
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for rep in range(args.repeats):
            for mode in MODES:
                r = spawn(argv, mode, root, rep)
                runs[mode].append(r)
                extra = f", cache build {r['cache_build_seconds']:.2f}s" if "cache_build_seconds" in r else ""
                log(f"  {mode:6s} #{rep}: {r['steps']} steps, {r['tokens']} tokens in {r['loop_seconds']:.2f}s = "
                    f"{r['tokens_per_s']:.0f} tok/s (median step {1000 * statistics.median(r['step_seconds']):.0f} ms), "
                    f"val CE {r['val_loss']:.4f}{extra}; RSS peak {r['peak_rss_mib']:.0f} MiB, at loop start "
                    f"{r['loop_start_rss_mib']:.0f} MiB, loop adds {r['loop_increment_mib']} MiB")

        tokens = {r["tokens"] for rs in runs.values() for r in rs}
        steps = {r["steps"] for rs in runs.values() for r in rs}
        if len(tokens) != 1 or len(steps) != 1:
            raise SystemExit(f"the runs saw different data: tokens {sorted(tokens)}, steps {sorted(steps)}")
        best = {m: max(runs[m], key=lambda r: r["tokens_per_s"]) for m in MODES}
        build = min(r["cache_build_seconds"] for r in runs["cached"])
        n_tokens = best["cached"]["tokens"]
        cached_incl = n_tokens / (best["cached"]["loop_seconds"] + build)
        trl_tps = best["trl"]["tokens_per_s"]
        # Step-wise best: every run consumes the same batches in the same order, so step j of each
        # repeat does the same work; the fastest repeat of each step, summed, is the loop with the
        # bursts of other load that hit only one repeat taken out.
        stepmin = {m: sum(min(col) for col in zip(*(r["step_seconds"] for r in runs[m]))) for m in MODES}

        def mem_ratio(mode: str, key: str) -> float | None:
            a, b = best[mode][key], best["trl"][key]
            return round(a / b, 3) if a is not None and b else None

        result = {
            "online_vs_trl": round(best["online"]["tokens_per_s"] / trl_tps, 3),
            "cached_vs_trl": round(best["cached"]["tokens_per_s"] / trl_tps, 3),
            "cached_vs_trl_incl_build": round(cached_incl / trl_tps, 3),
            "online_vs_trl_peak_rss": mem_ratio("online", "peak_rss_mib"),
            "online_vs_trl_loop_increment": mem_ratio("online", "loop_increment_mib"),
            "cached_vs_trl_peak_rss": mem_ratio("cached", "peak_rss_mib"),
            "cached_vs_trl_loop_increment": mem_ratio("cached", "loop_increment_mib"),
            "online_tokens_per_s": round(best["online"]["tokens_per_s"], 1),
            "cached_tokens_per_s": round(best["cached"]["tokens_per_s"], 1),
            "cached_incl_build_tokens_per_s": round(cached_incl, 1),
            "trl_tokens_per_s": round(trl_tps, 1),
            "cache_build_seconds": round(build, 2),
            "online_vs_trl_stepmin": round(stepmin["trl"] / stepmin["online"], 3),
            "cached_vs_trl_stepmin": round(stepmin["trl"] / stepmin["cached"], 3),
            "cached_vs_trl_incl_build_stepmin": round(stepmin["trl"] / (stepmin["cached"] + build), 3),
            "loop_seconds_best": {m: round(best[m]["loop_seconds"], 2) for m in MODES},
            "loop_seconds_stepmin": {m: round(stepmin[m], 2) for m in MODES},
            "peak_rss_mib": {m: best[m]["peak_rss_mib"] for m in MODES},
            "loop_start_rss_mib": {m: best[m]["loop_start_rss_mib"] for m in MODES},
            "loop_increment_mib": {m: best[m]["loop_increment_mib"] for m in MODES},
            "val_loss_online": round(best["online"]["val_loss"], 4),
            "val_loss_cached": round(best["cached"]["val_loss"], 4),
            "val_loss_trl": round(best["trl"]["val_loss"], 4),
            "teacher_val_loss": round(teacher_val, 4),
            "loss_check_abs_diff": gap,
            **sizes,
            "steps": steps.pop(),
            "batch_size": args.batch_size,
            "tokens_per_run": n_tokens,
            "repeats": args.repeats,
            "all_tokens_per_s": {m: [round(r["tokens_per_s"], 1) for r in runs[m]] for m in MODES},
            "all_peak_rss_mib": {m: [r["peak_rss_mib"] for r in runs[m]] for m in MODES},
            "all_cache_build_seconds": [round(r["cache_build_seconds"], 2) for r in runs["cached"]],
            "data_rows": len(rows),
            "mean_row_tokens": round(statistics.mean(lengths), 1),
            "torch_threads": torch.get_num_threads(),
            "trl_version": trl.__version__,
        }
        log(f"online / TRL: {result['online_vs_trl']:.3f} tokens/s, {result['online_vs_trl_peak_rss']} peak RSS, "
            f"{result['online_vs_trl_loop_increment']} loop increment; cached / TRL: {result['cached_vs_trl']:.3f} "
            f"tokens/s, {result['cached_vs_trl_incl_build']:.3f} counting the {build:.2f}s cache build")
        log(f"step-wise best of the repeats: online / TRL {result['online_vs_trl_stepmin']:.3f}, "
            f"cached / TRL {result['cached_vs_trl_stepmin']:.3f}, "
            f"{result['cached_vs_trl_incl_build_stepmin']:.3f} counting the build")
        if args.keep:
            log(f"kept: {root}")
        print(json.dumps(result), flush=True)
        return result
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
