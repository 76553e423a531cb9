"""What a result was computed on (`pseudocot.models.environment`): the record every stage's output carries, and the
report's "Machine" section built from it."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

import torch

import pseudocot
from pseudocot.evaluate.report import render_markdown
from pseudocot.models.environment import environment, summary


def test_the_record_names_this_machine_its_kernels_and_libraries_and_no_secret(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.setenv("PSEUDOCOT_API_KEY", "sk-not-to-be-written")
    monkeypatch.setenv("HF_TOKEN", "hf-not-to-be-written")
    env = environment()
    text = json.dumps(env)  # JSON-ready as it is
    assert "not-to-be-written" not in text
    assert env["variables"]["MKL_CBWR"] == "COMPATIBLE"
    assert env["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads()
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers", "numpy"):
        assert env["packages"][name] == importlib.metadata.version(name), name
    assert env["pseudocot"]["version"] == pseudocot.__version__
    root = Path(pseudocot.__file__).resolve().parents[1]  # <root>/src/pseudocot: the checkout, when run from one
    head = subprocess.run(["git", "-C", str(root.parent), "rev-parse", "HEAD"], capture_output=True, text=True)
    if (root.parent / ".git").exists() and head.returncode == 0:
        assert env["pseudocot"]["commit"] == head.stdout.strip() and isinstance(env["pseudocot"]["modified"], bool)
    else:
        assert env["pseudocot"]["commit"] is None
    # threads and variables are read at each call, the rest once
    monkeypatch.delenv("MKL_CBWR")
    assert "MKL_CBWR" not in environment()["variables"]


def test_the_summary_a_report_shows():
    env = environment()
    s = summary(env)
    assert s["torch"] == env["packages"]["torch"] and s["transformers"] == env["packages"]["transformers"]
    assert env["cpu"]["capability"] in s["machine"] and f"{env['cpu']['cores']} cores" in s["machine"]
    cpu = {"model": "X", "cores": 2, "capability": "AVX512"}
    assert summary({"cpu": dict(cpu, bf16_instructions=["AVX512-BF16", "avx512_bf16"])})["machine"] == "X (2 cores, AVX512, AVX512-BF16)"
    assert summary({"cpu": dict(cpu, bf16_instructions=[])})["machine"] == "X (2 cores, AVX512, no bf16 instructions)"
    assert summary({"cpu": cpu})["machine"] == "X (2 cores, AVX512)"  # not recorded: nothing said
    assert s["threads"] == str(env["torch_threads"])
    assert summary(None) == {} and summary({}) == {}


def test_the_report_says_where_each_number_came_from():
    """The scoring process, a system answered in another environment, and the trained models with their precision."""
    here = environment()
    elsewhere = json.loads(json.dumps(here))
    elsewhere["cpu"].update(model="Other CPU", capability="AVX2")
    elsewhere["packages"]["transformers"] = "5.0.0"
    system = {"kind": "pipeline", "mode": "always", "n": 10, "seeds": [0], "accuracy": 0.5, "ci95": [0.2, 0.8]}
    results = {
        "run": "r", "primary_task": "arith", "environment": here,
        "tasks": {"arith": {"systems": {"never": dict(system, mode="never", answered_on=summary(here)),
                                        "always": dict(system, answered_on=summary(elsewhere))},
                            "comparisons": {}}},
        "trained_on": {"/runs/r/base": {"role": "base", "environment": summary(elsewhere),
                                        "precision": {"autocast": "bf16", "weights": ["float32"], "trainable": ["float32"]}},
                       "/runs/r/distill/stage-1": {"role": "ttm", "environment": summary(here),
                                                   "precision": {"autocast": None, "weights": ["float32"], "trainable": ["float32"]}}},
    }
    results["systems"] = results["tasks"]["arith"]["systems"]
    md = render_markdown([results], ["results.json"], [])
    section = md[md.index("## Machine"):]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")][2:]
    mine = summary(here)
    assert lines[0].startswith(f"| evaluation | – | {mine['machine']} | {mine['threads']} |")
    assert lines[1].startswith("| answers of always | – | Other CPU (") and "| 5.0.0 |" in lines[1]
    assert "never" not in section  # answered where it was scored: no row of its own
    assert lines[2].startswith("| base: `base` | fp32, bf16 autocast | Other CPU (")
    assert lines[3].startswith(f"| ttm: `stage-1` | fp32 | {mine['machine']} |")
    assert len(lines) == 4
    # a results file from before environments were recorded has no such section
    del results["environment"]
    assert "## Machine" not in render_markdown([results], ["results.json"], [])
