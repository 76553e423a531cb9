"""One freshness key per stage (`pseudocot.freshness`): config plus the content of every input,
shared by `pseudocot run` and the stage commands run alone.

The defect this guards against: `pseudocot finetune` alone hashed only its own config section, so
after new data (or a new `run.seed`) it skipped the stage, or resumed the old run's checkpoints.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from pseudocot.config import load_config
from pseudocot.freshness import (
    digest,
    file_fingerprint,
    finetune_key,
    model_fingerprint,
    pipeline_settings,
)
from pseudocot.layout import RunLayout
from pseudocot.stages.table import stage_key

FAST = ["data.arith.n_train=300", "data.arith.n_val=40", "data.arith.n_test=40",
        "base.train.max_steps=12", "base.train.save_every_steps=6", "base.train.batch_size=16"]


def smoke(tmp_path, *overrides: str):
    return load_config("smoke", (f"run.out_dir={tmp_path}", *FAST, *overrides))


@pytest.fixture
def finetuned(tmp_path):
    """A smoke run's data and base model, trained once by `pseudocot finetune`."""
    from pseudocot.stages import data, finetune

    cfg = smoke(tmp_path)
    data.main(cfg)
    first = finetune.main(cfg, "base")
    return cfg, first


def metrics(cfg) -> dict:
    return json.loads((RunLayout.of(cfg).base_dir / "metrics.json").read_text())


def test_standalone_finetune_retrains_after_the_data_changed(finetuned, tmp_path):
    from pseudocot.stages import data, finetune

    cfg, first = finetuned
    assert first["steps"] == 12 and not first.get("skipped")
    assert finetune.main(cfg, "base")["skipped"]  # nothing changed: complete, skipped
    old_key = metrics(cfg)["key"]
    # New data under the same base config: the base model must be trained again, from scratch
    # (its checkpoint-12 of the old data must not be resumed).
    changed = smoke(tmp_path, "data.arith.n_train=301")
    data.main(changed)
    again = finetune.main(changed, "base")
    assert not again.get("skipped") and again["resumed_from"] is None and again["steps"] == 12
    # The key follows the files on disk: the old config reads the new data too.
    assert metrics(changed)["key"] == finetune_key(changed, "base") == finetune_key(cfg, "base") != old_key


def test_standalone_finetune_retrains_after_the_seed_changed(finetuned, tmp_path):
    from pseudocot.stages import finetune

    cfg, first = finetuned
    reseeded = smoke(tmp_path, "run.seed=7")
    again = finetune.main(reseeded, "base")
    assert not again.get("skipped") and again["resumed_from"] is None
    assert metrics(reseeded)["key"] == finetune_key(reseeded, "base") != finetune_key(cfg, "base")


def test_a_killed_finetune_resumes_under_the_same_key(finetuned):
    from pseudocot.stages import finetune

    cfg, _ = finetuned
    base = RunLayout.of(cfg).base_dir
    (base / "metrics.json").unlink()  # as if killed after checkpoint-12, before the end
    again = finetune.main(cfg, "base")
    assert again["resumed_from"] == "checkpoint-12"


def test_run_and_the_stage_alone_share_the_key(tmp_path, monkeypatch):
    from pseudocot.stages import run

    cfg = smoke(tmp_path, "run.parallel_stages=false")
    monkeypatch.setattr(run, "_runner", lambda name: (lambda c: None))
    state = run.main(cfg, stages=("data", "base"), echo=lambda s: None)
    assert state["base"]["finished"] == finetune_key(cfg, "base") == stage_key(cfg, "base")


def test_keys_follow_content_not_modification_times(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"id": "1"}\n')
    before = file_fingerprint(f)
    later = time.time() + 100
    os.utime(f, (later, later))
    assert file_fingerprint(f) == before  # same bytes, newer time: same key
    f.write_text('{"id": "2"}\n')
    assert file_fingerprint(f) != before
    assert file_fingerprint(tmp_path / "absent.jsonl") == f"missing:{tmp_path / 'absent.jsonl'}"


def test_model_fingerprint_ignores_metrics_and_checkpoints(tmp_path):
    m = tmp_path / "model"
    (m / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"\0" * 100)
    key = model_fingerprint(m)
    (m / "metrics.json").write_text('{"train_seconds": 12.3}')
    (m / "checkpoints" / "checkpoint-5" / "x").write_text("y")
    assert model_fingerprint(m) == key
    (m / "model.safetensors").write_bytes(b"\1" * 100)
    assert model_fingerprint(m) != key


def test_an_adapter_is_fingerprinted_with_its_base(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "model.safetensors").write_bytes(b"a")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    key = model_fingerprint(adapter)
    (base / "model.safetensors").write_bytes(b"b")
    assert model_fingerprint(adapter) != key


