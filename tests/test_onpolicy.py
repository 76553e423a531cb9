"""On-policy distillation (`distill.stages[i].on_policy`, `pseudocot.train.onpolicy`): on sequences the student
wrote, the loss and its gradient are a plain per-token reverse KL on full logits and TRL's `generalized_jsd_loss` at
beta = 1; no (B, T, V) tensor of either model exists; the rows it builds; the draws and samples a resumed run
repeats; a stage killed mid-way resumes to the weights of an unbroken run; the config checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from kill_resume import kill_one_finish_other
from pseudocot.config import DistillStageConfig, load_config
from pseudocot.errors import ConfigError
from pseudocot.layout import RunLayout
from pseudocot.models.heads import decoder_hidden, logit_head
from pseudocot.models.tiny import build_tiny_model
from pseudocot.stages import data as data_stage
from pseudocot.stages import finetune
from pseudocot.train import onpolicy
from pseudocot.train.distill import distill_batch_loss, loss_weights
from pseudocot.train.rows import IGNORE_INDEX, PadCollator, tokenize_examples

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
U = torch.finfo(torch.float32).eps  # unit roundoff of float32 (2^-23)


@pytest.fixture(scope="module")
def written(arith_examples, arith_tokenizer):
    """(student, teacher, batch): two differently initialised tiny models and a batch of 6 arith prompts completed by
    the student itself (sampled at temperature 1, 24 tokens at most)."""
    tok = arith_tokenizer
    student = build_tiny_model("tiny-3xs", tok, seed=1)
    teacher = build_tiny_model("tiny-2xs", tok, seed=2).eval().requires_grad_(False)
    rows = tokenize_examples(arith_examples[:6], tok, with_reasoning=True, system_prompt=None, max_length=96)
    batch = PadCollator(tok.pad_token_id)(rows)
    out = onpolicy.student_rows(student, batch["input_ids"], batch["labels"], max_new_tokens=24, max_length=96,
                                temperature=1.0, seed=7, end=[tok.eos_token_id], pad_id=tok.pad_token_id)
    return student, teacher, out


def _rkl_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-token terms q (log q - log p) of KL(student || teacher), (n, V), in float32."""
    log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    return log_q.exp() * (log_q - log_p)


