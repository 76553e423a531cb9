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
             "  batch_size: 4", "  train: {max_steps: 3, batch_size: 8, max_length: 640, save_every_steps: 100}"]
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
    import shutil

    moved = load_config(writer_config(tmp_path), [f"run.out_dir={tmp_path / 'moved'}"])
    shutil.copytree(layout.writer_dir, RunLayout.of(moved).writer_dir)
    assert questions_generation_key(moved) == key  # the same writer in another run folder: the same replies
    (layout.writer_dir / "config.json").write_text((layout.writer_dir / "config.json").read_text() + " ")
    assert questions_generation_key(cfg) != key
    # what the writer learns to answer is in its key; the system's training seed is not (every seed gets the same questions)
    assert writer_key(load_config(writer_config(tmp_path), ["synth.documents.prompt='Q{k}: {text}'"])) != writer_key(cfg)
    assert writer_key(load_config(writer_config(tmp_path), ["run.seed=3"])) == writer_key(cfg)
    assert writer_key(load_config(writer_config(tmp_path), ["writer.seed=3"])) != writer_key(cfg)
    # the tokenizer a preset writer trains, and the story settings, are in it; arith settings stories do not read are not
    assert writer_key(load_config(writer_config(tmp_path), ["tokenizer.min_frequency=5"])) != writer_key(cfg)
    assert writer_key(load_config(writer_config(tmp_path), ["data.arith.max_operand=8"])) != writer_key(cfg)
    assert writer_key(load_config(writer_config(tmp_path), ["data.arith.n_test=10", "data.arith.seed=3"])) == writer_key(cfg)
    # a writer trained for another config is not asked: the questions stage says to train it
    with pytest.raises(DataError, match="holds no writer trained for this config; run pseudocot synth writer"):
        questions_stage.main(load_config(writer_config(tmp_path), ["writer.seed=3"]))
    # a reply cut at max_length never closes its JSON: training on it is refused, naming the key
    with pytest.raises(DataError, match=r"longer than writer.train.max_length=64 tokens.*raise writer.train.max_length to at least"):
        writer_stage.main(load_config(writer_config(tmp_path), ["writer.train.max_length=64"]))


def test_a_pairs_file_is_read_and_a_bad_row_named(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"text": t, "items": items} for t, items in arith.stories(12, STORIES, seed=4)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(writer_config(tmp_path), [f"writer.pairs={pairs}", "writer.n_train=10", "writer.n_val=5"])
    train, val = writer_stage.make_pairs(cfg)
    assert train == rows[:10] and val == rows[10:]
    with pytest.raises(DataError, match="12 pairs, but writer.n_train is 12"):
        writer_stage.make_pairs(load_config(writer_config(tmp_path), [f"writer.pairs={pairs}", "writer.n_train=12"]))
    for bad in ({"text": "x", "items": [{"answer": 3}]}, {"text": "x", "items": [{"question": "How many?", "answer": ""}]},
                {"text": "x"}, [1, 2]):
        pairs.write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=rf"{pairs}:2: .*; fix the line"):
            writer_stage.make_pairs(cfg)
    with pytest.raises(DataError, match="holds no writer trained for this config"):
        questions_stage.main(load_config(writer_config(tmp_path), ["run.name=none"]))


def test_the_report_says_where_the_questions_came_from_and_what_each_check_rejected(tmp_path):
    from pseudocot.evaluate.report import _questions_section
    from pseudocot.stages.eval import questions_summary

    cfg = load_config(writer_config(tmp_path), ["data.sources=[{name: docs, format: questions}]"])
    assert questions_summary(cfg) is None  # no questions stage has run
    assert questions_summary(load_config(writer_config(tmp_path))) is None  # the data does not read them
    stats = {"key": "k", "teacher": "runs/docs/writer", "documents": 3000, "chunks": 3000, "malformed": 0, "items": 6881,
             "kept": 6643, "keep_rate": 0.9654, "rejected": {"arithmetic:false": 205, "duplicate:near": 25, "grounded:absent": 2},
             "rejected_by_check": {"arithmetic": 205, "duplicate": 25, "grounded": 2},
             "splits": {"train": {"questions": 4648, "documents": 2093}, "test": {"questions": 1339, "documents": 598}}}
    path = RunLayout.of(cfg).questions_file("stats.json")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stats))
    summary = questions_summary(cfg)
    assert summary is not None and summary["kept"] == 6643
    text = "\n".join(_questions_section(summary))
    assert "from 3000 documents (3000 chunks): 6881 items, of which the checks kept 6643 (96.5%)" in text
    assert "| arithmetic | 205 | `arithmetic:false` 205 |" in text and "test 1339 questions of 598 documents" in text


