"""The faithfulness filter (`pseudocot synth filter`, `pseudocot.synth.filter`): hand-made GSM8K-style
solutions that trip every check and every rejection reason, planted arithmetic errors in real gold
solutions, the shipped gold solutions kept, the judge through a fake endpoint, a user's own check."""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from pseudocot.cli import cli
from pseudocot.data.jsonl import read_examples
from pseudocot.data.loaders import load_gsm8k
from pseudocot.synth.filter import Candidate, FilterSettings, last_step_value, run_filter, split_solution
from pseudocot.tasks import get_task

GSM8K_FIXTURE = Path(__file__).parents[1] / "src/pseudocot/configs/data/gsm8k/test_first100.jsonl"

NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether in April and May?")
WENG = "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"
BETTY = "Betty has 3 boxes of 4 pens. How many pens does she have?"


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def gold_file(tmp_path: Path) -> Path:
    rows = [
        {"question": NATALIA, "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                                        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"},
        {"question": WENG, "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
                                     "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
        {"question": BETTY, "answer": "3 * 4 = <<3*4=12>>12\n#### 12"},
    ]
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48 + 24 = 72 clips in all.\n#### 72"

# (row, the reason codes it must get; [] = kept). Natalia's rows are one question with many samples,
# most of them answering 72, so its consistency holds (72 is the majority) except for the 144 one.
CASES = [
    ({"id": "gsm8k/gold/0", "completion": GOOD}, []),
    ({"id": "gsm8k/gold/0", "completion": GOOD}, ["format:duplicate"]),
    ({"id": "gsm8k/gold/0", "completion": "Natalia sold 48/2 = 24 clips in May.\n48 + 24 = 72"},
     ["format:no-answer-line", "answer:none", "consistency:minority"]),
    ({"question": NATALIA, "completion": "Natalia sold 48/2 = 25 clips in May.\n48 + 24 = 72 clips.\n#### 72"},
     ["arithmetic:false"]),
    ({"question": NATALIA, "completion": "She sold 48 / 2 = 24 clips in May.\n24 + 24 = 48 clips.\n#### 72"},
     ["follows:mismatch"]),
    ({"question": NATALIA, "completion": "I know this one by heart.\n#### 72"}, ["follows:no-result"]),
    ({"question": NATALIA, "completion": "In May she sold 48 * 2 = 96.\nIn all 48 + 96 = 144.\n#### 144"},
     ["answer:wrong", "consistency:minority"]),
    ({"question": NATALIA, "completion": "48 / 2 = 24 in May.\n48 + 24 = 72 in all.\n#### 72", "finish_reason": "length"},
     ["format:cut-off"]),
    ({"question": NATALIA, "completion": "#### 72"}, ["format:steps", "follows:no-result"]),
    ({"question": NATALIA, "completion": "In May she sold 48 / 2 = 24. " + "She counted again. " * 40 + "\n48 + 24 = 72\n#### 72"},
     ["format:long-step"]),
    ({"question": NATALIA, "completion": "48 / 2 = 24 clips in May.\n48 + 24 = 72 clips in all.\nThe answer is 72."},
     ["answer:none", "consistency:minority"]),  # GSM8K's own format is `#### N` (--extraction strict-match)
    # Weng: four samples, four different answers: no majority (and three of them are wrong).
    ({"question": WENG, "completion": "12 / 60 = 0.2 per minute.\n0.2 * 50 = 10\n#### 10"}, ["consistency:no-majority"]),
    ({"question": WENG, "completion": "12 / 60 = 0.2 per minute.\n0.2 * 55 = 11\n#### 11"}, ["answer:wrong", "consistency:no-majority"]),
    ({"question": WENG, "completion": "12 * 1 = 12 per hour.\n#### 12"}, ["answer:wrong", "consistency:no-majority"]),
    ({"question": WENG, "completion": "12 / 60 = 0.2 per minute.\n0.2 * 65 = 13\n#### 13"}, ["answer:wrong", "consistency:no-majority"]),
    # Betty: one sample, kept (consistency needs two).
    ({"question": BETTY, "completion": "She has 3 boxes x 4 pens = 12 pens.\n#### 12"}, []),
]


def test_every_check_and_reason_on_hand_made_solutions(tmp_path):
    cands = tmp_path / "candidates.jsonl"
    cands.write_text("".join(json.dumps(row) + "\n" for row, _ in CASES))
    out = tmp_path / "kept.jsonl"
    result = invoke("synth", "filter", "--task", "gsm8k", "--data", gold_file(tmp_path), "--candidates", cands, "--out", out,
                    "--checks", "format,answer,arithmetic,follows,consistency", "--extraction", "strict-match")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    expected_kept = sum(1 for _, codes in CASES if not codes)
    assert summary["candidates"] == len(CASES) and summary["kept"] == expected_kept
    rejects = [json.loads(line) for line in (tmp_path / "kept.rejects.jsonl").read_text().splitlines()]
    rejected_cases = [(row, codes) for row, codes in CASES if codes]
    assert len(rejects) == len(rejected_cases)
    for got, (row, codes) in zip(rejects, rejected_cases):
        assert got["completion"] == row["completion"]
        assert sorted(r.split(": ", 1)[0] for r in got["reasons"]) == sorted(codes), got["completion"][:60]
        assert all(": " in r and r.split(": ", 1)[1] for r in got["reasons"])  # every reason says why
    counts: dict[str, int] = {}
    for _, codes in rejected_cases:
        for c in codes:
            counts[c] = counts.get(c, 0) + 1
    assert summary["rejected"] == counts
    every = {"format:no-answer-line", "format:cut-off", "format:steps", "format:long-step", "format:duplicate", "answer:none",
             "answer:wrong", "arithmetic:false", "follows:no-result", "follows:mismatch", "consistency:no-majority",
             "consistency:minority"}
    assert set(counts) == every
    kept = read_examples(out).examples
    assert [k.answer for k in kept] == ["72", "12"]
    assert kept[0].reasoning == "Natalia sold 48/2 = 24 clips in May.\nShe sold 48 + 24 = 72 clips in all."
    assert kept[0].meta["synth"]["gold"] == "72" and kept[0].meta["synth"]["sample"] == 0
    assert kept[0].id == "gsm8k/gold/0/s0"


def test_the_arithmetic_reason_names_the_line_and_the_true_value(tmp_path):
    task = get_task("gsm8k")
    gold = load_gsm8k(gold_file(tmp_path)).examples[0]
    c = Candidate(id=gold.id, sample=0, question=gold.question, gold=gold,
                  completion="Natalia sold 48/2 = 24 clips in May.\nShe sold 48 + 24 = 73 clips.\n#### 72")
    result = run_filter([c], FilterSettings(task=task), ["arithmetic"])
    (reason,) = result.rejected[0][1]
    assert reason.startswith("arithmetic:false: line 2: ") and "48 + 24 = 73" in reason and "72" in reason


def gold_solutions() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in GSM8K_FIXTURE.read_text().splitlines() if line.strip()]
    return [(r["question"], r["answer"]) for r in rows]


