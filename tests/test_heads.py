"""Distillation sees the logits the model really produces (`train.heads`): the head's bias, logit
scaling and soft-capping are applied inside the chunked loss exactly as the model applies them, and
a head it cannot reproduce stops the stage with one sentence.

The defect: the distillation stage passed only `lm_head.weight` to the chunked loss, so a Gemma-2
student or teacher (final_logit_softcapping) was distilled on uncapped logits, a different
distribution from the one the model samples from.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from pseudocot.errors import ModelError
from pseudocot.losses import chunked_distill_loss, distill_loss
from pseudocot.models.heads import check_head, decoder_hidden, logit_head

VOCAB = 96


def gemma2(seed: int, softcap: float = 2.0) -> Gemma2ForCausalLM:
    """A tiny Gemma-2 whose soft-cap is low enough to bend most of its logits."""
    cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                       final_logit_softcapping=softcap, attn_logit_softcapping=50.0, sliding_window=16,
                       max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(cfg).double()
    with torch.no_grad():  # large weights, so the raw logits reach well past the cap
        model.lm_head.weight.mul_(40.0) if not cfg.tie_word_embeddings else model.model.embed_tokens.weight.mul_(40.0)
    return model.eval()


def llama_with_bias(seed: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=False, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).double()
    model.lm_head = torch.nn.Linear(32, VOCAB, bias=True).double()
    return model.eval()


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    return ids, mask, labels


@pytest.mark.parametrize("make", [gemma2, llama_with_bias])
def test_chunked_loss_equals_the_plain_loss_on_the_models_own_logits(make):
    student, teacher = make(0), make(1)
    ids, mask, labels = batch()
    y = labels[:, 1:].reshape(-1)
    weights = dict(ce_weight=0.4, fkl_weight=0.3, rkl_weight=0.3, temperature=2.0)

    # The reference: the models' own logits, through the plain loss.
    s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1].reshape(-1, VOCAB)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1].reshape(-1, VOCAB)
    plain = distill_loss(s_logits, t_logits, y, **weights)
    plain_grads = torch.autograd.grad(plain, list(student.parameters()), allow_unused=True)

    # What distillation computes: hidden states and the heads `train.heads` reads off the models.
    head, t_head = logit_head(student), logit_head(teacher)
    h = decoder_hidden(student, ids, mask)[:, :-1].reshape(-1, 32)
    with torch.no_grad():
        th = decoder_hidden(teacher, ids, mask)[:, :-1].reshape(-1, 32)
    chunked = chunked_distill_loss(h, head.weight, y, teacher_hidden=th, chunk_size=5, **head.loss_kwargs(),
                                   **t_head.loss_kwargs(teacher=True), **weights)
    chunked_grads = torch.autograd.grad(chunked, list(student.parameters()), allow_unused=True)

    assert chunked.item() == pytest.approx(plain.item(), rel=1e-10)
    for a, b in zip(plain_grads, chunked_grads):
        if a is None:
            assert b is None or float(b.abs().max()) == 0
        else:
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)


def test_the_soft_cap_matters_here():
    """Without the cap the loss is another number: the test above would catch a dropped cap."""
    student, teacher = gemma2(0), gemma2(1)
    ids, mask, labels = batch()
    y = labels[:, 1:].reshape(-1)
    head = logit_head(student)
    assert head.softcap == 2.0 and head.bias is None
    h = decoder_hidden(student, ids, mask)[:, :-1].reshape(-1, 32)
    th = decoder_hidden(teacher, ids, mask)[:, :-1].reshape(-1, 32)
    kw = dict(ce_weight=0.5, fkl_weight=0.5, rkl_weight=0.0, teacher_hidden=th,
              teacher_lm_head_weight=logit_head(teacher).weight)
    capped = chunked_distill_loss(h, head.weight, y, **kw, logit_softcap=2.0, teacher_logit_softcap=2.0)
    uncapped = chunked_distill_loss(h, head.weight, y, **kw)
    assert abs(float(capped) - float(uncapped)) > 0.1


def test_logit_scaling_is_read_off_the_config():
    model = llama_with_bias(0)
    model.config.logit_scale = 0.5  # Cohere multiplies
    model.config.logits_scaling = 4.0  # Granite divides
    assert logit_head(model).scale == pytest.approx(0.125)


def test_a_head_it_cannot_reproduce_stops_with_one_sentence():
    model = llama_with_bias(0)
    ids = batch()[0][0].tolist()
    check_head(model, logit_head(model), ids, "student 'x'")  # reproduced: no error

    class Scaled(LlamaForCausalLM):
        """An architecture that does something to its logits the config does not declare."""

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 1.5
            return out

    odd = Scaled(model.config).double().eval()
    with pytest.raises(ModelError) as e:
        check_head(odd, logit_head(odd), ids, "student 'odd'")
    message = str(e.value)
    assert message.count("\n") == 0 and "student 'odd'" in message and "Scaled" in message


@pytest.mark.parametrize("weights", [
    {"ce_weight": 0.5, "fkl_weight": 0.5},
    {"ce_weight": 0.2, "fkl_weight": 0.0, "jsd_weight": 0.5, "jsd_beta": 0.3, "skew_rkl_weight": 0.3, "skew_alpha": 0.2},
])
def test_the_distillation_trainer_uses_both_real_heads(tmp_path, weights):
    """The stage's own trainer on Gemma-2 models equals the plain loss on their logits, for every loss
    term a stage's config can weight (JSD and skew KL included)."""
    from pseudocot.config import DistillStageConfig, TrainConfig
    from pseudocot.train.distill import check_heads, collator, trainer_class
    from pseudocot.train.setup import training_args

    student, teacher = gemma2(0).float(), gemma2(1).float()
    ids, mask, labels = batch()
    rows = [{"input_ids": ids[i][mask[i] == 1].tolist(), "labels": labels[i][mask[i] == 1].tolist(), "index": i}
            for i in range(3)]
    check_heads(rows, student, "student", teacher, "teacher")
    stage = DistillStageConfig(**weights)
    args = training_args(TrainConfig(max_steps=1, batch_size=3), tmp_path, 0, "cpu", has_eval=False)
    trainer = trainer_class()(model=student, args=args, train_dataset=rows, data_collator=collator(0),
                              teacher=teacher, stage=stage, chunk_size=4)
    inputs = collator(0)(rows)
    loss = trainer.compute_loss(student, inputs)
    y = inputs["labels"][:, 1:].reshape(-1)
    s_logits = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1].reshape(-1, VOCAB)
    with torch.no_grad():
        t_logits = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1].reshape(-1, VOCAB)
    plain = distill_loss(s_logits, t_logits, y, **{"rkl_weight": 0.0, **weights})
    assert float(loss) == pytest.approx(float(plain), rel=1e-5)
