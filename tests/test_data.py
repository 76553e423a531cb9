"""The data layer: Example schema, JSONL I/O, loaders, mixing, the arith task, chat rendering, the data stage."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from pseudocot.config import ArithConfig, load_config
from pseudocot.data import arith
from pseudocot.data.chat import answer_text, messages_for, prompt_and_completion, question_text, render
from pseudocot.data.example import Example
from pseudocot.data.jsonl import Reject, read_examples, rejects_path, write_examples, write_rejects
from pseudocot.data.loaders import load_csv, load_file, load_gsm8k, load_hf_disk, load_jsonl, load_mmlu
from pseudocot.data.mix import allocate, mix, shard
from pseudocot.errors import ConfigError, DataError
from pseudocot.layout import RunLayout

FIXTURES = Path(__file__).parent / "fixtures"


def ex(i, **kw) -> Example:
    return Example(id=str(i), question=kw.pop("question", f"question {i}?"), answer=kw.pop("answer", str(i)), **kw)


# ================================================================================ Example


@pytest.mark.parametrize("row, message", [
    ([1, 2], "expected a JSON object, got list"),
    ({"id": "1", "question": "q", "answer": "a", "extra": 1}, "unknown field 'extra'"),
    ({"id": "1", "answer": "a"}, "missing field 'question'"),
    ({"question": "q", "answer": "a"}, "missing field 'id'"),
    ({"id": "1", "question": "q"}, "missing field 'answer'"),
    ({"id": "1", "question": 5, "answer": "a"}, "field 'question' must be a string, got int"),
    ({"id": ["x"], "question": "q", "answer": "a"}, "field 'id' must be a string, got list"),
    ({"id": "1", "question": "q", "answer": True}, "field 'answer' must be a string, got bool"),
    ({"id": "1", "question": "   ", "answer": "a"}, "field 'question' is empty"),
    ({"id": "1", "question": "q", "answer": " "}, "field 'answer' is empty"),
    ({"id": "1", "question": "q", "answer": "a", "choices": "A,B"}, "field 'choices' must be a list of strings or null"),
    ({"id": "1", "question": "q", "answer": "a", "choices": ["x", 2]}, "field 'choices' must be a list of strings or null"),
    ({"id": "1", "question": "q", "answer": "a", "reasoning": 3}, "field 'reasoning' must be a string, got int"),
    ({"id": "1", "question": "q", "answer": "a", "source": 3}, "field 'source' must be a string, got int"),
    ({"id": "1", "question": "q", "answer": "a", "meta": [1]}, "field 'meta' must be an object, got list"),
])
def test_example_from_dict_errors(row, message):
    with pytest.raises(DataError) as e:
        Example.from_dict(row)
    assert message in str(e.value)


def test_example_from_dict_accepts_numbers_and_fills_defaults():
    e = Example.from_dict({"id": 7, "question": "How many?", "answer": 12.5, "source": None, "meta": None})
    assert e == Example(id="7", question="How many?", answer="12.5", choices=None, reasoning=None, source="", meta={})
    full = {"id": "x", "question": "q", "answer": "B", "choices": ["1", "2"], "reasoning": "r", "source": "s", "meta": {"k": 1}}
    assert Example.from_dict(full).to_dict() == full


# ================================================================================ JSONL


def _good_line(i: int) -> str:
    return json.dumps({"id": f"r{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)})


def test_read_examples_broken_line_7(tmp_path):
    f = tmp_path / "data.jsonl"
    lines = [_good_line(i) for i in range(1, 7)] + ['{"id": "r7", "question": "oops"', _good_line(8), ""]
    f.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_examples(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:7: not valid JSON")
    assert "--skip-bad" in msg

    result = read_examples(f, skip_bad=True)
    assert [x.id for x in result.examples] == ["r1", "r2", "r3", "r4", "r5", "r6", "r8"]
    assert result.examples[2].answer == "4"
    assert len(result.rejects) == 1
    r = result.rejects[0]
    assert (r.file, r.line, r.text) == (str(f), 7, '{"id": "r7", "question": "oops"')
    assert r.reason.startswith("not valid JSON")
    assert r.message().startswith(f"{f}:7: not valid JSON")


def test_read_examples_counts_blank_lines_and_reports_schema_errors(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text(_good_line(1) + "\n\n   \n" + '{"id": "r2", "question": "q"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data.jsonl:4: missing field 'answer'"):
        read_examples(f)


def test_read_examples_duplicate_ids(tmp_path):
    f = tmp_path / "dup.jsonl"
    f.write_text("\n".join([_good_line(1), _good_line(2), _good_line(1)]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_examples(f)
    assert f"{f}:3: duplicate id 'r1' (first on line 1)" in str(e.value)
    result = read_examples(f, skip_bad=True)
    assert [x.id for x in result.examples] == ["r1", "r2"]
    assert [(r.line, r.reason) for r in result.rejects] == [(3, "duplicate id 'r1' (first on line 1)")]


def test_read_examples_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_examples(tmp_path / "nope.jsonl")
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(_good_line(1).encode() + b"\n" + '{"id": "2", "question": "café", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 text"):
        read_examples(f)


def test_write_examples_round_trip(tmp_path):
    examples = [
        Example(id="a", question="Ünïcode — 2+2?\nSecond line", answer="4", reasoning="2 + 2 = 4", source="s", meta={"steps": 1, "ops": ["+"]}),
        Example(id="b", question="Pick one", answer="C", choices=["x", "y, z", "\"q\""], source="mmlu:x"),
        Example(id="c", question="Plain", answer="ok"),
    ]
    f = tmp_path / "sub" / "out.jsonl"
    assert write_examples(f, examples) == 3
    text = f.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 3
    assert "Ünïcode" in text  # not escaped
    assert read_examples(f).examples == examples
    assert [p.name for p in f.parent.iterdir()] == ["out.jsonl"]  # atomic write: no temp file left


def test_write_rejects(tmp_path):
    out = tmp_path / "clean.jsonl"
    rejects = [Reject("in.jsonl", 3, "not valid JSON", "{oops"), Reject("in.jsonl", 9, "missing field 'id'", "{}")]
    path = write_rejects(out, rejects)
    assert path == tmp_path / "clean.rejects.jsonl" == rejects_path(out)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"file": "in.jsonl", "line": 3, "reason": "not valid JSON", "text": "{oops"},
        {"file": "in.jsonl", "line": 9, "reason": "missing field 'id'", "text": "{}"},
    ]
    # no rejects: a stale rejects file is removed
    assert write_rejects(out, []) is None
    assert not path.exists()


# ================================================================================ GSM8K


def test_load_gsm8k_fixture():
    path = FIXTURES / "gsm8k_train.jsonl"
    originals = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    result = load_gsm8k(path)
    exs = result.examples
    assert result.rejects == []
    assert [e.id for e in exs] == ["gsm8k/train/0", "gsm8k/train/1", "gsm8k/train/2", "gsm8k/train/3"]
    assert [e.answer for e in exs] == ["72", "10800", "1234", "4.5"]
    assert {e.source for e in exs} == {"gsm8k"}
    assert exs[0].reasoning == ("Natalia sold 48/2 = 24 clips in May.\n"
                                "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert exs[1].reasoning == "In 24 days it makes 450*24 = 10,800 widgets."
    assert exs[3].reasoning == "They cost 3*1.50 = $4.50."
    assert all("<<" not in e.reasoning and ">>" not in e.reasoning and "####" not in e.reasoning for e in exs)
    assert [e.meta["solution"] for e in exs] == [o["answer"] for o in originals]
    assert exs[3].question == "Three pens cost $1.50 each. How much do they cost together?"  # stripped
    assert load_file("gsm8k", str(path)).examples == exs
    assert load_file("gsm8k", str(path), source="gsm").examples[0].source == "gsm"


def test_load_gsm8k_bad_rows(tmp_path):
    f = tmp_path / "gsm8k_test.jsonl"
    good = (FIXTURES / "gsm8k_train.jsonl").read_text(encoding="utf-8")  # 5 lines, line 3 blank
    f.write_text(good
                 + '{"question": "q?", "answer": "no final line"}\n'
                 + '{"question": "q2?", "answer": "x\\n#### twelve"}\n'
                 + '{"question": "q3?"}\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_gsm8k(f)
    assert str(e.value).startswith(f"{f}:6: field 'answer' has no '#### N' final line")
    result = load_gsm8k(f, skip_bad=True)
    assert len(result.examples) == 4
    assert result.examples[0].id == "gsm8k/test/0"
    assert [(r.line, r.reason) for r in result.rejects] == [
        (6, "field 'answer' has no '#### N' final line"),
        (7, "the number after '####' is not a number: 'twelve'"),
        (8, "missing or non-string field 'answer' (GSM8K rows have 'question' and 'answer')"),
    ]


# ================================================================================ MMLU


def test_load_mmlu_fixture():
    path = FIXTURES / "college_mathematics_test.csv"
    result = load_mmlu(path)
    exs = result.examples
    assert result.rejects == []
    assert len(exs) == 5
    assert {e.source for e in exs} == {"mmlu:college_mathematics"}
    assert {e.meta["subject"] for e in exs} == {"college_mathematics"}
    assert exs[0].id == "mmlu:college_mathematics/test/0"
    assert [e.answer for e in exs] == ["B", "B", "A", "C", "D"]
    assert all(len(e.choices) == 4 for e in exs)
    assert exs[0].question == "What is 2 + 2?"
    assert exs[0].choices == ["3", "4", "5", "6"]
    # a quoted question over two lines, a quoted field holding a comma
    assert exs[1].question == "Which set is countable?\nChoose the best option."
    assert exs[1].choices == ["the reals", "the rationals", "the power set of N", "[0,1]"]
    assert exs[2].choices == ["1", "0", "2", "1, 2 or 3"]
    assert exs[4].choices["ABCD".index(exs[4].answer)] == "2.5"
    assert load_file("mmlu", str(path)).examples == exs


def test_load_mmlu_bad_rows_give_the_starting_line(tmp_path):
    f = tmp_path / "abstract_algebra_dev.csv"
    good = (FIXTURES / "college_mathematics_test.csv").read_text(encoding="utf-8")  # 5 records on 6 lines
    f.write_text(good
                 + '"A question over\ntwo lines",a,b,c,d,E\n'  # record starting on line 7
                 + 'Too few columns?,a,b,c,B\n'  # line 9
                 + 'Lowercase letter?,a,b,c,d,c\n', encoding="utf-8")  # line 10
    with pytest.raises(DataError) as e:
        load_mmlu(f)
    assert str(e.value).startswith(f"{f}:7: answer must be one of A, B, C, D, got 'E'")
    result = load_mmlu(f, skip_bad=True)
    assert [(r.line, r.reason) for r in result.rejects] == [
        (7, "answer must be one of A, B, C, D, got 'E'"),
        (9, "expected 6 columns (question, A, B, C, D, answer), got 5"),
    ]
    assert len(result.examples) == 6
    last = result.examples[-1]
    assert (last.answer, last.source, last.id) == ("C", "mmlu:abstract_algebra", "mmlu:abstract_algebra/dev/7")


def test_load_mmlu_unterminated_quote(tmp_path):
    f = tmp_path / "x_test.csv"
    f.write_text('q,a,b,c,d,A\n"unterminated,a,b,c,d,A\nq2,a,b,c,d,B\n', encoding="utf-8")
    # the open quote swallows the rest of the file into one field of the record starting on line 2
    with pytest.raises(DataError, match=r"x_test.csv:2: expected 6 columns \(question, A, B, C, D, answer\), got 1"):
        load_mmlu(f)


# ================================================================================ generic JSONL / CSV / datasets


CUSTOM_FIELDS = {"id": "uid", "question": "prompt", "answer": "label", "reasoning": "why"}


def test_load_jsonl_with_field_mapping():
    result = load_jsonl(FIXTURES / "custom_qa.jsonl", CUSTOM_FIELDS)
    exs = result.examples
    assert [e.id for e in exs] == ["q1", "q2", "q3"]
    assert [e.question for e in exs] == ["What is the capital of France?", "How many legs does a spider have?",
                                         "What colour is a clear daytime sky?"]
    assert [e.answer for e in exs] == ["Paris", "8", "blue"]
    assert exs[1].reasoning == "Spiders are arachnids.\nArachnids have 8 legs."
    assert exs[2].reasoning is None
    assert [e.source for e in exs] == ["custom_qa", "custom_qa", "trivia"]  # a row's own source wins
    assert [e.meta for e in exs] == [{"difficulty": 1}, {"difficulty": 2}, {"difficulty": 1}]
    named = load_file("jsonl", str(FIXTURES / "custom_qa.jsonl"), CUSTOM_FIELDS, source="qa").examples
    assert [e.source for e in named] == ["qa", "qa", "trivia"]


def test_load_jsonl_mapping_errors():
    path = FIXTURES / "custom_qa.jsonl"
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert str(e.value).startswith(f"{path}:1: missing column 'question'; map it with fields.question=COLUMN")
    with pytest.raises(DataError, match=r"custom_qa.jsonl:1: missing column 'text' \(mapped to question\)"):
        load_jsonl(path, {"question": "text", "answer": "label"})
    with pytest.raises(DataError, match="field mapping names 'prompt', which is not an Example field"):
        load_jsonl(path, {"prompt": "question"})


def test_load_jsonl_in_example_schema(tmp_path):
    f = tmp_path / "plain.jsonl"
    examples = [ex(1, reasoning="r", meta={"k": 2}), ex(2, choices=["a", "b"], answer="A")]
    write_examples(f, examples)
    got = load_jsonl(f).examples
    assert [(e.id, e.question, e.answer, e.choices, e.reasoning, e.meta) for e in got] == [
        (e.id, e.question, e.answer, e.choices, e.reasoning, e.meta) for e in examples]
    assert {e.source for e in got} == {"plain"}


MC_FIELDS = {"question": "q", "choices": "A,B,C,D", "answer": "gold"}


def test_load_csv_with_header_and_choice_columns():
    result = load_csv(FIXTURES / "custom_mc.csv", MC_FIELDS)
    exs = result.examples
    assert result.rejects == []
    assert [e.id for e in exs] == ["c1", "c2", "c3"]
    assert [e.answer for e in exs] == ["B", "B", "C"]
    assert exs[0].choices == ["Mars", "Jupiter", "Venus", "Earth"]
    assert exs[1].question == "Which is a prime, 9 or 7?"
    assert exs[2].question == "Which of these\nis a mammal?"
    assert exs[2].choices == ["shark", "trout", "whale", "squid"]
    assert {e.source for e in exs} == {"custom_mc"}
    # columns that map to no field go to meta; the choice columns do not
    assert [e.meta for e in exs] == [{"topic": "astronomy"}, {"topic": "math"}, {"topic": "biology"}]
    assert load_file("csv", str(FIXTURES / "custom_mc.csv"), MC_FIELDS).examples == exs


def test_load_csv_line_numbers_count_the_header(tmp_path):
    f = tmp_path / "mc.csv"
    f.write_text('q,A,B,C,D,gold\n,1,2,3,4,A\n"two\nlines",1,2,3,4,B\n"",1,2,3,4,B\nok,1,2,3,4\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_csv(f, MC_FIELDS)
    assert str(e.value).startswith(f"{f}:2: field 'question' is empty")
    result = load_csv(f, MC_FIELDS, skip_bad=True)
    assert [e.question for e in result.examples] == ["two\nlines"]
    assert [(r.line, r.reason) for r in result.rejects] == [
        (2, "field 'question' is empty"),
        (5, "field 'question' is empty"),
        (6, "missing column 'gold' (mapped to answer)"),
    ]


def test_load_csv_missing_choice_column():
    with pytest.raises(DataError, match=r"custom_mc.csv:2: missing column 'E' \(mapped to choices\)"):
        load_csv(FIXTURES / "custom_mc.csv", {"question": "q", "choices": "A,B,C,D,E", "answer": "gold"})
    with pytest.raises(DataError, match="holds one string"):
        load_csv(FIXTURES / "custom_mc.csv", {"question": "q", "choices": "A", "answer": "gold"})


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    rows = {"prompt": ["What is 1 + 1?", "What is 2 + 5?", "Name a colour."], "label": [2, 7, "red"],
            "level": ["easy", "easy", "hard"]}
    rows["label"] = [str(v) for v in rows["label"]]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(root / "qa"))
    datasets.Dataset.from_dict({"question": ["Single?"], "answer": ["yes"]}).save_to_disk(str(root / "single"))
    return root


def test_load_hf_disk_split(hf_folder):
    folder = hf_folder / "qa"
    result = load_hf_disk(f"{folder}:train", {"question": "prompt", "answer": "label"})
    exs = result.examples
    assert [e.question for e in exs] == ["What is 1 + 1?", "What is 2 + 5?", "Name a colour."]
    assert [e.answer for e in exs] == ["2", "7", "red"]
    assert [e.id for e in exs] == ["qa/train/0", "qa/train/1", "qa/train/2"]
    assert {e.source for e in exs} == {"qa"}
    assert exs[2].meta == {"level": "hard"}
    assert load_file("hf_disk", f"{folder}:train", {"question": "prompt", "answer": "label"}, source="mine").examples[0].source == "mine"


def test_load_hf_disk_plain_dataset(hf_folder):
    exs = load_hf_disk(str(hf_folder / "single")).examples
    assert [(e.id, e.question, e.answer) for e in exs] == [("single/all/0", "Single?", "yes")]


def test_load_hf_disk_errors(hf_folder, tmp_path):
    folder = hf_folder / "qa"
    with pytest.raises(DataError) as e:
        load_hf_disk(f"{folder}:test")
    assert str(e.value) == f"{folder}: has no split 'test'; it has train."
    with pytest.raises(DataError, match=r"holds splits train; name one as .*qa:SPLIT"):
        load_hf_disk(str(folder))
    with pytest.raises(DataError, match="no such folder"):
        load_hf_disk(f"{tmp_path / 'missing'}:train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a datasets folder"):
        load_hf_disk(str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"qa:train row:1: missing column 'question'"):
        load_hf_disk(f"{folder}:train")


def test_load_file_unknown_format():
    with pytest.raises(DataError, match="unknown data format 'parquet'"):
        load_file("parquet", "x")


# ================================================================================ mixing


def labels(items) -> str:
    return "".join(name for name, _ in items)


def tagged(**sizes: int) -> dict[str, list[tuple[str, int]]]:
    return {name: [(name, i) for i in range(n)] for name, n in sizes.items()}


def test_allocate():
    assert allocate({"a": 100, "b": 100}, {"a": 3, "b": 1}, 40) == {"a": 30, "b": 10}
    # largest remainder: 10 / 3 = 3.33 each; the one left over goes to the first
    assert allocate({"a": 10, "b": 10, "c": 10}, {"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert allocate({"a": 10, "b": 10}, {"a": 1, "b": 2}, 10) == {"a": 3, "b": 7}
    # no total: the largest every source can fill at its share (a is the limit: 30 = half of 60)
    assert allocate({"a": 30, "b": 100}, {"a": 1, "b": 1}, None) == {"a": 30, "b": 30}
    assert allocate({"a": 30, "b": 100}, {"a": 1, "b": 0}, None) == {"a": 30, "b": 0}


def test_allocate_errors():
    with pytest.raises(DataError) as e:
        allocate({"a": 5, "b": 100}, {"a": 1, "b": 1}, 20)
    assert "source 'a' has 5 examples but its weight asks for 10 of 20" in str(e.value)
    with pytest.raises(DataError, match="non-negative with a positive sum"):
        allocate({"a": 5, "b": 5}, {"a": 0, "b": 0}, None)
    with pytest.raises(DataError, match="non-negative with a positive sum"):
        allocate({"a": 5, "b": 5}, {"a": 2, "b": -1}, None)


def test_mix_hand_counted():
    # a: 4 items at (j + .5) / 4 = .125 .375 .625 .875; b: 2 at .25 .75 -> a b a a b a
    out = mix(tagged(a=4, b=2), {"a": 2, "b": 1}, 6, seed=0)
    assert labels(out) == "abaaba"
    assert sorted(out) == sorted(tagged(a=4, b=2)["a"] + tagged(a=4, b=2)["b"])
    # equal weights alternate; ties go to the source listed first
    assert labels(mix(tagged(a=3, b=3), {"a": 1, "b": 1}, 6)) == "ababab"
    # 3 : 1 -> a at .167 .5 .833, b at .5 (tie -> a first)
    assert labels(mix(tagged(a=3, b=1), {"a": 3, "b": 1}, 4)) == "aaba"


def test_mix_respects_weights_and_total():
    sources = tagged(a=100, b=100, c=100)
    out = mix(sources, {"a": 6, "b": 3, "c": 1}, 100, seed=1)
    assert Counter(name for name, _ in out) == {"a": 60, "b": 30, "c": 10}
    assert len(set(out)) == 100  # no item twice
    # default weights: proportional to sizes, everything used
    out = mix(tagged(a=30, b=10), seed=0)
    assert Counter(name for name, _ in out) == {"a": 30, "b": 10}
    assert mix({}) == []


def test_mix_is_seeded():
    sources = tagged(a=50, b=20)
    assert mix(sources, {"a": 1, "b": 1}, 40, seed=3) == mix(sources, {"a": 1, "b": 1}, 40, seed=3)
    assert mix(sources, {"a": 1, "b": 1}, 40, seed=3) != mix(sources, {"a": 1, "b": 1}, 40, seed=4)


def _max_deviation(parts, share):
    return max(abs(sum(name == n for name, _ in part) - len(part) * s) for part in parts for n, s in share.items())


@pytest.mark.parametrize("sizes, weights", [
    ({"a": 100, "b": 100}, {"a": 1, "b": 1}),
    ({"a": 100, "b": 100}, {"a": 3, "b": 1}),
    ({"a": 37, "b": 100}, {"a": 1, "b": 2}),
    ({"a": 97, "b": 13}, None),
])
def test_every_contiguous_window_and_shard_holds_the_shares_two_sources(sizes, weights):
    out = mix(tagged(**sizes), weights, None, seed=5)
    total = len(out)
    counts = Counter(name for name, _ in out)
    share = {n: counts[n] / total for n in sizes}
    windows = [out[s:s + length] for length in range(1, total + 1) for s in range(total - length + 1)]
    assert _max_deviation(windows, share) <= 1
    for n in range(1, 9):
        shards = [shard(out, i, n) for i in range(n)]
        assert sorted(x for s in shards for x in s) == sorted(out)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert _max_deviation(shards, share) <= 1


def test_shares_with_three_sources():
    out = mix(tagged(a=100, b=100, c=100), {"a": 6, "b": 3, "c": 1}, 100, seed=0)
    share = {"a": 0.6, "b": 0.3, "c": 0.1}
    # every block of 10 holds 6 a, 3 b, 1 c (within one)
    assert _max_deviation([out[i:i + 10] for i in range(0, 100, 10)], share) <= 1
    for n in (2, 4, 5, 10):
        assert _max_deviation([shard(out, i, n) for i in range(n)], share) <= 1
    windows = [out[s:s + length] for length in range(1, 101) for s in range(101 - length)]
    assert _max_deviation(windows, share) < 2


def test_strided_split_is_not_balanced_but_shard_is():
    out = mix(tagged(a=50, b=50), {"a": 1, "b": 1}, 100)
    assert labels(out[0::2]) == "a" * 50  # why `shard` does not stride
    assert Counter(labels(shard(out, 0, 2))) == {"a": 25, "b": 25}


def test_shard_blocks_and_errors():
    items = list(range(10))
    assert [shard(items, i, 3) for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert shard(items, 0, 1) == items
    for i, n in [(0, 0), (3, 3), (-1, 2)]:
        with pytest.raises(ValueError, match="is not valid"):
            shard(items, i, n)


# ================================================================================ arith


LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def _check_steps(e: Example, cfg: ArithConfig) -> None:
    lines = e.reasoning.split("\n")
    assert len(lines) == e.meta["steps"]
    assert 1 <= e.meta["steps"] <= cfg.max_steps
    prev = None
    ops = []
    for line in lines:
        m = LINE.match(line)
        assert m, line
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if op == "+":
            assert a + b == c, line
        elif op == "-":
            assert a - b == c, line
        elif op == "*":
            assert a * b == c, line
        else:
            assert b != 0 and a % b == 0 and a // b == c, line
        assert 1 <= b <= cfg.max_operand, line
        assert 0 <= a <= cfg.max_value and 0 <= c <= cfg.max_value, line
        if prev is None:
            assert 2 <= a <= 2 * cfg.max_operand
            assert str(a) in e.question
        else:
            assert a == prev, "each step starts from the previous result"
        ops.append(op)
        prev = c
    assert str(prev) == e.answer
    assert ops == e.meta["ops"]
    assert set(ops) <= set(cfg.operations)


def test_arith_same_seed_same_bytes(tmp_path):
    cfg = ArithConfig(max_steps=4, seed=11)
    write_examples(tmp_path / "a.jsonl", arith.generate(300, cfg))
    write_examples(tmp_path / "b.jsonl", arith.generate(300, ArithConfig(max_steps=4, seed=11)))
    write_examples(tmp_path / "c.jsonl", arith.generate(300, ArithConfig(max_steps=4, seed=12)))
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    assert a != (tmp_path / "c.jsonl").read_bytes()
    assert len(a.splitlines()) == 300


@pytest.mark.parametrize("cfg", [
    ArithConfig(max_steps=4),
    ArithConfig(max_steps=6, max_operand=5, max_value=20, seed=3),
    ArithConfig(max_steps=3, operations=["*", "/"], seed=4),
    ArithConfig(max_steps=2, operations=["-"], max_operand=3, max_value=50, seed=5),
])
def test_arith_every_step_is_true(cfg):
    exs = arith.generate(400, cfg)
    assert len(exs) == 400
    assert len({e.question for e in exs}) == 400
    assert [e.id for e in exs[:2]] == ["arith/all/0", "arith/all/1"]
    for e in exs:
        assert e.source == "arith"
        _check_steps(e, cfg)


def test_arith_step_weights():
    cfg = ArithConfig(max_steps=3, step_weights=[1, 0, 3], seed=2)
    counts = Counter(e.meta["steps"] for e in arith.generate(2000, cfg))
    assert counts[2] == 0
    assert 400 <= counts[1] <= 600  # expected 500 (sd about 19)
    assert 1400 <= counts[3] <= 1600  # expected 1500
    uniform = Counter(e.meta["steps"] for e in arith.generate(2000, ArithConfig(max_steps=4, seed=2)))
    assert sorted(uniform) == [1, 2, 3, 4]
    assert all(400 <= uniform[k] <= 600 for k in (1, 2, 3, 4))


def test_arith_splits_are_disjoint_and_test_is_stable():
    cfg = ArithConfig(n_train=300, n_val=60, n_test=80, max_steps=3, seed=1)
    splits = arith.generate_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 60, "test": 80}
    q = {k: {e.question for e in v} for k, v in splits.items()}
    assert not (q["train"] & q["val"]) and not (q["train"] & q["test"]) and not (q["val"] & q["test"])
    assert splits["test"][0].id == "arith/test/0" and splits["train"][0].id == "arith/train/0"
    bigger = arith.generate_splits(ArithConfig(n_train=700, n_val=60, n_test=80, max_steps=3, seed=1))
    assert bigger["test"] == splits["test"]
    assert bigger["val"] == splits["val"]
    other_val = arith.generate_splits(ArithConfig(n_train=300, n_val=10, n_test=80, max_steps=3, seed=1))
    assert other_val["test"] == splits["test"]
    other_seed = arith.generate_splits(ArithConfig(n_train=300, n_val=60, n_test=80, max_steps=3, seed=2))
    assert other_seed["test"] != splits["test"]


@pytest.mark.parametrize("kw, key, message", [
    ({"operations": ["+", "%"]}, "operations", "must be one of '+', '-', '*', '/'"),
    ({"operations": []}, "operations", "must be a non-empty list"),
    ({"max_steps": 0}, "max_steps", "must be at least 1"),
    ({"max_steps": 3, "step_weights": [1, 1]}, "step_weights", "needs 3 non-negative weights"),
    ({"max_steps": 2, "step_weights": [1, -1]}, "step_weights", "must be at least 0"),
    ({"max_steps": 2, "step_weights": [0, 0]}, "step_weights", "needs 2 non-negative weights (one per k = 1..max_steps) with a positive sum"),
    ({"max_operand": 1}, "max_operand", "must be at least 2"),
    ({"max_operand": 12, "max_value": 23}, "max_value", "must be at least 2 * max_operand = 24"),
])
def test_arith_check_config(kw, key, message):
    # Built in Python: the section itself refuses, naming the key.
    with pytest.raises(ConfigError) as e:
        ArithConfig(**kw)
    assert f"key '{key}' {message}" in str(e.value)
    # From a config: one line naming the override and the dotted key.
    overrides = [f"data.arith.{k}={json.dumps(v)}" for k, v in kw.items()]
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides)
    msg = str(e.value)
    assert msg.startswith("override 'data.arith.") and f"key 'data.arith.{key}" in msg and "\n" not in msg


def test_arith_stats():
    exs = [Example(id="1", question="q1", answer="4", meta={"steps": 1, "ops": ["+"]}),
           Example(id="2", question="q2", answer="10", meta={"steps": 2, "ops": ["*", "+"]}),
           Example(id="3", question="q3", answer="1", meta={"steps": 2, "ops": ["-", "/"]})]
    assert arith.stats(exs) == {"n": 3, "per_steps": {"1": 1, "2": 2}, "per_operation": {"*": 1, "+": 2, "-": 1, "/": 1},
                                "answer_min": 1.0, "answer_max": 10.0, "answer_mean": 5.0}


def test_apply_op():
    assert [arith.apply_op(12, op, 3) for op in "+-*/"] == [15, 9, 36, 4]
    with pytest.raises(ValueError, match="not exact"):
        arith.apply_op(7, "/", 2)


# ================================================================================ chat


@pytest.fixture(scope="module")
def tokenizer():
    from pseudocot.models.tokenizer import train_tokenizer

    exs = arith.generate(300, ArithConfig(max_steps=3, seed=9))
    return train_tokenizer((question_text(e) + "\n" + answer_text(e) for e in exs), vocab_size=384, min_frequency=2)


def test_question_text_multiple_choice():
    e = Example(id="1", question="Which is largest?", answer="C", choices=["1", "2", "3", "0"])
    assert question_text(e) == "Which is largest?\nA. 1\nB. 2\nC. 3\nD. 0"
    assert question_text(Example(id="2", question="Plain?", answer="x")) == "Plain?"


def test_answer_text_and_messages():
    e = Example(id="1", question="2 + 3?", answer="5", reasoning="2 + 3 = 5")
    assert answer_text(e) == "2 + 3 = 5\nThe answer is 5."
    assert answer_text(e, with_reasoning=False) == "The answer is 5."
    assert answer_text(Example(id="2", question="q", answer="B")) == "The answer is B."
    assert messages_for(e, system="Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5\nThe answer is 5."},
    ]


@pytest.mark.parametrize("with_reasoning", [True, False])
@pytest.mark.parametrize("system", [None, "You are terse."])
def test_prompt_and_completion_prefix(tokenizer, with_reasoning, system):
    exs = arith.generate(5, ArithConfig(max_steps=3, seed=21))
    exs.append(Example(id="mc", question="Which is even?", answer="B", choices=["3", "4", "5", "7"]))
    for e in exs:
        prompt, completion = prompt_and_completion(tokenizer, e, with_reasoning, system)
        full = render(tokenizer, messages_for(e, with_reasoning, system))
        assert prompt + completion == full
        assert prompt.startswith("<|bos|>" + (f"<|system|>{system}<|eos|>" if system else "") + "<|user|>")
        assert prompt.endswith(question_text(e) + "<|eos|><|assistant|>")
        assert completion == answer_text(e, with_reasoning) + "<|eos|>"
        # the prefix property holds for token ids too
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        assert f_ids[: len(p_ids)] == p_ids
        assert len(f_ids) > len(p_ids)
        assert tokenizer.decode(f_ids) == full
    mc_prompt, _ = prompt_and_completion(tokenizer, exs[-1])
    assert "Which is even?\nA. 3\nB. 4\nC. 5\nD. 7<|eos|>" in mc_prompt


def test_render_needs_a_chat_template(tokenizer):
    class NoTemplate:
        chat_template = None
        name_or_path = "plain-lm"

    with pytest.raises(DataError, match="tokenizer 'plain-lm' has no chat template"):
        render(NoTemplate(), [{"role": "user", "content": "hi"}])


def test_prompt_not_a_prefix_is_an_error():
    class Odd:
        chat_template = "odd"

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            text = "|".join(m["content"] for m in messages)
            return text + ("<ASSISTANT>" if add_generation_prompt else "")  # not what the full chat renders

    with pytest.raises(DataError, match="not a prefix"):
        prompt_and_completion(Odd(), Example(id="1", question="q", answer="a"))


# ================================================================================ the data stage


def _write_source(path: Path, prefix: str, n: int, start: int = 0) -> Path:
    write_examples(path, [Example(id=f"{prefix}{i}", question=f"{prefix} question number {i}?", answer=str(i))
                          for i in range(start, start + n)])
    return path


def test_stage_smoke(tmp_path):
    from pseudocot.stages import data as stage

    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", "data.arith.n_train=200", "data.arith.n_val=50",
                                "data.arith.n_test=50"])
    stats = stage.main(cfg)
    run = tmp_path / "smoke"
    assert RunLayout.of(cfg).root == run
    data = run / "data"
    assert sorted(p.name for p in data.iterdir()) == ["stats.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    splits = {s: read_examples(data / f"{s}.jsonl").examples for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 200, "val": 50, "test": 50}
    generated = arith.generate_splits(cfg.data.arith)
    for split in ("train", "val", "test"):  # the same problems, in mixed order
        assert sorted(e.id for e in splits[split]) == sorted(e.id for e in generated[split])
        assert {e.question for e in splits[split]} == {e.question for e in generated[split]}
    q = {s: {e.question for e in v} for s, v in splits.items()}
    assert not (q["train"] & (q["val"] | q["test"]))

    on_disk = json.loads((data / "stats.json").read_text())
    assert on_disk == stats
    assert stats["train"]["n"] == 200 and stats["train"]["per_source"] == {"arith": 200}
    assert stats["test"]["with_reasoning"] == 50 and stats["test"]["with_choices"] == 0
    assert sum(stats["train"]["arith"]["per_steps"].values()) == 200
    assert set(stats["train"]["arith"]["per_steps"]) == {"1", "2", "3"}
    assert stats["train_dropped_overlap"] == 0 and stats["rejects"] == 0
    assert not (data / "rejects.jsonl").exists()

    assert load_config(run / "config.yaml") == cfg

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    assert stats["tokenizer"] == {"path": str(run / "tokenizer"), "vocab_size": 384}
    assert len(tok) == 384
    assert tok.eos_token == "<|eos|>"
    text = tok.apply_chat_template([{"role": "user", "content": "2 + 2?"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|bos|><|user|>2 + 2?<|eos|><|assistant|>"
    # digits are single tokens
    assert tok.tokenize("123") == ["1", "2", "3"]


def _two_source_config(tmp_path: Path, *extra: str):
    a = _write_source(tmp_path / "a_train.jsonl", "a", 60)
    b = _write_source(tmp_path / "b_train.jsonl", "b", 60)
    at = _write_source(tmp_path / "a_test.jsonl", "a", 5, start=1000)
    f = tmp_path / "two.yaml"
    f.write_text(f"""\
