"""Training precision on a CPU: fp32 for `train.bf16: null` (and false); bf16 autocast only for `train.bf16: true`,
and only where the CPU has bf16 matrix instructions and a bf16 matmul is measured faster
(`models.loading.cpu_bf16_fast`), refused elsewhere; the choice logged in one line. The CPU is faked both ways."""

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
def test_bf16_null_is_fp32_on_cpu_whatever_the_probe(tmp_path, monkeypatch, caplog, fast):
    """null never turns autocast on on a CPU, not even where bf16 is fast: it moved the demo by 27 points there."""
    probed: list[bool] = []
    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: probed.append(True) or (fast, "a faked CPU"))
    with caplog.at_level(logging.INFO, logger="pseudocot.train.setup"):
        args = training_args(TrainConfig(max_steps=1), tmp_path, 0, "cpu", has_eval=False)
    assert args.bf16 is False and args.use_cpu
    assert probed == []  # null on a CPU needs no probe
    lines = [r.getMessage() for r in caplog.records if r.name == "pseudocot.train.setup"]
    assert lines == ["training precision: fp32 on CPU (train.bf16=null; bf16 autocast on a CPU only with train.bf16=true)"]


def test_bf16_true_on_a_capable_cpu_is_logged_with_the_probe(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: (True, "a faked CPU"))
    with caplog.at_level(logging.INFO, logger="pseudocot.train.setup"):
        args = training_args(TrainConfig(max_steps=1, bf16=True), tmp_path, 0, "cpu", has_eval=False)
    assert args.bf16 is True
    lines = [r.getMessage() for r in caplog.records if r.name == "pseudocot.train.setup"]
    assert lines == ["training precision: bf16 autocast on CPU (train.bf16=true; a faked CPU)"]


def test_bf16_true_on_a_cpu_without_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: (False, "CPU capability AVX2 without AVX512-BF16 or AMX"))
    with pytest.raises(ModelError, match=r"train\.bf16=true on this CPU \(CPU capability AVX2 without AVX512-BF16 or AMX\) "
                                         r"would train several to a hundred times slower than fp32; set train\.bf16 to null or false"):
        training_args(TrainConfig(max_steps=1, bf16=True), tmp_path, 0, "cpu", has_eval=False)


def test_explicit_settings_win_where_bf16_is_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: (True, "a faked CPU"))
    assert training_args(TrainConfig(max_steps=1, bf16=True), tmp_path, 0, "cpu", has_eval=False).bf16 is True
    assert training_args(TrainConfig(max_steps=1, bf16=False), tmp_path, 0, "cpu", has_eval=False).bf16 is False


def test_weights_stay_float32_on_cpu():
    """`dtype: auto` keeps fp32 master weights on a CPU whatever the autocast decision."""
    assert loading.resolve_dtype("auto", torch.device("cpu")) is torch.float32


def test_a_trainer_runs_under_cpu_bf16_autocast(tmp_path, monkeypatch, arith_examples, arith_tokenizer):
    """With train.bf16=true where the probe says yes, HF Trainer trains on the CPU under bf16 autocast over fp32 weights
    (the probe is patched, so a CPU without AVX512-BF16 runs the bf16-capable path too)."""
    from transformers import Trainer

    from pseudocot.models.tiny import build_tiny_model
    from pseudocot.train.rows import PadCollator, tokenize_examples

    monkeypatch.setattr(setup, "cpu_bf16_fast", lambda: (True, "a faked CPU"))
    rows = tokenize_examples(arith_examples[:16], arith_tokenizer, with_reasoning=True, system_prompt=None, max_length=64)
    model = build_tiny_model("tiny-3xs", arith_tokenizer, seed=0)
    args = training_args(TrainConfig(max_steps=2, batch_size=4, save_every_steps=100, bf16=True), tmp_path, 0, "cpu",
                         has_eval=False)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=PadCollator(arith_tokenizer.pad_token_id))
    seen: list[torch.dtype] = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert seen and all(d == torch.bfloat16 for d in seen)  # the matmuls ran in bf16 ...
    assert all(p.dtype == torch.float32 for p in model.parameters())  # ... over fp32 weights


def test_null_stays_fp32_where_the_probe_says_bf16_is_fast(tmp_path, fresh_probe, monkeypatch):
    """The probe itself answering yes (as on a CPU with AVX512-BF16, the machine where autocast cost the demo 27
    points), not a patched `use_bf16`: null and false still train in fp32, true in bf16."""
    monkeypatch.setattr(loading, "_cpu_bf16_capability", lambda: (True, "CPU capability AVX512 with AVX512-BF16"))
    fake_timings(monkeypatch, fp32=1e-3, bf16=0.5e-3)
    assert loading.cpu_bf16_fast()[0] is True
    for setting, expected in ((None, False), (False, False), (True, True)):
        args = training_args(TrainConfig(max_steps=1, bf16=setting), tmp_path, 0, "cpu", has_eval=False)
        assert args.bf16 is expected, setting
