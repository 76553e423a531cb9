"""A causal LM's output head as the chunked distillation loss needs it: the final hidden states, and
the map from them to the logits the model really produces.

Distillation never forms a model's full (tokens, vocabulary) logits: it takes the decoder's final
hidden states and the head (`losses.chunked_distill_loss`). That is only right if the loss applies
the head exactly as the model does, so `LogitHead` carries every part of it that an architecture
may add to the plain projection:

    logits = softcap(scale * (hidden @ weight.T + bias))      softcap(x) = c * tanh(x / c)

- `bias`: the head's bias (Phi, GPT-J);
- `scale`: Cohere's `logit_scale` (times), Granite's `logits_scaling` (divided by);
- `softcap`: Gemma 2/3's `final_logit_softcapping`.

`check_head` compares the reconstruction with the model's own logits on a few real tokens; a head
it cannot reproduce (an architecture that does something else) stops the stage with one sentence.
Both the online teacher, the cached teacher and the student go through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pseudocot.errors import ModelError


@dataclass
class LogitHead:
    """The output head of a causal LM: hidden (N, H) -> logits (N, V)."""

    weight: torch.Tensor
    """(V, H) projection."""
    bias: torch.Tensor | None = None
    """(V,) bias, or None."""
    scale: float = 1.0
    """Factor applied to the projection before the soft-cap."""
    softcap: float | None = None
    """c of `c * tanh(x / c)`, or None."""

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight, self.bias)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def loss_kwargs(self, teacher: bool = False) -> dict[str, Any]:
        """The head as `chunked_distill_loss` keyword arguments (the student's, or the teacher's)."""
        if teacher:
            return {"teacher_lm_head_weight": self.weight, "teacher_lm_head_bias": self.bias,
                    "teacher_logit_scale": self.scale, "teacher_logit_softcap": self.softcap}
        return {"lm_head_bias": self.bias, "logit_scale": self.scale, "logit_softcap": self.softcap}


def unwrap(model: Any) -> Any:
    """The causal LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def logit_head(model: Any) -> LogitHead:
    """The head of a causal LM, with the scaling and soft-capping its config declares."""
    lm = unwrap(model)
    head = lm.get_output_embeddings()
    config = lm.config
    text = getattr(config, "get_text_config", lambda: config)()
    scale = 1.0
    if getattr(text, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
        scale *= float(text.logit_scale)
    if getattr(text, "logits_scaling", None) is not None:  # Granite: logits / logits_scaling
        scale /= float(text.logits_scaling)
    softcap = getattr(text, "final_logit_softcapping", None)
    return LogitHead(weight=head.weight, bias=getattr(head, "bias", None), scale=scale,
                     softcap=float(softcap) if softcap else None)


def decoder_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) final hidden states of a causal LM, the input of its head, without computing logits."""
    return unwrap(model).get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@torch.no_grad()
def check_head(model: Any, head: LogitHead, probe_ids: list[int], name: str) -> None:
    """Stop with one sentence unless `head` applied to the decoder's hidden states gives the logits
    the model itself computes for `probe_ids` (a few real tokens of the training data)."""
    lm = unwrap(model)
    device = head.weight.device
    ids = torch.tensor([probe_ids], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    was_training = lm.training
    lm.eval()
    try:
        own = lm(input_ids=ids, attention_mask=mask).logits.float()  # (1, T, V)
        ours = head(decoder_hidden(lm, ids, mask)).float()  # (1, T, V)
    finally:
        lm.train(was_training)
    tol = 1e-4 if head.weight.dtype in (torch.float32, torch.float64) else 3e-2
    if own.shape != ours.shape or not torch.allclose(ours, own, rtol=tol, atol=tol * max(1.0, float(own.abs().max()))):
        err = float((ours - own).abs().max()) if own.shape == ours.shape else float("nan")
        raise ModelError(
            f"{name}: its logits are not the output head applied to its final hidden states in a way pseudocot "
            f"can reproduce (bias, logit scaling and soft-capping are; max difference {err:.3g} on a probe), so "
            f"the chunked distillation loss would train on the wrong distribution; use a model of a supported "
            f"architecture ({type(lm).__name__} is not).")