def _kl_bound(terms: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """How far two float32 evaluations of the mean reverse KL of the same logits may differ, from the arithmetic:
    each log-softmax is off by at most ~4u(max|z| + ln V) (the max-shift, the exp-sum and the log), which the
    weights q (summing to 1) carry into each token's KL once per model; summing V terms in another order moves
    a token's sum by at most V u sum|terms| (the recursive-summation bound); the mean over tokens adds nothing
    larger. Twice that, for the two evaluations."""
    vocab = student_logits.shape[-1]
    log_err = 4 * U * (float(student_logits.abs().max()) + float(teacher_logits.abs().max()) + 2 * torch.log(torch.tensor(vocab)))
    sum_err = vocab * U * float(terms.abs().sum(-1).max())
    return 2 * (log_err + sum_err)


def test_student_rows_are_prompt_then_the_students_tokens(written):
    _, _, out = written
    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[1] <= 96
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        start = int((labels[r] != IGNORE_INDEX).int().argmax())
        assert (labels[r, start:n] == ids[r, start:n]).all() and (labels[r, :start] == IGNORE_INDEX).all()
        assert (labels[r, n:] == IGNORE_INDEX).all() and (mask[r, :n] == 1).all()
        assert 1 <= n - start <= 24  # the student wrote at most max_new_tokens
    assert int(out["completion_tokens"]) == int((labels != IGNORE_INDEX).sum())


def test_on_policy_rkl_equals_plain_reverse_kl_and_trl_generalized_jsd(written):
    """On fixed student-written sequences: value and gradient of the chunked on-policy loss against a plain reverse KL
    on full (B, T, V) logits and TRL's GKD loss at beta = 1 (reverse KL), both computed with autograd."""
    from trl.experimental.gkd import GKDTrainer

    student, teacher, out = written
    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    stage = DistillStageConfig(on_policy=1.0, on_policy_loss="rkl", ce_weight=0.5, fkl_weight=0.5)
    weights = loss_weights(stage, on_policy=True)
    assert weights["ce_weight"] == 0 and weights["rkl_weight"] == 1 and weights["fkl_weight"] == 0

    params = [p for p in student.parameters() if p.requires_grad]
    hidden = decoder_hidden(student, ids, mask)  # (B, T, H)
    ours = distill_batch_loss(student, logit_head(student), ids, mask, labels, hidden, weights, chunk_size=7,
                              teacher=teacher, teacher_head=logit_head(teacher))
    g_ours = torch.autograd.grad(ours, params)

    s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    y = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    valid = y != IGNORE_INDEX
    terms = _rkl_terms(s_logits[valid], t_logits[valid])  # (n, V)
    plain = terms.sum(-1).mean()
    g_plain = torch.autograd.grad(plain, params, retain_graph=True)
    trl = GKDTrainer.generalized_jsd_loss(s_logits, t_logits, labels=y, beta=1.0)
    g_trl = torch.autograd.grad(trl, params)

    bound = _kl_bound(terms.detach(), s_logits[valid].detach(), t_logits[valid])
    assert abs(float(ours) - float(plain)) <= bound, (float(ours), float(plain), bound)
    assert abs(float(trl) - float(plain)) <= bound
    # Gradients: the same backward through the same network once d loss / d logits is formed; that differs by the
    # rounding of the loss's gradient, O((V + n) u) relative, carried through the layers' matmuls (width H, T).
    n, vocab, width = int(valid.sum()), s_logits.shape[-1], hidden.shape[-1]
    rel = 8 * (vocab + n + width + ids.shape[1]) * U
    for a, b, c in zip(g_ours, g_plain, g_trl):
        scale = float(b.norm())
        assert float((a - b).norm()) <= rel * scale + 1e-12
        assert float((c - b).norm()) <= rel * scale + 1e-12
    assert any(float(g.norm()) > 0 for g in g_ours)  # not vacuous: the student does get a gradient


class _LogitSizes(TorchDispatchMode):
    """Records every tensor an op returns whose last dimension is the vocabulary: (shape) list."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.shapes = vocab, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                self.shapes.append(tuple(t.shape))
        return out


def test_on_policy_step_never_holds_full_vocabulary_logits(written, arith_tokenizer, tmp_path):
    """A whole on-policy training step of the trainer (sampling, teacher, student, loss, backward): no tensor with the
    vocabulary as its last dimension covers more rows than one loss chunk (or one row per sequence while sampling)."""
    from transformers import TrainingArguments

    from pseudocot.train.distill import trainer_class

    student, teacher, _ = written
    tok = arith_tokenizer
    rows = tokenize_examples(_examples(6), tok, with_reasoning=True, system_prompt=None, max_length=96)
    stage = DistillStageConfig(on_policy=1.0, on_policy_max_new_tokens=24)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=6, max_steps=1, use_cpu=True,
                             report_to=[], remove_unused_columns=False, save_strategy="no", logging_strategy="no")
    model = build_tiny_model("tiny-3xs", tok, seed=3)
    trainer = trainer_class()(model=model, args=args, train_dataset=rows, data_collator=PadCollator(tok.pad_token_id, keep_index=True),
                              processing_class=tok, teacher=teacher, stage=stage, chunk_size=4, max_length=96)
    batch = PadCollator(tok.pad_token_id, keep_index=True)(rows[:6])
    model.train()
    log = _LogitSizes(len(tok))
    with log:
        loss = trainer.compute_loss(model, batch)
        loss.backward()
    assert trainer.counter.counts["on_policy_batches"] == 1 and trainer.counter.counts["teacher_forwards"] == 1
    b = batch["input_ids"].shape[0]
    heads = {(model.config.hidden_size, len(tok)), (teacher.config.hidden_size, len(tok))}  # W.T of the two heads
    activations = [s for s in log.shapes if s not in heads]
    leading = [int(torch.tensor(s[:-1]).prod()) for s in activations]
    assert activations and max(leading) <= max(4, b), sorted(set(activations), key=lambda s: -int(torch.tensor(s[:-1]).prod()))[:5]
    assert (b, batch["input_ids"].shape[1], len(tok)) not in log.shapes


def _examples(n: int):
    from pseudocot.config import ArithConfig
    from pseudocot.data import arith

    return arith.generate(n, ArithConfig(max_steps=2), seed=5, split="train")


def test_draws_and_samples_depend_only_on_seed_step_and_micro_batch(written, arith_tokenizer):
    draws = [onpolicy.on_policy_batch(0.5, 0, step, micro) for step in range(200) for micro in range(2)]
    assert 0.4 < sum(draws) / len(draws) < 0.6  # about the share asked for
    assert draws == [onpolicy.on_policy_batch(0.5, 0, step, micro) for step in range(200) for micro in range(2)]
    assert draws != [onpolicy.on_policy_batch(0.5, 1, step, micro) for step in range(200) for micro in range(2)]
    assert not any(onpolicy.on_policy_batch(0.0, 0, s, 0) for s in range(50))
    assert all(onpolicy.on_policy_batch(1.0, 0, s, 0) for s in range(50))
    student, _, out = written
    tok = arith_tokenizer
    labels = out["labels"]
    again = onpolicy.student_rows(student, out["input_ids"], labels, max_new_tokens=24, max_length=96, temperature=1.0,
                                  seed=7, end=[tok.eos_token_id], pad_id=tok.pad_token_id)
    assert torch.equal(again["input_ids"], out["input_ids"])


def test_config_checks():
    with pytest.raises(ConfigError, match=r"distill.stages.0.on_policy.*needs mode: online"):
        load_config("smoke", ["distill.mode=cached", "distill.stages.0.on_policy=0.5"])
    with pytest.raises(ConfigError, match=r"on_policy_loss.*is mix but every teacher weight is 0"):
        load_config("smoke", ["distill.stages.0.on_policy=0.5", "distill.stages.0.on_policy_loss=mix",
                              "distill.stages.0.fkl_weight=0", "distill.stages.0.ce_weight=1"])
    with pytest.raises(ConfigError, match=r"on_policy.*must be"):
        load_config("smoke", ["distill.stages.0.on_policy=1.5"])
    mix = loss_weights(DistillStageConfig(on_policy=0.5, on_policy_loss="mix", ce_weight=0.3, fkl_weight=0.7), on_policy=True)
    assert mix["ce_weight"] == 0 and mix["fkl_weight"] == 0.7  # the teacher terms, never CE on the student's tokens


# --------------------------------------------------------------------------------------------
# Resume after SIGKILL: the same samples, so the same weights
# --------------------------------------------------------------------------------------------

STEPS, SAVE = 40, 8
SMALL = ["data.arith.n_train=120", "data.arith.n_val=24", "data.arith.n_test=24", "train.max_length=96",
         "train.batch_size=8", "teacher.model.preset=tiny-xs", "teacher.train.max_steps=8", "distill.ce_only_baseline=false",
         "distill.mode=online",
         "distill.stages=[{student: {preset: tiny-3xs}, on_policy: 0.5, on_policy_from_step: 4, on_policy_max_new_tokens: 32, "
         f"train: {{max_steps: {STEPS}, save_every_steps: {SAVE}}}}}]"]


def _distill_command(out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pseudocot", "distill", "--config", "smoke", f"run.out_dir={out_dir}", *SMALL]


def test_the_stage_counts_come_back_from_a_checkpoint_and_start_at_zero_without_one():
    """`StageCounts` reads what the checkpoint's trainer state saved; a state without it (a fresh stage, or a checkpoint
    written before the counts were saved) starts at zero and gets the entry HF's checkpoint saving looks up."""
    from types import SimpleNamespace

    from pseudocot.train.distill import COUNTS, counts_callback

    saved = {"args": {}, "attributes": {"counts": {"teacher_forwards": 7, "on_policy_batches": 3, "on_policy_tokens": 90}}}
    cb = counts_callback()
    state = SimpleNamespace(stateful_callbacks={"StageCounts": saved})
    cb.on_train_begin(None, state, None)
    assert cb.counts == {"teacher_forwards": 7, "on_policy_batches": 3, "on_policy_tokens": 90}
    cb.counts["on_policy_batches"] += 1
    assert cb.state()["attributes"]["counts"]["on_policy_batches"] == 4
    old = SimpleNamespace(stateful_callbacks={"TrainerControl": {}})
    fresh = counts_callback()
    fresh.on_train_begin(None, old, None)
    assert fresh.counts == dict.fromkeys(COUNTS, 0)
    assert old.stateful_callbacks["StageCounts"] == {"args": {}, "attributes": {"counts": dict.fromkeys(COUNTS, 0)}}


