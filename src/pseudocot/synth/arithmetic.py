"""Checks that every explicit arithmetic statement in a step-by-step solution is true: the `arithmetic` check of
the synth faithfulness filter (`synth.filter`).

It owns a small tokenizer and recursive-descent parser for arithmetic as people and calculators write it
(`$1,234.50`, `20%`, `12 apples x 3`, `48/2`; never `eval`), and the rules that find statements in prose:
GSM8K calculator notes `<<48/2=24>>` and plain `expr = number` statements. It errs towards skipping: a
statement it cannot read with confidence is left out, so a good solution is not rejected for its wording.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

MAX_NUMBER_CHARS = 30
MAX_TOKENS = 200
MAX_DEPTH = 50

_TOKEN = re.compile(
    r"(?P<other>\d+:\d+|\d+(?:st|nd|rd|th)\b|0\d+)"  # times, ratios, ordinals, `0900`: digits that are not amounts
    r"|(?P<num>(?:\\?\$ ?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+(?:\.\.\.|…)?)?%?|\$?\.\d+%?)"  # `72.` ends a sentence
    r"|(?P<word>[A-Za-z]+(?:['’-][A-Za-z]+)*)"
    r"|(?P<pow>\*\*|\^)"
    r"|(?P<op>\\times|\\cdot|\\div|[-+*/×÷·⋅∗−])"
    r"|(?P<eq>(?<![<>!=])=(?![=>]))"  # not ==, <=, >=, !=, =>
    r"|(?P<space>\s+)"
    r"|(?P<punct>.)"
)
_NOTE = re.compile(r"<<([^<>\n]*)>>")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")  # `- 3 + 4 = 7` is a bullet, not a minus sign
_NUMBER = re.compile(r"-?(?:\\?\$ ?)?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*(?:\.\.\.|…)?)?%?|-?(?:\\?\$ ?)?-?\.\d+%?")
_REMAINDER = re.compile(r"\b(?:remain|left ?over)", re.IGNORECASE)  # `50 / 3 = 16 each, with 2 remaining`
_MINUS = frozenset("-−–")  # `–` (en dash) only where it stands spaced between two numbers: see _tokens
_ADD, _DIV = _MINUS | {"+"}, frozenset(["/", "÷", "\\div"])
_MUL = _DIV | {"*", "x", "×", "·", "⋅", "∗", "\\times", "\\cdot"}
_OPERAND_END, _OPERAND_START = frozenset(["num", "unit", ")"]), frozenset(["num", "("])
_LEFT_PUNCT, _RIGHT_PUNCT = frozenset(",;:.?!\"'“”‘’`([{→⇒≈~|#>$—"), frozenset(",;:.?!\"'“”‘’`)]}→⇒≈~|$—")
# Words that change what the numbers beside them mean: a statement that touches one is skipped.
_SCALE = frozenset("dozen dozens hundred hundreds thousand thousands million millions billion billions trillion "
                   "percent half halves quarter quarters third thirds score".split())
# Words that do arithmetic in prose (`3 times 4 + 2 = 14`): never units, and nothing starts right after one.
_WORD_OPS = frozenset("plus minus times divided multiplied over of less more than subtract subtracted "
                      "twice double triple squared cubed".split())
_RIGHT_WORD_OPS = frozenset("plus minus times divided multiplied".split())  # when a number follows; `= 28 more` reads
# Words that join a rate to an amount (`2 shirts at $10 each + 5 = 25`): a left side never starts right after one.
_RATE = frozenset("at per each for every by".split())
# Words that start a new clause (`5 + 3 = 9 and 12 * 3 = 36`): never units, so they end the amount before them.
_CLAUSE = frozenset("and or but so then thus hence therefore which that is are was were will would makes make "
                    "gives give leaves leave means equals because since as if when where while".split())
# Words that make the number after them a label (`on day 1 * 2 = 20 pages`), not an amount.
_LABELS = frozenset("day week month year step part case round level chapter page question problem game no".split())
# Units of one quantity: a statement that mixes two of them converts (`4 pounds - 6 ounces = 58 ounces`): skipped.
_FAMILIES = tuple(frozenset(f.split()) for f in (
    "second sec minute min hour hr day week month year decade",
    "inch foot ft yard yd mile meter metre cm mm km centimeter kilometer millimeter",
    "ounce oz pound lb gram kilogram kg mg ton", "dollar cent penny nickel dime",
    "cup pint quart gallon liter litre ml milliliter tablespoon tbsp teaspoon tsp"))


class ExpressionError(ValueError):
    """The text is not an arithmetic expression this parser reads."""


class _Tok(NamedTuple):
    kind: str  # num op ( ) = word unit pow punct other
    text: str
    start: int
    end: int


def _tokens(line: str) -> list[_Tok]:
    """Tokens of one line; up to three words right after a number are `unit`s, and `x` between operands is `op`."""
    toks: list[_Tok] = []
    units = 0  # unit words since the last number
    for m in _TOKEN.finditer(line):
        kind, text = m.lastgroup or "punct", m.group()
        if kind == "space":
            continue
        if kind == "num" and len(text) > MAX_NUMBER_CHARS:
            kind = "other"  # pathological: not read, and it ends any expression around it
        elif kind == "eq" or (kind == "punct" and text in "()"):
            kind = "=" if kind == "eq" else text
        elif kind == "word" and toks and units < 3 and toks[-1].kind in ("num", "unit") and _is_unit(text):
            kind = "unit"
        elif (kind == "word" and len(toks) > 1 and toks[-1].text == "/" and toks[-2].kind in ("num", "unit")
              and toks[-2].end == toks[-1].start and toks[-1].end == m.start() and _is_unit(text)):
            kind, toks[-1] = "unit", toks[-1]._replace(kind="unit")  # a rate: `30 miles/gallon`, `$12/hour`
        units = 0 if kind == "num" else units + (kind == "unit")
        toks.append(_Tok(kind, text, m.start(), m.end()))
    for i in range(1, len(toks) - 1):  # `3 x 4` multiplies; `8 – 3` (spaced en dash) subtracts
        between = toks[i - 1].kind in _OPERAND_END and toks[i + 1].kind in _OPERAND_START
        spaced = toks[i - 1].end < toks[i].start and toks[i].end < toks[i + 1].start
        if between and (toks[i].text == "x" or (toks[i].text == "–" and spaced)):
            toks[i] = toks[i]._replace(kind="op")
    return toks


def _is_unit(word: str) -> bool:
    # One letter is a variable (`2x + 3`), not a unit.
    return len(word) > 1 and not any(word.lower() in words for words in (_SCALE, _WORD_OPS, _CLAUSE))


def _digits(text: str) -> str:
    """A number as written without `$` (or LaTeX's `\\$`), `,`, `%` and the `...` of a repeating decimal (`8.333...%`)."""
    return re.sub(r"[\\$, …]|\.\.\.", "", text).rstrip("%")


def _number_value(text: str, percent: bool) -> float:
    return float(_digits(text)) / (100 if percent and text.endswith("%") else 1)


def _parse(toks: list[_Tok], start: int, end: int, percent: bool = True) -> tuple[float | None, int]:
    """(value, stop) of the longest expression at toks[start:end], value None after a division by zero;
    `percent=False` reads `20%` as 20. expr := term (('+'|'-') term)*, term := unary (mulop unary)*,
    unary := '-'* primary, primary := NUMBER unit* | '(' expr ')'."""
    if end - start > MAX_TOKENS:
        raise ExpressionError(f"more than {MAX_TOKENS} tokens")
    pos, by_zero = start, False

    def at(kind: str, texts: frozenset[str] | None = None) -> bool:
        return pos < end and toks[pos].kind == kind and (texts is None or toks[pos].text in texts)

    def expr(depth: int) -> float:
        nonlocal pos
        value = term(depth)
        while at("op", _ADD):
            op, pos = toks[pos].text, pos + 1
            value = value + term(depth) if op == "+" else value - term(depth)
        return value

    def term(depth: int) -> float:
        nonlocal pos, by_zero
        value = unary(depth)
        while at("op", _MUL):
            op, pos = toks[pos].text, pos + 1
            rhs = unary(depth)
            if op in _DIV and rhs == 0:
                by_zero, rhs = True, 1.0  # read on: a statement must parse whole before it is called false
            value = value / rhs if op in _DIV else value * rhs
        return value

    def unary(depth: int) -> float:
        nonlocal pos
        sign = 1.0
        while at("op", _MINUS):
            sign, pos = -sign, pos + 1
        return sign * primary(depth)

    def primary(depth: int) -> float:
        nonlocal pos
        if at("num"):
            value, pos = _number_value(toks[pos].text, percent), pos + 1
            while at("unit"):
                pos += 1
            return value
        if at("(") and depth < MAX_DEPTH:
            pos += 1
            value = expr(depth + 1)
            if not at(")"):
                raise ExpressionError("unbalanced parentheses")
            pos += 1
            return value
        found = repr(toks[pos].text) if pos < end else "the end"
        raise ExpressionError(f"expected a number or '(' (nesting at most {MAX_DEPTH}), found {found}")

    value = expr(0)
    if not math.isfinite(value):
        raise ExpressionError("the value is too large for a float")
    return (None if by_zero else value), pos


def evaluate(expr: str) -> float:
    """The value of an arithmetic expression (`$`, `1,234`, `.5`, `20%` = 0.2, + - * x × / ÷ ·, unary minus,
    parentheses); ExpressionError for anything else, ZeroDivisionError for a division by zero.

    >>> evaluate("2 + 3 x 4"), evaluate("$1,000 * 20% - (.5)")
    (14.0, 199.5)
    """
    toks = _tokens(expr)
    if not toks or any(t.kind not in ("num", "op", "(", ")") for t in toks):
        raise ExpressionError(f"not an arithmetic expression: {expr[:80]!r}")
    value, stop = _parse(toks, 0, len(toks))
    if stop != len(toks):
        raise ExpressionError(f"unexpected {toks[stop].text!r} in {expr[:80]!r}")
    if value is None:
        raise ZeroDivisionError(f"division by zero in {expr[:80]!r}")
    return value


def parse_number(text: str) -> float | None:
    """The number written as `text`, a percent sign dropped; None when it is not one number.

    >>> parse_number("$1,234.50"), parse_number("50%"), parse_number("12."), parse_number("1,2")
    (1234.5, 50.0, 12.0, None)
    """
    text = text.strip().replace("−", "-").replace("–", "-")  # a typeset minus sign
    if len(text) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text) or text.count("-") > 1:
        return None
    return float(_digits(text))


