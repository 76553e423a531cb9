"""The training stages: `finetune` (full and LoRA, resumable after a kill), the distillation chain
(online and cached teacher), the tokenizer check before distillation, DDP under torchrun, the
inheritance of `train` settings, and the CLI commands. Everything runs tiny-xs models for a few
steps on 120 arithmetic problems, offline, on CPU."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kill_resume import kill_one_finish_other
from pseudocot.cli import cli
from pseudocot.config import load_config
from pseudocot.data.chat import prompt_and_completion
from pseudocot.errors import ConfigError, DataError, ModelError
from pseudocot.layout import RunLayout
from pseudocot.models.loading import load_tokenizer
from pseudocot.models.tiny import build_tiny_model
from pseudocot.models.tokenizer import save_tokenizer, train_tokenizer, vocabulary_mismatch
from pseudocot.stages import data as data_stage
from pseudocot.stages import distill as distill_stage
from pseudocot.stages import finetune
from pseudocot.stages import run as run_stage
from pseudocot.train import checkpoints, teacher_cache
from pseudocot.train import distill as distill_train
from pseudocot.train.rows import IGNORE_INDEX, PadCollator, eval_ce, read_split, tokenize_examples
from pseudocot.train.setup import training_args

REPO = Path(__file__).resolve().parents[1]
DDP_SCRIPT = Path(__file__).parent / "ddp" / "distill_writes.py"
STAGES_SCRIPT = Path(__file__).parent / "ddp" / "train_stages.py"

TEACHER_STEPS = 8
STAGE_STEPS = 4
MAX_LENGTH = 96

# Small data, short sequences, tiny-xs models and a handful of steps: each stage trains in seconds.
SMALL = [
    "data.arith.n_train=120", "data.arith.n_val=24", "data.arith.n_test=24",
    f"train.max_length={MAX_LENGTH}", "train.batch_size=8",
    "teacher.model.preset=tiny-xs", f"teacher.train.max_steps={TEACHER_STEPS}",
    f"distill.stages.0.train.max_steps={STAGE_STEPS}", f"distill.stages.1.train.max_steps={STAGE_STEPS}",
    "base.train.max_steps=4",
]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def small_config(out_dir: Path, *extra: str):
    return load_config("smoke", [f"run.out_dir={out_dir}", *SMALL, *extra])


def one_stage(steps: int, **train: int) -> str:
    """An override that makes the chain a single tiny-xs stage."""
    extra = "".join(f", {k}: {v}" for k, v in train.items())
    return f"distill.stages=[{{student: {{preset: tiny-xs}}, train: {{max_steps: {steps}{extra}}}}}]"


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), f"{k}: max diff {(a[k] - b[k]).abs().max().item()}"


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def copy_run(prepared, dest: Path, parts: tuple[str, ...] | None = None) -> Path:
    """A copy of the prepared run (or of some of its folders) under `dest`; returns the new out_dir."""
    run = dest / prepared.run_dir.name
    if parts is None:
        shutil.copytree(prepared.run_dir, run)
    else:
        for p in parts:
            shutil.copytree(prepared.run_dir / p, run / p)
    return dest


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A run with data, the run tokenizer and a tiny-xs teacher fine-tuned for TEACHER_STEPS steps.
    Tests that write into a run work on a copy (`copy_run`)."""
    out = tmp_path_factory.mktemp("prepared")
    cfg = small_config(out)
    data_stage.main(cfg)
    metrics = finetune.main(cfg, "teacher")
    return SimpleNamespace(out_dir=out, cfg=cfg, run_dir=RunLayout.of(cfg).root, teacher_metrics=metrics)


@pytest.fixture(scope="module")
def run_tokenizer(prepared):
    return load_tokenizer(str(prepared.run_dir / "tokenizer"))


# --------------------------------------------------------------------------------------------
# finetune: full
# --------------------------------------------------------------------------------------------


def test_finetune_teacher_full_writes_a_loadable_model(prepared, run_tokenizer):
    out = prepared.run_dir / "teacher"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "metrics.json"):
        assert (out / name).is_file(), name
    pickles = [p.name for p in out.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES]
    assert pickles == []
    metrics = read_json(out / "metrics.json")
    assert metrics["steps"] == TEACHER_STEPS
    assert metrics["method"] == "full" and metrics["role"] == "teacher"
    assert metrics["resumed_from"] is None
    assert finite(metrics["val_loss"]) and finite(metrics["train_loss"])
    assert {k: v for k, v in metrics.items() if k != "key"} == prepared.teacher_metrics
    assert metrics["precision"] == {"autocast": None, "weights": ["float32"], "trainable": ["float32"]}
    assert metrics["environment"]["packages"]["transformers"] == transformers.__version__

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == len(run_tokenizer)
    assert tok.chat_template
    # The saved weights are the trained ones: their validation loss is the one reported. Training ran in fp32
    # (train.bf16 null on a CPU) and both losses are the same float32 computation on the same rows in the same batches
    # of 8; only a kernel's blocking may differ between two processes, which moves each logit (a dot product of
    # hidden_size terms) by at most hidden_size * u relative, and a mean cross-entropy by about twice that.
    assert prepared.cfg.teacher.train.batch_size == 8 and prepared.cfg.teacher.train.bf16 is None
    val = tokenize_examples(read_split(prepared.run_dir / "data" / "val.jsonl", "val"), tok, True, None, MAX_LENGTH)
    hidden = model.config.hidden_size
    assert eval_ce(model, val, tok.pad_token_id, 8) == pytest.approx(metrics["val_loss"], rel=2 * hidden * 2**-24)
    # ... and not the untrained initialisation.
    fresh = build_tiny_model("tiny-xs", tok, seed=prepared.cfg.run.seed)
    assert eval_ce(fresh, val, tok.pad_token_id, 8) > metrics["val_loss"] + 0.1


