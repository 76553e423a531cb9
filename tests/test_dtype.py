"""Training precision on a CPU: bf16 autocast only where the CPU has bf16 matrix instructions and a
bf16 matmul is measured faster (`models.loading.cpu_bf16_fast`), chosen by `train.bf16: null`,
refused for `train.bf16: true` elsewhere, and logged in one line. The CPU is faked both ways."""

from __future__ import annotations

import logging

import pytest
import torch

from pseudocot.config import TrainConfig
from pseudocot.errors import ModelError
from pseudocot.models import loading
from pseudocot.train import setup
from pseudocot.train.setup import training_args


@pytest.fixture
def fresh_probe():
    """`cpu_bf16_fast` is cached per process: clear it around a test that fakes the CPU."""
    loading.cpu_bf16_fast.cache_clear()
    yield
    loading.cpu_bf16_fast.cache_clear()


def fake_timings(monkeypatch, fp32: float, bf16: float) -> list[torch.dtype]:
    calls: list[torch.dtype] = []

    def seconds(dtype: torch.dtype, size: int = 512, reps: int = 5) -> float:
        calls.append(dtype)
        return bf16 if dtype == torch.bfloat16 else fp32

    monkeypatch.setattr(loading, "_matmul_seconds", seconds)
    return calls


def test_without_bf16_instructions_nothing_is_timed(monkeypatch, fresh_probe):
    monkeypatch.setattr(loading, "_cpu_bf16_capability", lambda: (False, "CPU capability AVX2 without AVX512-BF16 or AMX"))
    calls = fake_timings(monkeypatch, fp32=1.0, bf16=0.1)
    assert loading.cpu_bf16_fast() == (False, "CPU capability AVX2 without AVX512-BF16 or AMX")
    assert calls == []


@pytest.mark.parametrize(("bf16_seconds", "fast"), [(0.0004, True), (0.004, False)])
def test_with_the_instructions_the_probe_decides(monkeypatch, fresh_probe, bf16_seconds, fast):
    monkeypatch.setattr(loading, "_cpu_bf16_capability", lambda: (True, "CPU capability AVX512 with AMX"))
    calls = fake_timings(monkeypatch, fp32=0.001, bf16=bf16_seconds)
    decision, why = loading.cpu_bf16_fast()
    assert decision is fast
    assert why.startswith("CPU capability AVX512 with AMX; a 512x512 matmul took ") and "ms in fp32" in why
    assert loading.cpu_bf16_fast() == (decision, why) and len(calls) == 2  # measured once per process


def test_cpuinfo_flags_count_as_the_instructions(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(loading, "_cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16"})
    capable, why = loading._cpu_bf16_capability()
    assert capable and why.endswith("with amx_bf16")
    monkeypatch.setattr(loading, "_cpu_flags", lambda: {"avx2", "avx512f"})
    capable, why = loading._cpu_bf16_capability()
    assert not capable and "without AVX512-BF16 or AMX" in why


def test_the_real_probe_answers_here():
    fast, why = loading.cpu_bf16_fast()
    assert isinstance(fast, bool)
    assert why.startswith(f"CPU capability {torch.backends.cpu.get_cpu_capability()} ")


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_null_follows_the_probe_on_cpu(tmp_path, monkeypatch, caplog, fast):
    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: (fast, "a faked CPU"))
    with caplog.at_level(logging.INFO, logger="pseudocot.train.setup"):
        args = training_args(TrainConfig(max_steps=1), tmp_path, 0, "cpu", has_eval=False)
    assert args.bf16 is fast and args.use_cpu
    lines = [r.getMessage() for r in caplog.records if r.name == "pseudocot.train.setup"]
    assert lines == [f"training precision: {'bf16 autocast' if fast else 'fp32'} on CPU (train.bf16=null; a faked CPU)"]


def test_bf16_true_on_a_cpu_without_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: (False, "CPU capability AVX2 without AVX512-BF16 or AMX"))
    with pytest.raises(ModelError, match=r"train\.bf16=true on this CPU \(CPU capability AVX2 without AVX512-BF16 or AMX\) "
                                         r"would train several to a hundred times slower than fp32; set train\.bf16 to null"):
        training_args(TrainConfig(max_steps=1, bf16=True), tmp_path, 0, "cpu", has_eval=False)


def test_explicit_settings_win_where_bf16_is_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: (True, "a faked CPU"))
    assert training_args(TrainConfig(max_steps=1, bf16=True), tmp_path, 0, "cpu", has_eval=False).bf16 is True
    assert training_args(TrainConfig(max_steps=1, bf16=False), tmp_path, 0, "cpu", has_eval=False).bf16 is False


def test_weights_stay_float32_on_cpu():
    """`dtype: auto` keeps fp32 master weights on a CPU whatever the autocast decision."""
    assert loading.resolve_dtype("auto", torch.device("cpu")) is torch.float32


def test_a_trainer_runs_under_cpu_bf16_autocast(tmp_path, monkeypatch, arith_examples, arith_tokenizer):
    """Where the probe says yes, HF Trainer trains on the CPU under bf16 autocast over fp32 weights."""
    from transformers import Trainer

    from pseudocot.models.tiny import build_tiny_model
    from pseudocot.train.rows import PadCollator, tokenize_examples

    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: (True, "a faked CPU"))
    rows = tokenize_examples(arith_examples[:16], arith_tokenizer, with_reasoning=True, system_prompt=None, max_length=64)
    model = build_tiny_model("tiny-3xs", arith_tokenizer, seed=0)
    args = training_args(TrainConfig(max_steps=2, batch_size=4, save_every_steps=100), tmp_path, 0, "cpu", has_eval=False)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=PadCollator(arith_tokenizer.pad_token_id))
    seen: list[torch.dtype] = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert seen and all(d == torch.bfloat16 for d in seen)  # the matmuls ran in bf16 ...
    assert all(p.dtype == torch.float32 for p in model.parameters())  # ... over fp32 weights
