"""The `run` section: the run's name and folder, seed, device and threads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pseudocot.config.checks import FieldError, Ge, PlainName, Section


@dataclass
class RunConfig(Section):
    name: Annotated[str, PlainName()] = "demo"
    """Run name: stages write into `<out_dir>/<name>/`."""
    out_dir: str = "runs"
    """Folder that holds run folders."""
    seed: int = 0
    """Global random seed for data order, initialisation and sampling."""
    device: str = "auto"
    """Where models run: `auto` (CUDA if present, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`."""
    threads: Annotated[int, Ge(1)] | None = None
    """Torch CPU threads per process (null: torch's default). On a small shared CPU, 1 per process is often fastest."""
    parallel_stages: bool = False
    """`pseudocot run`: train the base model in a second process beside the teacher and distillation chain."""

    def validate(self) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise FieldError("device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
