"""Launched by `torchrun --nproc_per_node 2` from tests/test_train.py: fine-tunes the base model, then runs the
distillation chain, in one process group (two stages for one start-up of torch.distributed).

    torchrun --nproc_per_node 2 tests/ddp/train_stages.py CONFIG [KEY=VALUE ...]
"""

from __future__ import annotations

import sys

from pseudocot.config import load_config
from pseudocot.stages import distill, finetune


def main() -> None:
    cfg = load_config(sys.argv[1], sys.argv[2:])
    finetune.main(cfg, "base")
    distill.main(cfg)


if __name__ == "__main__":
    main()
