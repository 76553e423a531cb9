"""`pseudocot run`'s bookkeeping (`pseudocot.run`) with the stage functions replaced by recorders:
which stages run, which are skipped, which start from scratch and which resume."""

from __future__ import annotations

import json

import pytest

from pseudocot import run as run_mod
from pseudocot.config import load_config


@pytest.fixture
def calls(monkeypatch):
    """Every (stage, from_scratch) the run asks for; a stage named in `fail` raises instead."""
    class Record(list):
        fail: set[str]

    record = Record()
    record.fail = set()
    fail = record.fail

    def runner(name):
        def go(cfg, force):
            if name in fail:
                raise KeyboardInterrupt(f"killed during {name}")
            record.append((name, force))
            return {}
        return go

    monkeypatch.setattr(run_mod, "_runner", runner)
    return record


def _cfg(tmp_path, *overrides):
    return load_config("smoke", (f"run.out_dir={tmp_path}", "run.parallel_stages=false", *overrides))


def test_first_run_runs_every_stage_then_skips(tmp_path, calls):
    state = run_mod.main(_cfg(tmp_path), echo=lambda s: None)
    assert calls == [(s, True) for s in run_mod.STAGES]
    assert all(state[s]["finished"] == state[s]["started"] for s in run_mod.STAGES)
    assert state["wall_seconds"] >= 0
    calls.clear()
    run_mod.main(_cfg(tmp_path), echo=lambda s: None)
    assert calls == []
    log = (tmp_path / "smoke" / "run.log").read_text()
    assert "stage teacher (2/6): complete for this config, skipped" in log


def test_changed_stage_reruns_it_and_what_reads_it(tmp_path, calls):
    run_mod.main(_cfg(tmp_path), echo=lambda s: None)
    calls.clear()
    run_mod.main(_cfg(tmp_path, "base.train.max_steps=41"), echo=lambda s: None)
    assert calls == [("base", True), ("router", True), ("eval", True)]
    calls.clear()
    run_mod.main(_cfg(tmp_path, "base.train.max_steps=41", "data.arith.n_train=601"), echo=lambda s: None)
    assert [c[0] for c in calls] == list(run_mod.STAGES)


def test_killed_stage_resumes_and_done_ones_are_not_rerun(tmp_path, calls):
    calls.fail.add("distill")
    with pytest.raises(KeyboardInterrupt):
        run_mod.main(_cfg(tmp_path), echo=lambda s: None)
    assert calls == [("data", True), ("teacher", True)]
    state = json.loads((tmp_path / "smoke" / "run_state.json").read_text())
    assert state["distill"]["finished"] is None and state["distill"]["started"]
    calls.clear()
    calls.fail.clear()
    run_mod.main(_cfg(tmp_path), echo=lambda s: None)
    # distill resumes from its own checkpoints (not from scratch); data and teacher are not re-run.
    assert calls == [("distill", False), ("base", True), ("router", True), ("eval", True)]


def test_force_and_stage_selection(tmp_path, calls):
    run_mod.main(_cfg(tmp_path), stages=("data", "teacher"), echo=lambda s: None)
    assert calls == [("data", True), ("teacher", True)]
    calls.clear()
    run_mod.main(_cfg(tmp_path), force=True, stages=("teacher",), echo=lambda s: None)
    assert calls == [("teacher", True)]


def test_keys_chain_through_what_a_stage_reads(tmp_path):
    a = run_mod.stage_keys(_cfg(tmp_path))
    b = run_mod.stage_keys(_cfg(tmp_path, "teacher.train.max_steps=41"))
    assert a["data"] == b["data"] and a["base"] == b["base"]
    assert a["teacher"] != b["teacher"] and a["distill"] != b["distill"] and a["router"] != b["router"]
    c = run_mod.stage_keys(_cfg(tmp_path, "pipeline.base_prompt='Q: {question}'"))
    assert c["teacher"] == a["teacher"] and c["base"] != a["base"] and c["router"] != a["router"]


class FakeProc:
    def __init__(self, record, scratch):
        record.append(("base", scratch))

    def wait(self):
        return 0

    def poll(self):
        return 0


def test_parallel_base_starts_with_the_first_teacher_stage_to_run(tmp_path, calls, monkeypatch):
    monkeypatch.setattr(run_mod, "_subprocess", lambda cfg, name, force, log_dir: FakeProc(calls, force))
    cfg = _cfg(tmp_path, "run.parallel_stages=true")
    run_mod.main(cfg, echo=lambda s: None)
    assert calls == [("data", True), ("base", True), ("teacher", True), ("distill", True), ("router", True), ("eval", True)]
    # Killed during distillation: teacher is done, so the base starts again beside distill.
    state = json.loads((tmp_path / "smoke" / "run_state.json").read_text())
    for name in ("distill", "base", "router", "eval"):
        state[name]["finished"] = None
    (tmp_path / "smoke" / "run_state.json").write_text(json.dumps(state))
    calls.clear()
    run_mod.main(cfg, echo=lambda s: None)
    assert calls == [("base", False), ("distill", False), ("router", False), ("eval", False)]
