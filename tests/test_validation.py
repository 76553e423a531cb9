"""Validation that does not dominate a stage: `eval_ce` in length-sorted batches under a logits
budget equals the plain one-row-at-a-time loss, and `train.val_examples` caps the validation rows
of fine-tuning and distillation (written as `val_rows` in metrics.json)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pseudocot.config import load_config
from pseudocot.layout import RunLayout, metrics_file
from pseudocot.models.tiny import build_tiny_model
from pseudocot.stages import data as data_stage
from pseudocot.stages import distill as distill_stage
from pseudocot.stages import finetune
from pseudocot.train.rows import EVAL_LOGITS, IGNORE_INDEX, eval_batches, eval_ce, tokenize_examples


@pytest.fixture(scope="module")
def model_and_rows(arith_examples, arith_tokenizer):
    """A seeded tiny-xs model (untrained: its losses are real numbers all the same) and rows of varied lengths."""
    model = build_tiny_model("tiny-xs", arith_tokenizer, seed=0).eval()
    rows = tokenize_examples(arith_examples[:40], arith_tokenizer, with_reasoning=True, system_prompt=None, max_length=96)
    assert len({len(r["input_ids"]) for r in rows}) > 5
    return model, rows


def reference_ce(model, rows) -> float:
    """One row at a time, no padding: summed CE over answer tokens / their count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ids, labels = torch.tensor([r["input_ids"]]), torch.tensor(r["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].double()  # (T-1, V)
            total += F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((labels != IGNORE_INDEX).sum())
    return total / count


@pytest.mark.parametrize("max_logits", [EVAL_LOGITS, 200 * 384])  # 200 tokens of a 384-token vocabulary: 2 or 3 rows a batch
def test_eval_ce_equals_the_unbatched_reference(model_and_rows, arith_tokenizer, max_logits):
    model, rows = model_and_rows
    got = eval_ce(model, rows, arith_tokenizer.pad_token_id, batch_size=8, max_logits=max_logits)
    assert got == pytest.approx(reference_ce(model, rows), rel=1e-5, abs=1e-5)
    assert not model.training


def test_eval_batches_sort_by_length_and_keep_the_logits_budget(model_and_rows):
    _, rows = model_and_rows
    vocab = 400
    budget = 200 * vocab  # 200 tokens a batch
    batches = eval_batches(rows, batch_size=8, vocab_size=vocab, max_logits=budget)
    lengths = [len(r["input_ids"]) for b in batches for r in b]
    assert lengths == sorted(lengths, reverse=True)  # longest first: a batch too big fails at once
    assert sorted(id(r) for b in batches for r in b) == sorted(id(r) for r in rows)  # each row once
    for b in batches:
        width = len(b[0]["input_ids"])
        assert len(b) <= 8 and (len(b) == 1 or len(b) * width * vocab <= budget)
    assert len({len(b) for b in batches}) > 1  # short rows go more to a batch than long ones
    assert [len(b) for b in eval_batches(rows, batch_size=8, vocab_size=10**9)] == [1] * len(rows)  # at least one row


# --------------------------------------------------------------------------------------------
# the cap in the stages
# --------------------------------------------------------------------------------------------

SMALL = ["data.arith.n_train=60", "data.arith.n_val=20", "data.arith.n_test=10", "train.max_length=96", "train.batch_size=8",
         "teacher.model.preset=tiny-3xs", "teacher.train.max_steps=2", "teacher.train.val_examples=5",
         "distill.stages=[{student: {preset: tiny-3xs}, train: {max_steps: 1, val_examples: 3}}]"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_val_examples_caps_finetune_and_distill_validation(tmp_path):
    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", *SMALL])
    data_stage.main(cfg)
    teacher = finetune.main(cfg, "teacher")
    assert teacher["val_rows"] == 5  # the first 5 of 20 validation examples, one row each
    assert json.loads(metrics_file(RunLayout.of(cfg).teacher_dir).read_text())["val_rows"] == 5
    summary = distill_stage.main(cfg)
    assert summary["stages"][0]["val_rows"] == 3


def test_val_examples_null_uses_the_whole_split(tmp_path):
    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", *SMALL, "teacher.train.val_examples=null"])
    data_stage.main(cfg)
    assert finetune.main(cfg, "teacher")["val_rows"] == 20
