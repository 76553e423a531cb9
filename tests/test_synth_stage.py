"""The synth stage: a local tiny teacher writes candidates, kept, rejects and stats; a run killed with
SIGKILL and started again ends with the candidates of an unbroken run, row for row; shards merged
equal one run; an endpoint that injects 429, 500, slow answers and dropped connections loses and
duplicates nothing and its retries are counted; a teacher that fails every request stops with one
line, keeping what was written; `pseudocot serve` as the teacher; `pseudocot run` with synth enabled."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kill_resume import kill_when_written
from pseudocot.config import load_config
from pseudocot.data.jsonl import read_examples
from pseudocot.errors import EndpointError
from pseudocot.layout import RunLayout
from pseudocot.stages import synth as synth_stage
from pseudocot.synth.rows import to_candidates

ROOT = Path(__file__).parents[1]


def fake_teacher_module():
    spec = importlib.util.spec_from_file_location("fake_teacher", ROOT / "benchmarks" / "fake_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synth_config(tmp_path: Path, serve_run: Path, name: str, **settings: str) -> Path:
    """A config whose synth stage solves the tiny run's training questions with its model (a local teacher);
    `settings` replace or add synth keys (YAML values)."""
    synth = {"questions": str(serve_run / "data" / "train.jsonl"), "teacher": f"{{path: {serve_run / 'base'}, batch_size: 8}}",
             "prompt": "'{question}'", "samples": "4", "temperature": "0.3", "max_new_tokens": "32", "chunk_questions": "2",
             # the fixture's tiny model gets answers right, but rarely every step
             "checks": "[format, answer]", **settings}
    lines = ["extends: smoke", f"run: {{name: {name}, out_dir: {tmp_path}, device: cpu, threads: 1}}", "synth:"]
    lines += [f"  {k}: {v}" for k, v in synth.items()]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_local_teacher_writes_candidates_kept_rejects_and_stats(tmp_path, serve_run):
    cfg = load_config(synth_config(tmp_path, serve_run, "local"))
    stats = synth_stage.main(cfg)
    layout = RunLayout.of(cfg)
    questions = read_examples(serve_run / "data" / "train.jsonl").examples
    cands = rows(layout.synth_file("candidates.jsonl"))
    assert [(r["id"], r["sample"]) for r in cands] == [(q.id, s) for q in questions for s in range(4)]
    kept = read_examples(layout.synth_file("kept.jsonl")).examples
    rejects = rows(layout.synth_file("rejects.jsonl"))
    assert len(kept) + len(rejects) == len(cands) == stats["candidates"] and stats["kept"] == len(kept)
    assert kept and rejects  # a sampled tiny teacher gets some right and some wrong
    gold = {q.id: q for q in questions}
    for ex in kept:  # kept solutions answer right, and their steps are the teacher's
        assert ex.answer == gold[ex.meta["synth"]["question_id"]].answer and ex.reasoning
    assert all(r["reasons"] for r in rejects)
    assert sum(stats["rejected"].values()) >= len(rejects)
    assert stats["generation"]["generated"] == len(cands) and stats["generation"]["requests"] == 0
    # done: a second call is a no-op; a changed check re-filters without asking the teacher again
    assert synth_stage.main(cfg)["key"] == stats["key"]
    again = synth_stage.main(load_config(synth_config(tmp_path, serve_run, "local"), ["synth.checks=[format]"]))
    assert again["generation"]["generated"] == 0 and again["generation"]["reused"] == len(cands)
    assert again["kept"] >= stats["kept"]
    assert rows(layout.synth_file("candidates.jsonl")) == cands


def _synth_process(cfg_file: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "pseudocot", "synth", "--config", str(cfg_file), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)


def test_a_run_killed_by_sigkill_ends_with_the_candidates_of_an_unbroken_run(tmp_path, serve_run):
    extra = {"samples": "8", "chunk_questions": "1"}
    whole = synth_config(tmp_path, serve_run, "whole", **extra)
    proc = _synth_process(whole)
    assert proc.wait(timeout=600) == 0, proc.stdout.read().decode()[-2000:]

    broken = synth_config(tmp_path, serve_run, "broken", **extra)
    target = RunLayout.of(load_config(broken)).synth_file("candidates.jsonl")
    # killed once 8 of 60 chunks are written, and a row the kill cut short
    written = kill_when_written(_synth_process(broken), target, 64, 300, b'{"id": "torn by the ki')
    assert 64 <= written < 480
    proc = _synth_process(broken)
    out = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, out[-2000:]
    whole_file = RunLayout.of(load_config(whole)).synth_file("candidates.jsonl")
    assert target.read_bytes() == whole_file.read_bytes()  # row for row, byte for byte
    stats = json.loads(target.with_name("stats.json").read_text())
    assert stats["generation"]["reused"] == written and stats["generation"]["generated"] == 480 - written
    assert target.with_name("kept.jsonl").read_bytes() == whole_file.with_name("kept.jsonl").read_bytes()


def test_shards_merged_equal_one_run(tmp_path, serve_run):
    one = load_config(synth_config(tmp_path, serve_run, "one"))
    synth_stage.main(one)
    sharded = synth_config(tmp_path, serve_run, "sharded")
    for i in range(3):
        synth_stage.main(load_config(sharded, [f"synth.shard={i}/3"]))
    stats = synth_stage.merge(load_config(sharded))
    a, b = RunLayout.of(one), RunLayout.of(load_config(sharded))
    assert b.synth_file("candidates.jsonl").read_bytes() == a.synth_file("candidates.jsonl").read_bytes()
    assert b.synth_file("kept.jsonl").read_bytes() == a.synth_file("kept.jsonl").read_bytes()
    assert stats["generation"]["generated"] == stats["candidates"]
    # a changed check re-filters the shards' candidates (no shard runs again), and merging again adds no row
    before = b.synth_file("candidates.jsonl").read_bytes()
    again = synth_stage.merge(load_config(sharded, ["synth.checks=[format]"]))
    assert again["candidates"] == stats["candidates"] and again["kept"] >= stats["kept"]
    assert b.synth_file("candidates.jsonl").read_bytes() == before


def test_merge_refuses_missing_shards(tmp_path, serve_run):
    cfg_file = synth_config(tmp_path, serve_run, "partial")
    synth_stage.main(load_config(cfg_file, ["synth.shard=0/2"]))
    with pytest.raises(Exception, match="shard 1/2 is not complete"):
        synth_stage.merge(load_config(cfg_file))


def endpoint_config(tmp_path: Path, serve_run: Path, name: str, url: str, *extra: str, teacher: str = "") -> Path:
    lines = [
        "extends: smoke",
        f"run: {{name: {name}, out_dir: {tmp_path}, device: cpu}}",
        "synth:",
        f"  questions: {serve_run / 'data' / 'train.jsonl'}",
        f"  teacher: {{base_url: '{url}', model: fake-r1, {teacher or 'concurrency: 6, max_retries: 4, timeout_seconds: 0.5'}}}",
        "  samples: 3",
        "  max_questions: 40",
        *extra,
    ]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_endpoint_with_faults_loses_nothing_duplicates_nothing_and_counts_retries(tmp_path, serve_run):
    fake = fake_teacher_module()
    questions = read_examples(serve_run / "data" / "train.jsonl").examples
    with fake.FakeTeacher(questions, faults="429=0.1,500=0.1,slow=0.05,drop=0.05", slow_seconds=1.0, error_rate=0.2,
                          thinking="think_tags") as server:
        cfg = load_config(endpoint_config(tmp_path, serve_run, "faults", server.url))
        stats = synth_stage.main(cfg)
        server.wait_idle()
        served = server.stats()
    layout = RunLayout.of(cfg)
    cands = rows(layout.synth_file("candidates.jsonl"))
    assert [(r["id"], r["sample"]) for r in cands] == [(q.id, s) for q in questions[:40] for s in range(3)]
    assert served["unique_served"] == 120
    faults = served["faults"]
    retries = stats["generation"]["retries"]
    assert retries.get("429", 0) == faults.get("429", 0) and retries.get("500", 0) == faults.get("500", 0)
    assert retries.get("timeout", 0) == faults.get("slow", 0) and retries.get("connection", 0) == faults.get("drop", 0)
    assert sum(faults.values()) >= 10
    assert stats["generation"]["requests"] == served["requests"]
    assert all(r["thinking"] and "<think>" not in r["completion"] for r in cands)  # thinking kept apart
    assert "arithmetic:false" in stats["rejected"]  # the planted errors are caught
    assert stats["kept"] > 0


def test_a_teacher_that_fails_every_request_stops_in_one_line_keeping_what_was_written(tmp_path, serve_run):
    fake = fake_teacher_module()
    questions = read_examples(serve_run / "data" / "train.jsonl").examples
    with fake.FakeTeacher(questions, faults="down=0.2") as server:
        url = server.url
        cfg_file = endpoint_config(tmp_path, serve_run, "down", url, teacher="concurrency: 4, max_retries: 1, timeout_seconds: 5")
        with pytest.raises(EndpointError) as err:
            synth_stage.main(load_config(cfg_file))
    message = str(err.value)
    assert "\n" not in message and "run synth again" in message and "503" in message
    target = RunLayout.of(load_config(cfg_file)).synth_file("candidates.jsonl")
    written = rows(target)
    assert 0 < len(written) < 120
    assert len({(r["id"], r["sample"]) for r in written}) == len(written)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with fake.FakeTeacher(questions, port=port) as healthy:  # the same teacher back up (same URL: same generation key)
        stats = synth_stage.main(load_config(cfg_file))
        asked = healthy.stats()["requests"]
    assert asked == 120 - len(written)  # only what was missing
    assert stats["candidates"] == 120 and stats["generation"]["stale_files"] == []
    assert {(r["id"], r["sample"]) for r in written} <= {(r["id"], r["sample"]) for r in rows(target)}


def test_pseudocot_serve_as_the_teacher(tmp_path, serve_run, live_server, monkeypatch):
    monkeypatch.setenv("SERVE_KEY", live_server.api_key)
    cfg_file = endpoint_config(tmp_path, serve_run, "served", f"{live_server.url}/v1", "  reasoning_from: thinking",
                               teacher="api_key_env: SERVE_KEY, concurrency: 8, timeout_seconds: 120")
    cfg = load_config(cfg_file, ["synth.teacher.model=pseudocot-always", "synth.max_questions=12", "synth.samples=2",
                                 "synth.prompt={question}", "synth.max_new_tokens=24"])
    stats = synth_stage.main(cfg)
    layout = RunLayout.of(cfg)
    cands = rows(layout.synth_file("candidates.jsonl"))
    assert len(cands) == 24 and stats["generation"]["requests"] >= 24
    assert all(r["thinking"] for r in cands)  # the thoughts came back as reasoning_content
    assert stats["kept"] + len(rows(layout.synth_file("rejects.jsonl"))) == 24
    # the filter reads the thoughts as the steps, then the content's answer line
    questions = read_examples(serve_run / "data" / "train.jsonl").examples
    first = to_candidates(cands[:1], questions, "thinking")[0]
    thoughts = [line for line in cands[0]["thinking"].splitlines() if line.strip() and "answer is" not in line]
    assert first.completion.splitlines()[: len(thoughts)] == thoughts  # the base's intermediate answers are not steps


def test_run_with_synth_enabled_trains_the_teacher_on_the_kept_solutions(tmp_path, serve_run):
    from pseudocot.stages import run as run_stage
    from pseudocot.stages.table import stage_key

    cfg_file = synth_config(tmp_path, serve_run, "pipeline", enabled="true", max_questions="10")
    cfg = load_config(cfg_file, ["data.arith.n_train=40", "data.arith.n_val=10", "data.arith.n_test=10"])
    layout = RunLayout.of(cfg)
    assert layout.reasoning_train(None) == layout.synth_file("kept.jsonl")
    assert RunLayout.of(load_config(cfg_file, ["synth.enabled=false"])).reasoning_train(None) == layout.split("train")
    lines = []
    state = run_stage.main(cfg, stages=("data", "synth"), echo=lines.append)
    assert state["synth"]["finished"] == stage_key(cfg, "synth")
    teacher_key = stage_key(cfg, "teacher")
    kept = layout.synth_file("kept.jsonl")
    kept.write_text(kept.read_text() + "\n")  # another kept file: the teacher and the chain must train again
    assert stage_key(cfg, "teacher") != teacher_key
    run_stage.main(cfg, stages=("data", "synth"), echo=lines.append)
    assert any("stage synth" in line and "skipped" in line for line in lines)


def _row(qid: str, sample: int, text: str = "q") -> dict:
    from pseudocot.synth.candidates import text_hash

    return {"id": qid, "sample": sample, "question": text, "question_hash": text_hash(text), "completion": f"{qid}-{sample}"}


def test_canonical_order_drops_copies_and_keeps_other_rows():
    from pseudocot.data.example import Example
    from pseudocot.synth.candidates import canonical

    qs = [Example(id="a", question="q", answer="1"), Example(id="b", question="q", answer="2")]
    rows = [_row("b", 1), _row("a", 0), _row("b", 0), _row("a", 1), _row("a", 0), _row("c", 0), _row("a", 2), _row("c", 0)]
    out = canonical(rows, qs, samples=2)
    assert [(r["id"], r["sample"]) for r in out] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0), ("a", 2)]
    assert canonical(out + out, qs, samples=2) == out  # merging twice adds nothing


def test_rows_of_other_settings_are_moved_aside_and_come_back(tmp_path):
    from pseudocot.synth.candidates import CandidateFile

    path = tmp_path / "candidates.jsonl"
    a = CandidateFile(path, "A")
    a.open()
    a.append([_row("x", 0), _row("x", 1)])
    b = CandidateFile(path, "B")
    assert b.open() == "candidates.stale-A.jsonl" and b.rows() == []
    b.append([_row("y", 0)])
    assert CandidateFile(path, "A").open() == "candidates.stale-B.jsonl"
    assert [r["id"] for r in CandidateFile(path, "A").rows()] == ["x", "x"]  # A's rows are back, not asked again
    CandidateFile(path, "A").append([_row("x", 2)])
    assert CandidateFile(path, "B").open() == "candidates.stale-A.jsonl"
    assert [r["id"] for r in CandidateFile(path, "B").rows()] == ["y"]
    assert [r["sample"] for r in CandidateFile(tmp_path / "candidates.stale-A.jsonl", "A").rows()] == [0, 1, 2]  # nothing lost
