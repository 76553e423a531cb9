"""Students cut from their teacher: a copy of a decoder-only model that keeps a subset of its
decoder layers (evenly spaced, first and last kept), the initialisation of DistilBERT and Minitron.
It is how a chain 30 -> 16 -> 8 layers is built inside one model family where no smaller sibling
checkpoint exists. The result is an ordinary HF model (`save_pretrained` folder).

    student = cut_layers(teacher, num_layers=8)           # layers 0, 4, 8, ..., 29 of a 30-layer teacher
    student = cut_layers(teacher, keep_layers=[0, 15, 29])
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch

from pseudocot.errors import ModelError


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` layer indices out of `total`, evenly spaced, the first and the last always kept.

    >>> evenly_spaced(30, 8)
    [0, 4, 8, 12, 17, 21, 25, 29]
    >>> evenly_spaced(30, 1)
    [0]
    """
    if not 1 <= keep <= total:
        raise ModelError(f"num_layers must be between 1 and the teacher's {total} layers, got {keep}.")
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def decoder_layers(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """(state-dict prefix, ModuleList) of a causal LM's decoder layers (`model.layers`, `transformer.h`, ...)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == model.config.num_hidden_layers \
                and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks"):
            return name, module
    raise ModelError(f"cannot find the decoder layers of this {type(model).__name__}; layer-cut students need a "
                     "model whose layers are a ModuleList named layers, h or blocks.")


def cut_layers(model: Any, num_layers: int | None = None, keep_layers: list[int] | None = None) -> Any:
    """A new model of the same class and config with only the kept decoder layers (copied weights);
    embeddings, final norm and output head are copied whole. `model` is left unchanged."""
    total = model.config.num_hidden_layers
    if keep_layers is not None:
        keep = list(keep_layers)
        if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= total:
            raise ModelError(f"keep_layers must be increasing indices between 0 and {total - 1}, got {keep_layers}.")
    elif num_layers is not None:
        keep = evenly_spaced(total, num_layers)
    else:
        raise ModelError("a layer-cut student needs num_layers or keep_layers.")
    prefix, _ = decoder_layers(model)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep)
    # Per-layer settings (sliding / full attention in Qwen2, Gemma, ...) follow their layers.
    for attr in ("layer_types", "sliding_window_pattern_list"):
        value = getattr(config, attr, None)
        if isinstance(value, list) and len(value) == total:
            setattr(config, attr, [value[i] for i in keep])
    new_index = {old: new for new, old in enumerate(keep)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    state = {}
    for key, tensor in model.state_dict().items():
        m = pattern.match(key)
        if m is None:
            state[key] = tensor
        elif int(m.group(1)) in new_index:
            state[f"{prefix}.{new_index[int(m.group(1))]}.{m.group(2)}"] = tensor
    weight = next(model.parameters())
    with torch.device(weight.device):
        student = type(model)(config).to(weight.dtype)
    student.load_state_dict(state, strict=True)  # copies: the student never shares storage with the teacher
    student.generation_config = copy.deepcopy(model.generation_config)
    return student.eval()