def shown_decimals(text: str) -> int:
    """Digits after the decimal point of a number as written (0 for integers).

    >>> shown_decimals("$1,234.50"), shown_decimals("72"), shown_decimals("12.")
    (2, 0, 0)
    """
    return len(_digits(text.strip()).partition(".")[2])


def close(value: float, shown: str) -> bool:
    """Whether `value` equals the number written as `shown`, rounded (or, with decimals shown, cut: `16.66` for
    16.666) to the digits shown; `20%` accepts 20 or 0.2.

    >>> close(10 / 3, "3.33"), close(50 / 3, "16.66"), close(0.2, "20%"), close(12, "13"), close(16.6, "16")
    (True, True, True, False, False)
    """
    x = parse_number(shown)
    if x is None or not math.isfinite(value):
        return False
    d = shown_decimals(shown)
    for v in (value, value * 100) if shown.strip().endswith("%") else (value,):
        eps = 1e-9 * max(abs(v), abs(x))
        if abs(v - x) <= 0.5 * 10**-d + eps or (d and x * v >= 0 and -eps <= abs(v) - abs(x) < 10**-d):
            return True
    return False


@dataclass(frozen=True)
class Statement:
    """One explicit arithmetic statement found in a text."""

    line: int
    """1-based line number in the text."""
    text: str
    """The statement as written (notes removed), e.g. `48/2 = 24` or `<<48/2=24>>`."""
    expression: str
    """The left side as parsed, unit words dropped: `evaluate(expression)` gives `value`."""
    result: str
    """The right-hand number as written, e.g. `$1,234.50`, `20%`, `-3`."""
    value: float | None
    """The left side's value; None when it cannot be computed (a division by zero)."""
    kind: str
    """`note` for a GSM8K calculator note `<<expr=result>>`, `text` for a plain `expr = number`."""
    chained: float | None = None
    """The value of the whole right side when it goes on as an expression (`3 * 4 = 12 * 2 = 24`), else None."""
    plain_percent: float | None = None
    """The left side's value with `20%` read as 20 (`15 / 90 * 100% = 16.67`) when it has a `%`, else None."""

    @property
    def ok(self) -> bool:
        """Whether the left side equals the result (or, in a chain, the whole right side)."""
        if self.value is None:
            return False
        # A chain's right side may use rounded intermediates (`2/3*9 = 0.67*9 = 6`): 1% is close enough.
        return (close(self.value, self.result) or (self.plain_percent is not None and close(self.plain_percent, self.result))
                or (self.chained is not None and math.isclose(self.value, self.chained, rel_tol=0.01, abs_tol=1e-9)))


