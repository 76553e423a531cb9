"""`pseudocot run`'s bookkeeping (`pseudocot.stages.run`) with the stage functions replaced by recorders:
which stages run, which are skipped, which start from scratch and which resume."""

from __future__ import annotations

import json

import pytest

from pseudocot.config import load_config
from pseudocot.layout import RunLayout
from pseudocot.stages import run as run_mod
from pseudocot.stages import table
from pseudocot.stages.table import stage_key


def _fake_outputs(cfg, name):
    """What a stage writes, as a deterministic stage would: content that depends only on what it
    reads (its key), so the stages that read it see a change exactly when it was made from other inputs."""
    layout = RunLayout.of(cfg)
    made = json.dumps({"made_from": stage_key(cfg, name)})
    files = {"writer": [layout.writer_dir / "model.safetensors"],
             "questions": [layout.questions_file(f"{s}.jsonl") for s in ("train", "val", "test")],
             "data": [layout.split(s) for s in ("train", "val", "test")] + [layout.tokenizer_dir / "tokenizer.json"],
             "synth": [layout.synth_file("kept.jsonl")],
             "teacher": [layout.teacher_dir / "model.safetensors"],
             "base": [layout.base_dir / "model.safetensors"],
             "grpo": [layout.grpo_dir / "model.safetensors"],
             "distill": [folder / "model.safetensors" for _, folder in layout.distill_stages()],
             "router": [layout.router_file],
             "eval": [layout.results]}[name]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(made)


@pytest.fixture
def calls(monkeypatch):
    """Every (stage, from_scratch) the run asks for; a stage named in `fail` raises instead. Pass
    `echo=calls.echo`: from_scratch is read from the run's log line for the stage ("start" or "resume")."""
    class Record(list):
        fail: set[str]
        lines: list[str]
        existed: dict[str, bool]

        def echo(self, line: str) -> None:
            self.lines.append(line)

        def scratch(self, name: str) -> bool:
            line = next(x for x in reversed(self.lines) if f"stage {name}: " in x and x.endswith(("start", "resume")))
            return line.endswith("start")

    record = Record()
    record.fail, record.lines, record.existed = set(), [], {}
    fail = record.fail

    def runner(name):
        def go(cfg):
            if name in fail:
                raise KeyboardInterrupt(f"killed during {name}")
            record.existed[name] = any(p.exists() for p in table.stage_outputs(RunLayout.of(cfg), name))
            record.append((name, record.scratch(name)))
            _fake_outputs(cfg, name)
            return {}
        return go

    monkeypatch.setattr(run_mod, "_runner", runner)
    return record


def _cfg(tmp_path, *overrides):
    return load_config("smoke", (f"run.out_dir={tmp_path}", "run.parallel_stages=false", *overrides))


DEFAULT_STAGES = [s.name for s in table.STAGES if not s.switch]
"""Every stage but questions, synth and grpo, which run only when enabled."""


def test_first_run_runs_every_stage_then_skips(tmp_path, calls):
    state = run_mod.main(_cfg(tmp_path), echo=calls.echo)
    assert calls == [(s, True) for s in DEFAULT_STAGES]
    assert all(state[s]["finished"] == state[s]["started"] for s in DEFAULT_STAGES)
    assert state["wall_seconds"] >= 0
    calls.clear()
    run_mod.main(_cfg(tmp_path), echo=calls.echo)
    assert calls == []
    log = (tmp_path / "smoke" / "run.log").read_text()
    assert "stage teacher (2/6): complete for this config, skipped" in log


def test_changed_stage_reruns_it_and_what_reads_it(tmp_path, calls):
    run_mod.main(_cfg(tmp_path), echo=calls.echo)
    calls.clear()
    run_mod.main(_cfg(tmp_path, "base.train.max_steps=41"), echo=calls.echo)
    assert calls == [("base", True), ("router", True), ("eval", True)]
    calls.clear()
    run_mod.main(_cfg(tmp_path, "base.train.max_steps=41", "data.arith.n_train=601"), echo=calls.echo)
    assert [c[0] for c in calls] == DEFAULT_STAGES


