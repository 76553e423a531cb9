"""Sequence-level distillation (`distill.stages[i].teacher_writes`): the stage's teacher writes a greedy solution to
each training question, the run's faithfulness filter keeps those it trusts, and the student learns from them. The
student may tokenize differently from the teacher when no term needs the teacher's logits; the solutions already
written are never asked for again; a teacher none of whose solutions pass stops the stage in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pseudocot.config import load_config
from pseudocot.data.jsonl import read_examples
from pseudocot.errors import DataError, ModelError
from pseudocot.layout import RunLayout, teacher_written_dir
from pseudocot.models.loading import load_tokenizer
from pseudocot.models.tiny import build_tiny_model
from pseudocot.stages import data as data_stage
from pseudocot.stages import distill as distill_stage
from pseudocot.train import rows as train_rows

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_VOCAB = 320  # the student's run tokenizer: another size than the teacher's (the fixture's), so the vocabularies differ


def config(tmp_path: Path, teacher: Path, questions: int = 12, *extra: str):
    """A smoke run whose one distillation stage is a tiny-xs student (the run's tokenizer) learning from what
    `teacher` writes for its first `questions` training questions."""
    stage = (f"{{name: seq, student: {{preset: tiny-xs}}, ce_weight: 1.0, fkl_weight: 0.0, train: {{max_steps: 2}}, "
             f"teacher_writes: {{questions: {questions}, max_new_tokens: 32, batch_size: 4}}}}")
    return load_config("smoke", [
        f"run.out_dir={tmp_path}", "run.threads=1", "data.arith.n_train=40", "data.arith.n_val=8", "data.arith.n_test=8",
        "data.arith.max_steps=2", "data.arith.step_weights=null", f"tokenizer.vocab_size={RUN_VOCAB}", "train.batch_size=4", "train.max_length=96",
        f"distill.teacher.path={teacher}", f"distill.stages=[{stage}]",
        "synth.checks=[format, answer]",  # the fixture's model gets answers right, but rarely every step
        *extra])


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture()
def teacher(serve_run) -> Path:
    """The trained tiny model of the serve fixture: it answers most arithmetic questions right."""
    return serve_run / "base"


def test_the_student_learns_from_the_kept_solutions_in_its_own_vocabulary(tmp_path, teacher, monkeypatch):
    cfg = config(tmp_path, teacher)
    data_stage.main(cfg)
    layout = RunLayout.of(cfg)
    run_tok, teacher_tok = load_tokenizer(str(layout.tokenizer_dir)), load_tokenizer(str(teacher))
    assert len(run_tok) == RUN_VOCAB != len(teacher_tok)

    seen = []
    real = train_rows.tokenize_examples

    def spy(examples, tokenizer, *a, **kw):
        seen.append(list(examples))
        return real(examples, tokenizer, *a, **kw)

    monkeypatch.setattr(distill_stage, "tokenize_examples", spy)
    summary = distill_stage.main(cfg)

    stage_dir = layout.distill_dir / "seq"
    written = teacher_written_dir(stage_dir)
    questions = read_examples(layout.split("train")).examples[:12]
    cands = lines(written / "candidates.jsonl")
    assert [(r["id"], r["sample"]) for r in cands] == [(q.id, 0) for q in questions]  # question order, one each
    kept = read_examples(written / "kept.jsonl").examples
    rejects = lines(written / "rejects.jsonl")
    stats = json.loads((written / "stats.json").read_text())
    assert kept and len(kept) + len(rejects) == 12 == stats["candidates"] and stats["kept"] == len(kept)
    gold = {q.id: q for q in questions}
    by_id = {r["id"]: r["completion"] for r in cands}
    for ex in kept:  # a kept solution answers right, and its steps are the teacher's words
        qid = ex.meta["synth"]["question_id"]
        assert ex.answer == gold[qid].answer and by_id[qid].startswith(ex.reasoning)
    assert all(r["reasons"] for r in rejects)
    # The student trained on exactly the kept solutions (train rows), then validated on the data's val split.
    assert [e.id for e in seen[0]] == [e.id for e in kept]
    assert len(seen[1]) == 8 and all("synth" not in e.meta for e in seen[1])
    assert len(load_tokenizer(str(stage_dir))) == RUN_VOCAB
    assert summary["stages"][0]["student"] == "preset:tiny-xs" and (stage_dir / "model.safetensors").is_file()
    assert stats["generation"]["generated"] == 12

    # Done under its key: nothing runs again.
    assert distill_stage.main(cfg)["stages"][0].get("skipped")


def test_written_solutions_are_never_asked_for_again(tmp_path, teacher):
    cfg = config(tmp_path, teacher, questions=8)
    data_stage.main(cfg)
    distill_stage.main(cfg)
    written = teacher_written_dir(RunLayout.of(cfg).distill_dir / "seq")
    first = lines(written / "candidates.jsonl")
    # More questions: only the new ones are written (as a stage killed after 8 would resume).
    more = config(tmp_path, teacher, questions=12)
    distill_stage.main(more)
    stats = json.loads((written / "stats.json").read_text())
    assert stats["generation"]["generated"] == 4 and stats["generation"]["reused"] == 8
    assert lines(written / "candidates.jsonl")[:8] == first
    # Another student setting retrains the student, and the teacher writes nothing.
    again = config(tmp_path, teacher, 12, "distill.stages.0.train.lr=1e-3")
    assert not distill_stage.main(again)["stages"][0].get("skipped")
    assert json.loads((written / "stats.json").read_text())["generation"]["generated"] == 0
    # Another length is another teacher setting: it writes again, and the old solutions are kept aside, not deleted.
    longer = config(tmp_path, teacher, 12, "distill.stages.0.teacher_writes.max_new_tokens=24")
    distill_stage.main(longer)
    assert json.loads((written / "stats.json").read_text())["generation"]["generated"] == 12
    stale = list(written.glob("candidates.stale-*.jsonl"))
    assert len(stale) == 1 and len(lines(stale[0])) == 12


def test_teacher_logits_across_vocabularies_are_refused_before_any_weights_load(tmp_path, teacher, monkeypatch):
    cfg = config(tmp_path, teacher, 12, "distill.stages.0.fkl_weight=0.5")
    data_stage.main(cfg)

    def forbidden(*a, **kw):
        raise AssertionError("weights loaded before the vocabulary check")

    monkeypatch.setattr(distill_stage, "load_teacher", forbidden)
    monkeypatch.setattr(distill_stage, "Teacher", forbidden)
    monkeypatch.setattr(distill_stage, "trainable_model", forbidden)
    with pytest.raises(ModelError) as err:
        distill_stage.main(cfg)
    msg = str(err.value)
    assert str(teacher) in msg and "every teacher weight and on_policy to 0" in msg and "\n" not in msg
    # Without teacher_writes the way out is named too.
    plain = config(tmp_path, teacher, 12, "distill.stages.0.teacher_writes=null")
    with pytest.raises(ModelError, match="teacher_writes"):
        distill_stage.main(plain)


def test_a_teacher_whose_solutions_all_fail_stops_in_one_sentence(tmp_path, teacher):
    cfg = config(tmp_path, teacher, 8)
    data_stage.main(cfg)
    noise = tmp_path / "untrained"
    tok = load_tokenizer(str(teacher))
    build_tiny_model("tiny-3xs", tok, seed=3).save_pretrained(noise)
    tok.save_pretrained(noise)
    bad = config(tmp_path, noise, 8)
    with pytest.raises(DataError) as err:
        distill_stage.main(bad)
    msg = str(err.value)
    written = teacher_written_dir(RunLayout.of(bad).distill_dir / "seq")
    assert str(written / "rejects.jsonl") in msg and "none of the teacher's 8 solutions" in msg and "\n" not in msg
    assert len(lines(written / "rejects.jsonl")) == 8 and not (RunLayout.of(bad).distill_dir / "seq" / "metrics.json").exists()
