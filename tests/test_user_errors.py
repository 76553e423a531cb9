"""Errors a user can cause reach them as one line, `error: ...`, exit code 1, never a traceback;
and each is raised as the kind of error that matches its cause.

The first five are the tracebacks a read of the code found (router features, router objective,
tokenizer size, tiny preset, a failed base process), now one line each.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from pseudocot.cli import cli
from pseudocot.config import load_config
from pseudocot.errors import ConfigError, DataError, ModelError, PseudocotError, StageError


def one_line_error(args: list[str], *contains: str, progress: bool = False) -> str:
    """Run the command in-process; it must fail with exactly one `error:` line, its last, and no
    traceback (with `progress`, the run's progress lines may come before it)."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), f"not a user error: {result.exception!r}"
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.output, result.output
    assert progress or len(lines) == 1, result.output
    for text in contains:
        assert text in errors[0], errors[0]
    return errors[0]


def test_unknown_router_feature_is_one_line(tmp_path):
    # Was a ValueError from router/features.py once the stage ran; now the config refuses it at load.
    line = one_line_error(["router", "--config", "smoke", f"run.out_dir={tmp_path}", "router.features=[hidden, foo]"],
                          "override 'router.features=[hidden, foo]'", "router.features.1", "'logprobs'")
    assert "foo" in line


def test_bad_router_objective_is_one_line(tmp_path):
    one_line_error(["router", "--config", "smoke", f"run.out_dir={tmp_path}", "router.objective=fastest"],
                   "router.objective", "'penalty', 'call_rate', 'flops'")


def test_router_policy_raises_a_user_error_for_a_bad_objective():
    # router/policy.py raised a bare ValueError, a traceback for anyone calling it with a bad objective.
    from pseudocot.router.policy import choose_threshold, curve

    correct = np.array([[False, True], [True, True]])
    points = curve(correct, np.array([1, 1]), np.array([[0.5], [0.2]]))
    with pytest.raises(ConfigError, match="router.objective"):
        choose_threshold(points, "fastest", 0.05, 0.5)


def test_too_small_tokenizer_vocabulary_is_one_line(tmp_path):
    # Was a ValueError from models/tokenizer.py after the data had been written.
    one_line_error(["data", "--config", "smoke", f"run.out_dir={tmp_path}", "tokenizer.vocab_size=100"],
                   "tokenizer.vocab_size", "at least 263")
    assert not (tmp_path / "smoke" / "data").exists()  # refused before anything was written


def test_unknown_tiny_preset_is_one_line(tmp_path):
    # Was a ValueError from models/tiny.py when the model was built.
    one_line_error(["finetune", "--config", "smoke", f"run.out_dir={tmp_path}", "base.model.preset=tiny-q"],
                   "base.model.preset", "'tiny-xs'")


def test_failed_base_process_is_one_line(tmp_path, monkeypatch):
    # Was a RuntimeError from run.py when the base model's own process failed.
    from pseudocot.stages import run as run_stage

    class Failed:
        def wait(self):
            return 3

        def poll(self):
            return 3

    monkeypatch.setattr(run_stage, "_runner", lambda name: (lambda cfg: None))
    monkeypatch.setattr(run_stage, "_subprocess", lambda layout, name: Failed())
    line = one_line_error(["run", "smoke", f"run.out_dir={tmp_path}", "run.parallel_stages=true"],
                          "the base stage failed", "exit code 3", "base.log", progress=True)
    assert str(tmp_path) in line


def test_a_real_failure_prints_no_traceback(tmp_path):
    """The whole command as a user runs it: stderr is the one line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "pseudocot", "finetune", "--config", "smoke",
                           f"run.out_dir={tmp_path}", "base.model.preset=tiny-q"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


# -------------------------------------------------------------------------- error kinds match causes


def test_every_user_error_shares_one_base():
    for kind in (ConfigError, DataError, ModelError, StageError):
        assert issubclass(kind, PseudocotError)
    from pseudocot.errors import EndpointError

    assert issubclass(EndpointError, PseudocotError)


def test_distillation_config_mistakes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="two stages named 'a'"):
        load_config("smoke", [f"run.out_dir={tmp_path}", "distill.stages.0.name=a", "distill.stages.1.name=a"])
    with pytest.raises(ConfigError, match="distill.teacher.preset"):
        load_config("smoke", [f"run.out_dir={tmp_path}", "distill.teacher.preset=tiny-xs"])
    with pytest.raises(ConfigError, match="needs a pretrained student.path"):
        load_config("smoke", [f"run.out_dir={tmp_path}", "distill.stages.0.method=lora"])


def test_a_missing_model_is_a_model_error(tmp_path):
    from pseudocot.pipeline import load_pipeline

    cfg = load_config("smoke", [f"run.out_dir={tmp_path}"])
    with pytest.raises(ModelError, match="no base model here"):
        load_pipeline(cfg, mode="never")
    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", "distill.stages=[]"])
    (tmp_path / "smoke" / "base").mkdir(parents=True)
    (tmp_path / "smoke" / "base" / "config.json").write_text("{}")
    with pytest.raises(ModelError):
        load_pipeline(cfg, mode="never")  # a config.json but no weights: the loader's one sentence


def test_pipeline_without_ttm_is_a_config_error(tmp_path, trained_tiny):
    from pseudocot.config import PipelineConfig
    from pseudocot.generate.hf import HFGenerator
    from pseudocot.pipeline import Pipeline

    model, tok = trained_tiny
    with pytest.raises(ConfigError, match="needs a Tiny Thought Model"):
        Pipeline(HFGenerator(model, tok), None, PipelineConfig(mode="always"))


def test_bounds_are_checked_in_python_too():
    from pseudocot.config import ArithConfig, PipelineConfig

    with pytest.raises(ConfigError, match="max_thoughts"):
        PipelineConfig(max_thoughts=-1)
    with pytest.raises(ConfigError, match="max_value"):
        ArithConfig(max_operand=10, max_value=12)


def test_mistakes_found_before_anything_trains(tmp_path):
    """A misspelt task, a device that does not exist and a template field that does not exist stop
    the run at once, naming the key, instead of after the training stages."""
    one_line_error(["run", "smoke", f"run.out_dir={tmp_path}", "eval.tasks=[{name: arithh}]"],
                   "eval.tasks.0", "unknown task 'arithh'")
    one_line_error(["run", "smoke", f"run.out_dir={tmp_path}", "run.device=gpu"], "run.device", "cuda:N")
    one_line_error(["run", "smoke", f"run.out_dir={tmp_path}", "pipeline.base_prompt='Q: {questoin}'"],
                   "pipeline.base_prompt", "questoin", "{question}")
    assert not (tmp_path / "smoke" / "data").exists()