def test_the_shipped_gold_solutions_are_kept(tmp_path):
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps({"question": q, "completion": a}) + "\n" for q, a in gold_solutions()))
    out = tmp_path / "kept.jsonl"
    result = invoke("synth", "filter", "--task", "gsm8k", "--data", GSM8K_FIXTURE, "--candidates", cands, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    rejects = (tmp_path / "kept.rejects.jsonl").read_text().splitlines() if (tmp_path / "kept.rejects.jsonl").exists() else []
    assert summary["kept"] == 100, [json.loads(r)["reasons"] for r in rejects]


_NOTE = re.compile(r"<<([^=<>]*)=([-0-9.]+)>>([-0-9.]+)")


def plant(solution: str) -> tuple[str, int] | None:
    """One intermediate result changed (+1 in its calculator note and in the text after it), the final
    answer kept; (planted solution, line) or None when the solution has only one calculation."""
    lines = solution.split("\n")
    # (a note must hold a calculation: one gold solution has the junk note `<<+8=9>>`)
    calc = [i for i, line in enumerate(lines[:-1]) if (m := _NOTE.search(line)) and re.match(r"[\d(.]", m.group(1))]
    if len(calc) < 2:
        return None
    i = calc[0]
    m = _NOTE.search(lines[i])
    assert m is not None
    wrong = str(int(float(m.group(2))) + 1) if float(m.group(2)).is_integer() else f"{float(m.group(2)) + 1:g}"
    lines[i] = lines[i][: m.start()] + f"<<{m.group(1)}={wrong}>>{wrong}" + lines[i][m.end():]
    return "\n".join(lines), i + 1


def test_planted_errors_in_gold_solutions_are_rejected_by_arithmetic(tmp_path):
    planted = [(q, p) for q, a in gold_solutions() if (p := plant(a))]
    assert len(planted) >= 60
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps({"question": q, "completion": p[0]}) + "\n" for q, p in planted))
    out = tmp_path / "kept.jsonl"
    result = invoke("synth", "filter", "--task", "gsm8k", "--data", GSM8K_FIXTURE, "--candidates", cands, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["kept"] == 0
    rejects = [json.loads(line) for line in (tmp_path / "kept.rejects.jsonl").read_text().splitlines()]
    for row, (_, (_, line)) in zip(rejects, planted):
        arith = [r for r in row["reasons"] if r.startswith("arithmetic:false")]
        assert arith and arith[0].startswith(f"arithmetic:false: line {line}: "), row["reasons"]
        assert not any(r.startswith("answer:") for r in row["reasons"])  # the final answer is still right


class FakeJudge:
    """A judge endpoint: 1 unless the solution says BAD (0) or ODD (a reply without a verdict)."""

    def __init__(self):
        self.calls = 0
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.calls += 1
                text = body["messages"][-1]["content"]
                reply = "maybe" if "ODD" in text else "<think>step 2 is off</think>0" if "BAD" in text else "1"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_judge_check_through_an_endpoint_is_cached(tmp_path):
    judge = FakeJudge()
    try:
        rows = [{"question": BETTY, "completion": "3 * 4 = 12 pens.\n#### 12"},
                {"question": BETTY, "completion": "BAD: 3 * 4 = 12 pens.\n#### 12"},
                {"question": BETTY, "completion": "ODD: 3 * 4 = 12 pens.\n#### 12"},
                {"question": BETTY, "completion": "3 * 4 = 12\n#### 13"}]  # fails answer: never sent to the judge
        cands = tmp_path / "c.jsonl"
        cands.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / "kept.jsonl"
        args = ("synth", "filter", "--task", "gsm8k", "--data", gold_file(tmp_path), "--candidates", cands, "--out", out,
                "--checks", "format,answer,judge", "--judge-base-url", judge.url, "--judge-model", "judge")
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output.strip().splitlines()[-1])
        assert summary["kept"] == 1
        assert summary["rejected"] == {"answer:wrong": 1, "judge:rejected": 1, "judge:unreadable": 1}
        assert judge.calls == 3
        assert len((tmp_path / "kept.judge.jsonl").read_text().splitlines()) == 2  # a reply without a verdict is not kept
        assert invoke(*args).exit_code == 0
        assert judge.calls == 4  # the two verdicts came from the cache; the unreadable one was asked again
    finally:
        judge.server.shutdown()
        judge.server.server_close()


