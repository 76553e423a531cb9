"""Questions from documents (`pseudocot synth questions`, `pseudocot synth qfilter`): documents read and
chunked with exact spans; a fake endpoint writes items per chunk; a malformed reply is asked once more,
then rejected with its reason; each check rejects its planted case and keeps the intact one; a run killed
with SIGKILL and started again ends with the rows of an unbroken run, none twice; the kept questions
split by document and read as data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kill_resume import kill_when_written
from pseudocot.config import load_config
from pseudocot.data.documents import chunk_documents, chunk_text, read_documents, tokenizer_spans, word_spans
from pseudocot.data.jsonl import read_examples
from pseudocot.errors import ConfigError, DataError
from pseudocot.layout import RunLayout
from pseudocot.stages import questions as questions_stage
from pseudocot.synth.filter import FilterSettings, run_filter
from pseudocot.synth.grounding import leans_on_text, near_duplicates, support
from pseudocot.synth.questions import item_candidate, parse_reply, split_by_document
from pseudocot.tasks import get_task
from test_synth_stage import fake_teacher_module

ROOT = Path(__file__).parents[1]


def minimal_pdf(lines: list[str]) -> bytes:
    """A one-page PDF whose text is `lines` (Helvetica), with a correct cross-reference table."""
    ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
    for line in lines:
        ops.append("(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


STORY = ("The Harbor Bakery opened in 1998 on Mill Street. Each morning it bakes 48 loaves of rye bread and 36 "
         "loaves of white bread. On Saturdays the bakery doubles its rye bread. A loaf of rye bread costs $4.\n\n"
         "The owner, Mara Quist, trained as a baker in Lyon. She says that sourdough needs a starter kept at room "
         "temperature and fed twice a day. The bakery closes on Mondays.\n")


def write_docs(root: Path) -> Path:
    docs = root / "docs"
    (docs / "notes").mkdir(parents=True)
    (docs / "bakery.md").write_text(STORY)
    (docs / "notes" / "garden.txt").write_text("The community garden has 12 raised beds. Each bed grows 9 tomato plants. "
                                               "Volunteers water the garden every evening.\n")
    (docs / "page.html").write_text("<html><head><title>Ferry</title><style>p {color: red}</style><script>var x = 1;</script>"
                                    "</head><body><h1>Island ferry</h1><p>The ferry carries 120 passengers.</p>"
                                    "<p>It makes 6 crossings a day &amp; stops in winter.</p></body></html>")
    (docs / "library.pdf").write_bytes(minimal_pdf(["The town library lends 250 books a week.", "It is open 5 days a week."]))
    (docs / "rows.jsonl").write_text(json.dumps({"text": "The orchard has 30 apple trees and 14 pear trees."}) + "\n"
                                     + json.dumps({"title": "no text here"}) + "\n")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF at all")
    (docs / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (docs / "image.png").write_bytes(b"\x89PNG")
    return docs


def test_documents_read_each_format_and_report_the_unreadable_in_one_line(tmp_path):
    docs = write_docs(tmp_path)
    lines: list[str] = []
    found = read_documents([docs], warn=lines.append)
    names = [d.name for d in found.documents]
    assert names == ["bakery.md", "library.pdf", "notes/garden.txt", "page.html", "rows.jsonl:1"]
    html = found.text_of("page.html")
    assert "Island ferry" in html and "120 passengers" in html and "& stops" in html
    assert "color" not in html and "var x" not in html and "Ferry" not in html  # head, style and script dropped
    assert "250 books a week" in found.text_of("library.pdf")
    assert found.text_of("rows.jsonl:1") == "The orchard has 30 apple trees and 14 pear trees."
    assert {u["path"] for u in found.unreadable} == {"broken.pdf", "latin1.txt", "rows.jsonl:2"}
    assert found.skipped == 1  # image.png
    assert len(lines) == 3 and all(line.count("\n") == 0 for line in lines)
    assert any("latin1.txt" in line and "UTF-8" in line for line in lines)
    with pytest.raises(DataError, match="no such file"):
        read_documents([tmp_path / "missing"])


@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (16, 4), (40, 8), (1000, 10)])
def test_chunk_spans_are_exact_and_cover_the_text(tmp_path, max_tokens, overlap, arith_tokenizer):
    docs = read_documents([write_docs(tmp_path)], warn=None).documents
    for spans in (word_spans, tokenizer_spans(arith_tokenizer)):
        chunks = chunk_documents(docs, spans, max_tokens, overlap)
        for d in docs:
            mine = [c for c in chunks if c.document == d.name]
            assert mine
            for c in mine:
                assert d.text[c.start:c.end] == c.text  # the span is the chunk
                assert 0 < c.tokens <= max_tokens
            toks = spans(d.text)
            assert mine[0].start == toks[0][0] and mine[-1].end == toks[-1][1]  # first and last token covered
            for a, b in zip(mine, mine[1:]):
                assert a.start < b.start and not any(s >= a.end and e <= b.start for s, e in toks)  # in order, no token left out
                shared = sum(1 for s, e in toks if s >= b.start and e <= a.end)
                assert shared == overlap  # exactly `overlap` tokens shared
    with pytest.raises(DataError, match="overlap"):
        chunk_text("a b c", word_spans("a b c"), 4, 4)


def test_the_shipped_documents_read_and_chunk_exactly(arith_tokenizer):
    import pseudocot

    folder = Path(pseudocot.__file__).parent / "configs" / "data" / "docs"
    found = read_documents([folder], warn=None)
    assert len(found.documents) == 24 and not found.unreadable and found.skipped == 1  # LICENSE
    for spans in (word_spans, tokenizer_spans(arith_tokenizer)):
        for c in chunk_documents(found.documents, spans, 64, 8):
            assert found.text_of(c.document)[c.start:c.end] == c.text and c.tokens <= 64


def test_a_chunk_ends_at_a_sentence_in_its_second_half():
    text = "Alpha beta gamma delta. Epsilon zeta eta theta iota kappa. Lambda mu."
    (a, b, n), *_ = chunk_text(text, word_spans(text), 8, 0)
    assert text[a:b] == "Alpha beta gamma delta." and n == 4


def test_hidden_files_are_not_documents_and_a_jsonl_row_may_hold_any_line_separator(tmp_path):
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "a.md").write_text("old copy")
    (tmp_path / ".notes.md").write_text("hidden")
    rows = [{"text": "first\u2028still the first row\x85and this"}, {"body": "x"}, {"text": "third"}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    found = read_documents([tmp_path], warn=None)
    assert [d.name for d in found.documents] == ["r.jsonl:1", "r.jsonl:3"]
    assert found.unreadable == [{"path": "r.jsonl:2", "reason": "no text in field 'text'"}]
    assert [d.name for d in read_documents([tmp_path], "body", warn=None).documents] == ["r.jsonl:2"]


def test_parse_reply_reads_json_in_its_usual_wrappings():
    item = {"question": "How many loaves?", "answer": 84, "reasoning": ["Step 1: 48 + 36 = 84", "Final answer: 84"]}
    for text in (json.dumps([item]), f"Here you are:\n```json\n{json.dumps([item])}\n```", json.dumps({"items": [item]}),
                 json.dumps(item), f"<think>hmm</think>{json.dumps([item])}"):
        r = parse_reply(text, 3)
        assert r.error is None and r.items == [{"question": "How many loaves?", "answer": "84", "reasoning": "48 + 36 = 84"}]
    assert len(parse_reply(json.dumps([item] * 5), 3).items) == 3  # at most k
    assert parse_reply('[{"question": "x"}]', 3).error == "malformed:item: item 1 has no answer"
    decimals = parse_reply('[{"question": "How much?", "answer": "7", "reasoning": ["1. 3.5 * 2 = 7", "10.25 - 3.25 = 7"]}]', 3)
    assert decimals.items[0]["reasoning"] == "3.5 * 2 = 7\n10.25 - 3.25 = 7"  # a list label goes, a decimal stays
    assert parse_reply('[{"question": "x", "answer": "1", "reasoning": "1"}, {"answer": 2}]', 3).problems == [
        "malformed:item: item 2 has no question"]
    assert parse_reply('[{"question": "x", "ans', 3, "length").error.startswith("malformed:cut-off")
    cut = '[{"question": "How {many}?", "answer": "2", "reasoning": "1 + 1 = 2 \\" ok"}, {"question": "And the next'
    assert parse_reply(cut, 3, "length").items == [{"question": "How {many}?", "answer": "2", "reasoning": '1 + 1 = 2 " ok'}]
    assert parse_reply('{"note": "no items"}', 3).error.startswith("malformed:not-items")


# --------------------------------------------------------------------------------------------
# The checks, one planted case each.
# --------------------------------------------------------------------------------------------

CHUNK = "Each morning the bakery bakes 48 loaves of rye bread and 36 loaves of white bread."
INTACT = {"id": "a", "question": "How many loaves of bread does the bakery bake each morning?", "answer": "84",
          "reasoning": "Rye and white loaves: 48 + 36 = 84", "source": "bakery.md#0-83"}


def _check(rows: list[dict], check: str, context: str | None = CHUNK) -> dict[str, list[str]]:
    settings = FilterSettings(task=get_task("jsonl", extraction="text"))
    result = run_filter([item_candidate(r, context) for r in rows], settings, [check])
    return {c.id: [] for c in result.kept} | {c.id: r for c, r in result.rejected}


def test_grounded_rejects_an_answer_whose_numbers_are_nowhere_in_the_chunk():
    planted = {**INTACT, "id": "b", "answer": "97", "reasoning": "Rye and white loaves: 59 + 38 = 97"}
    out = _check([INTACT, planted], "grounded")
    assert out["a"] == []
    assert out["b"] and out["b"][0].startswith("grounded:")
    # a number stated in the chunk needs no arithmetic; a non-numeric answer needs its words there
    fact = {**INTACT, "id": "c", "question": "How many loaves of rye bread does the bakery bake each morning?", "answer": "48",
            "reasoning": "The bakery bakes 48 loaves of rye bread each morning."}
    wrong_fact = {**fact, "id": "d", "answer": "52", "reasoning": "The bakery bakes 52 loaves of rye bread each morning."}
    word = {**fact, "id": "e", "question": "What kind of bread does the bakery bake besides white bread?", "answer": "rye bread",
            "reasoning": "The bakery bakes rye and white loaves."}
    wrong_word = {**word, "id": "f", "answer": "sourdough baguettes"}
    out = _check([fact, wrong_fact, word, wrong_word], "grounded")
    assert out["c"] == [] and out["e"] == []
    assert out["d"][0].startswith("grounded:absent") and out["f"][0].startswith("grounded:words")
    assert _check([INTACT], "grounded", context=None)["a"][0].startswith("grounded:no-source")
    half = {**INTACT, "id": "h", "question": "What share of the loaves baked each morning are rye bread loaves?",
            "answer": "4/7", "reasoning": "48 + 36 = 84\n48 / 84 = 0.571"}
    nobody = {**word, "id": "n", "question": "Who bakes bread at the bakery on a Sunday morning?", "answer": "No one",
              "reasoning": "The bakery bakes bread each morning."}
    assert _check([half, nobody], "grounded") == {"h": [], "n": ["grounded:words: 0 of the answer's 1 content words are in the text "
                                                               "('one' is not)"]}
    # the whole item written about another text
    other = "The ferry carries 120 passengers and makes 6 crossings a day."
    assert support(other, INTACT["question"], "84", INTACT["reasoning"]).reason.startswith("grounded:topic")


def test_self_contained_rejects_a_question_that_leans_on_the_passage():
    planted = {**INTACT, "id": "b", "question": "According to the passage, how many loaves does the bakery bake each morning?"}
    out = _check([INTACT, planted], "self_contained")
    assert out["a"] == [] and out["b"] == ["self_contained:refers: the question leans on a text the reader cannot see "
                                           "('According to the passage')"]
    for q in ("What does the text above say about rye bread?", "In this section, how many loaves are baked?",
              "Based on the document, when did the bakery open?", "What is mentioned above about Mondays?"):
        assert leans_on_text(q), q
    for q in ("How many text messages did Tim send?", "Who is the author of Hamlet?", "How many loaves are baked each morning?"):
        assert leans_on_text(q) is None, q


def test_well_formed_rejects_a_statement_a_calculation_for_an_answer_and_a_looping_reasoning():
    planted = [{**INTACT, "id": "s", "question": "The bakery bakes 48 loaves of rye bread."},
               {**INTACT, "id": "c", "answer": "48 + 36 = 84"},
               {**INTACT, "id": "r", "reasoning": "48 + 36 = 84\n48 + 36 = 84"},
               {**INTACT, "id": "t", "answer": "48", "reasoning": "48 * 1 = 48"},
               {**INTACT, "id": "i", "question": "Find the number of loaves the bakery bakes each morning."}]
    planted.append({**INTACT, "id": "e", "answer": " "})
    out = _check([INTACT, *planted], "well_formed")
    assert out["a"] == [] and out["i"] == []
    assert [out[k][0].split(":")[1] for k in "scrte"] == ["not-a-question", "answer-expression", "repeated", "trivial", "no-answer"]


def test_duplicate_rejects_a_paraphrase_differing_in_case_and_punctuation_and_keeps_the_first():
    planted = {**INTACT, "id": "b", "question": "how many LOAVES of bread, does the bakery bake each morning"}
    other_number = {**INTACT, "id": "c", "question": "How many loaves of bread does the bakery bake each 2 mornings?"}
    other_noun = {**INTACT, "id": "d", "question": "How many cakes of bread does the bakery bake each morning?"}
    out = _check([INTACT, planted, other_number, other_noun], "duplicate")
    assert out["a"] == [] and out["c"] == [] and out["d"] == []
    assert out["b"] == ["duplicate:near: repeats the question of a (similarity 1.00)"]
    # a rejected first question does not shadow a good copy: duplicates are looked for among the survivors
    settings = FilterSettings(task=get_task("jsonl", extraction="text"))
    bad_first = {**INTACT, "id": "z", "answer": "97", "reasoning": "59 + 38 = 97"}
    result = run_filter([item_candidate(r, CHUNK) for r in (bad_first, {**INTACT, "id": "y"})], settings, ["grounded", "duplicate"])
    assert [c.id for c in result.kept] == ["y"]
    assert near_duplicates([("1", "A?"), ("2", "a")], 0.6) == [None, ("1", 1.0)]
    assert near_duplicates([("1", "Which shops are open on Mondays?"), ("2", "Which shops are not open on Mondays?"),
                            ("3", "How many apples does Tom have?"), ("4", "How many apples does Tom have left?")], 0.6) == [None] * 4


# --------------------------------------------------------------------------------------------
# The stage, with a fake endpoint.
# --------------------------------------------------------------------------------------------


def fake_questions(text: str, seed: int | None, temperature: float | None) -> str:
    """Items for a chunk: an intact one, one planted per check; a malformed reply for the planted documents
    (`MALFORMED-ONCE`: on the first try only, at temperature 0.2)."""
    chunk = text.split("Text:\n", 1)[-1]
    if "MALFORMED-ALWAYS" in chunk or ("MALFORMED-ONCE" in chunk and temperature == 0.2):
        return "Sorry, I would rather write a poem about bread."
    items = []
    if "Harbor Bakery" in chunk and "48 loaves" in chunk:
        items += [
            {"question": "How many loaves of bread does the Harbor Bakery bake each morning?", "answer": "84",
             "reasoning": ["The bakery bakes 48 loaves of rye bread and 36 of white bread.", "48 + 36 = 84"]},
            {"question": "According to the passage, how many loaves of rye bread does the Harbor Bakery bake on Saturdays?",
             "answer": "96", "reasoning": ["On Saturdays the rye bread doubles: 48 * 2 = 96"]},
            {"question": "How much does the Harbor Bakery earn from rye bread each morning?", "answer": "$1,512",
             "reasoning": ["A loaf of rye bread costs $27.", "56 * 27 = 1512"]},
            {"question": "how many loaves of bread does the harbor bakery bake, each morning",
             "answer": "84", "reasoning": ["48 + 36 = 84"]},
        ]
    if "Mara Quist" in chunk:
        items += [{"question": "Where did Mara Quist, the owner of the Harbor Bakery, train as a baker?", "answer": "Lyon",
                   "reasoning": "Mara Quist trained as a baker in Lyon."}]
    if not items:
        first = chunk.split(".")[0].strip()
        items = [{"question": f"What does this say: {first}?", "answer": "yes", "reasoning": [first + "."]}]
    return json.dumps(items)


def questions_config(tmp_path: Path, name: str, url: str, docs: Path, *extra: str) -> Path:
    lines = ["extends: smoke", f"run: {{name: {name}, out_dir: {tmp_path}, device: cpu, threads: 1}}", "synth:",
             f"  teacher: {{base_url: '{url}', model: fake-r1, concurrency: 2, max_retries: 3, timeout_seconds: 5}}",
             "  temperature: 0.2", "  documents:", f"    paths: ['{docs}']", "    chunk_tokens: 60", "    chunk_overlap: 0",
             "    test_documents: 0.34", "    val_documents: 0.0", "    items_per_chunk: 5"]
    lines += [f"    {e}" for e in extra]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def docs_dir(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bakery.md").write_text(STORY)
    (docs / "garden.txt").write_text("MALFORMED-ONCE The community garden has 12 raised beds. Each bed grows 9 tomato plants.\n")
    (docs / "ferry.txt").write_text("MALFORMED-ALWAYS The ferry carries 120 passengers.\n")
    (docs / "library.txt").write_text("The town library lends 250 books a week.\n")
    return docs


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_fake_endpoint_writes_items_the_checks_sort_and_the_data_stage_reads(tmp_path, docs_dir):
    with fake_teacher_module().FakeTeacher([], thinking="none", answerer=fake_questions, faults="429=0.2,500=0.1") as teacher:
        cfg = load_config(questions_config(tmp_path, "q", teacher.url, docs_dir))
        stats = questions_stage.main(cfg)
        served = teacher.stats()
    layout = RunLayout.of(cfg)
    chunks = rows(layout.questions_file("chunks.jsonl"))
    texts = {d.name: d.text for d in read_documents([docs_dir], warn=None).documents}
    assert all(texts[c["document"]][c["start"]:c["end"]] == c["text"] for c in chunks)
    assert stats["documents"] == 4 and stats["chunks"] == len(chunks) == 5  # the bakery story is two chunks
    # malformed: the garden's first reply (asked again, then read), the ferry's two replies (rejected with both reasons)
    assert stats["malformed_first"] == 2 and stats["retried"] == 2 and stats["malformed"] == 1
    rejects = rows(layout.questions_file("rejects.jsonl"))
    ferry = [r for r in rejects if r.get("document") == "ferry.txt"]
    assert len(ferry) == 1 and ferry[0]["reasons"] == ["malformed:no-json: the reply holds no JSON list of items (first try)",
                                                       "malformed:no-json: the reply holds no JSON list of items (second try)"]
    kept = read_examples(layout.questions_file("kept.jsonl")).examples
    by_question = {e.question: e for e in kept}
    assert "How many loaves of bread does the Harbor Bakery bake each morning?" in by_question
    assert "Where did Mara Quist, the owner of the Harbor Bakery, train as a baker?" in by_question
    assert any(e.meta["document"] == "garden.txt" for e in kept)  # its second reply was read
    bakery = by_question["How many loaves of bread does the Harbor Bakery bake each morning?"]
    doc, span = bakery.source.split("#")
    a, b = map(int, span.split("-"))
    assert doc == "bakery.md" and "48 loaves" in texts[doc][a:b] and bakery.reasoning.endswith("48 + 36 = 84")
    reasons = {r.get("question"): r["reasons"] for r in rejects if r.get("question")}
    assert reasons["According to the passage, how many loaves of rye bread does the Harbor Bakery bake on Saturdays?"][0].startswith(
        "self_contained:refers")
    assert reasons["How much does the Harbor Bakery earn from rye bread each morning?"][0].startswith("grounded:")
    assert reasons["how many loaves of bread does the harbor bakery bake, each morning"][0].startswith("duplicate:near")
    assert stats["rejected_by_check"] == {"duplicate": 1, "grounded": 1, "self_contained": 1}  # malformed replies: stats["malformed"]
    assert stats["kept"] == len(kept) and stats["items"] == len(kept) + stats["candidates"] - stats["kept"]
    assert served["duplicates_served"] == 0
    # split by document: no document's questions in two splits; the data stage reads them as a source
    splits = {s: read_examples(layout.questions_file(f"{s}.jsonl")).examples for s in ("train", "val", "test")}
    docs_of = {s: {e.meta["document"] for e in ex} for s, ex in splits.items()}
    assert docs_of["test"] and docs_of["train"] and not (docs_of["train"] & docs_of["test"])
    assert sum(len(v) for v in splits.values()) == len(kept)
    from pseudocot.stages import data as data_stage

    data_cfg = load_config(questions_config(tmp_path, "q", "http://127.0.0.1:9/v1", docs_dir),
                           ["data.sources=[{name: docs, format: questions}]", "data.val_fraction=0"])
    data_stage.main(data_cfg)
    tested = read_examples(layout.split("test")).examples
    assert sorted(e.question for e in tested) == sorted(e.question for e in splits["test"])
    assert {e.source for e in tested} == {"docs"} and all(e.meta["span"].startswith(e.meta["document"] + "#") for e in tested)
    # kept.jsonl is ordinary Example JSONL: a jsonl data source (and synth.questions) read it as is
    from pseudocot.data.loaders import load_file

    assert [e.question for e in load_file("jsonl", str(layout.questions_file("kept.jsonl")), {}).examples] == [e.question for e in kept]
    # done: a second call asks nothing (the endpoint is gone) and returns the same stats
    assert questions_stage.main(cfg)["key"] == stats["key"]


def test_a_teacher_that_fails_every_request_stops_in_one_line_naming_the_chunk(tmp_path, docs_dir):
    from pseudocot.errors import EndpointError

    with fake_teacher_module().FakeTeacher([], thinking="none", answerer=fake_questions, faults="down=1") as teacher:
        cfg = load_config(questions_config(tmp_path, "down", teacher.url, docs_dir, "retry_temperature: 0.7"),
                          ["synth.teacher.max_retries=0"])
        with pytest.raises(EndpointError) as e:
            questions_stage.main(cfg)
    message = str(e.value)
    assert "\n" not in message and "chunk " in message and "run synth questions again" in message and "0 new chunks" in message


def _process(cfg_file: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "pseudocot", "synth", "questions", "--config", str(cfg_file), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)


def test_a_run_killed_by_sigkill_then_run_again_gives_the_same_rows_none_twice(tmp_path):
    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(40):
        (docs / f"doc-{i:02d}.txt").write_text(f"Shop {i} sells {i + 3} lamps a day at {i + 10} dollars each. "
                                               + ("MALFORMED-ONCE " if i % 7 == 0 else "") + "It opened in spring.\n")
    with fake_teacher_module().FakeTeacher([], thinking="none", answerer=fake_questions, faults="slow=0.3", slow_seconds=0.4) as teacher:
        whole = questions_config(tmp_path, "whole", teacher.url, docs)
        proc = _process(whole)
        assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()[-2000:]
        broken = questions_config(tmp_path, "broken", teacher.url, docs)
        target = RunLayout.of(load_config(broken)).questions_file("replies.jsonl")
        written = kill_when_written(_process(broken), target, 10, 120, b'{"id": "doc-0')  # and a row the kill cut short
        assert 10 <= written < 40
        proc = _process(broken)
        out = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, out[-2000:]
    whole_layout, broken_layout = RunLayout.of(load_config(whole)), RunLayout.of(load_config(broken))
    for name in ("replies.jsonl", "retry/replies.jsonl", "kept.jsonl", "rejects.jsonl", "chunks.jsonl"):
        assert broken_layout.questions_file(name).read_bytes() == whole_layout.questions_file(name).read_bytes(), name
    replies = rows(broken_layout.questions_file("replies.jsonl"))
    assert len(replies) == len({(r["id"], r["sample"]) for r in replies}) == 40  # none twice
    stats = json.loads(broken_layout.questions_file("stats.json").read_text())
    assert stats["generation"]["reused"] == written and stats["retried"] == 6


def test_shards_merged_equal_one_run(tmp_path, docs_dir):
    with fake_teacher_module().FakeTeacher([], thinking="none", answerer=fake_questions) as teacher:
        one = load_config(questions_config(tmp_path, "one", teacher.url, docs_dir))
        questions_stage.main(one)
        sharded = questions_config(tmp_path, "sharded", teacher.url, docs_dir)
        for i in range(2):
            questions_stage.main(load_config(sharded, [f"synth.shard={i}/2", "synth.chunk_questions=2"]))
    with pytest.raises(DataError, match="not complete"):
        questions_stage.merge(load_config(sharded, ["synth.documents.chunk_tokens=70"]))
    merged = questions_stage.merge(load_config(sharded))
    a, b = RunLayout.of(one), RunLayout.of(load_config(sharded))
    for name in ("kept.jsonl", "rejects.jsonl", "train.jsonl", "test.jsonl"):
        assert a.questions_file(name).read_bytes() == b.questions_file(name).read_bytes(), name
    assert merged["kept"] == json.loads(a.questions_file("stats.json").read_text())["kept"]


def test_a_local_teacher_asks_the_same_second_tries_sharded_or_not(tmp_path, serve_run, docs_dir):
    """The demo's tiny model writes no JSON: every chunk is asked twice; shards must ask what one run asks."""
    teacher = [f"synth.teacher.path={serve_run / 'base'}", "synth.teacher.base_url=null", "synth.teacher.batch_size=4",
               "synth.max_new_tokens=12", "synth.chunk_questions=2"]
    one = load_config(questions_config(tmp_path, "local-one", "http://unused/v1", docs_dir), teacher)
    stats = questions_stage.main(one)
    assert stats["malformed_first"] == stats["retried"] == stats["chunks"] and stats["chunk_tokens_counted_by"].endswith("(the teacher's)")
    sharded = questions_config(tmp_path, "local-sharded", "http://unused/v1", docs_dir)
    for i in range(2):
        questions_stage.main(load_config(sharded, [*teacher, f"synth.shard={i}/2"]))
    questions_stage.merge(load_config(sharded, teacher))
    a, b = RunLayout.of(one), RunLayout.of(load_config(sharded, teacher))
    first = sorted(rows(a.questions_file("retry/replies.jsonl")), key=lambda r: r["id"])
    shards = sorted((r for i in range(2) for r in rows(b.questions_file("retry/replies.jsonl", (i, 2)))), key=lambda r: r["id"])
    assert [(r["id"], r["seed"], r["completion"]) for r in first] == [(r["id"], r["seed"], r["completion"]) for r in shards]
    assert a.questions_file("rejects.jsonl").read_bytes() == b.questions_file("rejects.jsonl").read_bytes()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="synth.documents.prompt"):
        load_config("smoke", ["synth.documents.prompt='{question}'"])
    with pytest.raises(ConfigError, match="synth.documents.checks"):
        load_config("smoke", ["synth.documents.checks=[grounded, typo]"])
    with pytest.raises(ConfigError, match="synth.checks.*put it in synth.documents.checks"):
        load_config("smoke", ["synth.checks=[format, grounded]"])
    with pytest.raises(ConfigError, match="synth.documents.paths is empty"):
        questions_stage.main(load_config("smoke", [f"run.out_dir={tmp_path}", "synth.teacher.base_url=http://127.0.0.1:9/v1",
                                                   "synth.teacher.model=m"]))