def test_synth_runs_after_data_when_enabled_and_the_teacher_chain_reads_it(tmp_path, calls):
    synth = ("synth.enabled=true", f"synth.teacher.path={tmp_path / 'big-teacher'}")
    run_mod.main(_cfg(tmp_path, *synth), echo=calls.echo)
    assert [c[0] for c in calls] == ["data", "synth", "teacher", "distill", "base", "router", "eval"]
    calls.clear()
    # another kept file (synth made from other settings): the teacher and the chain train again, the base does not
    run_mod.main(_cfg(tmp_path, *synth, "synth.samples=8"), echo=calls.echo)
    assert [c[0] for c in calls] == ["synth", "teacher", "distill", "router", "eval"]


def test_questions_run_before_data_when_documents_are_set_and_a_questions_source_reads_them(tmp_path, calls):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The mill has 4 wheels.\n")
    q = (f"synth.documents.paths=[{docs}]", "synth.teacher.base_url=http://127.0.0.1:9/v1", "synth.teacher.model=m",
         "data.sources=[{name: docs, format: questions}]")
    run_mod.main(_cfg(tmp_path, *q), echo=calls.echo)
    assert [c[0] for c in calls] == ["questions", *DEFAULT_STAGES]
    assert table.get("data").reads(_cfg(tmp_path, *q)) == ("questions",)
    calls.clear()
    (docs / "a.md").write_text("The mill has 5 wheels.\n")  # another document: new questions, and every stage after
    run_mod.main(_cfg(tmp_path, *q), echo=calls.echo)
    assert [c[0] for c in calls] == ["questions", *DEFAULT_STAGES]
    calls.clear()
    # documents set but no source reads the questions: the data stage does not wait for them, nor rerun with them
    run_mod.main(_cfg(tmp_path, *q[:3]), echo=calls.echo)
    assert table.get("data").reads(_cfg(tmp_path, *q[:3])) == ()
    assert [c[0] for c in calls] == DEFAULT_STAGES


def test_the_writer_trains_before_the_questions_stage_which_reads_it(tmp_path, calls):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The mill has 4 wheels.\n")
    w = (f"synth.documents.paths=[{docs}]", "writer.enabled=true", "data.sources=[{name: docs, format: questions}]")
    run_mod.main(_cfg(tmp_path, *w), echo=calls.echo)
    assert [c[0] for c in calls] == ["writer", "questions", *DEFAULT_STAGES]
    assert table.get("questions").reads(_cfg(tmp_path, *w)) == ("writer",)
    calls.clear()
    run_mod.main(_cfg(tmp_path, *w, "writer.train.max_steps=7"), echo=calls.echo)  # another writer: everything after it
    assert [c[0] for c in calls] == ["writer", "questions", *DEFAULT_STAGES]
    calls.clear()
    # how many chunks it writes for at once: not the writer, but its replies (a padded batch may differ in the last bits)
    run_mod.main(_cfg(tmp_path, *w, "writer.train.max_steps=7", "writer.batch_size=8"), echo=calls.echo)
    assert [c[0] for c in calls] == ["questions", *DEFAULT_STAGES]


def test_grpo_runs_after_the_base_when_enabled_and_the_router_reads_its_ttm(tmp_path, calls):
    run_mod.main(_cfg(tmp_path, "grpo.enabled=true"), echo=calls.echo)
    assert [c[0] for c in calls] == ["data", "teacher", "distill", "base", "grpo", "router", "eval"]
    layout = RunLayout.of(_cfg(tmp_path, "grpo.enabled=true"))
    assert layout.ttm == layout.grpo_dir and layout.grpo_start == layout.distill_stages()[-1][1]
    calls.clear()
    # other rewards: GRPO trains again, and the router and evaluation follow its new TTM; nothing before it reruns
    run_mod.main(_cfg(tmp_path, "grpo.enabled=true", "grpo.rewards={correct: 1}"), echo=calls.echo)
    assert [c[0] for c in calls] == ["grpo", "router", "eval"]
    calls.clear()
    # grpo off again: the router and evaluation go back to the distilled TTM
    run_mod.main(_cfg(tmp_path), echo=calls.echo)
    assert [c[0] for c in calls] == ["router", "eval"]