def _fraction_at(toks: list[_Tok], i: int) -> bool:
    """Whether a written fraction `2/3` (no spaces) starts at toks[i]: `5 and 2/3` is a mixed number."""
    return (i + 2 < len(toks) and toks[i].kind == toks[i + 2].kind == "num" and toks[i + 1].text == "/"
            and toks[i].end == toks[i + 1].start and toks[i + 1].end == toks[i + 2].start)


def _clear(line: str, toks: list[_Tok], i: int, side: str) -> bool:
    """Whether toks[i], just outside a statement on `side` ('left' or 'right'), shows that it is not part of it."""
    if i < 0 or i >= len(toks):
        return True
    t, prev, nxt = toks[i], toks[i - 1] if i > 0 else None, toks[i + 1] if i + 1 < len(toks) else None
    before, after = line[t.start - 1: t.start], line[t.end: t.end + 1]
    if t.kind == "=":
        return True  # a chain: `3 * 4 = 12 * 2 = 24`
    if side == "left" and prev and prev.kind in ("op", ")"):
        return False  # `$12/hour - 5 + 2`, `.8 + . 84 + .82`: the statement would start inside an expression
    if t.kind in ("word", "unit"):
        w = t.text.lower()
        if len(w) == 1 and (side == "left" or before.isdigit()) and (w not in "ai" or before.isdigit()):
            return False  # a variable: `2x + 3`, `= 5x`
        if w in _SCALE and (side == "left" or prev.kind == "num"):
            return False  # `2 dozen + 3`, `= 1.5 million`
        if side == "left" and (w in _LABELS or (t.text[0].isupper() and w.rstrip("s") in _LABELS)):
            return False  # `on day 1 * 2 = 20`, `Weeks 1-2`: a label, not an amount (`in 7 weeks 5 * 7` is one)
        if side == "left" and w in _WORD_OPS - {"of"}:
            return False  # `3 times 4 + 2 = 14`
        if side == "right" and w in _RIGHT_WORD_OPS and nxt and nxt.kind in _OPERAND_START:
            return False  # `= 4 times 3`
        if w == "of" and side == "left" and prev and (prev.kind in ("num", "unit") or prev.text.lower() in _SCALE):
            return False  # `20% of 50 + 10`, `half of 10 + 2`; not `a total of 8 + 4`
        if w == "by" and prev and prev.text.lower() in ("divided", "multiplied"):
            return False
        mixed = _fraction_at(toks, i + 1) or (side == "right" and nxt and nxt.kind == "(")
        return not (w == "and" and mixed and prev and prev.kind == "num")  # `1 and 1/4 cup`, `= 16 and (2/3)`
    if t.kind == "pow":  # `**bold**` is markdown; `2**3` and `2^3` are powers
        return t.text == "**" and not (prev and prev.kind in _OPERAND_END and nxt and nxt.kind in _OPERAND_START)
    if t.kind == "(":  # `2(3 + 4)` multiplies
        return not (prev and prev.kind == "num") if side == "left" else t.start > toks[i - 1].end
    if t.kind == ")":
        return side == "right"
    if t.kind == "num" and side == "right" and prev and prev.kind == "unit":
        return True  # `= $20 for selling 10 packets`: a new phrase, not `= 3 1/2`
    if t.kind != "punct":
        return False  # a number, an operator, a time or an ordinal
    if t.text in ",." and (after.isdigit() or (side == "left" and before.isdigit() and len(toks[i + 1].text) == 3)):
        return False  # `12,5`, `1,2345`, `14, 400`: a number this tokenizer did not read
    if t.text == "!" and (before.isdigit() or before == ")"):
        return False  # a factorial
    if t.text == "\\":
        return after in "$()[]"  # `\$5`, `\( ... \)`; not `\frac`
    return t.text in (_LEFT_PUNCT if side == "left" else _RIGHT_PUNCT)