def test_split_by_document_keeps_a_document_in_one_split():
    from pseudocot.data.example import Example

    ex = [Example(id=f"{d}/{i}", question=f"q{d}{i}", answer="1", source=f"d{d}.md#0-5", meta={"document": f"d{d}.md"})
          for d in range(10) for i in range(3)]
    out = split_by_document(ex, 0.1, 0.2, seed=0)
    docs = {s: {e.meta["document"] for e in v} for s, v in out.items()}
    assert len(docs["test"]) == 2 and len(docs["val"]) == 1 and len(docs["train"]) == 7
    assert not (docs["train"] & docs["test"]) and not (docs["val"] & docs["test"]) and not (docs["train"] & docs["val"])
    assert split_by_document(ex, 0.1, 0.2, seed=0) == out
    by_question = split_by_document(ex, 0.1, 0.2, seed=0, by="question")
    assert [len(by_question[s]) for s in ("train", "val", "test")] == [21, 3, 6]
    assert {e.meta["document"] for e in by_question["train"]} & {e.meta["document"] for e in by_question["test"]}


# --------------------------------------------------------------------------------------------
# `pseudocot synth qfilter`.
# --------------------------------------------------------------------------------------------


def test_qfilter_writes_kept_rejects_and_one_summary_line(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bakery.md").write_text(CHUNK + "\n")
    span = f"bakery.md#0-{len(CHUNK)}"
    cands = [{**INTACT, "source": span},
             {**INTACT, "id": "lean", "question": "According to the text, how many loaves are baked each morning?", "source": span},
             {**INTACT, "id": "dup", "question": INTACT["question"].upper(), "source": span},
             {**INTACT, "id": "far", "source": "ferry.md#0-10"},
             {**INTACT, "id": "out", "source": f"bakery.md#0-{len(CHUNK) + 999}"}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cands))
    out = tmp_path / "kept.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "pseudocot", "synth", "qfilter", "--docs", str(docs), "--candidates", str(path),
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["candidates"] == 5 and summary["kept"] == 1
    assert summary["rejected_by_check"] == {"duplicate": 1, "grounded": 2, "self_contained": 1}
    kept = read_examples(out).examples
    assert [e.id for e in kept] == ["a"] and kept[0].source == span and kept[0].meta["document"] == "bakery.md"
    rejects = {r["id"]: r["reasons"] for r in rows(tmp_path / "kept.rejects.jsonl")}
    assert rejects["far"][0].startswith("grounded:no-source") and rejects["out"][0].startswith("grounded:no-source")
    # documents in a JSONL field other than `text`
    (docs / "rows.jsonl").write_text(json.dumps({"body": CHUNK}) + "\n")
    path.write_text(json.dumps({**INTACT, "source": f"rows.jsonl:1#0-{len(CHUNK)}"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pseudocot", "synth", "qfilter", "--docs", str(docs), "--candidates", str(path),
                           "--out", str(out), "--text-field", "body"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1])["kept"] == 1, proc.stderr
    # bad input: one line naming the file and line
    path.write_text('{"question": "x"}\n')
    proc = subprocess.run([sys.executable, "-m", "pseudocot", "synth", "qfilter", "--docs", str(docs), "--candidates", str(path),
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and f"{path}:1" in proc.stderr


def test_a_judge_decides_grounding_the_rule_cannot_and_asks_about_self_containment(tmp_path):
    def judge(text: str, seed: int | None, temperature: float | None) -> str:
        if "Answer:" in text:  # the grounding rubric: support the rye-bread fact only
            return "1" if "sourdough" in text.split("Answer:")[-1] else "0"
        return "0" if "the recipe" in text.split("Question:")[-1] else "1"

    from pseudocot.config import GeneratorConfig
    from pseudocot.synth.teacher import Judge, Teacher

    with fake_teacher_module().FakeTeacher([], thinking="none", answerer=judge) as server:
        j = Judge(Teacher(GeneratorConfig(base_url=server.url, model="fake-r1")), "{question} {solution}", tmp_path / "j.jsonl")
        settings = FilterSettings(task=get_task("jsonl", extraction="text"), judge=j)
        items = [{**INTACT, "id": "s", "question": "What bread does the bakery bake?", "answer": "sourdough", "reasoning": "x"},
                 {**INTACT, "id": "t", "question": "What bread does the bakery bake?", "answer": "spelt", "reasoning": "x"},
                 {**INTACT, "id": "u", "question": "How many loaves are in the recipe each morning?"}]
        result = run_filter([item_candidate(r, CHUNK) for r in items], settings, ["grounded", "self_contained"])
        j.teacher.close()
    out = {c.id: [] for c in result.kept} | {c.id: r for c, r in result.rejected}
    assert out["s"] == []  # the rule says no (no 'sourdough' in the chunk), the judge says yes
    assert out["t"] == ["grounded:words: 0 of the answer's 1 content words are in the text ('spelt' is not); the judge agrees"]
    assert out["u"] == ["self_contained:judge: the judge cannot answer it without its text"]
