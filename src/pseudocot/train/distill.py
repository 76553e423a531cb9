"""One distillation stage: a student trained against a frozen teacher (or its top-k cache) with

    ce_weight * CE + fkl_weight * KL(teacher||student) + rkl_weight * KL(student||teacher)
      + jsd_weight * JSD_beta + skew_fkl_weight * SKL(teacher, student) + skew_rkl_weight * SKL(student, teacher)

on the answer tokens, through the chunked loss, so the student's full-vocabulary logits never exist
at once. Both heads are applied as the models apply them (`train.heads`: bias, logit scaling,
soft-capping), checked against each model's own logits before training starts.

`online` runs exactly one teacher forward per batch, under no_grad, and only the decoder (the
teacher's logits are formed chunk by chunk inside the loss). `cached` trains from the teacher's
stored top-k log-probabilities (`teacher_cache`). With `on_policy: p` a share p of the batches carry
the student's own completions of their prompts, scored by the teacher token by token (`train.onpolicy`).
The chain of stages is the `distill` stage (`pseudocot.stages.distill`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pseudocot.config.schema import DistillStageConfig
from pseudocot.losses import chunked_distill_loss
from pseudocot.models.heads import check_head, decoder_hidden, logit_head, unwrap
from pseudocot.models.lora import load_trained
from pseudocot.train import teacher_cache
from pseudocot.train.rows import IGNORE_INDEX, PadCollator, answer_positions
from pseudocot.train.setup import ShardsOnCpu


def loss_weights(stage: DistillStageConfig, on_policy: bool = False) -> dict[str, float]:
    """The stage's loss settings as `chunked_distill_loss` keyword arguments; `on_policy`: those of a batch the
    student wrote (reverse KL alone, or the stage's teacher terms; never cross-entropy on its own tokens)."""
    weights = {"ce_weight": stage.ce_weight, "fkl_weight": stage.fkl_weight, "rkl_weight": stage.rkl_weight,
               "jsd_weight": stage.jsd_weight, "jsd_beta": stage.jsd_beta, "skew_fkl_weight": stage.skew_fkl_weight,
               "skew_rkl_weight": stage.skew_rkl_weight, "skew_alpha": stage.skew_alpha, "temperature": stage.temperature}
    if not on_policy:
        return weights
    if stage.on_policy_loss == "rkl":
        weights.update(fkl_weight=0.0, rkl_weight=1.0, jsd_weight=0.0, skew_fkl_weight=0.0, skew_rkl_weight=0.0)
    return weights | {"ce_weight": 0.0}


def distill_batch_loss(student: Any, student_head: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                       hidden: torch.Tensor, weights: dict[str, float], chunk_size: int | None, teacher: Any = None,
                       teacher_head: Any = None, teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The distillation loss of one batch from the student's final hidden states `hidden` (B, T, H): on the answer
    tokens (labels not -100), against the teacher run on the same tokens (or its cached top-k), chunked so neither
    model's full-vocabulary logits exist at once."""
    pos = answer_positions(labels)  # (B, T-1): hidden at t predicts label t+1
    h = hidden[:, :-1][pos]  # (n, H)
    y = labels[:, 1:][pos]  # (n,)
    teacher_kw: dict[str, Any] = {}
    if teacher_topk is not None:
        lp, tid = teacher_topk
        teacher_kw = {"teacher_topk_logprobs": lp.to(h.device), "teacher_topk_ids": tid.to(h.device)}
    elif teacher is not None:
        with torch.no_grad():
            t_hidden = decoder_hidden(teacher, ids, mask)  # (B, T, Ht)
        teacher_kw = {"teacher_hidden": t_hidden[:, :-1][pos], **teacher_head.loss_kwargs(teacher=True)}
    return chunked_distill_loss(h, student_head.weight, y, ignore_index=IGNORE_INDEX, chunk_size=chunk_size,
                                **student_head.loss_kwargs(), **weights, **teacher_kw)


COUNTS = ("teacher_forwards", "on_policy_batches", "on_policy_tokens")
"""What a distillation stage counts as it trains (its metrics.json reports them for the whole stage)."""


def counts_callback() -> Any:
    """A Trainer callback holding the stage's `COUNTS`. Its state goes into each checkpoint's `trainer_state.json`
    (the Trainer's `stateful_callbacks`, written with the checkpoint it belongs to) and is read back when a stage
    resumes, so a resumed stage reports what the whole stage counted, not what it counted since the resume."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class StageCounts(TrainerCallback, ExportableState):
        def __init__(self) -> None:
            self.counts = dict.fromkeys(COUNTS, 0)

        def state(self) -> dict[str, Any]:
            return {"args": {}, "attributes": {"counts": dict(self.counts)}}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # on a resume, `state` is the checkpoint's; a checkpoint written before these counts were saved has none
            saved = state.stateful_callbacks.get(type(self).__name__)
            if isinstance(saved, dict):
                self.counts.update({k: int(v) for k, v in saved.get("attributes", {}).get("counts", {}).items() if k in COUNTS})
            state.stateful_callbacks[type(self).__name__] = self.state()

    return StageCounts()


def trainer_class() -> type:
    """`DistillTrainer`, built on first use (importing transformers' Trainer is slow)."""
    from transformers import Trainer

    class DistillTrainer(ShardsOnCpu, Trainer):
        """HF Trainer whose loss is the chunked distillation loss against a frozen teacher or its cache."""

        def __init__(self, *args: Any, teacher: Any = None, cache: teacher_cache.TeacherCache | None = None,
                     stage: DistillStageConfig, chunk_size: int | None, max_length: int = 0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.teacher, self.cache, self.stage, self.chunk_size = teacher, cache, stage, chunk_size
            self.max_length = max_length  # on-policy rows are cut here, as the data's rows are
            self.counter = counts_callback()  # teacher forwards, on-policy batches and tokens; kept across a resume
            self.add_callback(self.counter)
            self._step, self._micro = -1, 0  # which micro-batch of which optimizer step this is
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

        def _micro_batch(self) -> tuple[int, int]:
            """(optimizer step, index of this micro-batch within it): what seeds an on-policy draw."""
            step = self.state.global_step
            if step != self._step:
                self._step, self._micro = step, 0
            self._micro += 1
            return step, self._micro - 1

        def _student_writes(self, model: Any, inputs: dict[str, torch.Tensor], step: int, micro: int) -> dict[str, torch.Tensor]:
            """The batch with the student's own completions of its prompts in place of the data's."""
            from pseudocot.generate.sessions import end_ids
            from pseudocot.train import onpolicy

            st = self.stage
            student = self.accelerator.unwrap_model(model)  # DDP's wrapper does not generate
            tok = self.processing_class
            rows = onpolicy.student_rows(student, inputs["input_ids"], inputs["labels"],
                                         max_new_tokens=st.on_policy_max_new_tokens, max_length=self.max_length,
                                         temperature=st.on_policy_temperature,
                                         seed=onpolicy.sample_seed(self.args.seed, step, micro),
                                         end=end_ids(unwrap(student), tok), pad_id=tok.pad_token_id)
            self.counter.counts["on_policy_batches"] += 1
            self.counter.counts["on_policy_tokens"] += int(rows.pop("completion_tokens"))
            return rows

        def compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            from pseudocot.train.onpolicy import on_policy_batch

            # Only training micro-batches count: an evaluation call must not shift the draws of the step.
            step, micro = self._micro_batch() if model.training else (self.state.global_step, 0)
            on_policy = (model.training and step >= self.stage.on_policy_from_step
                         and on_policy_batch(self.stage.on_policy, self.args.seed, step, micro))
            if on_policy:
                inputs = self._student_writes(model, inputs, step, micro)
            ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            self._hidden.clear()
            self._capture = True
            try:
                # logits_to_keep=1: the model's own logits are for one position only; ours are chunked.
                outputs = model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
            finally:
                self._capture = False
            hidden = self._hidden.pop()
            weights = loss_weights(self.stage, on_policy)
            teacher, topk = None, None
            if on_policy or self.stage.teacher_weight():
                if self.cache is not None and not on_policy:
                    topk = self.cache.gather(inputs["index"].cpu())
                else:
                    teacher = self.teacher
                    self.counter.counts["teacher_forwards"] += 1
            # The unwrapped model's head: `model` may be DDP's wrapper.
            loss = distill_batch_loss(self.model, logit_head(self.model), ids, mask, labels, hidden, weights, self.chunk_size,
                                      teacher=teacher, teacher_head=self.teacher_head, teacher_topk=topk)
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