def test_the_truth_benchmark_tells_gold_items_from_wrong_and_misstated_ones():
    import importlib.util

    spec = importlib.util.spec_from_file_location("truth", Path(__file__).parents[1] / "benchmarks" / "docs_questions_truth.py")
    truth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(truth)
    text, items = arith.stories(1, STORIES, seed=11)[0]
    gold, texts = {text: items}, {"s.jsonl:1": text}
    src = f"s.jsonl:1#0-{len(text)}"
    last = items[-1]
    reworded = last["question"].rsplit(". ", 1)[0] + ". How many are there at the end?"
    assert truth.judge({**last, "reasoning": "\n".join(last["reasoning"]), "question": reworded, "source": src}, texts, gold) == "gold"
    assert truth.judge({**last, "reasoning": "1 + 1 = 2", "source": src}, texts, gold) == "right answer, other reasoning"
    assert truth.judge({**last, "answer": str(int(last["answer"]) + 1), "source": src}, texts, gold) == "wrong answer"
    assert truth.judge({**last, "question": "Somebody has 99 pens. How many?", "source": src}, texts, gold) == "does not restate"


def test_run_on_questions_from_stories_end_to_end_with_the_report_section(tmp_path):
    """`pseudocot run` at smoke size on questions an endpoint writes from 150 stories (each reply the generator's own
    items, one in ten with a false step): questions -> data -> ... -> eval, the report saying what the checks kept."""
    import os
    import subprocess
    import sys

    from test_synth_stage import fake_teacher_module

    made = arith.stories(150, STORIES, seed=21)
    by_text = dict(made)

    def answer(text: str, seed: int | None, temperature: float | None) -> str:
        story = text.split("on: ", 1)[1]
        items = [dict(it) for it in by_text[story]]
        if sum(map(ord, story)) % 10 == 0:  # a writer's slip: a false last step
            items[-1] = {**items[-1], "reasoning": [*items[-1]["reasoning"][:-1], "1 + 1 = 3"]}
        return json.dumps(items)

    docs = tmp_path / "stories.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in made))
    with fake_teacher_module().FakeTeacher([], thinking="none", answerer=answer) as teacher:
        config = tmp_path / "docs-smoke.yaml"
        config.write_text("\n".join([
            "extends: smoke", f"run: {{name: ds, out_dir: {tmp_path}}}",
            "data: {sources: [{name: stories, format: questions}]}",
            "synth:", f"  teacher: {{base_url: '{teacher.url}', model: writer, concurrency: 4}}", "  temperature: 0.0",
            "  documents:", f"    paths: ['{docs}']", "    prompt: 'Questions ({k}) on: {text}'", "    chunk_tokens: 128",
            "    chunk_overlap: 0"]) + "\n")
        proc = subprocess.run([sys.executable, "-m", "pseudocot", "run", str(config)], capture_output=True, text=True,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ds"
    stats = json.loads((run / "questions" / "stats.json").read_text())
    slips = sum(sum(map(ord, t)) % 10 == 0 for t, _ in made)
    assert stats["rejected_by_check"]["arithmetic"] == slips > 0 and stats["items"] == sum(len(i) for _, i in made)
    results = json.loads((run / "eval" / "results.json").read_text())
    held_out = {json.loads(line)["question"] for line in (run / "questions" / "test.jsonl").read_text().splitlines()}
    tested = [json.loads(line)["question"] for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    assert results["questions"]["kept"] == stats["kept"] and results["tasks"]["arith"]["n_questions"] == len(tested) > 0
    assert set(tested) <= held_out  # evaluated on the questions of the held-out stories
    report = (run / "eval" / "report.md").read_text()
    assert "## Questions from documents" in report and f"| arithmetic | {slips} | `arithmetic:false` {slips} |" in report


def test_a_writer_killed_mid_training_resumes_and_ends_as_an_unbroken_one(tmp_path):
    import os
    import sys

    import torch
    from safetensors.torch import load_file

    from kill_resume import kill_one_finish_other

    config = writer_config(tmp_path)
    steps = ["writer.train.max_steps=8", "writer.train.save_every_steps=2"]

    def command(name: str) -> list[str]:
        return [sys.executable, "-m", "pseudocot", "synth", "writer", "--config", str(config), f"run.name={name}", *steps]

    killed, unbroken = (RunLayout.of(load_config(config, [f"run.name={n}", *steps])).writer_dir for n in ("killed", "unbroken"))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    kill_one_finish_other(command("killed"), command("unbroken"), killed / "checkpoints" / "checkpoint-2" / "trainer_state.json", 2,
                          tmp_path / "logs", Path(__file__).parents[1], env)
    assert not (killed / "metrics.json").exists()
    import subprocess

    again = subprocess.run(command("killed"), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["resumed_from"] and metrics["resumed_from"].startswith("checkpoint-") and metrics["steps"] == 8
    a, b = load_file(killed / "model.safetensors"), load_file(unbroken / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert (killed / "tokenizer.json").read_bytes() == (unbroken / "tokenizer.json").read_bytes()