def test_without_gold_answers_consistency_decides(tmp_path):
    rows = [{"question": "What is 2 + 2?", "completion": f"2 + 2 = {v}\nFinal answer: {v}"} for v in (4, 4, 4, 5)]
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "kept.jsonl"
    result = invoke("synth", "filter", "--task", "arith", "--candidates", cands, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    # the 5 fails arithmetic and is the minority; of three identical 4s two are duplicates
    assert summary["kept"] == 1
    assert summary["rejected"] == {"arithmetic:false": 1, "consistency:minority": 1, "format:duplicate": 2}
    (kept,) = read_examples(out).examples
    assert kept.answer == "4" and kept.meta["synth"]["gold"] is None


def test_a_users_own_check_by_dotted_path(tmp_path, monkeypatch):
    (tmp_path / "mychecks.py").write_text(
        "def no_sevens(cands, settings):\n    return [['mine:seven: has a 7'] if '7' in c.completion else [] for c in cands]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mychecks", None)
    rows = [{"question": BETTY, "completion": "3 * 4 = 12\n#### 12"}, {"question": WENG, "completion": "0.2 * 50 = 10, 7\n#### 10"}]
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("synth", "filter", "--task", "gsm8k", "--data", gold_file(tmp_path), "--candidates", cands,
                    "--out", tmp_path / "k.jsonl", "--checks", "answer,mychecks:no_sevens")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["rejected"] == {"mine:seven": 1}


@pytest.mark.parametrize("args, message", [
    (("--checks", "format,nonsense"), "unknown check 'nonsense'"),
    (("--checks", "judge"), "judge"),
])
def test_bad_filter_options_are_one_line(tmp_path, args, message):
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"question": BETTY, "completion": "#### 12"}) + "\n")
    result = CliRunner().invoke(cli, ["synth", "filter", "--task", "gsm8k", "--data", str(gold_file(tmp_path)), "--candidates",
                                      str(cands), "--out", str(tmp_path / "k.jsonl"), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_bad_candidate_rows_name_the_line(tmp_path):
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"question": BETTY, "completion": "#### 12"}) + "\n" + json.dumps({"id": "nope", "completion": "x"}) + "\n")
    result = CliRunner().invoke(cli, ["synth", "filter", "--task", "gsm8k", "--data", str(gold_file(tmp_path)), "--candidates",
                                      str(cands), "--out", str(tmp_path / "k.jsonl")])
    assert result.exit_code == 1 and f"{cands}:2: id 'nope' is not in the gold data" in result.output
    assert not (tmp_path / "k.jsonl").exists()


