"""The arithmetic check (`synth.arithmetic`): the parser against hand-computed values, the statement rules one
by one, real GSM8K gold solutions (no false statement) with planted errors (each one found), and fuzzed text
(never an exception)."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from pseudocot.synth.arithmetic import (
    ExpressionError,
    Statement,
    close,
    evaluate,
    false_statements,
    parse_number,
    shown_decimals,
    statements,
)

GSM8K_FIXTURE = Path(__file__).parents[1] / "src/pseudocot/configs/data/gsm8k/test_first100.jsonl"


def _read(text: str) -> list[tuple[str, bool]]:
    """(text, ok) of each statement."""
    return [(s.text, s.ok) for s in statements(text)]


# evaluate ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, value", [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("10 - 4 - 3", 3), ("48 / 2 / 4", 6), ("2 * (3 + (4 - 1))", 12),
    ("-3 + 5", 2), ("-(2 + 3) * 2", -10), ("4 * -2", -8), ("--3", 3), ("3 - -2", 5),
    ("50 * 20%", 10), ("20%", 0.2), ("$1,000 * 150%", 1500),
    ("3 x 4", 12), ("3x4", 12), ("3 × 4", 12), ("12 ÷ 4", 3), ("2 · 5", 10), ("8 − 3", 5),
    ("$12 + $3.50", 15.5), ("1,234 + 1", 1235), ("1,234,567 - 1,000,000", 234567), (".5 * 4", 2), ("3*.25", 0.75),
    ("100-20-30", 50), ("2*(3+4)", 14), ("1/4*100", 25), ("3 \\times 4", 12), ("12 \\div 3", 4),
])
def test_evaluate_values(expr, value):
    assert evaluate(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", [
    "", "abc", "a+b", "2**1000", "2^3", "__import__('os')", "().__class__", "os.system('ls')", "lambda: 1",
    "1 +", "* 2", "(1 + 2", "1 + 2)", "3 4", "5 kg + 3 kg", "3 X 4", "1e5", "1_000", "2 = 2", "[1, 2]",
    "12:30 + 1", "5th + 1", "9" * 31, "(" * 60 + "1" + ")" * 60, " + ".join(["1"] * 150),
])
def test_evaluate_rejects_what_is_not_arithmetic(expr):
    with pytest.raises(ExpressionError):
        evaluate(expr)


def test_evaluate_division_by_zero_is_its_own_error():
    with pytest.raises(ZeroDivisionError):
        evaluate("5 / (3 - 3)")


def test_evaluate_rejects_overflow_instead_of_returning_inf():
    with pytest.raises(ExpressionError):
        evaluate(" * ".join(["9" * 30] * 20))


# numbers and closeness -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("$1,234.50", 1234.5), ("-3", -3.0), ("50%", 50.0), ("12.", 12.0), (".5", 0.5), ("1,000,000", 1e6),
    ("-$5", -5.0), ("$ 680", 680.0), ("0", 0.0), (" 72 ", 72.0),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1,2", "1,2345", "12,34,567", "3 + 4", "1/2", "--3", "$", "%", "9" * 31])
def test_parse_number_none(text):
    assert parse_number(text) is None


@pytest.mark.parametrize("text, decimals", [("72", 0), ("3.25", 2), ("$1,234.50", 2), ("12.", 0), ("20%", 0), ("2.5%", 1)])
def test_shown_decimals(text, decimals):
    assert shown_decimals(text) == decimals


@pytest.mark.parametrize("value, shown, ok", [
    (10 / 3, "3.33", True), (10 / 3, "3.3333", True), (10 / 3, "3.3", True), (10 / 3, "3", True), (10 / 3, "3.34", False),
    (3.5, "3.5", True), (8, "9", False), (36, "35", False), (2 / 3, "0.67", True), (2 / 3, ".67", True),
    (0.2, "20%", True), (20, "20%", True), (0.25, "20%", False), (1234.5, "$1,234.50", True), (-2, "-2", True),
    (0.1 + 0.2, "0.3", True), (1e12 + 0.0001, "1000000000000", True),
    (50 / 3, "16.66", True), (50 / 3, "16.67", True), (50 / 3, "16.65", False), (16.6, "16", False), (-50 / 3, "-16.66", True),
])
def test_close(value, shown, ok):
    assert close(value, shown) is ok


def test_close_on_a_non_number_is_false():
    assert not close(3, "three")
    assert not close(float("nan"), "3")


# plain statements ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("5 kg + 3 kg = 8 kg", [("5 kg + 3 kg = 8", True)]),  # units after numbers are dropped
    ("12 apples x 3 = 36 apples", [("12 apples x 3 = 36", True)]),
    ("Natalia sold 48/2 = 24 clips in May.", [("48/2 = 24", True)]),  # a word not after a number ends the left side
    ("(3 + 4 = 7", [("3 + 4 = 7", True)]),  # an unmatched '(' is dropped
    ("(4 + 6) × 2 = 20", [("(4 + 6) × 2 = 20", True)]),
    ("50 * 20% = 10", [("50 * 20% = 10", True)]),
    ("10 / 50 = 20%", [("10 / 50 = 20%", True)]),  # a `%` result accepts both readings
    ("10 / 50 * 100 = 20%", [("10 / 50 * 100 = 20%", True)]),
    ("15 / 90 * 100% = 16.67%", [("15 / 90 * 100% = 16.67%", True)]),  # `* 100%` as "express as a percent"
    ("10 / 3 = 3.33", [("10 / 3 = 3.33", True)]),
    ("10/3 = 3.3333", [("10/3 = 3.3333", True)]),
    ("7 / 2 = 3.5", [("7 / 2 = 3.5", True)]),
    ("5 + 3 = 9", [("5 + 3 = 9", False)]),
    ("12 * 3 = 35", [("12 * 3 = 35", False)]),
    ("3 - 5 = -2", [("3 - 5 = -2", True)]),
    ("She pays $1,200 × 0.25 = $300 off.", [("$1,200 × 0.25 = $300", True)]),
    ("5 + 3 = 9 and 12 * 3 = 36", [("5 + 3 = 9", False), ("12 * 3 = 36", True)]),
    ("He sold 8 – 3 = 5 cakes.", [("8 – 3 = 5", True)]),  # a spaced en dash between numbers subtracts
    ("He earns $12/hour × 5 hours = $60.", [("$12/hour × 5 hours = $60", True)]),  # a rate is a unit
    ("4 dogs eat 500 grams x 4 = 2000 grams", [("500 grams x 4 = 2000", True)]),  # starts after the verb
    ("Total = 48 + 24 = **72**", [("48 + 24 = **72", True)]),  # markdown bold result
    ("**Step 1:** 48 / 2 = 24", [("48 / 2 = 24", True)]),
    ("- 3 + 4 = 7", [("3 + 4 = 7", True)]),  # a bullet, not a minus sign
    ("1. 5 + 3 = 8", [("5 + 3 = 8", True)]),
    ("\\( 48 \\div 2 = 24 \\)", [("48 \\div 2 = 24", True)]),
    ("$48 \\times 2 = 96$", [("$48 \\times 2 = 96", True)]),
    ("5 + 3 = 8.", [("5 + 3 = 8", True)]),  # a sentence period is not a decimal point
    ("−5 + 3 = −2", [("−5 + 3 = −2", True)]),  # typeset minus signs
    ("\\$48 \\div 2 = \\$24", [("\\$48 \\div 2 = \\$24", True)]),  # LaTeX's escaped dollar
    ("100% - 20% = 80%", [("100% - 20% = 80%", True)]),
    ("50 * 20% + 5 = 15", [("50 * 20% + 5 = 15", True)]),
    ("20 / 240 = 8.333...%", [("20 / 240 = 8.333...%", True)]),  # a repeating decimal, cut
    ("She does 10*.5 = 5 hours per day", [("10*.5 = 5", True)]),  # a rate's `day` is not a second time unit
])
def test_plain_statements(text, expected):
    assert _read(text) == expected


def test_statement_fields():
    (s,) = statements("line one\nShe picks 5 kg + 3 kg = $8 kg")
    assert s == Statement(line=2, text="5 kg + 3 kg = $8", expression="5 + 3", result="$8", value=8.0, kind="text")
    assert evaluate(s.expression) == s.value


def test_chain_each_equals_sign_is_a_statement():
    chain = statements("3 * 4 = 12 * 2 = 24")
    assert [(s.text, s.result, s.ok) for s in chain] == [("3 * 4 = 12", "12", True), ("12 * 2 = 24", "24", True)]
    assert chain[0].chained == 24
    # The left side may equal the whole right side instead of its first number.
    assert [s.ok for s in statements("2 + 2 = 5 - 1 = 4")] == [True, True]
    assert [s.ok for s in statements("2 + 2 = 5 - 2 = 3")] == [False, True]


def test_division_by_zero_is_false():
    (s,) = statements("5 / 0 = 3")
    assert s.value is None and not s.ok
    (s,) = statements("She splits 5 / (2 - 2) = 1 cake")
    assert s.value is None and not s.ok


@pytest.mark.parametrize("text", [
    "Total = 24", "x = 5", "x = -5", "2x + 3 = 11", "x - 5 + 2 = 11", "3x + 5 + 2 = 11", "5 + 3 = 8x",
    "No number: 5 + 3 = eight", "5 + 3 = (8)", "3 + 4 = - 7", "2**3 + 1 = 9", "2^3 + 1 = 9", "5! - 3 = 117",
    "3 1/2 + 1 = 4.5", "1 + 2 = 3 1/2", "17/3 = 5 and 2/3 loads", "1 and 1/4 + 1 = 2.25", "\\frac{1}{2} - 3 + 1 = 5",
    "2 dozen + 3 = 27", "1 million + 500,000 = 1.5 million", "3 times 4 + 2 = 14", "20% of 50 + 10 = 20",
    "2 shirts at $10 each + 5 = 25", "$12 / hour - 5 + 2 = 10", "11:00 + 2 = 13:00", "0900 - 0130 = 0730",
    "2 hours + 30 minutes = 150 minutes", "$2 + 50 cents = $2.50", "on day 1 * 2 = 20 pages", "12,5 + 3 = 15.5",
    "25 / 1/3 = 75", "2(3 + 4) = 14", "2 * 3 = 2(3)", "a == 5 + 3", "5 + 3 <= 9", "3 + 4 ≈ 8", "3 * 4 = 1.2 thousand",
    "He had 50 / 3 = 16 each, with 2 remaining", "(" * 60 + "1 + 1" + ")" * 60 + " = 3", "9" * 31 + " + 1 = 2",
    " + ".join(["1"] * 150) + " = 1", "$50 - 20% = $40", "20% + 50 = 50.2",
])
def test_skips_what_it_cannot_read_with_confidence(text):
    assert statements(text) == []


# calculator notes ---------------------------------------------------------------------------------------------------

def test_notes_and_the_plain_statement_around_them():
    found = statements("Natalia sold 48/2 = <<48/2=24>>24 clips in May.")
    assert [(s.kind, s.text, s.expression, s.result, s.ok) for s in found] == [
        ("text", "48/2 = 24", "48/2", "24", True), ("note", "<<48/2=24>>", "48/2", "24", True)]


@pytest.mark.parametrize("note, ok", [
    ("<<3*.5=1.5>>", True), ("<<100-20-30=50>>", True), ("<<2*(3+4)=14>>", True), ("<<10/3=3.33>>", True),
    ("<<48/2=25>>", False), ("<<5/0=1>>", False), ("<<-18/-2=9>>", True), ("<<80000*1.5=120000>>", True),
])
def test_notes(note, ok):
    (s,) = statements(note)
    assert s.kind == "note" and s.ok is ok


@pytest.mark.parametrize("note", ["<<x=5>>", "<<48/2>>", "<<1=2=3>>", "<<2+2=four>>", "<<__import__('os')=1>>", "<<>>"])
def test_odd_notes_are_skipped(note):
    assert statements(note) == []


def test_order_and_lines():
    text = "a <<1+1=2>> 3*4 = <<3*4=12>>12 apples, 5+5=10 and <<2*2=4>>\n\n7 - 2 = 5"
    assert [(s.line, s.kind, s.text) for s in statements(text)] == [
        (1, "note", "<<1+1=2>>"), (1, "text", "3*4 = 12"), (1, "note", "<<3*4=12>>"), (1, "text", "5+5=10"),
        (1, "note", "<<2*2=4>>"), (3, "text", "7 - 2 = 5")]
    assert [s.text for s in false_statements("1 + 1 = 2\n2 + 2 = 5\n<<3*3=10>>")] == ["2 + 2 = 5", "<<3*3=10>>"]


# real GSM8K gold solutions ----------------------------------------------------------------------------------------

def _gold() -> list[str]:
    return [json.loads(line)["answer"] for line in GSM8K_FIXTURE.read_text().splitlines() if line.strip()]


def test_gold_solutions_have_no_false_statement():
    solutions = _gold()
    assert len(solutions) == 100
    found = [statements(answer) for answer in solutions]
    assert sum(s.kind == "note" for f in found for s in f) > 300  # notes are read...
    assert sum(s.kind == "text" for f in found for s in f) > 250  # ...and so is most of the plain text
    assert [(i, s.text) for i, f in enumerate(found) for s in f if not s.ok] == []


_NOTE_THEN_NUMBER = re.compile(r"<<([^<>=]*)=([^<>]*)>>(\$?[\d,]*\.?\d+)?")


def _plant(answer: str) -> tuple[str, int, bool] | None:
    """(solution, line, repeated) with the first calculation whose result the text repeats off by one: both the
    note result and the number after it (`<<48/2=24>>24` -> `<<48/2=25>>25`); else the first note's result alone;
    None for a solution without notes."""
    notes = [m for m in _NOTE_THEN_NUMBER.finditer(answer) if statements(m.group())]  # not `<<+8=8>>`
    repeated = [m for m in notes if m.group(3) and parse_number(m.group(3)) == parse_number(m.group(2))]
    if not notes:
        return None
    m = (repeated or notes)[0]
    new = f"{parse_number(m.group(2)) + 1:g}"
    planted = f"<<{m.group(1)}={new}>>" + (new if m.group(3) else "")
    return answer[: m.start()] + planted + answer[m.end():], answer.count("\n", 0, m.start()) + 1, bool(repeated)


def test_a_planted_error_in_each_gold_solution_is_found_on_its_line():
    text_errors_found = planted_count = 0
    for answer in _gold():
        if (plant := _plant(answer)) is None:
            continue  # an algebra solution without calculator notes (`X - X*25% = $19.50`)
        planted, line, repeated = plant
        planted_count += 1
        bad = false_statements(planted)
        assert bad and {s.line for s in bad} == {line}, (planted, bad)
        assert any(s.kind == "note" for s in bad)
        # Where the text states the same calculation in plain words, that statement is caught too.
        before = [s for s in statements(answer) if s.kind == "text" and s.line == line]
        if repeated and before:
            assert any(s.kind == "text" for s in bad), (planted, bad)
            text_errors_found += 1
    assert planted_count >= 98 and text_errors_found > 60


# robustness -------------------------------------------------------------------------------------------------------

def test_fuzz_never_raises_and_expressions_evaluate_to_values():
    rng = random.Random(0)
    pieces = (list("0123456789") * 4 + list("+-*/x×÷·=()$%., ") * 2
              + ["<<", ">>", "apples", "and", "of", "**", "\n", "1,000", ".5", "20%", "$3", "kg", "–", "\\times"])
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        for s in statements(text):
            assert s.kind in ("note", "text") and 1 <= s.line <= text.count("\n") + 1
            assert isinstance(s.ok, bool)
            if s.value is None:
                with pytest.raises(ZeroDivisionError):
                    evaluate(s.expression)
            else:
                assert evaluate(s.expression) == pytest.approx(s.value)


@pytest.mark.parametrize("text", [
    "1+" * 50_000 + "1=2", "(" * 50_000 + "1=1", "1" + ")" * 50_000 + "=1", "1+1=" * 25_000, "9" * 100_000 + "*2=1",
    "-" * 100_000 + "1 = 1", "<" * 100_000, "<<1+1=2>>" * 11_000, "1 ab " * 20_000 + "= 5", "5 + 3 = 8\n" * 10_000,
])
def test_pathological_100kb_inputs_finish_quickly(text):
    started = time.perf_counter()
    found = statements(text)
    assert time.perf_counter() - started < 20  # linear: about a second each here
    assert all(isinstance(s.ok, bool) for s in found)
