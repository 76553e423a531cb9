"""Answer extraction and exact-match scoring: pure functions on text.

Two of these restate lm-evaluation-harness rules (`lm_eval/filters/extraction.py`, `lm_eval/api/metrics.py`) so that a number
reported here means what the harness would report:

- `regex_filter`: the harness's `regex` filter: `re.findall`, match number `group_select` (0 the
  first, -1 the last), the first non-empty group of a multi-group match, `.strip()`, and the fallback
  `[invalid]` when nothing matches.
- `ExactMatch`: its `exact_match` metric: each of `regexes_to_ignore` in order as `re.sub(rx, "", s)`
  on the prediction and on the reference, then lower-casing (`ignore_case`), then deleting
  `string.punctuation` (`ignore_punctuation`), then string equality. `5.00` is not `5`.

Two are ours, for models that state their answer in words rather than in the harness's format:

- `answer_line`: the number of the last answer statement, one of (case-insensitive)
  `The answer is N`, `The final answer is N`, `Final answer: N`, `#### N`, where N may carry a
  `$`, thousands commas, decimals, a minus sign, `**bold**` or `$\\boxed{N}$` around it.
- `choice_letter`: a multiple-choice letter from the last `The answer is X` / `Answer: X` (X an
  upper-case letter, optionally in parentheses), else from a letter opening the first non-empty line
  (`B`, `(B)`, `B.`, `B) 4`), else `[invalid]`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

INVALID = "[invalid]"
"""What an extraction returns when the text holds no answer (the harness's fallback)."""

GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
"""`gsm8k` strict-match: the number after the first `#### `."""
GSM8K_COT_STRICT = r"The answer is (\-?[0-9\.\,]+)."
"""`gsm8k_cot` strict-match: the number in the first `The answer is N.` (the last `.` is any character)."""
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
"""flexible-extract of both GSM8K tasks, used with group_select -1: the last number-like token."""
GSM8K_IGNORE = (",", r"\$", "(?s).*#### ", r"\.$")
"""GSM8K's regexes_to_ignore, in the order the harness applies them."""

_ANSWER_LINE = re.compile(
    r"(?:the\s+final\s+answer\s+is|the\s+answer\s+is|final\s+answer\s*:|####)"
    r"[\s:*]*(?:\$?\\boxed\{)?\s*(-?\$?-?[0-9][0-9,]*(?:\.[0-9]+)?)",
    re.IGNORECASE)
_LETTER_STATEMENT = re.compile(
    r"(?i:the\s+(?:final\s+)?answer\s+is|(?:final\s+)?answer\s*:)[\s*]*\(?([A-Z])\)?(?![A-Za-z0-9])")
_LETTER_OPENING = re.compile(r"^\s*\(?([A-Z])(?:[).:,]|\s|$)")


def regex_filter(text: str, pattern: str, group_select: int = 0, fallback: str = INVALID) -> str:
    """The harness's `regex` filter on one response.

    >>> regex_filter("so 3 + 4 = 7\\n#### 7", GSM8K_STRICT)
    '7'
    >>> regex_filter("$1,234.", FLEXIBLE, group_select=-1)
    '$1,234.'
    """
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        non_empty = [m for m in match if m]
        match = non_empty[0] if non_empty else fallback
    return match.strip()


@dataclass(frozen=True)
class ExactMatch:
    """The harness's `exact_match` with its settings: normalise both sides, then compare strings."""

    regexes_to_ignore: tuple[str, ...] = ()
    ignore_case: bool = False
    ignore_punctuation: bool = False

    def normalise(self, text: str) -> str:
        for rx in self.regexes_to_ignore:
            text = re.sub(rx, "", text)
        if self.ignore_case:
            text = text.lower()
        if self.ignore_punctuation:
            text = text.translate(str.maketrans("", "", string.punctuation))
        return text

    def __call__(self, prediction: str, reference: str) -> bool:
        return self.normalise(prediction) == self.normalise(reference)


GSM8K_MATCH = ExactMatch(regexes_to_ignore=GSM8K_IGNORE, ignore_case=True)
"""exact_match as both GSM8K tasks configure it: `$1,234.` and `1234` are equal."""
LETTER_MATCH = ExactMatch(ignore_case=True, ignore_punctuation=True)
"""exact_match as generative MMLU configures it: `(b)` and `B` are equal."""


def gsm8k_strict(text: str) -> str:
    return regex_filter(text, GSM8K_STRICT)


def gsm8k_cot_strict(text: str) -> str:
    return regex_filter(text, GSM8K_COT_STRICT)


def flexible_number(text: str) -> str:
    """The last number-like token (`$1,234.` stays as written; the metric normalises it)."""
    return regex_filter(text, FLEXIBLE, group_select=-1)


def answer_line(text: str) -> str:
    """The number of the last answer statement (see the module docstring), or `[invalid]`.

    >>> answer_line("3 + 4 = 7\\nThe answer is 7.")
    '7'
    >>> answer_line("Final Answer: $1,250")
    '$1,250'
    """
    matches = _ANSWER_LINE.findall(text)
    return matches[-1].strip() if matches else INVALID


def mmlu_first_line(text: str) -> str:
    """Generative MMLU's filters: the first line (stripped), left whitespace removed, trailing
    whitespace dropped. The metric then ignores case and punctuation: `(B)` scores as `B`."""
    first = regex_filter(text, r"^(.*?)(?=\n|$)")
    return regex_filter(first.lstrip(), r"^(.*?)\s*$")


def choice_letter(text: str, n_choices: int = 4) -> str:
    """A choice letter among the first `n_choices` (see the module docstring), or `[invalid]`.

    >>> choice_letter("4 is even, so the answer is (B).")
    'B'
    >>> choice_letter("C) 12")
    'C'
    """
    letters = string.ascii_uppercase[:n_choices]
    stated = [m for m in _LETTER_STATEMENT.findall(text) if m in letters]
    if stated:
        return stated[-1]
    first = next((line for line in text.splitlines() if line.strip()), "")
    m = _LETTER_OPENING.match(first)
    if m and m.group(1) in letters:
        return m.group(1)
    return INVALID


def first_line_or_answer(text: str) -> str:
    """Free-text answer: what follows the last `The answer is` (to the end of its line, a final
    period dropped), else the first non-empty line, stripped."""
    stated = re.findall(r"(?i:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*:)[ \t]*(.*)", text)
    if stated:
        return stated[-1].strip().removesuffix(".").strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