def test_split_solution_and_last_step_value():
    assert split_solution("a = 1\n\nb\n#### 5") == (["a = 1", "b"], "#### 5")
    assert split_solution("no answer here\n2 + 2 = 4") == (["no answer here", "2 + 2 = 4"], None)
    assert last_step_value(["3 + 4 = 7 apples", "so 7 * 2 = 14 apples, in 2 bags"]) == (2, "14")
    assert last_step_value(["3 + 4 = 7", "She has 9 now."]) == (2, "9")
    assert last_step_value(["no numbers", "none here"]) is None


def test_the_config_names_the_registry_checks():
    from pseudocot.config.schema import SYNTH_CHECKS
    from pseudocot.synth.filter import CHECKS

    assert tuple(CHECKS) == SYNTH_CHECKS


def test_the_default_extraction_reads_the_default_prompts_answer_line(tmp_path):
    # gsm8k's primary (strict-match) reads only `#### N`; the filter reads `Final answer: N` too
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"question": BETTY, "completion": "3 * 4 = 12 pens\nFinal answer: 12"}) + "\n")
    result = invoke("synth", "filter", "--task", "gsm8k", "--data", gold_file(tmp_path), "--candidates", cands, "--out", tmp_path / "k.jsonl")
    assert json.loads(result.output.strip().splitlines()[-1])["kept"] == 1
    result = invoke("synth", "filter", "--task", "gsm8k", "--data", gold_file(tmp_path), "--candidates", cands, "--out", tmp_path / "k.jsonl",
                    "--extraction", "strict-match")
    assert json.loads(result.output.strip().splitlines()[-1])["rejected"] == {"answer:none": 1}
