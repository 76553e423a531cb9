"""What every stage does first, whoever calls it (`pseudocot.stages.prepare`): `run.threads` is
applied by the `data`, `finetune`, `distill`, `router` and `eval` stages alike (`pseudocot eval` used
to ignore it), and by the chat."""

from __future__ import annotations

import pytest
import torch

from pseudocot.config import load_config
from pseudocot.errors import PseudocotError


@pytest.fixture
def threads(monkeypatch):
    """Every thread count a stage asks for, with torch left as it was."""
    import pseudocot.models.loading as loading

    asked: list[int | None] = []
    monkeypatch.setattr(loading, "set_threads", lambda n: asked.append(n))
    before = torch.get_num_threads()
    yield asked
    torch.set_num_threads(before)


@pytest.mark.parametrize("stage", ["finetune", "distill", "router", "eval"])
def test_every_stage_applies_run_threads(tmp_path, threads, stage):
    import importlib

    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", "run.threads=1"])
    main = importlib.import_module(f"pseudocot.stages.{stage}").main
    with pytest.raises(PseudocotError):  # no data, no models: each stops with its own user error
        main(cfg)
    assert threads == [1]


def test_the_data_stage_applies_run_threads(tmp_path, threads):
    from pseudocot.stages import data

    data.main(load_config("smoke", [f"run.out_dir={tmp_path}", "run.threads=1", "data.arith.n_train=50",
                                    "data.arith.n_val=10", "data.arith.n_test=10", "tokenizer.train=false"]))
    assert threads == [1]


def test_the_real_setter_sets_torch(tmp_path):
    from pseudocot.models.loading import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)  # null: torch's default stays as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
