"""A tiny run folder for tests: the built-in task's data and one trained tiny model saved as both the
base model and the Tiny Thought Model (`test_router_stage.py`, and the server's tests via `serve_helpers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RUN_YAML = """
extends: smoke
run: {{name: {name}, out_dir: {root}, device: cpu}}
data:
  arith: {{n_train: 60, n_val: 30, n_test: 20, max_steps: 2, step_weights: null}}
tokenizer: {{train: false}}
distill:
  stages:
    - student: {{preset: tiny-xs}}
pipeline: {{max_thoughts: 2, answer_max_new_tokens: 24, thought_max_new_tokens: 24}}
router: {{train_questions: 60, val_questions: 30, max_epochs: 40, patience: 10, hidden_size: 16}}
"""


def write_tiny_run(root: Path, model: Any, tokenizer: Any, name: str) -> Path:
    """Write `root/cfg.yaml` and the run folder `root/<name>/` (data, base, stage-1, config.yaml); returns the
    config file."""
    from pseudocot.config import load_config
    from pseudocot.layout import RunLayout
    from pseudocot.stages import data as data_stage

    cfg_file = root / "cfg.yaml"
    cfg_file.write_text(RUN_YAML.format(root=root, name=name))
    cfg = load_config(cfg_file)
    data_stage.main(cfg)
    layout = RunLayout.of(cfg)
    for folder in (layout.base_dir, layout.distill_dir / "stage-1"):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    # The config a run folder carries (as `pseudocot run` leaves it), for `--run` readers.
    (layout.root / "config.yaml").write_text(cfg_file.read_text())
    return cfg_file
