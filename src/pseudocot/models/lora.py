"""LoRA: attach adapters for training, and load a trained folder (full model or adapter) back.

A LoRA folder holds `adapter_config.json` + `adapter_model.safetensors`; loading it puts the adapter
on its base model (the path recorded in the adapter config) and merges it, so the result is an
ordinary causal LM for the next stage or for generation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pseudocot.config import LoraConfig
from pseudocot.errors import ModelError
from pseudocot.models.loading import load_model


def attach_lora(model: Any, cfg: LoraConfig, quantized: bool = False, gradient_checkpointing: bool = False) -> Any:
    """Wrap `model` in a PEFT LoRA model; only the adapters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ModelError(f"lora.target_modules names '{missing[0]}', which this model does not have; its linear layers are: {', '.join(linear)}.")
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def merged_adapter(base: Any, folder: str | Path) -> Any:
    """`base` with the LoRA adapter in `folder` merged into its weights."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def load_trained(folder: str | Path, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False) -> Any:
    """A trained stage's model: a full checkpoint as is, or an adapter merged into its base."""
    folder = Path(folder)
    if not is_adapter(folder):
        return load_model(str(folder), device=device, dtype=dtype, trust_remote_code=trust_remote_code)

    base_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    if not base_path:
        raise ModelError(f"{folder}/adapter_config.json names no base model; set base_model_name_or_path.")
    base = load_model(base_path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    model = merged_adapter(base, folder)
    model.eval()
    return model