def test_finetune_second_call_is_skipped(prepared):
    out = prepared.run_dir / "teacher"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    again = finetune.main(prepared.cfg, "teacher")
    assert again["skipped"] is True
    assert again["steps"] == TEACHER_STEPS
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before


def test_finetune_changed_config_or_force_trains_from_scratch(prepared, tmp_path):
    out_dir = copy_run(prepared, tmp_path)
    out = out_dir / prepared.run_dir.name / "teacher"
    original = weights(out)
    original_key = read_json(out / "metrics.json")["key"]

    changed = finetune.main(small_config(out_dir, "teacher.train.lr=1e-2"), "teacher")
    assert "skipped" not in changed
    # A finished run of another config is no checkpoint to resume: the new config trains from step 0.
    assert changed["resumed_from"] is None
    assert changed["steps"] == TEACHER_STEPS
    retrained = weights(out)
    assert max_weight_diff(original, retrained) > 1e-4
    assert read_json(out / "metrics.json")["key"] != original_key

    # --force: the stage's outputs are removed first, then it trains again.
    cfg = small_config(out_dir, "teacher.train.lr=1e-2")
    run_stage.clear(RunLayout.of(cfg), "teacher")
    assert not out.exists()
    forced = finetune.main(cfg, "teacher")
    assert "skipped" not in forced and forced["resumed_from"] is None and forced["steps"] == TEACHER_STEPS
    # Same config, same seed, from scratch: the same weights again.
    assert_same_weights(weights(out), retrained)


def test_loss_is_on_the_answer_only(prepared, run_tokenizer):
    tok = run_tokenizer
    examples = read_split(prepared.run_dir / "data" / "val.jsonl", "val")[:12]
    full = 0
    for with_reasoning, system in ((True, None), (False, "Be brief.")):
        rows = tokenize_examples(examples, tok, with_reasoning, system, MAX_LENGTH)
        assert len(rows) == len(examples)
        for row in rows:
            ex = examples[row["index"]]
            prompt, completion = prompt_and_completion(tok, ex, with_reasoning, system)
            n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
            ids, labels = row["input_ids"], row["labels"]
            assert len(ids) == len(labels) <= MAX_LENGTH
            assert 0 < n_prompt < len(ids)
            assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
            assert labels[n_prompt:] == ids[n_prompt:]
            assert IGNORE_INDEX not in labels[n_prompt:]
            # The labelled part is the assistant's answer (ending with the end-of-turn token), cut
            # at max_length if it is longer.
            c_ids = tok(completion, add_special_tokens=False)["input_ids"]
            assert ids[n_prompt:] == c_ids[: MAX_LENGTH - n_prompt]
            assert completion.startswith(tok.decode(ids[n_prompt:]))
            full += n_prompt + len(c_ids) <= MAX_LENGTH
            if n_prompt + len(c_ids) <= MAX_LENGTH:
                assert tok.decode(ids[n_prompt:]) == completion and ids[-1] == tok.eos_token_id
            assert ex.question in tok.decode(ids[:n_prompt])
            assert (ex.reasoning in completion) == with_reasoning
    assert full >= len(examples)  # most rows are whole (all those without reasoning)

    # Cut at max_length: labels stay aligned; a row whose prompt fills max_length is dropped.
    ex = examples[0]
    prompt, _ = prompt_and_completion(tok, ex, True, None)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    (row,) = tokenize_examples([ex], tok, True, None, n_prompt + 3)
    assert len(row["input_ids"]) == len(row["labels"]) == n_prompt + 3
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    (row,) = tokenize_examples([ex], tok, True, None, n_prompt + 1)
    assert row["labels"] == [IGNORE_INDEX] * n_prompt + [row["input_ids"][-1]]
    with pytest.raises(DataError, match="max_length"):
        tokenize_examples([ex], tok, True, None, n_prompt)


def test_last_checkpoint_passes_over_a_cut_off_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    for step, state in ((9, "{}"), (10, '{"global_step": 10}'), (20, None), (30, '{"global_st'), (5, "{}")):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if state is not None:  # 20: cut off before trainer_state.json, 30: while writing it
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (folder / "checkpoint-x").mkdir()
    assert checkpoints.last_checkpoint(tmp_path) == str(folder / "checkpoint-10")
    assert checkpoints.last_checkpoint(tmp_path / "nothing") is None


def test_resume_checkpoint_drops_checkpoints_of_another_config(tmp_path):
    key_a, key_b = "key-a", "key-b"
    assert checkpoints.resume_checkpoint(tmp_path, key_a) is None
    assert (tmp_path / "checkpoints" / "key.txt").read_text().strip() == key_a
    ck = tmp_path / "checkpoints" / "checkpoint-4"
    ck.mkdir()
    (ck / "trainer_state.json").write_text("{}")
    assert checkpoints.resume_checkpoint(tmp_path, key_a) == str(ck)  # same key: resume
    assert ck.exists()
    assert checkpoints.resume_checkpoint(tmp_path, key_b) is None  # another key: start over
    assert not ck.exists()
    assert (tmp_path / "checkpoints" / "key.txt").read_text().strip() == key_b