def test_killed_stage_resumes_and_done_ones_are_not_rerun(tmp_path, calls):
    calls.fail.add("distill")
    with pytest.raises(KeyboardInterrupt):
        run_mod.main(_cfg(tmp_path), echo=calls.echo)
    assert calls == [("data", True), ("teacher", True)]
    state = json.loads((tmp_path / "smoke" / "run_state.json").read_text())
    assert state["distill"]["finished"] is None and state["distill"]["started"]
    calls.clear()
    calls.fail.clear()
    run_mod.main(_cfg(tmp_path), echo=calls.echo)
    # distill resumes from its own checkpoints (not from scratch); data and teacher are not re-run.
    assert calls == [("distill", False), ("base", True), ("router", True), ("eval", True)]


def test_force_and_stage_selection(tmp_path, calls):
    run_mod.main(_cfg(tmp_path), stages=("data", "teacher"), echo=calls.echo)
    assert calls == [("data", True), ("teacher", True)]
    calls.clear()
    run_mod.main(_cfg(tmp_path), force=True, stages=("teacher",), echo=calls.echo)
    assert calls == [("teacher", True)]
    assert calls.existed["teacher"] is False  # --force removed the stage's outputs before it ran again


def test_keys_chain_through_what_a_stage_reads(tmp_path):
    def keys(cfg):
        return {name: stage_key(cfg, name) for name in table.NAMES}

    cfg = _cfg(tmp_path)
    a = keys(cfg)
    b = keys(_cfg(tmp_path, "teacher.train.max_steps=41"))
    assert a["data"] == b["data"] and a["base"] == b["base"]
    assert a["teacher"] != b["teacher"]
    # Later stages read the teacher's output, not its config: their keys change with its content.
    assert a["distill"] == b["distill"]
    teacher = RunLayout.of(cfg).teacher_dir
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"weights of another teacher")
    t = keys(cfg)
    assert t["teacher"] == a["teacher"] and t["distill"] != a["distill"] and t["base"] == a["base"]
    c = keys(_cfg(tmp_path, "pipeline.base_prompt='Q: {question}'"))
    assert c["teacher"] == t["teacher"] and c["base"] != t["base"] and c["router"] != t["router"]
    # New data: every stage that trains or answers on it.
    split = RunLayout.of(cfg).split("train")
    split.parent.mkdir(parents=True)
    split.write_text("{}\n")
    d = keys(cfg)
    assert d["data"] == t["data"] and all(d[s] != t[s] for s in ("teacher", "base", "distill", "router"))


class FakeProc:
    """The base model's process: records itself and writes its output at once."""

    def __init__(self, record, cfg):
        record.append(("base", record.scratch("base")))
        _fake_outputs(cfg, "base")

    def wait(self):
        return 0

    def poll(self):
        return 0


def test_parallel_base_starts_with_the_first_teacher_stage_to_run(tmp_path, calls, monkeypatch):
    cfg = _cfg(tmp_path, "run.parallel_stages=true")
    monkeypatch.setattr(run_mod, "_subprocess", lambda layout, name: FakeProc(calls, layout.cfg))
    run_mod.main(cfg, echo=calls.echo)
    assert calls == [("data", True), ("base", True), ("teacher", True), ("distill", True), ("router", True), ("eval", True)]
    # Killed during distillation: teacher is done, so the base starts again beside distill.
    state = json.loads((tmp_path / "smoke" / "run_state.json").read_text())
    for name in ("distill", "base", "router", "eval"):
        state[name]["finished"] = None
    (tmp_path / "smoke" / "run_state.json").write_text(json.dumps(state))
    calls.clear()
    run_mod.main(cfg, echo=calls.echo)
    assert calls == [("base", False), ("distill", False), ("router", False), ("eval", False)]


