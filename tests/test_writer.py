"""The question writer trained in the run (`pseudocot synth writer`, the `writer` stage) and the arith stories it
learns from: stories and their questions are consistent, none is a document, the writer is saved with its own
tokenizer and then is the questions stage's teacher; the shipped stories and the `docs` preset load."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pseudocot.config import ArithConfig, load_config
from pseudocot.data import arith
from pseudocot.data.documents import read_documents
from pseudocot.errors import DataError
from pseudocot.freshness import questions_generation_key, writer_key
from pseudocot.layout import RunLayout
from pseudocot.stages import questions as questions_stage
from pseudocot.stages import writer as writer_stage

STORIES = ArithConfig(max_steps=3, step_weights=[0.2, 0.3, 0.5], max_operand=9, max_value=50, operations=["+", "-"])


def test_a_story_answers_one_question_after_each_step_and_problems_are_unchanged():
    rng = random.Random(3)
    text, items = arith.story(rng, 3, STORIES)
    assert len(items) == 3 and text.count(".") == 4  # the start and three steps, no question
    for j, item in enumerate(items, 1):
        story_part, question = item["question"].rsplit(". ", 1)
        assert text.startswith(story_part) and question.endswith("?")
        assert len(item["reasoning"]) == j and item["reasoning"][:j - 1] == items[j - 2]["reasoning"] if j > 1 else True
        a, op, b, _, c = item["reasoning"][-1].split()
        assert arith.apply_op(int(a), op, int(b)) == int(c) == int(item["answer"])
    # the problems are drawn as before the stories existed (the demo's data must not move): the same random calls
    rng1, rng2 = random.Random(5), random.Random(5)
    question, lines, answer, _ = arith.make_problem(rng1, 2, STORIES)
    parts, lines2, answer2, _ = arith.problem_parts(rng2, 2, STORIES)
    assert (question, lines, answer) == (" ".join(parts), lines2, answer2) and rng1.random() == rng2.random()


def test_stories_are_unique_and_none_is_excluded():
    first = arith.stories(200, STORIES, seed=1)
    texts = [t for t, _ in first]
    assert len(set(texts)) == 200
    again = arith.stories(200, STORIES, seed=1, exclude=texts[:50])
    assert not set(texts[:50]) & {t for t, _ in again}


def test_data_arith_stories_writes_documents_and_their_questions(tmp_path):
    from click.testing import CliRunner

    from pseudocot.cli import cli

    out = tmp_path / "s.jsonl"
    result = CliRunner().invoke(cli, ["data", "arith", "--stories", "--n", "20", "--max-steps", "3", "--step-weights", "0.2,0.3,0.5",
                                      "--operations", "+,-", "--max-operand", "9", "--max-value", "50", "--seed", "7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = [json.loads(line) for line in (tmp_path / "s.items.jsonl").read_text().splitlines()]
    assert [d["text"] for d in docs] == [p["text"] for p in pairs] == [t for t, _ in arith.stories(20, STORIES, seed=7)]
    bad = CliRunner().invoke(cli, ["data", "arith", "--stories", "--n", "2", "--operations", "+,%", "--out", str(out)])
    assert bad.exit_code == 1 and "operations" in bad.output


def test_the_shipped_stories_are_the_documents_of_the_docs_preset():
    cfg = load_config("docs")
    layout = RunLayout.of(cfg)
    docs = read_documents(layout.document_paths, warn=None)
    assert len(docs.documents) == 3000 and len({d.text for d in docs.documents}) == 3000
    # written by the command in their LICENSE, with the preset's data.arith settings (what the writer's stories follow)
    assert [d.text for d in docs.documents] == [t for t, _ in arith.stories(3000, cfg.data.arith, seed=7)]
    assert cfg.writer.enabled and layout.questions_teacher.path == str(layout.writer_dir)
    assert [s.format for s in cfg.data.sources] == ["questions"]


def writer_config(tmp_path: Path, *extra: str) -> Path:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in arith.stories(4, STORIES, seed=0)))
    lines = ["extends: smoke", f"run: {{name: w, out_dir: {tmp_path}, device: cpu, threads: 1}}",
             "data: {arith: {max_steps: 3, step_weights: [0.2, 0.3, 0.5], max_operand: 9, max_value: 50, operations: ['+', '-']}}",
             "synth:", "  temperature: 0.0", "  max_new_tokens: 24", "  documents:", f"    paths: ['{docs}']",
             "    prompt: 'Questions ({k}) on: {text}'", "    chunk_tokens: 128", "    chunk_overlap: 0",
             "writer:", "  enabled: true", "  model: {preset: tiny-3xs}", "  n_train: 40", "  n_val: 8", "  vocab_size: 300",
             "  batch_size: 4", "  train: {max_steps: 3, batch_size: 8, max_length: 400, save_every_steps: 100}"]
    path = tmp_path / "w.yaml"
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def test_the_writer_learns_from_stories_that_are_not_documents_then_writes_the_questions(tmp_path):
    cfg = load_config(writer_config(tmp_path))
    layout = RunLayout.of(cfg)
    metrics = writer_stage.main(cfg)
    assert metrics["train_pairs"] == 40 and metrics["val_pairs"] == 8 and metrics["steps"] == 3 and metrics["val_loss"] > 0
    pairs = [json.loads(line) for line in layout.writer_pairs("train").read_text().splitlines()]
    documents = {d.text for d in read_documents(layout.document_paths, warn=None).documents}
    # the documents are the first stories of seed 0, which is also the writer's seed: they were left out
    assert len(pairs) == 40 and not documents & {p["text"] for p in pairs}
    chat = writer_stage.chat_of(cfg, pairs[0])
    assert chat[0] == {"role": "user", "content": f"Questions (3) on: {pairs[0]['text']}"}
    assert json.loads(chat[1]["content"]) == pairs[0]["items"][:3]
    from pseudocot.models.loading import load_tokenizer

    tok = load_tokenizer(str(layout.writer_dir))
    assert len(tok) == 300 and tok.decode(tok(chat[1]["content"])["input_ids"]) == chat[1]["content"]
    assert writer_stage.main(cfg)["skipped"]  # done under its key
    # the questions stage asks the writer (not synth.teacher) and its key follows the writer's weights
    key = questions_generation_key(cfg)
    stats = questions_stage.main(cfg)
    assert stats["teacher"] == str(layout.writer_dir) and stats["chunks"] == 4 and stats["replies"] == 4
    assert stats["items"] + stats["malformed"] >= 1  # three steps teach no JSON: its replies are read, retried, rejected
    (layout.writer_dir / "config.json").write_text((layout.writer_dir / "config.json").read_text() + " ")
    assert questions_generation_key(cfg) != key
    # what the writer learns to answer is in its key; the system's training seed is not (every seed gets the same questions)
    assert writer_key(load_config(writer_config(tmp_path), ["synth.documents.prompt='Q{k}: {text}'"])) != writer_key(cfg)
    assert writer_key(load_config(writer_config(tmp_path), ["run.seed=3"])) == writer_key(cfg)
    assert writer_key(load_config(writer_config(tmp_path), ["writer.seed=3"])) != writer_key(cfg)


def test_a_pairs_file_is_read_and_a_bad_row_named(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"text": t, "items": items} for t, items in arith.stories(12, STORIES, seed=4)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(writer_config(tmp_path), [f"writer.pairs={pairs}", "writer.n_train=10", "writer.n_val=5"])
    train, val = writer_stage.make_pairs(cfg)
    assert train == rows[:10] and val == rows[10:]
    with pytest.raises(DataError, match="12 pairs, but writer.n_train is 12"):
        writer_stage.make_pairs(load_config(writer_config(tmp_path), [f"writer.pairs={pairs}", "writer.n_train=12"]))
    pairs.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"text": "x", "items": [{"answer": 3}]}) + "\n")
    with pytest.raises(DataError, match=rf"{pairs}:2: every item needs 'question'"):
        writer_stage.make_pairs(cfg)
    with pytest.raises(DataError, match="no writer at"):
        questions_stage.main(load_config(writer_config(tmp_path), ["run.name=none"]))