def test_each_stage_key_moves_with_what_it_reads(tmp_path):
    from pseudocot.stages import data

    cfg = smoke(tmp_path)
    data.main(cfg)
    keys = {s: stage_key(cfg, s) for s in ("data", "teacher", "distill", "base", "router", "eval")}
    # The teacher's config: teacher and distill move, the base does not.
    other = smoke(tmp_path, "teacher.train.lr=0.01")
    assert stage_key(other, "teacher") != keys["teacher"] and stage_key(other, "base") == keys["base"]
    # A base prompt reaches the base (trained with thoughts in context), the router and eval, not the teacher.
    other = smoke(tmp_path, "pipeline.base_prompt='Q: {question}'")
    assert stage_key(other, "base") != keys["base"] and stage_key(other, "teacher") == keys["teacher"]
    assert stage_key(other, "router") != keys["router"] and stage_key(other, "eval") != keys["eval"]
    # Reusing keys/values changes no answer: no key moves. The batch size changes none either, but the
    # router collects in chunks of at least one batch, so its traces are made again.
    other = smoke(tmp_path, "pipeline.kv_reuse=false")
    assert {s: stage_key(other, s) for s in keys} == keys
    other = smoke(tmp_path, "pipeline.batch_size=512")
    assert {s for s in keys if stage_key(other, s) != keys[s]} == {"router"}
    # Sharding the training (FSDP) trains what DDP trains (test_train): how, not what, so no key moves.
    other = smoke(tmp_path, "train.fsdp=true")
    assert {s: stage_key(other, s) for s in keys} == keys
    from pseudocot.freshness import grpo_key, writer_key

    other = smoke(tmp_path, "grpo.train.fsdp=true", "writer.train.fsdp=true", "grpo.train.fsdp_cpu_offload=true")
    assert (grpo_key(other), writer_key(other)) == (grpo_key(cfg), writer_key(cfg))
    # The data files' content: every training stage moves.
    train = RunLayout.of(cfg).split("train")
    train.write_text(train.read_text() + train.read_text().splitlines(keepends=True)[0].replace('"id": "', '"id": "x'))
    moved = {s: stage_key(cfg, s) != keys[s] for s in keys}
    assert moved == {"data": False, "teacher": True, "distill": True, "base": True, "router": True, "eval": False}
    # A retrained base model (new weights) moves the router and eval.
    base = RunLayout.of(cfg).base_dir
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    assert stage_key(cfg, "router") != keys["router"] and stage_key(cfg, "eval") != keys["eval"]


def test_one_list_of_the_pipeline_settings_that_matter(tmp_path):
    p = smoke(tmp_path).pipeline
    base = pipeline_settings(p, "base")
    traces = pipeline_settings(p, "traces")
    evaluation = pipeline_settings(p, "eval")
    assert set(base) == {"base_prompt", "base_prompt_with_thoughts", "system_prompt"}
    assert set(base) < set(traces) < set(evaluation)
    assert set(evaluation) - set(traces) == {"mode", "threshold"}
    assert not {"batch_size", "kv_reuse", "base", "ttm", "router"} & set(evaluation)
    with pytest.raises(ValueError):
        pipeline_settings(p, "anything")


def test_digest_is_stable_and_order_free():
    assert digest({"x": 1, "y": [1, 2]}) == digest({"y": [1, 2], "x": 1})
    assert digest({"x": 1}) != digest({"x": 2})
    assert len(digest(load_config("demo"))) == 16


def test_the_demo_configs_keys_do_not_move_unnoticed():
    """A key that moves makes every run made before train, write or answer again. These are the demo config's keys
    (with an endpoint as synth teacher and judge, the run folder at a path that does not exist) as they have been since
    commit 809d28f; a change that means to move one updates it here and says why. (Adding `train.fsdp` once moved every
    training key unnoticed; a field that changes how a stage runs but not what it computes is `repr=False`.)"""
    import pseudocot.freshness as f

    cfg = load_config("demo", ["run.out_dir=/nonexistent/pinned", "synth.enabled=true",
                               "synth.teacher={base_url: 'http://127.0.0.1:9/v1', model: r1}",
                               "synth.judge={base_url: 'http://127.0.0.1:9/v1', model: j}"])
    keys = {"data": f.data_key(cfg), "teacher": f.finetune_key(cfg, "teacher"), "base": f.finetune_key(cfg, "base"),
            "synth candidates": f.synth_generation_key(cfg), "synth": f.synth_key(cfg), "grpo": f.grpo_key(cfg),
            "writer": f.writer_key(cfg), "questions replies": f.questions_generation_key(cfg), "router": f.router_key(cfg),
            "systems": [f.eval_system_key(cfg, s) for s in cfg.eval.systems]}
    assert keys == {"data": "cc654e68d7f9a7d7", "teacher": "37867c49bad08918", "base": "02e858901225bb14",
                    "synth candidates": "04daeacfed4b4468", "synth": "510f99c5177ebd9a", "grpo": "e4a2e11ffc7e4a96",
                    "writer": "9383229d4ec7c397", "questions replies": "7f3106002469120f", "router": "ddbd5e73cc5ca7fa",
                    "systems": ["0afecb61095eceb6", "6fb7d795b9e4eceb", "fe3943eb1498833e"]}
