"""benchmarks/gpu_check.py on its CPU toy path: every figure present, finite and positive; the chunked and
plain distillation losses agree; KV reuse answers exactly as re-encoding does; and nothing imports TRL
(the GPU machine has none), which the subprocess enforces by making `import trl` fail."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
# `sys.modules["trl"] = None` makes any `import trl` raise ImportError, as on a machine without it.
RUNNER = ("import runpy, sys; sys.modules['trl'] = None; sys.argv = sys.argv[1:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(SCRIPT), "--device", "cpu", "--toy", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == last  # --out holds the same object as the last line
    return last


def test_every_part_ran_without_error(report: dict) -> None:
    for part in ("lora_sft", "distill_step", "pipeline_kv_reuse", "pipeline_engine"):
        assert "error" not in report[part], report[part]["error"]
        assert report[part]["seconds"] <= report[part]["budget_seconds"]
    assert report["device"] == "cpu" and report["toy"] is True and report["peak_flops"] is None


def test_lora_sft_figures(report: dict) -> None:
    sft = report["lora_sft"]
    for key in ("step_seconds", "tokens_per_second", "model_flops_per_token", "model_tflops_per_second", "loss",
                "trainable_params", "frozen_matmul_params"):
        assert positive(sft[key]), (key, sft[key])
    assert sft["timed_steps"] >= 1 and not sft["stopped_early"]
    # Only the adapters train, and they are what LoRA adds to the frozen weights.
    assert sft["trainable_params"] + sft["frozen_matmul_params"] < sft["total_params"]
    # No CUDA: no peak FLOPs, so no MFU, and no memory counter.
    assert sft["mfu"] is None and sft["mfu_6n_convention"] is None and sft["peak_memory_gib"] is None


def test_distill_chunked_and_plain_agree(report: dict) -> None:
    d = report["distill_step"]
    for form in ("chunked", "plain"):
        for key in ("step_seconds", "loss", "grad_norm"):
            assert positive(d[form][key]), (form, key, d[form][key])
    assert d["tolerance"] == 1e-4  # fp32 on CPU
    assert d["loss_rel_diff"] < 1e-4 and d["grad_norm_rel_diff"] < 1e-4 and d["losses_agree"] is True
    # The toy's chunks are smaller than its batch, so the chunked form walked several of them.
    assert d["chunk_tokens"] < d["batch"] * (d["seq_tokens"] - 1)


def test_kv_reuse_gives_the_same_answers(report: dict) -> None:
    p = report["pipeline_kv_reuse"]
    assert p["tokenizer"]["padded_to"] >= p["tokenizer"]["trained_ids"]
    for shape in ("1b", "8b"):
        res = p[shape]
        for mode in ("reuse", "no_reuse", "hf_generate"):
            for key in ("reanswer_seconds", "reanswer_tokens_per_second", "reanswer_generated_tokens",
                        "reanswer_encoded_prompt_tokens"):
                assert positive(res[mode][key]), (shape, mode, key, res[mode][key])
        assert positive(res["kv_reuse_speedup_vs_no_reuse"]) and positive(res["kv_reuse_speedup_vs_hf_generate"])
        # Reuse encodes less and takes the rest from its sessions; without it nothing is cached.
        assert res["reuse"]["reanswer_cached_prompt_tokens"] > 0 and res["no_reuse"]["reanswer_cached_prompt_tokens"] == 0
        assert (res["reuse"]["reanswer_encoded_prompt_tokens"] + res["reuse"]["reanswer_cached_prompt_tokens"]
                == res["no_reuse"]["reanswer_encoded_prompt_tokens"])
        # Greedy in fp32: the same tokens whichever way the context was encoded, and the answers are not empty.
        assert res["same_text_fraction"] == {"no_reuse": 1.0, "hf_generate": 1.0}
        assert res["nonempty_answer_fraction"] > 0.5
        assert res["reuse"]["reanswer_generated_tokens"] == res["no_reuse"]["reanswer_generated_tokens"]


def test_the_engine_answers_as_the_local_sessions_do(report: dict) -> None:
    e = report["pipeline_engine"]
    assert e["server"] == "pseudocot"  # no vLLM on a CPU
    # The same weights and decode loop in fp32: every answer equal; the re-answers found their prefixes cached.
    assert e["same_text_fraction"] == 1.0 and positive(e["engine_speedup_vs_local"])
    assert e["engine"]["reanswer_generated_tokens"] == e["local"]["reanswer_generated_tokens"]
    assert 0 < e["engine"]["reanswer_cached_prompt_tokens"] < e["engine"]["reanswer_prompt_tokens"]


def test_a_failing_part_is_recorded_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu_check)

    def out_of_memory(**_: object) -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    out = gpu_check.run_part("distill_step", out_of_memory, 5.0, torch.device("cpu"))
    assert out["error"].startswith("OutOfMemoryError: CUDA out of memory") and out["budget_seconds"] == 5.0
