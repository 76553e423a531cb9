"""Loading HF models and tokenizers safely: local folders first, safetensors only, no remote code
unless asked, the right device and dtype, 4-bit only where CUDA and bitsandbytes exist."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from pseudocot.errors import ModelError


def set_threads(threads: int | None) -> None:
    """Torch's CPU threads for this process (`run.threads`; None leaves torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"run.device is '{name}' but no CUDA device is visible; use run.device=cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ModelError("run.device is 'mps' but MPS is not available; use run.device=cpu.")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA with bf16 support, fp32 elsewhere (CPU training wants fp32 master weights;
    bf16 compute on a CPU is `train.bf16`'s autocast, where `cpu_bf16_fast` says it pays)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ModelError(f"dtype '{name}' is not known; use auto, float32, bfloat16 or float16.")
    return table[name]


def cpuinfo_field(*names: str) -> str:
    """The value of the first /proc/cpuinfo line starting with one of `names` (the first CPU's); empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith(names)), "")
    return line.partition(":")[2].strip()


def _cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 `flags`, Arm `Features`); empty where there is none."""
    return set(cpuinfo_field("flags", "Features").split())


def cpu_bf16_instructions() -> list[str]:
    """The CPU's bf16 matrix instructions (x86 AVX512-BF16 or AMX, Arm BF16) as torch and /proc/cpuinfo name them."""
    found = [name for name, probe in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
             if getattr(torch.cpu, probe, lambda: False)()]
    return found + sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def _cpu_bf16_capability() -> tuple[bool, str]:
    """Whether the CPU has bf16 matrix instructions (x86 AVX512-BF16 or AMX, Arm BF16), and what was seen."""
    capability = torch.backends.cpu.get_cpu_capability()  # the vector ISA ("AVX2", "AVX512"): says nothing of bf16
    found = cpu_bf16_instructions()
    if found:
        return True, f"CPU capability {capability} with {', '.join(found)}"
    return False, f"CPU capability {capability} without AVX512-BF16 or AMX"


def _matmul_seconds(dtype: torch.dtype, size: int = 512, reps: int = 5) -> float:
    """The best of `reps` timings of one (size, size) @ (size, size) matmul in `dtype`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: oneDNN picks its kernel on the first call
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


@functools.lru_cache(maxsize=1)
def cpu_bf16_fast() -> tuple[bool, str]:
    """Whether bf16 autocast would speed training up on this CPU, and a one-line reason (once per process).

    Without AVX512-BF16 or AMX a bf16 matmul is emulated: 3-4x slower than fp32 on AVX512, ~50x with
    oneDNN held to AVX2. Only a CPU that has the instructions is probed, with a 512x512 matmul timed
    in both dtypes: bf16 must be the faster."""
    capable, why = _cpu_bf16_capability()
    if not capable:
        return False, why
    fp32, bf16 = _matmul_seconds(torch.float32), _matmul_seconds(torch.bfloat16)
    return bf16 < fp32, f"{why}; a 512x512 matmul took {bf16 * 1e3:.2f} ms in bf16, {fp32 * 1e3:.2f} ms in fp32"


def _check_local(path: str, weights: bool = True) -> None:
    """Fail early, in one sentence, on a missing folder or pickle-only weights."""
    p = Path(path)
    if p.exists():
        if not weights:
            return
        if not (p / "config.json").is_file():
            raise ModelError(f"{path}: no config.json here; give a folder written by save_pretrained.")
        has_safe = any(p.glob("*.safetensors"))
        has_pickle = any(p.glob("*.bin")) or any(p.glob("*.pt")) or any(p.glob("*.pth"))
        if has_pickle and not has_safe:
            raise ModelError(f"{path}: weights are pickle files (.bin/.pt), which pseudocot does not load; "
                             "convert them to safetensors (model.save_pretrained(..., safe_serialization=True)).")
    elif os.environ.get("HF_HUB_OFFLINE") == "1" or path.startswith((".", "/", "~")):
        raise ModelError(f"{path}: no such model folder; check the path (the hub is not used offline), or import a GGUF "
                         f"checkpoint there with `pseudocot models import SRC --out {path}` (SRC: a .gguf file, or smollm2).")


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    _check_local(path, weights=False)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load a tokenizer ({str(e).splitlines()[0]}).") from None
    if tok.pad_token is None:
        # Decoder-only checkpoints often ship without a pad token; padding with EOS is the usual fix.
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
               load_in_4bit: bool = False) -> Any:
    """A causal LM from a local folder (or hub id when online), in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM

    _check_local(path)
    dev = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, dev), "trust_remote_code": trust_remote_code,
                              "use_safetensors": True}
    if load_in_4bit:
        if dev.type != "cuda":
            raise ModelError("4-bit loading (QLoRA) needs a CUDA GPU; use LoRA in bf16/fp32 on this machine.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError("4-bit loading needs bitsandbytes; install it with pip install 'pseudocot[gpu]'.")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
        kwargs["device_map"] = {"": dev.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load the model ({str(e).splitlines()[0]}).") from None
    if not load_in_4bit:
        model.to(dev)
    model.eval()
    return model