def _left_side(line: str, toks: list[_Tok], eq: int) -> int | None:
    """Index where the left side of the `=` at toks[eq] starts, or None when there is no readable left side."""
    start = eq
    while start > 0 and toks[start - 1].kind in ("num", "op", "(", ")", "unit"):
        start -= 1
        if eq - start > MAX_TOKENS:
            return None
    depth = 0
    for i in range(eq - 1, start - 1, -1):
        depth += (toks[i].kind == ")") - (toks[i].kind == "(")
        if depth < 0:  # `(3 + 4 = 7`: start after the last unmatched '('
            start = i + 1
            break
        if toks[i].kind == "unit" and toks[i + 1].kind in _OPERAND_START:  # `4 dogs eat 500 g x 4`: after `eat`
            if toks[i].text.lower() in _RATE:
                return None
            start = i + 1
            break
    if start == eq or not _clear(line, toks, start - 1, "left"):
        return None
    if toks[start].kind == "op" and toks[start].end != toks[start + 1].start:
        return None  # a leading `-` that stands apart is a dash, not a negative number
    binary = any(toks[j].kind == "op" and toks[j - 1].kind in _OPERAND_END for j in range(start + 1, eq))
    return start if binary else None  # `Total = 24`, `x = -5`: not a statement


def _right_side(toks: list[_Tok], eq: int) -> tuple[int, int, int, float | None] | None:
    """(first and last index of the result, index just past the right side, value of a chained right side) for
    the `=` at toks[eq]; None when no number follows it or a chained right side does not read."""
    first = eq + 1 + (eq + 1 < len(toks) and toks[eq + 1].text == "**")  # `= **72**` in markdown
    res = first + (first + 1 < len(toks) and toks[first].text in _MINUS and toks[first].end == toks[first + 1].start)
    if res >= len(toks) or toks[res].kind != "num":
        return None  # `= -2` is a number, `= - 2` is not
    after = res + 1
    while after < len(toks) and toks[after].kind == "unit":
        after += 1
    if after == len(toks) or toks[after].kind != "op":
        return first, res, after, None
    try:  # the right side goes on: `3 * 4 = 12 * 2 = 24`
        chained, after = _parse(toks, first, min(len(toks), first + MAX_TOKENS))
    except ExpressionError:
        return None
    return (first, res, after, chained) if chained is not None else None


