"""Tasks: harness extractions and exact_match on hand-scored outputs, prompts character for
character, MMLU loading and both MMLU scorings, the registry, and `pseudocot eval score`.

Every expected verdict below was worked out by hand from the rules in SCORING.md, not by running
the code; the fixtures are small files written for these tests.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from pseudocot.cli import cli
from pseudocot.config import ArithConfig
from pseudocot.data import arith as arith_data
from pseudocot.data.chat import answer_text
from pseudocot.data.example import Example
from pseudocot.errors import ConfigError, DataError
from pseudocot.tasks import get_task, pick_choice
from pseudocot.tasks.extract import (
    GSM8K_MATCH,
    INVALID,
    LETTER_MATCH,
    ExactMatch,
    answer_line,
    choice_letter,
    flexible_number,
    gsm8k_cot_strict,
    gsm8k_strict,
    mmlu_first_line,
    regex_filter,
)

FIXTURES = Path(__file__).parent / "fixtures"
MMLU_DIR = FIXTURES / "mmlu"
SUBJECT = "elementary_mathematics"


def ex(answer: str, question: str = "q?", **kw) -> Example:
    return Example(id="x", question=question, answer=answer, **kw)


# ------------------------------------------------------------------------------ harness filter and metric


def test_regex_filter_follows_the_harness():
    assert regex_filter("no digits", r"#### (\d+)") == INVALID
    assert regex_filter("#### 1\n#### 2", r"#### (\d+)") == "1"  # group_select 0: the first match
    assert regex_filter("#### 1\n#### 2", r"#### (\d+)", group_select=-1) == "2"
    # several groups: the first non-empty one of the selected match, then strip
    assert regex_filter("a 12 b 7", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1) == "7"
    assert regex_filter("x  ", r"(x\s*)") == "x"
    assert regex_filter("", r"#### (\d+)", fallback="none") == "none"


def test_exact_match_applies_regexes_in_order_then_case_then_punctuation():
    assert GSM8K_MATCH.normalise("$1,234.") == "1234"
    assert GSM8K_MATCH.normalise("Step one.\n#### 1,234") == "1234"
    # `\.$` runs after `,` is removed, so the period that was second to last goes too
    assert GSM8K_MATCH.normalise("10.,") == "10"
    assert ExactMatch(regexes_to_ignore=(r"\.$", ",")).normalise("10.,") == "10."
    assert not GSM8K_MATCH("5.00", "5")  # no numeric normalisation
    assert ExactMatch(ignore_case=True)("ABC", "abc") and not ExactMatch()("ABC", "abc")
    assert LETTER_MATCH("(b).", "B")


# Each row: output text, gold answer, expected (strict, flexible, answer-line) for task gsm8k.
GSM8K_CASES = [
    ("Natalia sold 24 clips in May.\n#### 72", "72", (True, True, True)),
    ("She sold 48 + 24 = 72 clips. The answer is 72.", "72", (False, True, True)),
    ("#### 1,234", "1234", (True, True, True)),
    ("It costs $1,234.", "1234", (False, True, False)),
    ("#### 72\nCheck: 72 + 1 = 73", "72", (True, False, True)),
    ("The answer is 5.00", "5", (False, False, False)),
    ("It fell to -3 degrees.\n#### -3", "-3", (True, True, True)),
    ("THE ANSWER IS 7", "7", (False, True, True)),
    ("Final Answer: $1,250", "1250", (False, True, True)),
    ("The final answer is $\\boxed{18}$", "18", (False, True, True)),
    ("**The answer is 42**", "42", (False, True, True)),
    ("I am not sure.", "3", (False, False, False)),
    ("#### 12\nThe answer is 13.", "13", (False, True, True)),
]


@pytest.mark.parametrize("text, gold, expected", GSM8K_CASES)
def test_gsm8k_extractions_hand_scored(text, gold, expected):
    task = get_task("gsm8k")
    verdict = task.score(text, ex(gold))
    assert (verdict["strict-match"], verdict["flexible-extract"], verdict["answer-line"]) == expected
    assert task.reward(text, ex(gold)) == float(expected[0])
    assert task.reward(text, ex(gold), extraction="answer-line") == float(expected[2])


def test_gsm8k_extracted_strings():
    assert gsm8k_strict("x #### 1,234.5 y") == "1,234.5"
    assert flexible_number("costs $1,234.") == "$1,234."
    assert flexible_number("just 7") == "7"
    assert answer_line("the answer is 3. Later the answer is 4.") == "4"  # the last statement
    assert answer_line("nothing stated 9") == INVALID


# gsm8k_cot strict: `The answer is (\-?[0-9\.\,]+).`, the first match; the last `.` needs a character.
COT_CASES = [
    ("3 + 4 = 7. The answer is 7.", "7", (True, True)),
    ("The answer is 7", "7", (False, True)),      # nothing after the number for the final `.`
    ("The answer is 12", "12", (False, True)),    # `.` eats the 2: strict reads 1
    ("The answer is 1,250 dollars.", "1250", (True, True)),  # the `.` of strict matches the space
    ("#### 8", "8", (False, True)),
    ("The answer is 5. The answer is 6.", "6", (False, True)),  # strict takes the first
]


@pytest.mark.parametrize("text, gold, expected", COT_CASES)
def test_gsm8k_cot_extractions_hand_scored(text, gold, expected):
    verdict = get_task("gsm8k_cot").score(text, ex(gold))
    assert (verdict["strict-match"], verdict["flexible-extract"]) == expected


def test_cot_quirks_extracted():
    assert gsm8k_cot_strict("The answer is 12") == "1"
    assert gsm8k_cot_strict("The answer is 7") == INVALID
    # the lone "." after "dollars" is too short for the first group and no digit for the second
    assert flexible_number("The answer is 1,250 dollars.") == "1,250"


# MMLU generative: strict = first line, stripped, compared ignoring case and punctuation;
# letter = ours. Expected (strict, letter) against gold B.
MMLU_TEXT_CASES = [
    ("B", (True, True)),
    (" (b)\nbecause 7 x 8 = 56", (True, False)),   # letter wants an upper-case letter
    ("B) 56", (False, True)),
    ("The answer is B.", (False, True)),
    ("The answer is (C)", (False, False)),
    ("E", (False, False)),
    ("", (False, False)),
    ("b.", (True, False)),
    ("56, so the answer is (B)", (False, True)),
]


@pytest.mark.parametrize("text, expected", MMLU_TEXT_CASES)
def test_mmlu_generative_hand_scored(text, expected):
    task = get_task(f"mmlu:{SUBJECT}")
    verdict = task.score(text, ex("B", choices=["54", "56", "58", "64"]))
    assert (verdict["strict-match"], verdict["letter"]) == expected


def test_letter_extraction():
    assert mmlu_first_line("  C.  \nmore") == "C."
    assert choice_letter("A prime is 29, so the answer is (C).") == "C"
    assert choice_letter("(D) 33") == "D"
    assert choice_letter("F") == INVALID
    assert choice_letter("F", n_choices=6) == "F"


def test_mmlu_loglikelihood_scoring():
    task = get_task(f"mmlu:{SUBJECT}")
    q = task.load(MMLU_DIR)[0]  # gold B
    assert task.score_loglikelihoods([-1.2, -0.3, -2.0, -5.1], q) == {"acc": True}
    assert task.score_loglikelihoods([-0.1, -0.3, -2.0, -5.1], q) == {"acc": False}
    # a tie goes to the first option (numpy.argmax): A, so wrong against B
    assert task.score_loglikelihoods([-1.0, -1.0, -2.0, -3.0], q) == {"acc": False}
    assert pick_choice([-3.0, -1.0, -1.0]) == 1
    with pytest.raises(ValueError):
        task.score_loglikelihoods([-1.0, -2.0], q)
    requests = task.loglikelihood_requests(q)
    assert [c for _, c in requests] == [" A", " B", " C", " D"]
    assert {ctx for ctx, _ in requests} == {task.prompt(q)}


# ------------------------------------------------------------------------------ MMLU loading and prompts

DESCRIPTION = "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"


def test_mmlu_loads_a_folder_and_keeps_multiline_questions():
    task = get_task(f"mmlu:{SUBJECT}")
    by_folder = task.load(MMLU_DIR)
    by_file = task.load(MMLU_DIR / "test" / f"{SUBJECT}_test.csv")
    assert [e.to_dict() for e in by_folder] == [e.to_dict() for e in by_file]
    assert len(by_folder) == 4
    assert [e.answer for e in by_folder] == ["B", "C", "C", "C"]
    assert by_folder[1].question == "A train travels 60 km in 1 hour.\nHow far does it travel in 3 hours?"
    assert by_folder[1].choices == ["120 km", "160 km", "180 km", "1,800 km"]
    assert by_folder[3].choices[3] == "none of these, sadly"
    with pytest.raises(DataError, match="college_physics_test.csv"):
        get_task("mmlu:college_physics").load(MMLU_DIR)


def test_mmlu_zero_shot_prompt():
    task = get_task(f"mmlu:{SUBJECT}")
    q = task.load(MMLU_DIR)[1]
    assert task.prompt(q) == (DESCRIPTION + "A train travels 60 km in 1 hour.\nHow far does it travel in 3 hours?\n"
                              "A. 120 km\nB. 160 km\nC. 180 km\nD. 1,800 km\nAnswer:")


def test_mmlu_five_shot_style_prompt_takes_dev_rows_in_order():
    task = get_task(f"mmlu:{SUBJECT}", num_fewshot=2, fewshot=MMLU_DIR)
    questions = task.load(MMLU_DIR)
    expected_first = (DESCRIPTION
                      + "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer: B\n\n"
                      + "Round 4.6\nto the nearest whole number.\nA. 4\nB. 4.5\nC. 5\nD. 6\nAnswer: C\n\n"
                      + "What is 7 x 8?\nA. 54\nB. 56\nC. 58\nD. 64\nAnswer:")
    prompts = task.prompts(questions)
    assert prompts[0] == expected_first
    # first_n: every question gets the same shots
    assert all(p.startswith(expected_first[: -len("What is 7 x 8?\nA. 54\nB. 56\nC. 58\nD. 64\nAnswer:")]) for p in prompts)
    # the dev file given as a file works the same
    same = get_task(f"mmlu:{SUBJECT}", num_fewshot=2, fewshot=MMLU_DIR / "dev" / f"{SUBJECT}_dev.csv")
    assert same.prompts(questions) == prompts


def test_mmlu_messages():
    task = get_task(f"mmlu:{SUBJECT}", num_fewshot=1, fewshot=MMLU_DIR)
    q = task.load(MMLU_DIR)[0]
    [msgs] = task.messages([q])
    assert msgs == [
        {"role": "system", "content": DESCRIPTION},
        {"role": "user", "content": "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "What is 7 x 8?\nA. 54\nB. 56\nC. 58\nD. 64\nAnswer:"},
    ]
    [single] = task.messages([q], multiturn=False, system="Be brief.")
    assert single[0] == {"role": "system", "content": "Be brief.\n\n" + DESCRIPTION}
    assert single[1:] == [{"role": "user", "content": task.prompt(q)[len(DESCRIPTION):]}]


# ------------------------------------------------------------------------------ GSM8K prompts


def _shot(q: str, solution: str) -> str:
    return f"Question: {q}\nAnswer: {solution}\n\n"


def test_gsm8k_prompts_use_one_advancing_random_sampler():
    train = [json.loads(line) for line in (FIXTURES / "gsm8k_train.jsonl").read_text().splitlines() if line.strip()]
    task = get_task("gsm8k", num_fewshot=2, fewshot=FIXTURES / "gsm8k_train.jsonl")
    tests = task.load(FIXTURES / "gsm8k_test.jsonl")
    # reference: one random.Random(1234), k indices per question in order (sample over indices
    # draws exactly what sample over the list draws)
    rng = random.Random(1234)
    expected = []
    for t in tests:
        shots = "".join(_shot(train[i]["question"].strip(), train[i]["answer"]) for i in rng.sample(range(len(train)), 2))
        expected.append(shots + f"Question: {t.question}\nAnswer:")
    assert task.prompts(tests) == expected
    assert "<<" in expected[0]  # the full solution, calculator notes and all, is the target
    assert task.stop == ("Question:", "</s>", "<|im_end|>")


def test_gsm8k_cot_prompt_is_first_n_exemplars():
    task = get_task("gsm8k_cot", num_fewshot=3, fewshot=FIXTURES / "gsm8k_cot_fewshot.jsonl")
    q = task.load(FIXTURES / "gsm8k_test.jsonl")[0]
    assert task.prompt(q) == (
        "Q: Tim has 3 red balls and 4 blue balls. How many balls does he have?\n"
        "A: Tim has 3 red and 4 blue balls. 3 + 4 = 7. The answer is 7.\n\n"
        "Q: A box holds 6 eggs. How many eggs are in 5 boxes?\n"
        "A: Each box holds 6 eggs. 5 x 6 = 30. The answer is 30.\n\n"
        "Q: Sara had 10 dollars and spent 4. How much is left?\n"
        "A: Sara had 10 dollars. She spent 4. 10 - 4 = 6. The answer is 6.\n\n"
        "Q: A baker makes 12 loaves each hour for 3 hours. How many loaves does she make?\nA:")
    [msgs] = task.messages([q])
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 3 + ["user"]
    assert msgs[1]["content"] == "Tim has 3 red and 4 blue balls. 3 + 4 = 7. The answer is 7."
    # gsm8k examples as a cot pool: the target is the bare number, as the harness's doc_to_target
    pool_task = get_task("gsm8k_cot", num_fewshot=1, fewshot=FIXTURES / "gsm8k_train.jsonl")
    assert pool_task.prompt(q).startswith("Q: Natalia sold clips") and "\nA: 72\n\nQ: A baker" in pool_task.prompt(q)


def test_fewshot_errors_are_one_sentence():
    with pytest.raises(ConfigError, match="fewshot=PATH"):
        get_task("gsm8k").prompts(get_task("gsm8k").load(FIXTURES / "gsm8k_test.jsonl"))
    with pytest.raises(ConfigError, match="pool has 3"):
        get_task("gsm8k_cot", fewshot=FIXTURES / "gsm8k_cot_fewshot.jsonl").prompts([ex("1")])


def test_shot_equal_to_the_question_is_replaced():
    # pool == questions (same split): the harness draws k + 1 and drops the question itself
    pool = [ex(str(i), question=f"q{i}") for i in range(4)]
    task = get_task("arith", num_fewshot=2, fewshot=pool, sampler="first_n")
    shots = task.shots(pool)
    assert [[s.question for s in row] for row in shots] == [["q1", "q2"], ["q0", "q2"], ["q0", "q1"], ["q0", "q1"]]


# ------------------------------------------------------------------------------ arith and jsonl


def test_arith_gold_reasoning_scores_and_rewards():
    task = get_task("arith")
    examples = arith_data.generate(20, ArithConfig(max_steps=3), seed=5)
    for e in examples:
        assert task.score(answer_text(e), e) == {"answer-line": True, "flexible-extract": True}
        assert task.reward(answer_text(e), e) == 1.0
        wrong = answer_text(e).replace(f"The answer is {e.answer}.", f"The answer is {int(e.answer) + 1}.")
        assert task.reward(wrong, e) == 0.0
    assert task.messages(examples[:1]) == [[{"role": "user", "content": examples[0].question}]]


def test_jsonl_task_text_number_letter():
    fields = {"id": "uid", "question": "prompt", "answer": "label", "reasoning": "why"}
    text = get_task("jsonl", fields=fields, extraction="text")
    rows = text.load(FIXTURES / "custom_qa.jsonl")
    assert text.score("The answer is paris.", rows[0]) == {"exact": True}
    assert text.score("Paris\nbecause it is.", rows[0]) == {"exact": True}
    assert text.score("Lyon", rows[0]) == {"exact": False}
    assert text.prompt(rows[0]) == "Question: What is the capital of France?\nAnswer:"

    number = get_task("jsonl", fields=fields)
    assert number.score("Eight legs: 4 + 4 = 8. The answer is 8.", rows[1]) == {"answer-line": True, "flexible-extract": True}

    letter = get_task("jsonl", fields={"question": "q", "choices": "A,B,C,D", "answer": "gold"}, extraction="letter")
    mc = letter.load(FIXTURES / "custom_mc.csv")
    assert letter.score("The answer is (B)", mc[0]) == {"letter": True}
    assert letter.score("A", mc[0]) == {"letter": False}
    assert letter.prompt(mc[0]) == "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:"
    assert letter.score_loglikelihoods([-3.0, -0.5, -2.0, -4.0], mc[0]) == {"acc": True}


# ------------------------------------------------------------------------------ registry


def test_registry_errors_and_dotted_path():
    with pytest.raises(ConfigError, match="unknown task 'gsm9k'"):
        get_task("gsm9k")
    with pytest.raises(ConfigError, match="has no option 'shots'.*num_fewshot"):
        get_task("gsm8k", shots=3)
    with pytest.raises(ConfigError, match="needs a subject"):
        get_task("mmlu")
    with pytest.raises(ConfigError, match="extraction 'regex'"):
        get_task("jsonl", extraction="regex")
    own = get_task("pseudocot.tasks.gsm8k:gsm8k", num_fewshot=0)
    assert own.name == "gsm8k" and own.num_fewshot == 0
    with pytest.raises(ConfigError, match="cannot be imported"):
        get_task("no_such_pkg.mod:task")
    with pytest.raises(ConfigError, match="not a Task"):
        get_task("pseudocot.tasks.registry:NAMES")


# ------------------------------------------------------------------------------ pseudocot eval score


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gsm8k_rows():
    return [json.loads(line) for line in (FIXTURES / "gsm8k_test.jsonl").read_text().splitlines()]


def _plus_one(solution: str) -> str:
    head, _, gold = solution.rpartition("#### ")
    value = gold.replace(",", "")
    return head + "#### " + (str(int(value) + 1) if value.lstrip("-").isdigit() else str(float(value) + 1))


def test_eval_score_gold_and_off_by_one(tmp_path):
    rows = _gsm8k_rows()
    gold = _write(tmp_path / "gold.jsonl", [{"question": r["question"], "prediction": r["answer"]} for r in rows])
    result = invoke("eval", "score", "--task", "gsm8k", "--data", FIXTURES / "gsm8k_test.jsonl", "--predictions", gold)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 5 and summary["task"] == "gsm8k" and summary["primary"] == "strict-match"
    assert summary["accuracy"] == {"strict-match": 1.0, "flexible-extract": 1.0, "answer-line": 1.0}
    assert summary["ci95"]["strict-match"] == [1.0, 1.0]
    assert summary["faithfulness"] == {"mean": 1.0, "n": 5}
    verdicts = [json.loads(line) for line in (tmp_path / "gold.verdicts.jsonl").read_text().splitlines()]
    assert [v["id"] for v in verdicts] == [f"gsm8k/test/{i}" for i in range(5)]
    assert verdicts[1]["extracted"]["strict-match"] == "1,550" and verdicts[1]["answer"] == "1550"

    bumped = _write(tmp_path / "bumped.jsonl", [{"id": f"gsm8k/test/{i}", "prediction": _plus_one(r["answer"])}
                                                for i, r in enumerate(rows)])
    out = tmp_path / "v" / "bumped-verdicts.jsonl"
    result = invoke("eval", "score", "--task", "gsm8k", "--data", FIXTURES / "gsm8k_test.jsonl", "--predictions", bumped,
                    "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] == {"strict-match": 0.0, "flexible-extract": 0.0, "answer-line": 0.0}
    assert out.is_file() and summary["verdicts"] == str(out)


def test_eval_score_mmlu_both_ways(tmp_path):
    preds = _write(tmp_path / "p.jsonl", [
        {"id": f"mmlu:{SUBJECT}/test/0", "prediction": "B", "loglikelihoods": [-2, -0.1, -3, -4]},       # strict, letter, ll: yes yes yes
        {"id": f"mmlu:{SUBJECT}/test/1", "prediction": "(c)", "loglikelihoods": [-2, -0.1, -3, -4]},     # yes no no (gold C)
        {"id": f"mmlu:{SUBJECT}/test/2", "prediction": "C) 29", "loglikelihoods": [-5, -5, -0.5, -4]},   # no yes yes
        {"id": f"mmlu:{SUBJECT}/test/3", "prediction": "D", "loglikelihoods": [-5, -5, -5, -0.5]},       # no no no
    ])
    result = invoke("eval", "score", "--task", f"mmlu:{SUBJECT}", "--data", MMLU_DIR, "--predictions", preds)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] == {"strict-match": 0.5, "letter": 0.5, "loglikelihood": 0.5}
    assert summary["primary"] == "loglikelihood"
    assert "reasoning" not in summary


@pytest.mark.parametrize("rows, message", [
    ([{"id": "gsm8k/test/0", "prediction": "#### 36"}, {"id": "nope", "prediction": "1"}], ":2: id 'nope' is not in"),
    ([{"id": "gsm8k/test/0"}], ":1: the row has no 'prediction'"),
    ([{"question": "What is love?", "prediction": "1"}], ":1: no question of"),
    ([{"prediction": "1"}], ":1: the row has neither 'id' nor 'question'"),
    ([{"id": "gsm8k/test/0", "prediction": "1"}, {"id": "gsm8k/test/0", "prediction": "2"}], ":2: a second prediction"),
    ([{"id": f"gsm8k/test/{i}", "prediction": "1"} for i in range(4)], "no prediction for 1 of the 5 questions"),
])
def test_eval_score_user_errors(tmp_path, rows, message):
    preds = _write(tmp_path / "p.jsonl", rows)
    result = invoke("eval", "score", "--task", "gsm8k", "--data", FIXTURES / "gsm8k_test.jsonl", "--predictions", preds)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "p.verdicts.jsonl").exists()


def test_eval_help_lists_subcommands():
    result = invoke("eval", "--help")
    assert result.exit_code == 0
    for sub in ("score", "merge", "report"):
        assert sub in result.output