run:
  name: two
  out_dir: {tmp_path / 'runs'}
data:
  sources:
    - name: a
      format: jsonl
      train: {a}
      test: {at}
      weight: 3
    - name: b
      format: jsonl
      train: {b}
      weight: 1
  val_fraction: 0.1
""", encoding="utf-8")
    return load_config(f, list(extra))


def test_stage_two_jsonl_sources_mixed_by_weight(tmp_path):
    from pseudocot.stages import data as stage

    cfg = _two_source_config(tmp_path)
    stats = stage.main(cfg)
    # each source: 60 rows, 6 carved out as val, 54 left; weights 3 : 1 -> a is the limit: 54 a + 18 b
    assert stats["train"]["per_source"] == {"a": 54, "b": 18}
    assert stats["val"]["per_source"] == {"a": 6, "b": 6}
    assert stats["test"]["per_source"] == {"a": 5}
    assert "tokenizer" not in stats and not (RunLayout.of(cfg).root / "tokenizer").exists()
    train = read_examples(RunLayout.of(cfg).root / "data" / "train.jsonl").examples
    assert len(train) == 72
    # every block of 4 holds 3 a and 1 b
    assert all(sorted(e.source for e in train[i:i + 4]) == ["a", "a", "a", "b"] for i in range(0, 72, 4))
    assert len({e.id for e in train}) == 72

    capped = _two_source_config(tmp_path, "data.max_train=20", "run.name=capped")
    assert stage.main(capped)["train"]["per_source"] == {"a": 15, "b": 5}

    # equal weights, 120 asked: 60 of each, but each source has only 54
    too_much = _two_source_config(tmp_path, "data.max_train=120", "data.sources.1.weight=3", "run.name=short")
    with pytest.raises(DataError, match="source 'a' has 54 examples but its weight asks for 60 of 120"):
        stage.main(too_much)


def test_stage_skip_bad_writes_rejects(tmp_path):
    from pseudocot.stages import data as stage

    src = tmp_path / "bad_train.jsonl"
    lines = [json.dumps({"id": f"x{i}", "question": f"Question {i}?", "answer": str(i)}) for i in range(20)]
    lines[2] = '{"id": "x2", "question": '
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    overrides = [f"run.out_dir={tmp_path / 'runs'}", "run.name=bad", "data.sources.0.name=mine",
                 "data.sources.0.format=jsonl", f"data.sources.0.train={src}", "tokenizer.train=false"]
    with pytest.raises(DataError, match=r"bad_train.jsonl:3: not valid JSON"):
        stage.main(load_config("smoke", overrides))

    cfg = load_config("smoke", overrides + ["data.skip_bad=true"])
    stats = stage.main(cfg)
    assert stats["rejects"] == 1
    rejects = [json.loads(line) for line in (RunLayout.of(cfg).root / "data" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1
    assert rejects[0]["file"] == str(src) and rejects[0]["line"] == 3 and rejects[0]["text"] == lines[2].strip()
    assert rejects[0]["reason"].startswith("not valid JSON")
    # 19 good rows: 2 carved out as val (round(1.9)), 17 train, no test source
    assert (stats["train"]["n"], stats["val"]["n"], stats["test"]["n"]) == (17, 2, 0)

    # fixed input: the stale rejects file goes away
    lines[2] = json.dumps({"id": "x2", "question": "Question 2?", "answer": "2"})
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert stage.main(cfg)["rejects"] == 0
    assert not (RunLayout.of(cfg).root / "data" / "rejects.jsonl").exists()


def test_stage_drops_train_examples_that_overlap_val_or_test(tmp_path):
    from pseudocot.stages import data as stage

    train = _write_source(tmp_path / "t_train.jsonl", "t", 30)
    test = tmp_path / "t_test.jsonl"
    val = tmp_path / "t_val.jsonl"
    write_examples(test, [Example(id="e1", question="t question number 4?", answer="4"),
                          Example(id="e2", question="t question number 17?", answer="17"),
                          Example(id="e3", question="A fresh question?", answer="0")])
    write_examples(val, [Example(id="v1", question="t question number 9?", answer="9")])
    cfg = load_config("smoke", [f"run.out_dir={tmp_path / 'runs'}", "run.name=overlap", "data.sources.0.name=t",
                                "data.sources.0.format=jsonl", f"data.sources.0.train={train}",
                                f"data.sources.0.val={val}", f"data.sources.0.test={test}", "tokenizer.train=false"])
    stats = stage.main(cfg)
    assert stats["train_dropped_overlap"] == 3
    assert (stats["train"]["n"], stats["val"]["n"], stats["test"]["n"]) == (27, 1, 3)
    kept = {e.question for e in read_examples(RunLayout.of(cfg).root / "data" / "train.jsonl").examples}
    assert len(kept) == 27
    assert not kept & {"t question number 4?", "t question number 17?", "t question number 9?"}
    assert "t question number 5?" in kept


def test_stage_source_errors(tmp_path):
    from pseudocot.stages import data as stage

    base = [f"run.out_dir={tmp_path}", "tokenizer.train=false"]
    with pytest.raises(DataError, match="names no train, val or test file"):
        stage.main(load_config("smoke", base + ["data.sources.0.format=jsonl"]))
    f = tmp_path / "dup.yaml"
    f.write_text("extends: smoke\ndata:\n  sources:\n    - name: arith\n    - name: arith\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: key 'data.sources' uses the name 'arith' twice"):
        load_config(f, base)