def _ambiguous(toks: list[_Tok], start: int, after: int) -> bool:
    """Whether toks[start:after] is a statement people write with another meaning than its parse."""
    ops = [t for t in toks[start:after] if t.kind != "unit"]
    if any(a.text in _DIV and b.kind == "num" and c.text in _DIV for a, b, c in zip(ops, ops[1:], ops[2:])):
        return True  # `25 / 1/3 = 75`, `14 / 1 / 4 = 56`: `a / b / c` often means a / (b / c)
    texts = ["", *(t.text for t in ops), ""]
    added = any(t.text.endswith("%") and ((a in _ADD and c not in _MUL) or (c in _ADD and a not in _MUL))
                for a, t, c in zip(texts, ops, texts[2:]) if t.kind == "num")
    if added and not all(t.text.endswith("%") for t in ops if t.kind == "num"):
        return True  # `$50 - 20% = $40` means a discount (`100% - 20% = 80%` reads)
    units, per = {"dollar"} if any(t.text.startswith("$") for t in toks[start:after]) else set(), False
    for t in toks[start:after]:
        w = t.text.lower()
        if t.kind == "unit" and not per:  # `10 * .5 = 5 hours per day`: a rate's `day` is no second time unit
            units.add({"feet": "foot", "inches": "inch", "pennies": "penny"}.get(w, w.rstrip("s")))
        per = t.kind == "unit" and w in ("/", "per")
    return any(len(units & family) > 1 for family in _FAMILIES)


