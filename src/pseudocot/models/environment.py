"""What a result was computed on: the machine, its kernels and every library that moves the numbers.

The same commit can give different accuracies on different CPUs (vector ISA, bf16 instructions), precisions and
library versions, so every training stage, the router and evaluation record the process they ran in: a trained
model's and the router's `metrics.json` under `environment`, and evaluation's `results.json` (whose report has a
"Machine" section). Two runs that disagree can then be told apart by reading them.

    {"pseudocot": {"version": "0.1.0", "commit": "3cdf3d4...", "modified": false},
     "python": "3.11.9", "os": "Linux-6.1...-x86_64-with-glibc2.36",
     "cpu": {"model": "AMD EPYC 7B13", "cores": 2, "capability": "AVX2", "bf16_instructions": []},
     "gpus": [], "torch_threads": 2, "variables": {"OMP_NUM_THREADS": "1"},
     "packages": {"torch": "2.13.0+cpu", "transformers": "5.25.0", ...}}

Nothing secret is read: of the environment variables only the few that change kernels or threads.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from pseudocot.models.loading import cpu_bf16_instructions, cpuinfo_field

KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                    "CUBLAS_WORKSPACE_CONFIG")
"""Environment variables recorded when set: they choose kernels, their rounding or the threads."""

CORE = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "numpy")
"""Always recorded, even when pseudocot runs from a source tree it was never installed from (no requirements to read)."""
ALSO_RECORDED = ("huggingface-hub", "packaging", "scipy", "triton", "vllm", "bitsandbytes", "llama-cpp-python")
"""Installed distributions recorded beside pseudocot's own requirements (when present)."""


def _cpu_model() -> str | None:
    """The CPU's name from /proc/cpuinfo (`model name`), else `platform.processor()`; None when neither says."""
    return cpuinfo_field("model name", "Model") or platform.processor() or None


def _requirement_names() -> list[str]:
    """The distributions pseudocot requires (its `dev` extra left out), by name, then `ALSO_RECORDED`."""
    try:
        required = importlib.metadata.requires("pseudocot") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        required = []
    names = [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0] for r in required if 'extra == "dev"' not in r]
    return list(dict.fromkeys([*CORE, *names, *ALSO_RECORDED]))


def _packages() -> dict[str, str]:
    found = {}
    for name in _requirement_names():
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _source() -> dict[str, Any]:
    """pseudocot's version and, when it runs from a git checkout, the commit and whether tracked files differ from it."""
    from pseudocot import __version__

    out: dict[str, Any] = {"version": __version__, "commit": None, "modified": None}
    here = Path(__file__).resolve()
    root = here.parents[3]  # <root>/src/pseudocot/models/environment.py in a checkout; site-packages has no src/
    if here.parents[2].name == "src" and (root / ".git").exists():
        commit = _git(root, "rev-parse", "HEAD")
        if commit:
            status = _git(root, "status", "--porcelain", "--untracked-files=no")
            out.update(commit=commit, modified=bool(status) if status is not None else None)
    return out


@functools.lru_cache(maxsize=1)
def _fixed() -> dict[str, Any]:
    """What cannot change while the process lives (read once)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # this process's
    return {"pseudocot": _source(), "python": platform.python_version(), "os": platform.platform(),
            "cpu": {"model": _cpu_model(), "cores": cores, "capability": torch.backends.cpu.get_cpu_capability(),
                    "bf16_instructions": cpu_bf16_instructions()},
            "packages": _packages()}


def environment() -> dict[str, Any]:
    """This process's machine, kernels, threads and library versions, as a JSON-ready dict (module docstring)."""
    out = copy.deepcopy(_fixed())
    # GPU names only once CUDA is up (a stage on a GPU has started it): asking earlier would start it in a CPU process
    count = torch.cuda.device_count()
    out["gpus"] = ([torch.cuda.get_device_name(i) for i in range(count)] if torch.cuda.is_initialized()
                   else [f"cuda:{i}" for i in range(count)])
    out["torch_threads"] = torch.get_num_threads()
    out["variables"] = {k: os.environ[k] for k in KERNEL_VARIABLES if k in os.environ}
    return out


def summary(env: dict[str, Any] | None) -> dict[str, str]:
    """The few fields a report shows of an `environment()` record (older records without one: empty)."""
    if not env:
        return {}
    cpu, packages, source = env.get("cpu") or {}, env.get("packages") or {}, env.get("pseudocot") or {}
    bf16 = cpu.get("bf16_instructions")  # None: not recorded
    machine = f"{cpu.get('model') or 'unknown CPU'} ({cpu.get('cores')} cores, {cpu.get('capability')}"
    machine += (f", {bf16[0]}" if bf16 else ", no bf16 instructions" if bf16 == [] else "") + ")"
    if env.get("gpus"):
        machine += ", " + ", ".join(env["gpus"])
    commit = source.get("commit")
    code = f"{source.get('version')}" + (f" @ {commit[:12]}{' (modified)' if source.get('modified') else ''}" if commit else "")
    variables = " ".join(f"{k}={v}" for k, v in (env.get("variables") or {}).items())
    return {"machine": machine, "threads": str(env.get("torch_threads")), "variables": variables or "–",
            "torch": packages.get("torch", "–"), "transformers": packages.get("transformers", "–"),
            "trl": packages.get("trl", "–"), "peft": packages.get("peft", "–"),
            "accelerate": packages.get("accelerate", "–"), "pseudocot": code}