# --------------------------------------------------------------------------------------------
# finetune: LoRA
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_folder(prepared, run_tokenizer, tmp_path_factory):
    """A 'pretrained' checkpoint: a tiny-xs model saved with the run tokenizer."""
    folder = tmp_path_factory.mktemp("pretrained")
    build_tiny_model("tiny-xs", run_tokenizer, seed=7).save_pretrained(folder)
    run_tokenizer.save_pretrained(folder)
    return folder


def test_finetune_lora_adapter_and_merge(prepared, pretrained_folder, run_tokenizer, tmp_path):
    from peft import PeftModel

    from pseudocot.models.lora import load_trained

    out_dir = copy_run(prepared, tmp_path, ("data", "tokenizer"))
    cfg = small_config(out_dir, f"base.model.path={pretrained_folder}", "base.method=lora",
                       "base.lora.target_modules=[q_proj,v_proj]", "base.merge=true", "base.train.max_steps=5")
    metrics = finetune.main(cfg, "base")
    out = RunLayout.of(cfg).base_dir
    assert metrics["method"] == "lora" and metrics["steps"] == 5 and finite(metrics["val_loss"])
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    assert [p.name for p in out.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES] == []
    adapter_cfg = read_json(out / "adapter_config.json")
    assert sorted(adapter_cfg["target_modules"]) == ["q_proj", "v_proj"]
    assert Path(adapter_cfg["base_model_name_or_path"]) == pretrained_folder
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("q_proj" in k or "v_proj" in k for k in adapter)
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())  # the adapters trained
    base_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(pretrained_folder).parameters())
    assert 0 < metrics["trainable_parameters"] < base_params / 5

    ids = torch.tensor([run_tokenizer("<|user|>3 + 4 = ?<|eos|><|assistant|>", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(pretrained_folder).eval()
        base_logits = plain(ids).logits
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained_folder), str(out))
        ref_logits = reference.merge_and_unload().eval()(ids).logits
        loaded = load_trained(out, device="cpu")
        logits = loaded(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(out / "merged").eval()(ids).logits
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    assert torch.allclose(merged_logits, ref_logits, atol=1e-5)
    assert (logits - base_logits).abs().max() > 1e-5  # the adapter is really applied
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()


def test_lora_with_a_preset_is_refused(prepared, tmp_path):
    out_dir = copy_run(prepared, tmp_path, ("data", "tokenizer"))
    assert small_config(out_dir).base.model.preset and not small_config(out_dir).base.model.path
    # The config refuses it when it is loaded, before any stage runs.
    with pytest.raises(ConfigError) as err:
        small_config(out_dir, "base.method=lora")
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(".") and ". " not in msg  # one sentence
    assert "override 'base.method=lora'" in msg and "'base.method'" in msg and "model.path" in msg and "full" in msg
    assert not (out_dir / prepared.run_dir.name / "base").exists()


def test_lora_unknown_target_module_lists_the_linear_layers(prepared, pretrained_folder, tmp_path):
    out_dir = copy_run(prepared, tmp_path, ("data", "tokenizer"))
    cfg = small_config(out_dir, f"base.model.path={pretrained_folder}", "base.method=lora",
                       "base.lora.target_modules=[q_proj,qkv_proj]")
    with pytest.raises(ModelError) as err:
        finetune.main(cfg, "base")
    msg = str(err.value)
    assert "qkv_proj" in msg
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in msg.split("linear layers", 1)[1], name
    assert not (RunLayout.of(cfg).base_dir / "metrics.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_qlora_on_cpu_needs_cuda(prepared, pretrained_folder, tmp_path):
    out_dir = copy_run(prepared, tmp_path, ("data", "tokenizer"))
    cfg = small_config(out_dir, f"base.model.path={pretrained_folder}", "base.method=qlora")
    with pytest.raises(ModelError, match="CUDA"):
        finetune.main(cfg, "base")


# --------------------------------------------------------------------------------------------
# Resume after SIGKILL
# --------------------------------------------------------------------------------------------

RESUME_STEPS, RESUME_SAVE = 60, 10


def _finetune_command(out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pseudocot", "finetune", "--config", "smoke", "--role", "teacher",
            f"run.out_dir={out_dir}", *SMALL, f"teacher.train.max_steps={RESUME_STEPS}",
            f"teacher.train.save_every_steps={RESUME_SAVE}"]


def test_finetune_resumes_after_sigkill_to_the_same_weights(prepared, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    killed_dir = copy_run(prepared, tmp_path / "killed", ("data", "tokenizer"))
    unbroken_dir = copy_run(prepared, tmp_path / "unbroken", ("data", "tokenizer"))
    killed_out = killed_dir / prepared.run_dir.name / "teacher"
    unbroken_out = unbroken_dir / prepared.run_dir.name / "teacher"

    first = killed_out / "checkpoints" / f"checkpoint-{RESUME_SAVE}" / "trainer_state.json"
    kill_one_finish_other(_finetune_command(killed_dir), _finetune_command(unbroken_dir), first, RESUME_SAVE,
                          tmp_path / "logs", REPO, env)
    # Not vacuous: the run was killed mid-way, before its final model and metrics.
    assert not (killed_out / "metrics.json").exists(), "the run finished before it was killed; raise RESUME_STEPS"
    assert not (killed_out / "model.safetensors").exists()
    left = sorted(p.name for p in (killed_out / "checkpoints").glob("checkpoint-*"))
    assert left and f"checkpoint-{RESUME_STEPS}" not in left

    again = subprocess.run(_finetune_command(killed_dir), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    metrics = read_json(killed_out / "metrics.json")
    step = re.fullmatch(r"checkpoint-(\d+)", metrics["resumed_from"] or "")
    assert step and RESUME_SAVE <= int(step.group(1)) < RESUME_STEPS, metrics["resumed_from"]
    assert metrics["steps"] == RESUME_STEPS
    assert f"resumed_from={metrics['resumed_from']}" in again.stdout

    reference = read_json(unbroken_out / "metrics.json")
    assert reference["resumed_from"] is None and reference["steps"] == RESUME_STEPS
    assert_same_weights(weights(killed_out), weights(unbroken_out))
    assert metrics["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)
    assert metrics["tokens_seen"] == reference["tokens_seen"]


# --------------------------------------------------------------------------------------------
# distill: the chain, online
# --------------------------------------------------------------------------------------------


def test_distill_chain_online(prepared, tmp_path):
    out_dir = copy_run(prepared, tmp_path)
    cfg = small_config(out_dir, "distill.ce_only_baseline=true", "distill.mode=online")
    run = RunLayout.of(cfg).root
    summary = distill_stage.main(cfg)

    root = run / "distill"
    for folder in (run / "teacher", root / "stage-1", root / "stage-2", root / "stage-2-ce-only"):
        assert (folder / "model.safetensors").is_file(), folder
        m = read_json(folder / "metrics.json")
        assert finite(m["val_loss"]), folder
        AutoModelForCausalLM.from_pretrained(folder)
    on_disk = read_json(root / "summary.json")
    assert on_disk == json.loads(json.dumps(summary))
    assert [s["stage"] for s in on_disk["stages"]] == ["stage-1", "stage-2"]
    assert on_disk["teacher"] == str(run / "teacher")
    assert finite(on_disk["teacher_val_loss"])

    s1, s2 = on_disk["stages"]
    assert s1["teacher"] == str(run / "teacher")
    assert s2["teacher"] == str(root / "stage-1")  # stage 2 learns from stage 1's student
    for s in (s1, s2):
        assert s["mode"] == "online" and s["steps"] == STAGE_STEPS and s["resumed_from"] is None
        assert s["weights"] == {"ce": 0.5, "fkl": 0.5, "rkl": 0.0, "jsd": 0.0, "skew_fkl": 0.0, "skew_rkl": 0.0,
                                "temperature": 1.0}
        # Exactly one teacher forward per micro-batch.
        assert s["teacher_forwards"] == s["steps"] * cfg.distill.stages[0].train.grad_accum_steps == STAGE_STEPS
        assert finite(s["val_loss"]) and s["tokens_seen"] > 0

    base = on_disk["ce_only_baseline"]
    assert base["stage"] == "stage-2-ce-only"
    assert base["weights"]["ce"] == 1.0 and base["weights"]["fkl"] == 0.0 and base["weights"]["rkl"] == 0.0
    assert base["teacher_forwards"] == 0
    assert base["steps"] == s2["steps"] and base["tokens_seen"] == s2["tokens_seen"]  # same data, same steps
    assert max_weight_diff(weights(root / "stage-2"), weights(root / "stage-2-ce-only")) > 0  # only the loss differs

    # Finished stages are skipped on a second call.
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("model.safetensors")}
    again = distill_stage.main(cfg)
    assert [s.get("skipped") for s in again["stages"]] == [True, True]
    assert again["ce_only_baseline"].get("skipped") is True
    assert {p: p.stat().st_mtime_ns for p in root.rglob("model.safetensors")} == mtimes


def test_student_hidden_states_are_kept_only_inside_the_loss(prepared, run_tokenizer, tmp_path):
    """The hook that catches the student's hidden states must not hold on to tensors from other
    forwards (validation, generation): at scale that would pin gigabytes."""
    from pseudocot.config import DistillStageConfig, TrainConfig

    tok = run_tokenizer
    student = build_tiny_model("tiny-xs", tok, seed=0)
    teacher = build_tiny_model("tiny-xs", tok, seed=1).eval().requires_grad_(False)
    rows = tokenize_examples(read_split(prepared.run_dir / "data" / "train.jsonl", "test")[:4], tok, True, None, MAX_LENGTH)
    collate = PadCollator(tok.pad_token_id, keep_index=True)
    args = training_args(TrainConfig(max_steps=1, batch_size=2), tmp_path, 0, "cpu", has_eval=False)
    trainer = distill_train.trainer_class()(model=student, args=args, train_dataset=rows, data_collator=collate,
                                       processing_class=tok, teacher=teacher, stage=DistillStageConfig(), chunk_size=None)
    batch = collate(rows[:2])
    with torch.no_grad():
        student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert trainer._hidden == []
    loss = trainer.compute_loss(student, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    assert trainer._hidden == [] and trainer.counter.counts["teacher_forwards"] == 1
    eval_ce(student, rows, tok.pad_token_id, batch_size=2)
    assert trainer._hidden == []


def test_distill_online_teacher_forwards_with_grad_accum(prepared, tmp_path):
    out_dir = copy_run(prepared, tmp_path)
    cfg = small_config(out_dir, one_stage(3, grad_accum_steps=2), "distill.ce_only_baseline=false")
    calls = []
    original = distill_train.decoder_hidden  # what the online trainer runs the teacher with

    def counting(lm, *a, **kw):
        calls.append(lm)
        return original(lm, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(distill_train, "decoder_hidden", counting)
    try:
        summary = distill_stage.main(cfg)
    finally:
        mp.undo()
    (s,) = summary["stages"]
    assert s["steps"] == 3
    assert s["teacher_forwards"] == 3 * 2 == len(calls)
    assert "ce_only_baseline" not in summary


# --------------------------------------------------------------------------------------------
# distill: cached teacher
# --------------------------------------------------------------------------------------------


def test_distill_cached_teacher(prepared, run_tokenizer, tmp_path, monkeypatch):
    out_dir = copy_run(prepared, tmp_path)
    cfg = small_config(out_dir, "distill.mode=cached", "distill.top_k=8", one_stage(3), "distill.ce_only_baseline=false")
    run = RunLayout.of(cfg).root
    stage_dir = run / "distill" / "stage-1"
    cache_dir = stage_dir / "teacher_cache"

    def no_teacher_forward(*a, **kw):
        raise AssertionError("the teacher ran although the cache is current")

    builds = []
    real_build = teacher_cache.build

    def counting_build(*a, **kw):
        builds.append(a[4] if len(a) > 4 else kw.get("k"))
        return real_build(*a, **kw)

    forwards = []
    real_hidden = teacher_cache.decoder_hidden

    def counting_hidden(*a, **kw):
        forwards.append(1)
        return real_hidden(*a, **kw)

    monkeypatch.setattr(teacher_cache, "build", counting_build)
    monkeypatch.setattr(teacher_cache, "decoder_hidden", counting_hidden)  # the cache build's teacher forwards
    monkeypatch.setattr(distill_train, "decoder_hidden", counting_hidden)  # the online trainer's (none here)
    summary = distill_stage.main(cfg)
    (s,) = summary["stages"]
    assert builds == [8]
    assert s["mode"] == "cached" and s["teacher_forwards"] == 0 and s["steps"] == 3 and finite(s["val_loss"])
    meta = read_json(cache_dir / "cache.json")
    shards = sorted(p.name for p in cache_dir.glob("shard-*.safetensors"))
    assert shards and meta["shards"] == shards and meta["k"] == 8

    rows = tokenize_examples(read_split(run / "data" / "train.jsonl", "train"), run_tokenizer, True, None, MAX_LENGTH)
    assert meta["rows"] == len(rows)
    # The teacher ran once per batch while the cache was built, and never during training.
    assert len(forwards) == math.ceil(len(rows) / 8)
    cache = teacher_cache.TeacherCache.load(cache_dir, meta["key"])
    assert cache is not None
    assert teacher_cache.TeacherCache.load(cache_dir, "another-key") is None
    pick = [rows[i] for i in (5, 0, 11)]
    lp, ids = cache.gather(torch.tensor([r["index"] for r in pick]))
    n = sum(int((torch.tensor(r["labels"][1:]) != IGNORE_INDEX).sum()) for r in pick)
    assert lp.shape == ids.shape == (n, 8)
    assert lp.dtype == torch.float32 and ids.dtype == torch.long

    # The stored values are the teacher's top-8 log-probabilities at the answer positions.
    teacher = AutoModelForCausalLM.from_pretrained(run / "teacher").eval()
    expected = []
    with torch.no_grad():
        for r in pick:
            logits = teacher(torch.tensor([r["input_ids"]])).logits[0, :-1]
            pos = torch.tensor(r["labels"][1:]) != IGNORE_INDEX
            expected.append(torch.log_softmax(logits[pos].float(), dim=-1))
    full = torch.cat(expected)
    assert torch.allclose(lp, full.topk(8, dim=-1).values, atol=1e-5)
    assert torch.allclose(full.gather(1, ids), lp, atol=1e-5)
    assert torch.all(lp[:, :-1] >= lp[:, 1:])  # sorted, most likely first

    # The stage trained again under another key (other training settings, the same rows and teacher)
    # reuses the cache: no rebuild, shards untouched.
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()}

    def no_build(*a, **kw):
        raise AssertionError("the teacher cache was rebuilt although its key matched")

    monkeypatch.setattr(teacher_cache, "build", no_build)
    monkeypatch.setattr(teacher_cache, "decoder_hidden", no_teacher_forward)
    monkeypatch.setattr(distill_train, "decoder_hidden", no_teacher_forward)
    monkeypatch.setattr(distill_stage, "load_teacher", no_teacher_forward)  # the teacher is not even loaded
    again = distill_stage.main(small_config(out_dir, "distill.mode=cached", "distill.top_k=8", one_stage(3, lr=0.002),
                                            "distill.ce_only_baseline=false"))
    assert "skipped" not in again["stages"][0] and again["stages"][0]["teacher_forwards"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()} == mtimes

    # Another k (or other data) is another key: the cache is rebuilt.
    monkeypatch.undo()
    monkeypatch.setattr(teacher_cache, "build", counting_build)
    builds.clear()
    cfg4 = small_config(out_dir, "distill.mode=cached", "distill.top_k=4", one_stage(3), "distill.ce_only_baseline=false")
    distill_stage.main(cfg4)
    assert builds == [4]
    meta4 = read_json(cache_dir / "cache.json")
    assert meta4["k"] == 4 and meta4["key"] != meta["key"]
    lp4, _ = teacher_cache.TeacherCache.load(cache_dir, meta4["key"]).gather(torch.tensor([r["index"] for r in pick]))
    assert lp4.shape == (n, 4)
    assert torch.allclose(lp4, lp[:, :4], atol=1e-5)

    builds.clear()
    distill_stage.main(small_config(out_dir, "distill.mode=cached", "distill.top_k=4", one_stage(3), "train.max_length=64",
                              "distill.ce_only_baseline=false"))
    assert builds == [4]  # other token rows (shorter max_length): rebuilt
    assert read_json(cache_dir / "cache.json")["key"] != meta4["key"]


# --------------------------------------------------------------------------------------------
# Tokenizer agreement before distillation
# --------------------------------------------------------------------------------------------


def _other_tokenizer(texts: list[str], vocab_size: int):
    return train_tokenizer(texts, vocab_size=vocab_size, min_frequency=1)


def test_distill_stops_on_a_tokenizer_mismatch_before_loading_weights(prepared, run_tokenizer, tmp_path, monkeypatch):
    out_dir = copy_run(prepared, tmp_path, ("data", "tokenizer"))
    other = _other_tokenizer(["the quick brown fox jumps over the lazy dog " * 3, "hello world, 1 2 3"], 300)
    assert len(other) != len(run_tokenizer)
    foreign = tmp_path / "foreign-teacher"
    build_tiny_model("tiny-xs", other).save_pretrained(foreign)
    save_tokenizer(other, foreign)

    def forbidden(*a, **kw):
        raise AssertionError("weights loaded before the tokenizer check")

    monkeypatch.setattr(distill_stage, "load_teacher", forbidden)
    monkeypatch.setattr(distill_stage, "trainable_model", forbidden)
    cfg = small_config(out_dir, f"distill.teacher.path={foreign}", one_stage(2))
    with pytest.raises(ModelError) as err:
        distill_stage.main(cfg)
    msg = str(err.value)
    assert str(foreign) in msg and "preset:tiny-xs" in msg
    assert f"{len(other)} vs {len(run_tokenizer)}" in msg
    assert "\n" not in msg
    assert not (RunLayout.of(cfg).distill_dir / "stage-1" / "metrics.json").exists()


def _swap_token_ids(tok, a: str, b: str):
    """A copy of `tok` in which the special tokens `a` and `b` trade ids (same size, same texts)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tok.backend_tokenizer.to_str())
    ia, ib = tok.convert_tokens_to_ids(a), tok.convert_tokens_to_ids(b)
    for t in data["added_tokens"]:
        t["id"] = {ia: ib, ib: ia}.get(t["id"], t["id"])
    vocab = data["model"]["vocab"]
    if a in vocab:
        vocab[a], vocab[b] = vocab[b], vocab[a]
    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token=tok.bos_token,
                                      eos_token=tok.eos_token, pad_token=tok.pad_token,
                                      additional_special_tokens=[t for t in tok.all_special_tokens
                                                                 if t not in (tok.bos_token, tok.eos_token, tok.pad_token)])
    assert swapped.convert_tokens_to_ids(a) == ib and swapped.convert_tokens_to_ids(b) == ia
    return swapped


def test_vocabulary_mismatch(run_tokenizer, prepared, tmp_path):
    tok = run_tokenizer
    same = load_tokenizer(str(prepared.run_dir / "teacher"))
    assert vocabulary_mismatch(tok, same, "t", "s") is None

    swapped = _swap_token_ids(tok, "<|user|>", "<|thought|>")
    assert len(swapped) == len(tok)
    msg = vocabulary_mismatch(tok, swapped, "big-teacher", "small-student")
    assert msg is not None and "big-teacher" in msg and "small-student" in msg
    ia, ib = tok.convert_tokens_to_ids("<|user|>"), tok.convert_tokens_to_ids("<|thought|>")
    # The first special token that differs, with its id on each side.
    assert re.search(rf"'<\|thought\|>'\D*{ib}\D+{ia}\b", msg) or re.search(rf"'<\|user\|>'\D*{ia}\D+{ib}\b", msg), msg

    bigger = _other_tokenizer(["some entirely different text, with words and 12 numbers"] * 5, 400)
    smaller = _other_tokenizer(["some entirely different text"], 280)
    assert len(bigger) != len(smaller)
    msg = vocabulary_mismatch(bigger, smaller, "T", "S")
    assert msg is not None and f"{len(bigger)} vs {len(smaller)}" in msg and "'T'" in msg and "'S'" in msg


# --------------------------------------------------------------------------------------------
# torchrun: two CPU processes
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _writes(log: Path) -> tuple[str, list[tuple[str, str]]]:
    """(header, [(kind, path or info)]) of one rank's log written by tests/ddp/distill_writes.py."""
    header, *lines = log.read_text().splitlines()
    return header, [tuple(line.split("\t", 1)) for line in lines if line]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_distill_under_torchrun_writes_from_rank_0_only(prepared, tmp_path):
    out_dir = copy_run(prepared, tmp_path / "out")
    run = out_dir / prepared.run_dir.name
    logs = tmp_path / "logs"
    logs.mkdir()
    # Stage 1 learns from solutions its teacher writes (rank 0 writes them, rank 1 reads them); stage 2 is on-policy.
    stages = ("distill.stages=[{student: {preset: tiny-xs}, teacher_writes: {questions: 8, max_new_tokens: 16, batch_size: 4},"
              " train: {max_steps: 2, save_every_steps: 1}},"
              " {student: {preset: tiny-xs}, on_policy: 1.0, on_policy_max_new_tokens: 8,"
              " train: {max_steps: 2, save_every_steps: 1}}]")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(DDP_SCRIPT), "smoke", str(logs),
           f"run.out_dir={out_dir}", *SMALL, stages, "distill.ce_only_baseline=false", "distill.mode=online",
           "synth.checks=[]"]  # the 8-step teacher rarely writes a right solution: keep them all
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]

    per_rank = {}
    for rank in (0, 1):
        header, writes = _writes(logs / f"writes-rank{rank}.txt")
        assert header == f"world_size=2 rank={rank}"
        assert ("info", "distributed_world_size=2 stages=['stage-1', 'stage-2']") in writes
        per_rank[rank] = {Path(p) for k, p in writes if k != "info" and Path(p).is_relative_to(run)}

    root = run / "distill"
    for name in ("stage-1", "stage-2"):
        m = read_json(root / name / "metrics.json")
        assert m["steps"] == 2 and finite(m["val_loss"])
        # Each rank runs one teacher forward per micro-batch of its own.
        assert m["teacher_forwards"] == 2
        # Stage 2 is on-policy: each rank's student samples its own completions for every micro-batch.
        assert (m["on_policy_batches"], m["on_policy_tokens"] > 0) == ((0, False) if name == "stage-1" else (2, True))
        AutoModelForCausalLM.from_pretrained(root / name)
        assert root / name / "model.safetensors" in per_rank[0]
        assert root / name / "metrics.json" in per_rank[0]
    assert read_json(root / "summary.json")["stages"][1]["teacher"] == str(root / "stage-1")
    written = root / "stage-1" / "written"
    assert len((written / "kept.jsonl").read_text().splitlines()) == 8
    assert {written / "candidates.jsonl", written / "kept.jsonl", written / "stats.json"} <= per_rank[0]

    # Rank 1 writes nothing of the run but HF's per-rank RNG state in each checkpoint.
    allowed = {"rng_state_1.pth"}
    assert {p for p in per_rank[1] if p.name not in allowed} == set()
    assert all(p.parent.name.startswith("checkpoint-") for p in per_rank[1])
    assert not (per_rank[0] & per_rank[1])
    assert any(p.name == "rng_state_0.pth" for p in per_rank[0])  # the hook saw rank 0's torch.save


# --------------------------------------------------------------------------------------------
# Config: top-level train keys flow into the stages
# --------------------------------------------------------------------------------------------


def test_inherit_train(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "train: {lr: 0.005, max_steps: 7, batch_size: 3, max_length: 77}\n"
        "teacher:\n  model: {preset: tiny-xs}\n  train: {max_steps: 11, lr: 0.001}\n"
        "base:\n  model: {preset: tiny-xs}\n  method: full\n"
        "distill:\n  stages:\n"
        "    - student: {preset: tiny-xs}\n      train: {batch_size: 5}\n"
        "    - student: {preset: tiny-xs}\n"
    )
    cfg = load_config(f)
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.batch_size) == (0.005, 7, 3)
    t = cfg.teacher.train
    # 0.001 is also TrainConfig's default lr: a stage's own value wins even when it equals the default.
    assert (t.lr, t.max_steps, t.batch_size, t.max_length) == (0.001, 11, 3, 77)
    b = cfg.base.train
    assert (b.lr, b.max_steps, b.batch_size, b.max_length) == (0.005, 7, 3, 77)
    s1, s2 = (s.train for s in cfg.distill.stages)
    assert (s1.lr, s1.max_steps, s1.batch_size, s1.max_length) == (0.005, 7, 5, 77)
    assert (s2.lr, s2.max_steps, s2.batch_size, s2.max_length) == (0.005, 7, 3, 77)
    # Keys set nowhere keep the TrainConfig defaults.
    assert b.warmup_ratio == 0.05 and s1.grad_accum_steps == 1

    # Overrides take part: a top-level one flows down, a stage's own one wins.
    cfg = load_config(f, ["train.lr=2e-4", "teacher.train.batch_size=9", "distill.stages.1.train.max_steps=13"])
    assert cfg.base.train.lr == cfg.distill.stages[0].train.lr == 2e-4
    assert cfg.teacher.train.lr == 0.001 and cfg.teacher.train.batch_size == 9
    assert cfg.distill.stages[1].train.max_steps == 13 and cfg.distill.stages[0].train.max_steps == 7

    # Through `extends`: the preset's top-level train reaches a stage the child file adds.
    g = tmp_path / "d.yaml"
    g.write_text("extends: demo\ntrain: {batch_size: 4}\ndistill:\n  stages:\n    - student: {preset: tiny-xs}\n")
    cfg = load_config(g)
    (s,) = cfg.distill.stages
    demo = load_config("demo")
    assert s.train.batch_size == 4 and s.train.lr == demo.train.lr and s.train.max_length == demo.train.max_length
    assert cfg.teacher.train.max_steps == demo.teacher.train.max_steps and cfg.teacher.train.batch_size == 4


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_finetune_and_distill(prepared, tmp_path):
    out_dir = copy_run(prepared, tmp_path, ("data", "tokenizer"))
    run = out_dir / prepared.run_dir.name
    common_args = ["--config", "smoke", f"run.out_dir={out_dir}", *SMALL]
    runner = CliRunner()

    result = runner.invoke(cli, ["finetune", "--role", "teacher", *common_args, "teacher.train.max_steps=3"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # (Progress bars share the captured output, so the summary is looked for, not taken by line.)
    assert re.search(rf"finetune teacher -> {re.escape(str(run / 'teacher'))}: steps=3, train_loss=[\d.]+, val_loss=[\d.]+",
                     result.output)
    assert read_json(run / "teacher" / "metrics.json")["steps"] == 3

    result = runner.invoke(cli, ["distill", *common_args, one_stage(2), "distill.ce_only_baseline=false"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert re.search(r"distill stage-1 \(preset:tiny-xs\): steps=2, train_loss=[\d.]+, val_loss=[\d.]+", result.output)
    assert f"summary: {run / 'distill' / 'summary.json'}" in result.output
    assert (run / "distill" / "stage-1" / "model.safetensors").is_file()

    # Run again: the stage is reported as skipped.
    result = runner.invoke(cli, ["distill", *common_args, one_stage(2), "distill.ce_only_baseline=false"],
                           catch_exceptions=False)
    assert result.exit_code == 0 and "skipped=True" in result.output

    # A user error is one line on stderr and exit code 1.
    result = runner.invoke(cli, ["finetune", *common_args, "base.method=lora"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: override 'base.method=lora': key 'base.method' lora needs a pretrained model.path")


def test_lora_adapters_follow_the_seed(pretrained_folder, run_tokenizer):
    """The adapters' random init is drawn from `run.seed`, not from whatever the global RNG holds."""
    from pseudocot.config.schema import LoraConfig, ModelSpec
    from pseudocot.train.setup import trainable_model

    def adapters(seed):
        torch.manual_seed(seed + 1000)  # a different global state each time: it must not matter
        model = trainable_model(ModelSpec(path=str(pretrained_folder)), run_tokenizer, "lora", LoraConfig(r=4, alpha=8),
                                "cpu", seed, False)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    a, b, c = adapters(0), adapters(0), adapters(1)
    assert a and all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


# --------------------------------------------------------------------------------------------
# FSDP: the fields, and two CPU processes (gloo) sharding the model
# --------------------------------------------------------------------------------------------


def test_fsdp_sets_fsdp2_fields_and_refuses_what_a_cpu_cannot_do(tmp_path):
    from transformers import TrainingArguments

    from pseudocot.config import TrainConfig
    from pseudocot.errors import ConfigError
    from pseudocot.train.setup import fsdp_fields, training_fields

    assert fsdp_fields(TrainConfig(), cpu=False) == {}
    fields = fsdp_fields(TrainConfig(fsdp=True, fsdp_cpu_offload=True, gradient_checkpointing=True), cpu=False)
    cfg = fields["fsdp_config"]
    assert fields["fsdp"] is True and cfg["version"] == 2 and cfg["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert cfg["state_dict_type"] == "FULL_STATE_DICT" and cfg["cpu_offload"] and cfg["activation_checkpointing"]
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], **fields)
    assert args.fsdp and args.fsdp_config["version"] == 2 and args.fsdp_config["reshard_after_forward"]
    # FSDP's own activation checkpointing replaces the Trainer's.
    assert not training_fields(TrainConfig(fsdp=True, gradient_checkpointing=True), tmp_path, 0, "cpu", False)[
        "activation_checkpointing"]
    with pytest.raises(ConfigError, match=r"train\.fsdp_cpu_offload .* on a CPU they are there already"):
        training_fields(TrainConfig(fsdp=True, fsdp_cpu_offload=True), tmp_path, 0, "cpu", has_eval=False)
    # Sampling from the student needs it whole in each process.
    with pytest.raises(ConfigError, match=r"distill\.stages\.0\.on_policy' needs the student whole"):
        load_config("smoke", ["train.fsdp=true", "distill.stages=[{student: {preset: tiny-xs}, on_policy: 0.5}]"])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_fsdp_on_two_cpu_processes_shards_the_model_and_trains_what_ddp_trains(prepared, tmp_path):
    """`train.fsdp` under torchrun on a CPU: each process holds half of the student's parameters (FSDP2 over gloo),
    rank 0 saves the whole model (or adapter, and the merged model), and it is what DDP trains from the same seed and
    data. Two stages in one process group: LoRA fine-tuning of a pretrained model (the prepared run's teacher stands
    in for one), with merge, and a distillation stage that trains a whole model against its online teacher.

    With two processes, both average the same two gradients (a sum of two numbers does not depend on its order, and
    halving is exact); only the norm that clipping divides by is summed in another order, a relative error near 1e-7.
    So the weights agree to a few float32 steps, not exactly."""
    overrides = [f"base.model.path={prepared.run_dir / 'teacher'}", "base.model.preset=null", "base.method=lora",
                 "base.merge=true", one_stage(STAGE_STEPS), "distill.ce_only_baseline=false", "distill.mode=online"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    runs = {}
    for fsdp in (True, False):
        out_dir = copy_run(prepared, tmp_path / f"fsdp-{fsdp}", ("data", "tokenizer", "teacher"))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(STAGES_SCRIPT), "smoke", f"run.out_dir={out_dir}", *SMALL,
               *overrides, f"train.fsdp={str(fsdp).lower()}"]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
        runs[fsdp] = out_dir / prepared.run_dir.name
    for folder, files in ((Path("base"), ["adapter_model.safetensors", "merged/model.safetensors"]),
                          (Path("distill") / "stage-1", ["model.safetensors"])):
        sharded, ddp = (read_json(runs[f] / folder / "metrics.json") for f in (True, False))
        assert sharded["fsdp"]["processes"] == 2 and abs(sharded["fsdp"]["parameter_share"] - 0.5) < 0.01
        assert "fsdp" not in ddp
        assert sharded["steps"] == ddp["steps"] > 0
        assert sharded["train_loss"] == pytest.approx(ddp["train_loss"], rel=1e-5)
        assert sharded["val_loss"] == pytest.approx(ddp["val_loss"], rel=1e-5)
        for file in files:
            a, b = load_file(runs[True] / folder / file), load_file(runs[False] / folder / file)
            assert a.keys() == b.keys()  # a tied head is saved once, as an unsharded model saves it
            for name in a:
                torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"{folder / file}: {name}")
        assert not [p.name for p in (runs[True] / folder).iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES]
        AutoModelForCausalLM.from_pretrained(runs[True] / folder / Path(files[-1]).parent)
