"""The grpo stage on tiny models: a few steps change the TTM and write every reward's curve; a run killed
with SIGKILL resumes from its last checkpoint to the weights an unbroken run reaches; settings TRL cannot
work with stop in one line before training; and a few steps with SmolLM2 (LoRA) as the TTM."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kill_resume import kill_one_finish_other
from pseudocot.config import load_config, save_config
from pseudocot.data import arith
from pseudocot.data.jsonl import write_examples
from pseudocot.errors import ConfigError, ModelError
from pseudocot.layout import RunLayout
from pseudocot.stages import grpo

REPO = Path(__file__).resolve().parents[1]
REWARDS = "grpo.rewards={correct: 1, arithmetic: 1, follows: 0.5, format: 0.5, length: 0.1, base_correct: 1}"


@pytest.fixture(scope="module")
def models(tmp_path_factory, trained_tiny, arith_examples):
    """A TTM and a base model (both the `trained_tiny` model) and 64 questions, in a folder of their own."""
    root = tmp_path_factory.mktemp("grpo-models")
    model, tok = trained_tiny
    for name in ("ttm", "base"):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    write_examples(root / "questions.jsonl", arith_examples[:64])
    return root


def config(models: Path, out: Path, *overrides: str):
    return load_config("demo", (
        f"run.out_dir={out}", "run.name=g", "run.device=cpu", "run.threads=1", f"pipeline.ttm={models / 'ttm'}",
        f"pipeline.base={models / 'base'}", f"grpo.train_file={models / 'questions.jsonl'}", "grpo.enabled=true",
        "grpo.num_generations=4", "grpo.max_completion_length=24", "grpo.train.batch_size=8", "grpo.train.max_steps=3",
        "grpo.train.save_every_steps=1", "grpo.train.log_every_steps=1", "grpo.learning_rate=3e-3",
        "pipeline.max_thoughts=2", "pipeline.answer_max_new_tokens=12", REWARDS, *overrides))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_a_few_steps_change_the_ttm_and_log_every_reward(models, tmp_path):
    cfg = config(models, tmp_path)
    metrics = grpo.main(cfg)
    out = RunLayout.of(cfg).grpo_dir
    assert RunLayout.of(cfg).ttm == out  # the pipeline now loads the GRPO-tuned TTM
    before, after = weights(models / "ttm"), weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics["steps"] == 3 and len(metrics["curve"]) == 3
    written = json.loads((out / "metrics.json").read_text())
    assert written["curve"] == json.loads(json.dumps(metrics["curve"]))
    for name in ("correct", "arithmetic", "follows", "format", "length", "base_correct"):
        assert f"rewards/{name}/mean" in written["curve"][0], name
    step = written["curve"][-1]
    assert 0 <= step["frac_reward_zero_std"] <= 1 and 0 <= step["base_correct/without_thoughts"] <= 1
    assert "rewards/base_correct/zero_spread_groups" in step
    # complete under this key: a second call is skipped
    assert grpo.main(cfg)["skipped"] is True


def test_target_base_tunes_the_base_model_the_pipeline_then_loads(models, tmp_path):
    cfg = config(models, tmp_path, "grpo.target=base", "grpo.rewards={correct: 1, format: 0.5, length: 0.1}",
                 "grpo.train.max_steps=2")
    metrics = grpo.main(cfg)
    layout = RunLayout.of(cfg)
    assert metrics["target"] == "base" and metrics["start"] == str(models / "base")
    assert layout.base == layout.grpo_dir and layout.ttm == models / "ttm"
    assert any(not torch.equal(a, b) for a, b in zip(weights(models / "base").values(), weights(layout.grpo_dir).values()))
    assert {"rewards/correct/mean", "rewards/format/mean", "rewards/length/mean"} <= set(metrics["curve"][-1])


@pytest.mark.parametrize("overrides, error, message", [
    (("grpo.trl={nonsense: 1}",), ConfigError, "grpo.trl has 'nonsense', which is not a field of trl.GRPOConfig"),
    (("grpo.trl={beta: 0.1}",), ConfigError, "grpo.trl sets 'beta', which pseudocot sets from grpo's own keys"),
    (("grpo.trl={per_device_train_batch_size: 3}",), ConfigError, "grpo.trl sets 'per_device_train_batch_size'"),
    (("grpo.trl={steps_per_generation: 2}",), ConfigError, "grpo.trl sets 'steps_per_generation'"),
    (("pipeline.ttm_prompt={question} after {answer!s}",), ConfigError, "uses {answer} or {thoughts}"),
    (("pipeline.ttm_continues_thoughts=false",), ConfigError, "ttm_continues_thoughts is false"),
    (("pipeline.thought_stop=[.]",), ConfigError, "pipeline.thought_stop is not"),
    (("grpo.method=lora", "grpo.lora.target_modules=[nope]"), ModelError, "lora.target_modules names 'nope'"),
    (("grpo.extraction=nope",), ConfigError, "task 'arith' has no extraction 'nope'"),
    (("grpo.rewards={mypkg.missing:fn: 1}",), ConfigError, "reward 'mypkg.missing:fn' cannot be imported"),
    (("grpo.task={name: arith, loglikelihood: true}",), ConfigError, "scored by option log-likelihood"),
])
def test_settings_that_cannot_work_stop_before_training(models, tmp_path, overrides, error, message):
    """Each stops in one sentence before any training: most when the config loads or the run starts
    (`pseudocot run` checks them first), the rest when the stage starts."""
    with pytest.raises(error, match=re.escape(message)):
        cfg = config(models, tmp_path, *overrides)
        grpo.main(cfg)
    assert not (tmp_path / "g" / "grpo" / "checkpoints").exists()


def test_a_ttm_prompt_with_literal_braces_is_fine(models, tmp_path):
    assert config(models, tmp_path, "pipeline.ttm_prompt=Solve {{answer}} - {question}").grpo.enabled


def test_the_cli_stops_a_trl_setting_that_cannot_work_in_one_line(models, tmp_path):
    """A generation batch that does not hold whole groups is refused when the config loads, in one line."""
    cfg_file = tmp_path / "c.yaml"
    save_config(config(models, tmp_path), cfg_file)
    run = subprocess.run([sys.executable, "-m", "pseudocot", "grpo", "--config", str(cfg_file), "grpo.num_generations=3"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "grpo.num_generations' is 3, which does not divide" in lines[0], run.stderr


# --------------------------------------------------------------------------------------------
# Resume after SIGKILL
# --------------------------------------------------------------------------------------------

STEPS = 12


def test_grpo_resumes_after_sigkill_to_the_same_weights(models, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    files = {}
    for name in ("killed", "unbroken"):
        files[name] = tmp_path / f"{name}.yaml"
        save_config(config(models, tmp_path / name, f"grpo.train.max_steps={STEPS}"), files[name])
    command = [sys.executable, "-m", "pseudocot", "grpo", "--config"]
    out = {name: tmp_path / name / "g" / "grpo" for name in files}
    first = out["killed"] / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    kill_one_finish_other(command + [str(files["killed"])], command + [str(files["unbroken"])], first, 2, tmp_path / "logs", REPO, env)
    assert not (out["killed"] / "metrics.json").exists(), "finished before the kill"
    again = subprocess.run(command + [str(files["killed"])], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    metrics = json.loads((out["killed"] / "metrics.json").read_text())
    resumed = int(metrics["resumed_from"].removeprefix("checkpoint-"))
    assert 2 <= resumed < STEPS and metrics["steps"] == STEPS
    assert [s["step"] for s in metrics["curve"]] == list(range(1, STEPS + 1))  # the whole curve, the killed run's steps too
    killed, unbroken_w = weights(out["killed"]), weights(out["unbroken"])
    for k in unbroken_w:
        torch.testing.assert_close(killed[k], unbroken_w[k], rtol=0, atol=1e-6, msg=k)


# --------------------------------------------------------------------------------------------
# A real checkpoint
# --------------------------------------------------------------------------------------------


def digit_share(prompts, completions, **_):
    """A user's own reward (found by dotted path): the share of digits in the text. Unlike the built-in rewards
    it differs between an untuned model's samples, so the few steps below have a gradient."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def test_a_few_grpo_steps_with_smollm2_as_the_ttm(smollm2_dir, tmp_path, arith_examples):
    """SmolLM2 (ChatML, pad = end of turn, 49k vocabulary) as TTM and base, LoRA on its real module names."""
    write_examples(tmp_path / "q.jsonl", arith.generate(8, arith.ArithConfig(max_steps=1), seed=1, split="train"))
    cfg = load_config("demo", (
        f"run.out_dir={tmp_path}", "run.name=s", "run.device=cpu", f"pipeline.ttm={smollm2_dir}", f"pipeline.base={smollm2_dir}",
        f"grpo.train_file={tmp_path / 'q.jsonl'}", "grpo.enabled=true", "grpo.method=lora", "grpo.lora.r=4", "grpo.lora.alpha=8",
        "grpo.lora.target_modules=[q_proj, v_proj]", "grpo.num_generations=2", "grpo.max_completion_length=16",
        "grpo.train.batch_size=4", "grpo.train.max_steps=2", "grpo.train.save_every_steps=1", "grpo.train.log_every_steps=1",
        "grpo.learning_rate=1e-3", "grpo.rewards={base_correct: 1, format: 1, test_grpo:digit_share: 1}", "pipeline.max_thoughts=2",
        "pipeline.answer_max_new_tokens=8", "pipeline.batch_size=4"))
    metrics = grpo.main(cfg)
    out = RunLayout.of(cfg).grpo_dir
    assert (out / "adapter_config.json").is_file() and metrics["steps"] == 2
    assert {"rewards/base_correct/mean", "rewards/format/mean", "rewards/test_grpo.digit_share/mean"} <= set(metrics["curve"][-1])
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    from pseudocot.models.lora import load_trained

    assert load_trained(out, device="cpu").config.vocab_size == 49152  # loads as the pipeline loads it
