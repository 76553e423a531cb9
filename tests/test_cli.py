"""The `pseudocot` command line, through click's CliRunner (and once through the installed script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pseudocot.cli import cli
from pseudocot.config import load_config
from pseudocot.data.jsonl import read_examples

COMMANDS = ["data", "finetune", "distill", "router", "eval", "run", "demo", "chat", "serve", "synth", "grpo", "config", "models", "stages"]
FIXTURES = Path(__file__).parent / "fixtures"


def invoke(*args: str, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)


def _command_names(help_text: str) -> set[str]:
    lines = help_text.split("Commands:", 1)[1].splitlines()
    return {line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")}


def test_help_lists_every_stage():
    result = invoke("--help")
    assert result.exit_code == 0
    assert _command_names(result.output) == set(COMMANDS)
    assert "not built yet" not in result.output  # every stage is built


def test_console_script_help():
    script = Path(sys.executable).with_name("pseudocot")
    if not script.exists():
        pytest.skip("the pseudocot console script is not installed beside this Python")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: pseudocot ")
    assert _command_names(proc.stdout) == set(COMMANDS)


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.startswith("pseudocot, version ")


# ------------------------------------------------------------------------------ data arith / check / convert


def test_data_arith_writes_file_and_stats(tmp_path):
    out = tmp_path / "x.jsonl"
    result = invoke("data", "arith", "--n", "2000", "--max-steps", "4", "--seed", "0", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote 2000 problems to {out}" in result.output
    exs = read_examples(out).examples
    assert len(exs) == 2000
    assert {e.meta["steps"] for e in exs} == {1, 2, 3, 4}
    stats = json.loads((tmp_path / "x.stats.json").read_text())
    assert stats["n"] == 2000
    assert sum(stats["per_steps"].values()) == 2000
    assert set(stats["per_steps"]) == {"1", "2", "3", "4"}
    assert 0 <= stats["answer_min"] <= stats["answer_max"] <= 99
    first = out.read_bytes()
    first_stats = (tmp_path / "x.stats.json").read_bytes()

    again = invoke("data", "arith", "--n", "2000", "--max-steps", "4", "--seed", "0", "--out", out)
    assert again.exit_code == 0
    assert out.read_bytes() == first
    assert (tmp_path / "x.stats.json").read_bytes() == first_stats
    assert again.output == result.output

    other = tmp_path / "y.jsonl"
    assert invoke("data", "arith", "--n", "2000", "--max-steps", "4", "--seed", "1", "--out", other).exit_code == 0
    assert other.read_bytes() != first


def test_data_arith_bad_option(tmp_path):
    result = invoke("data", "arith", "--n", "0", "--out", tmp_path / "x.jsonl")
    assert result.exit_code == 2
    assert "--n" in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_data_check_good_file(tmp_path):
    out = tmp_path / "x.jsonl"
    assert invoke("data", "arith", "--n", "50", "--out", out).exit_code == 0
    result = invoke("data", "check", out)
    assert result.exit_code == 0, result.output
    assert f"{out}: 50 valid examples, 0 bad rows" in result.output
    assert "with reasoning: 50" in result.output
    assert "arith: 50" in result.output


def _file_with_broken_line_7(path: Path) -> Path:
    rows = [json.dumps({"id": f"r{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}) for i in range(1, 10)]
    rows[6] = '{"id": "r7", "question": "What is 7 + 7?", "answer": '
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_data_check_broken_line_7(tmp_path):
    f = _file_with_broken_line_7(tmp_path / "broken.jsonl")
    result = invoke("data", "check", f)
    assert result.exit_code != 0
    assert f"{f}:7: not valid JSON" in result.stderr
    assert ":7:" in result.output
    assert "8 valid examples, 1 bad rows" in result.stdout


def test_data_check_other_formats():
    result = invoke("data", "check", FIXTURES / "college_mathematics_test.csv", "--format", "mmlu")
    assert result.exit_code == 0, result.output
    assert "5 valid examples, 0 bad rows" in result.output
    assert "with choices: 5" in result.output
    assert "mmlu:college_mathematics: 5" in result.output
    result = invoke("data", "check", FIXTURES / "custom_mc.csv", "--format", "csv",
                    "--field", "question=q", "--field", "choices=A,B,C,D", "--field", "answer=gold")
    assert result.exit_code == 0, result.output
    assert "3 valid examples, 0 bad rows" in result.output


def test_data_check_bad_field_option():
    result = invoke("data", "check", FIXTURES / "custom_mc.csv", "--format", "csv", "--field", "question")
    assert result.exit_code == 2
    assert "'question' is not FIELD=COLUMN" in result.output


def test_data_check_missing_file(tmp_path):
    result = invoke("data", "check", tmp_path / "nope.jsonl")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "no such file" in result.stderr


def test_data_convert_skip_bad(tmp_path):
    f = _file_with_broken_line_7(tmp_path / "broken.jsonl")
    out = tmp_path / "clean.jsonl"
    result = invoke("data", "convert", f, "--out", out)
    assert result.exit_code == 1
    assert "error: " in result.stderr and ":7:" in result.stderr
    assert not out.exists()

    result = invoke("data", "convert", f, "--out", out, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert [e.id for e in read_examples(out).examples] == ["r1", "r2", "r3", "r4", "r5", "r6", "r8", "r9"]
    rejects_file = tmp_path / "clean.rejects.jsonl"
    rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
    assert [(r["line"], r["file"]) for r in rejects] == [(7, str(f))]
    assert rejects[0]["reason"].startswith("not valid JSON")
    assert f"wrote 8 examples to {out}; 1 bad rows to {rejects_file}" in result.output


def test_data_convert_gsm8k(tmp_path):
    out = tmp_path / "gsm.jsonl"
    result = invoke("data", "convert", FIXTURES / "gsm8k_train.jsonl", "--format", "gsm8k", "--out", out)
    assert result.exit_code == 0, result.output
    exs = read_examples(out).examples
    assert [e.answer for e in exs] == ["72", "10800", "1234", "4.5"]
    assert not (tmp_path / "gsm.rejects.jsonl").exists()


# ------------------------------------------------------------------------------ config


def test_config_show_default():
    result = invoke("config", "show")
    assert result.exit_code == 0
    data = yaml.safe_load(result.output)
    assert data["run"]["name"] == "demo"
    assert data["train"]["lr"] == 0.003
    assert data["data"]["arith"]["n_train"] == load_config("demo").data.arith.n_train
    assert "# Peak learning rate." in result.output


def test_config_show_with_override(tmp_path):
    result = invoke("config", "show", "demo", "train.lr=1e-4")
    assert result.exit_code == 0
    data = yaml.safe_load(result.output)
    assert data["train"]["lr"] == 0.0001
    assert "lr: 0.0001\n" in result.output
    # the printed YAML loads back to the same config
    f = tmp_path / "shown.yaml"
    f.write_text(result.output)
    assert load_config(f) == load_config("demo", ["train.lr=1e-4"])
    bare = invoke("config", "show", "smoke", "--no-comments")
    assert "#" not in bare.output
    assert yaml.safe_load(bare.output)["run"]["name"] == "smoke"


def test_config_presets():
    result = invoke("config", "presets")
    assert result.exit_code == 0
    assert result.output.split() == ["demo", "demo-grpo", "docs", "gsm8k", "paper-llama3", "paper-ttm", "smoke", "smol"]


@pytest.mark.parametrize("args, key", [
    (["config", "show", "demo", "train.nope=1"], "train.nope"),
    (["config", "show", "demo", "train.lr=abc"], "train.lr"),
    (["data", "--config", "smoke", "data.arith.n_trian=5"], "data.arith.n_trian"),
    (["finetune", "--config", "smoke", "train.bogus=1"], "train.bogus"),
])
def test_bad_override_is_one_error_line(args, key):
    result = invoke(*args)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert f"'{key}'" in lines[0]


def test_unknown_preset():
    result = invoke("config", "show", "nosuch")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no config file or preset named 'nosuch'")


# ------------------------------------------------------------------------------ stages


def test_serve_without_a_trained_base_fails_in_one_line(tmp_path):
    result = invoke("serve", f"run.out_dir={tmp_path}")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no base model here" in lines[0]


def test_synth_without_a_teacher_fails_in_one_line():
    result = invoke("synth")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: synth.teacher is not set")


@pytest.mark.parametrize("args, message", [
    (["finetune"], "needs the run's tokenizer"),
    (["distill"], "no teacher at"),
    (["grpo"], "to start GRPO from"),
    (["grpo", "grpo.num_generations=5"], "grpo.num_generations' is 5, which does not divide"),
])
def test_training_stages_without_their_inputs_fail_in_one_line(tmp_path, args, message):
    result = invoke(*args, f"run.out_dir={tmp_path}")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_data_stage(tmp_path):
    result = invoke("data", "--config", "smoke", f"run.out_dir={tmp_path}", "data.arith.n_train=100",
                    "data.arith.n_val=20", "data.arith.n_test=30", "tokenizer.train=false")
    assert result.exit_code == 0, result.output
    data = tmp_path / "smoke" / "data"
    stats = json.loads((data / "stats.json").read_text())
    assert (stats["train"]["n"], stats["val"]["n"], stats["test"]["n"]) == (100, 20, 30)
    assert len(read_examples(data / "train.jsonl").examples) == 100
    assert load_config(tmp_path / "smoke" / "config.yaml").data.arith.n_train == 100
    assert not (tmp_path / "smoke" / "tokenizer").exists()
    assert "train" in result.output and "100" in result.output


def test_data_stage_stray_argument(tmp_path):
    result = invoke("data", "--config", "smoke", "oops")
    assert result.exit_code == 2
    assert "'oops' is neither a subcommand" in result.output


def test_demo_smoke_end_to_end(tmp_path):
    """`pseudocot demo --preset smoke` runs every stage for real and leaves every artifact."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "pseudocot", "demo", "--preset", "smoke", f"run.out_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "smoke"
    for path in ("config.yaml", "run.log", "run_state.json", "data/train.jsonl", "data/test.jsonl", "tokenizer/tokenizer.json",
                 "teacher/model.safetensors", "distill/stage-1/model.safetensors", "distill/stage-2/model.safetensors",
                 "distill/summary.json", "base/model.safetensors", "router/router.json", "router/router.safetensors",
                 "eval/results.json", "eval/report.md", "logs/base.log"):
        assert (run / path).is_file(), path
    figures = list((run / "eval" / "figures").glob("*.png"))
    assert len(figures) >= 3
    results = json.loads((run / "eval" / "results.json").read_text())
    for name in ("never", "always", "router"):
        s = results["systems"][name]
        for key in ("accuracy", "ci95", "bleu", "rougeL", "faithfulness", "thought_calls_per_question",
                    "generated_tokens_per_question"):
            assert key in s, (name, key)
        assert 0 <= s["accuracy"] <= 1 and len(s["ci95"]) == 2
    for name in ("router_vs_never", "always_vs_never"):
        c = results["comparisons"][name]
        assert {"delta", "ci95", "p_value"} <= set(c)
    wall = results["run_wall_seconds"]
    assert wall["total"] > 0 and set(wall["stages"]) >= {"data", "teacher", "distill", "base", "router", "eval"}
    # where each number came from: the models the systems read, with their precision and machine, in the report too
    trained = {m["role"]: m for m in results["trained_on"].values()}
    assert set(trained) == {"base", "ttm", "router"}
    assert trained["base"]["precision"] == {"autocast": None, "weights": ["float32"], "trainable": ["float32"]}
    assert trained["base"]["environment"]["variables"] == "OMP_NUM_THREADS=1"  # trained in the second process
    assert results["environment"]["packages"]["transformers"] == results["systems"]["never"]["answered_on"]["transformers"]
    report = (run / "eval" / "report.md").read_text()
    assert "## Machine" in report and "| base: `base` | fp32 |" in report and "| router: `router` | – |" in report
    assert "report:" in proc.stdout
    # Everything is complete: a second run skips every stage.
    again = subprocess.run([sys.executable, "-m", "pseudocot", "demo", "--preset", "smoke", f"run.out_dir={tmp_path}"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0
    assert again.stdout.count("complete for this config, skipped") == 6


def test_demo_rejects_other_presets():
    result = invoke("demo", "--preset", "gsm8k")
    assert result.exit_code == 2
    assert "not a demo preset" in result.output