class LateProc:
    """The base model's process, whose new weights exist only once it has finished (at `wait`)."""

    def __init__(self, record, cfg):
        record.append(("base", record.scratch("base")))
        self.cfg = cfg

    def wait(self):
        _fake_outputs(self.cfg, "base")
        return 0

    def poll(self):
        return 0


def test_router_and_eval_wait_for_the_base_before_their_keys(tmp_path, calls, monkeypatch):
    """The router's and evaluation's keys read the base model: with the base training beside the
    teacher chain, they are computed after it has finished, so a new base is never judged by the
    old one's fingerprint (here the chain runs again but leaves the TTM as it was)."""
    cfg = _cfg(tmp_path, "run.parallel_stages=true")
    monkeypatch.setattr(run_mod, "_subprocess", lambda layout, name: LateProc(calls, layout.cfg))
    run_mod.main(cfg, echo=calls.echo)
    calls.clear()
    ttm = RunLayout.of(cfg).ttm / "model.safetensors"
    before = ttm.read_bytes()
    # A new base config, and a distill change that retrains but gives the same TTM (the fake distill
    # writes content from its key: put the old bytes back as it finishes).
    real = run_mod._runner

    def runner(name):
        go = real(name)
        return (lambda c: (go(c), ttm.write_bytes(before))) if name == "distill" else go

    monkeypatch.setattr(run_mod, "_runner", runner)
    run_mod.main(_cfg(tmp_path, "run.parallel_stages=true", "base.train.max_steps=41", "distill.ce_only_baseline=true"),
                 echo=calls.echo)
    assert [c[0] for c in calls] == ["base", "distill", "router", "eval"]


def test_a_base_that_reads_the_ttms_thoughts_trains_after_the_chain_and_follows_the_ttm(tmp_path, calls, monkeypatch):
    """base.thoughts_from: mix reads the Tiny Thought Model: it never starts beside the chain, it runs after
    distill, and a new TTM trains it again (and what reads it); with gold it goes back beside the chain."""
    cfg = _cfg(tmp_path, "run.parallel_stages=true", "base.thoughts_from=mix")
    beside = []
    monkeypatch.setattr(run_mod, "_subprocess", lambda layout, stage: beside.append(stage) or FakeProc(calls, layout.cfg))
    run_mod.main(cfg, echo=calls.echo)
    assert beside == []
    assert [c[0] for c in calls] == ["data", "teacher", "distill", "base", "router", "eval"]
    assert table.get("base").reads(cfg) == ("data", "distill")
    calls.clear()
    run_mod.main(_cfg(tmp_path, "run.parallel_stages=true", "base.thoughts_from=mix", "distill.stages.1.train.max_steps=21"),
                 echo=calls.echo)
    assert [c[0] for c in calls] == ["distill", "base", "router", "eval"]
    calls.clear()
    run_mod.main(_cfg(tmp_path, "run.parallel_stages=true"), echo=calls.echo)  # gold: beside the chain again
    assert [s.name for s in beside] == ["base"] and table.get("base").reads(_cfg(tmp_path)) == ("data",)


def test_help_texts_and_docstrings_name_every_stage():
    """One table: the run command's --stage help and description, `pseudocot stages`, and the docstrings that list
    the stages all name every stage of it."""
    from click.testing import CliRunner

    import pseudocot.stages as stages_pkg
    from pseudocot.cli import cli

    runner = CliRunner()
    help_text = runner.invoke(cli, ["run", "--help"]).output
    listed = runner.invoke(cli, ["stages", "--config", "smoke"]).output
    for name in table.NAMES:
        assert name in help_text and f"\n{name} " in "\n" + listed
        assert name in run_mod.__doc__ and name in stages_pkg.__doc__
    assert table.chain() in " ".join(help_text.split())
    assert "turned on by synth.enabled=true" in listed and "turned on by grpo.enabled=true" in listed
    assert "turned on by synth.documents.paths (set it)" in listed