def _plain_statements(line: str, number: int) -> list[tuple[int, Statement]]:
    """(column, statement) for each plain `expr = number` statement in one line with its notes removed."""
    toks = _tokens(line)
    found = []
    for eq, t in enumerate(toks):
        if t.kind != "=" or (start := _left_side(line, toks, eq)) is None:
            continue
        right = _right_side(toks, eq)
        if right is None or not _clear(line, toks, right[2], "right") or _ambiguous(toks, start, right[2]):
            continue
        first, res, _, chained = right
        result = line[toks[first].start: toks[res].end]
        try:
            value, stop = _parse(toks, start, eq)
        except ExpressionError:
            continue
        if stop != eq or (value is not None and value % 1 and _REMAINDER.search(line, toks[res].end)
                          and close(math.floor(value), result)):
            continue
        plain = _parse(toks, start, eq, percent=False)[0] if any(toks[k].text.endswith("%") for k in range(start, eq)) else None
        left = "".join((" " if k > start and toks[k].start > toks[k - 1].end else "") + toks[k].text
                       for k in range(start, eq) if toks[k].kind != "unit")
        text = line[toks[start].start: toks[res].end]
        found.append((toks[start].start, Statement(number, text, left, result, value, "text", chained, plain)))
    return found


def _note(body: str, number: int) -> Statement | None:
    """The statement of a calculator note `<<expr=result>>`; None when it is not one `expr = number`."""
    left, eq, result = body.partition("=")
    if not eq or "=" in result or parse_number(result) is None:
        return None
    try:
        value: float | None = evaluate(left)
    except ZeroDivisionError:
        value = None
    except ExpressionError:
        return None
    return Statement(number, f"<<{body}>>", left.strip(), result.strip(), value, "note")


def statements(text: str) -> list[Statement]:
    """Every explicit arithmetic statement in `text`, in order: calculator notes `<<expr=result>>` and (the notes
    removed) plain `expr = number` statements; one it cannot read with confidence is skipped.

    >>> [(s.kind, s.text, s.ok) for s in statements("She sold 48/2 = <<48/2=24>>24 clips.")]
    [('text', '48/2 = 24', True), ('note', '<<48/2=24>>', True)]
    """
    out: list[Statement] = []
    for number, line in enumerate(text.split("\n"), start=1):
        found = [(m.start(), s) for m in _NOTE.finditer(line) if (s := _note(m.group(1), number))]
        if marker := _LIST_MARKER.match(line):
            line = " " * marker.end() + line[marker.end():]
        columns, removed = [], [0]  # where each note was in the line without notes; characters removed up to it
        for m in _NOTE.finditer(line):
            columns.append(m.start() - removed[-1])
            removed.append(removed[-1] + m.end() - m.start())
        for column, s in _plain_statements(_NOTE.sub("", line), number):
            found.append((column + removed[bisect.bisect_right(columns, column)], s))
        out.extend(s for _, s in sorted(found, key=lambda f: f[0]))
    return out


def false_statements(text: str) -> list[Statement]:
    """The statements in `text` that are false.

    >>> [s.text for s in false_statements("5 + 3 = 9 and 12 * 3 = 36")]
    ['5 + 3 = 9']
    """
    return [s for s in statements(text) if not s.ok]