def test_on_policy_stage_resumes_after_sigkill_to_the_same_weights(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    dirs = {}
    for name in ("killed", "unbroken"):
        cfg = load_config("smoke", [f"run.out_dir={tmp_path / name}", *SMALL])
        if name == "killed":
            data_stage.main(cfg)
            finetune.main(cfg, "teacher")
            prepared = RunLayout.of(cfg).root
        else:
            import shutil

            shutil.copytree(prepared, RunLayout.of(cfg).root)
        dirs[name] = RunLayout.of(cfg).root / "distill" / "stage-1"
    first = dirs["killed"] / "checkpoints" / f"checkpoint-{SAVE}" / "trainer_state.json"
    kill_one_finish_other(_distill_command(tmp_path / "killed"), _distill_command(tmp_path / "unbroken"), first, SAVE,
                          tmp_path / "logs", REPO, env)
    assert not (dirs["killed"] / "metrics.json").exists(), "finished before the kill"
    again = subprocess.run(_distill_command(tmp_path / "killed"), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    killed, reference = (json.loads((dirs[n] / "metrics.json").read_text()) for n in ("killed", "unbroken"))
    assert killed["resumed_from"] and killed["resumed_from"] != f"checkpoint-{STEPS}"
    assert reference["resumed_from"] is None and killed["steps"] == reference["steps"] == STEPS
    assert 0 < reference["on_policy_batches"] < STEPS - 4  # about half the batches from step 4 on were the student's own
    # what the stage counted is the whole stage's, the steps before the kill included (saved with each checkpoint)
    for count in ("on_policy_batches", "on_policy_tokens", "teacher_forwards"):
        assert killed[count] == reference[count], count
    a, b = (load_file(dirs[n] / "model.safetensors") for n in ("killed", "unbroken"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

