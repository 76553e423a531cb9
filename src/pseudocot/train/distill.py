"""One distillation stage: a student trained against a frozen teacher (or its top-k cache) with

    ce_weight * CE + fkl_weight * KL(teacher||student) + rkl_weight * KL(student||teacher)
      + jsd_weight * JSD_beta + skew_fkl_weight * SKL(teacher, student) + skew_rkl_weight * SKL(student, teacher)

on the answer tokens, through the chunked loss, so the student's full-vocabulary logits never exist
at once. Both heads are applied as the models apply them (`train.heads`: bias, logit scaling,
soft-capping), checked against each model's own logits before training starts.

`online` runs exactly one teacher forward per batch, under no_grad, and only the decoder (the
teacher's logits are formed chunk by chunk inside the loss). `cached` trains from the teacher's
stored top-k log-probabilities (`teacher_cache`). The chain of stages is the `distill` stage
(`pseudocot.stages.distill`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pseudocot.config.schema import DistillStageConfig
from pseudocot.losses import chunked_distill_loss
from pseudocot.models.lora import load_trained
from pseudocot.train import teacher_cache
from pseudocot.train.heads import check_head, decoder_hidden, logit_head, unwrap
from pseudocot.train.rows import IGNORE_INDEX, PadCollator, answer_positions


def loss_weights(stage: DistillStageConfig) -> dict[str, float]:
    """The stage's loss settings as `chunked_distill_loss` keyword arguments."""
    return {"ce_weight": stage.ce_weight, "fkl_weight": stage.fkl_weight, "rkl_weight": stage.rkl_weight,
            "jsd_weight": stage.jsd_weight, "jsd_beta": stage.jsd_beta, "skew_fkl_weight": stage.skew_fkl_weight,
            "skew_rkl_weight": stage.skew_rkl_weight, "skew_alpha": stage.skew_alpha, "temperature": stage.temperature}


def trainer_class() -> type:
    """`DistillTrainer`, built on first use (importing transformers' Trainer is slow)."""
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """HF Trainer whose loss is the chunked distillation loss against a frozen teacher or its cache."""

        def __init__(self, *args: Any, teacher: Any = None, cache: teacher_cache.TeacherCache | None = None,
                     stage: DistillStageConfig, chunk_size: int | None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.teacher, self.cache, self.stage, self.chunk_size = teacher, cache, stage, chunk_size
            self.teacher_forwards = 0
            self.teacher_head = logit_head(teacher) if teacher is not None else None
            # Our loss is already a mean per micro-batch: let the Trainer scale it for accumulation.
            self.model_accepts_loss_kwargs = False
            self._hidden: list[torch.Tensor] = []
            # The student's final hidden states are caught on their way out of its decoder, so the
            # forward still goes through the (DDP-)wrapped model and gradients are synchronised.
            # Only while compute_loss runs: other forwards (validation, generation) keep nothing.
            self._capture = False
            unwrap(self.model).get_decoder().register_forward_hook(
                lambda _m, _i, out: self._hidden.append(out.last_hidden_state) if self._capture else None)

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
            pos = answer_positions(labels)  # (B, T-1): hidden at t predicts label t+1
            h = hidden[:, :-1][pos]  # (n, H)
            y = labels[:, 1:][pos]  # (n,)
            teacher_kw: dict[str, Any] = {}
            if self.stage.teacher_weight():
                if self.cache is not None:
                    lp, tid = self.cache.gather(inputs["index"].cpu())
                    teacher_kw = {"teacher_topk_logprobs": lp.to(h.device), "teacher_topk_ids": tid.to(h.device)}
                else:
                    with torch.no_grad():
                        t_hidden = decoder_hidden(self.teacher, ids, mask)
                    self.teacher_forwards += 1
                    teacher_kw = {"teacher_hidden": t_hidden[:, :-1][pos], **self.teacher_head.loss_kwargs(teacher=True)}
            student_head = logit_head(self.model)  # the unwrapped model: `model` may be DDP's wrapper
            loss = chunked_distill_loss(h, student_head.weight, y, ignore_index=IGNORE_INDEX, chunk_size=self.chunk_size,
                                        **student_head.loss_kwargs(), **loss_weights(self.stage), **teacher_kw)
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def load_teacher(path: str | Path, dtype: str, trust_remote_code: bool, device: str) -> Any:
    """A frozen teacher in eval mode (a full model, or an adapter merged into its base)."""
    teacher = load_trained(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def check_heads(rows: Sequence[dict[str, Any]], student: Any, student_name: str, teacher: Any = None,
                teacher_name: str = "") -> None:
    """Stop with one sentence unless both heads are reproduced exactly (on the first training row)."""
    probe = rows[0]["input_ids"][:32]
    check_head(student, logit_head(student), probe, f"student '{student_name}'")
    if teacher is not None:
        check_head(teacher, logit_head(teacher), probe, f"teacher '{teacher_name}'")


def collator(pad_id: int) -> PadCollator:
    """Rows keep their dataset index: a cached teacher looks its log-probabilities up by it."""
    return PadCollator(pad_id, keep_index=True)
