"""The rules behind the checks of questions written from documents (`grounded`, `self_contained`,
`duplicate` in `synth.filter`): pure functions, no model.

- `support`: is an answer supported by the text it was written from? Two tests. The question and
  its reasoning must be about the text: at least `min_topic_overlap` of their distinct content words
  (stemmed) occur in it. And the reasoning must compute from the text's numbers: an operand of its
  arithmetic is the text's, the question's, a result computed before, or a small number or constant
  (weak evidence either way, so not counted); at most one more operand may come from nowhere than the
  distinctive ones (not small) that come from the text, since a worked solution carries some world
  knowledge (a quarter is 25 cents). A numeric answer must be reached by the reasoning or stated in the
  text. An answer without numbers is supported when most of its content words occur in the text.
- `leans_on_text`: does a question point at a text the reader cannot see (`According to the
  passage`, `in this section`, `the author`)?
- `ill_formed`: is an item not a question with a short answer (a statement for a question, a
  calculation for an answer, a reasoning that repeats itself or computes nothing)?
- `NearDuplicates`: MinHash LSH (datasketch) over character 4-grams of the lower-cased question without
  punctuation; a candidate pair is confirmed by its exact Jaccard similarity, equal numbers (`12 apples`
  and `13 apples` are two questions) and at most one content word in one and not the other (`How many
  dolls do they have?` and `How many dice do they have?` are two questions, and so are `... open?` and
  `... not open?`; an added `really` or `in total` is not a new one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pseudocot.synth.arithmetic import _NUMBER, parse_number, statements

_WORD_NUMBERS = {w: float(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty".split())}
_WORD_NUMBERS.update({w: float(10 * i) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)})
_WORD_NUMBERS.update({"hundred": 100.0, "thousand": 1000.0, "million": 1e6, "dozen": 12.0, "half": 0.5, "twice": 2.0,
                      "double": 2.0, "triple": 3.0, "thrice": 3.0, "quarter": 0.25, "once": 1.0, "pair": 2.0, "couple": 2.0})
_WORD_VALUES = {"quarter": (0.25, 25.0), "quarters": (0.25, 25.0), "dime": (0.1, 10.0), "dimes": (0.1, 10.0),
                "nickel": (0.05, 5.0), "nickels": (0.05, 5.0), "penny": (0.01, 1.0), "pennies": (0.01, 1.0),
                "third": (1 / 3,), "thirds": (1 / 3,), "fourth": (0.25,), "fifth": (0.2,), "tenth": (0.1,)}
"""Words worth a number in a computation: coins (in dollars and cents), fractions."""
_FRACTION = re.compile(r"(?<![\d/.])(\d{1,3})\s*/\s*(\d{1,3})(?![\d/])")
_PERCENT_WORD = re.compile(r"\s*(?:percent|per\s*cent)\b", re.IGNORECASE)
_TENS = re.compile(r"\b(twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)-(one|two|three|four|five|six|seven|eight|nine)\b")
_WORDS = re.compile(r"[a-z]+")

_EQUALS = re.compile(r"(?:=|\bequals?\b)\s*(?:<<[^<>]*>>)?\s*\\?\$?\s*((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")

CONSTANTS = (0.5, 1.0, 2.0, 3.0, 4.0, 7.0, 10.0, 12.0, 24.0, 52.0, 60.0, 100.0, 365.0, 1000.0)
"""Numbers a reasoning may use without finding them in the text: halves, weeks, dozens, hours, percent."""


_WHOLE_FRACTION = re.compile(r"^\s*\$?(\d{1,6})\s*/\s*(\d{1,6})\s*$")


def answer_numbers(answer: str) -> list[float]:
    """The numbers an answer gives, in digits (`No one` and `the second half` are text, not 1 and 0.5); a whole
    fraction is its value (`1/2` is 0.5, not 1 and 2).

    >>> answer_numbers("1/2"), answer_numbers("No one"), answer_numbers("$1,200 in 3 weeks")
    ([0.5], [], [1200.0, 3.0])
    """
    m = _WHOLE_FRACTION.match(answer)
    if m:
        return [int(m[1]) / int(m[2])] if int(m[2]) else []
    return numbers_in(answer, words=False)


def numbers_in(text: str, words: bool = True) -> list[float]:
    """The numbers a text states, in digits or words (`20%` also as 0.2, `twenty-five` as 25).

    >>> numbers_in("She paid $1,200 for twenty-five chairs, a dozen at 20% off.")
    [1200.0, 20.0, 0.2, 25.0, 12.0]
    """
    out: list[float] = []
    for m in _NUMBER.finditer(text):
        v = parse_number(m.group().lstrip("-").replace("\\", ""))
        if v is not None:
            out.append(v)
            if m.group().endswith("%") or _PERCENT_WORD.match(text, m.end()):
                out.append(v / 100)
    for m in _FRACTION.finditer(text):
        if int(m[2]):
            out.append(int(m[1]) / int(m[2]))
    if not words:
        return out
    lower = text.lower()
    for m in _TENS.finditer(lower):
        out.append(_WORD_NUMBERS[m[1]] + _WORD_NUMBERS[m[2]])
    lower = _TENS.sub(" ", lower)
    for w in _WORDS.findall(lower):
        if w in _WORD_NUMBERS:
            out.append(_WORD_NUMBERS[w])
        out += _WORD_VALUES.get(w, ())
    return out


def _near(a: float, b: float) -> bool:
    return math.isclose(abs(a), abs(b), rel_tol=1e-6, abs_tol=1e-9) or (abs(b) >= 1 and round(abs(a), 2) == round(abs(b), 2))


STOPWORDS = frozenset(
    "a an the and or of to in on at by for with from as is are was were be been it its this that these those which who whom "
    "what when where why how than then there their they them he she his her him we our you your i my me not no yes do does "
    "did has have had can could will would should may might must about into over under after before between during".split())


MEANING = frozenset("not no never none nothing before after left more less fewer most least first last".split())
"""Small words that turn a question into another (`open` / `not open`, `have` / `have left`): never a near-duplicate's edit."""


def content_words(text: str) -> list[str]:
    return [w for w in _WORDS.findall(text.lower()) if w not in STOPWORDS and len(w) > 1]


def _stem(word: str) -> str:
    for end in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(end) and len(word) - len(end) >= 3:
            return word[: -len(end)]
    return word


@dataclass
class Support:
    ok: bool
    reason: str = ""
    """Why not (`code: detail`), when not."""


def _reaches(result: float, answer: float) -> bool:
    """Whether an answer is a computed result as answers give it: the same (to 0.1%), in cents or percent (x 100 or
    / 100), or rounded to a whole number (`33.33...%` is 33, `6.75` packs is 7).

    >>> _reaches(0.1, 10), _reaches(6.75, 7), _reaches(33.333, 33), _reaches(12, 13)
    (True, True, True, False)
    """
    answer, result = abs(answer), abs(result)  # `-10` and `a loss of 10`
    if any(math.isclose(answer, x, rel_tol=1e-3, abs_tol=5e-4) for x in (result, result * 100, result / 100)):
        return True  # the same, as rounded to a few digits (`4/7` and `0.571`)
    return not float(result).is_integer() and answer in (math.floor(result), math.ceil(result), round(result))


def _small(v: float) -> bool:
    """A number that turns up everywhere (a small whole number, a constant): weak evidence of where a reasoning came from."""
    return (float(v).is_integer() and abs(v) <= 10) or any(_near(v, c) for c in CONSTANTS)


def _stems(text: str) -> set[str]:
    return {_stem(w) for w in content_words(text)}


def support(text: str, question: str, answer: str, reasoning: str, min_word_overlap: float = 0.6,
            min_topic_overlap: float = 0.15) -> Support:
    """Whether `answer` is supported by `text` (see the module docstring).

    >>> support("Ann had 48 clips and sold half of them in May.", "How many clips did Ann have left after May?", "24", "48 / 2 = 24").ok
    True
    >>> print(support("Bob walks 3 miles a day.", "How many clips did Ann have left?", "24", "48 / 2 = 24").reason)
    grounded:topic: 0 of the question and reasoning's 4 content words are in the text (0%; at least 15%)
    """
    have = _stems(text)
    asked = _stems(f"{question} {reasoning}")
    found, of = len(asked & have), len(asked)
    if of and found / of < min_topic_overlap:
        return Support(False, f"grounded:topic: {found} of the question and reasoning's {of} content words are in the text "
                              f"({found / of:.0%}; at least {min_topic_overlap:.0%})")
    values = answer_numbers(answer)
    if not values:
        words = content_words(answer)
        if not words:
            return Support(True)
        hits = sum(_stem(w) in have for w in words)
        if hits / len(words) >= min_word_overlap:
            return Support(True)
        missing = next(w for w in words if _stem(w) not in have)
        return Support(False, f"grounded:words: {hits} of the answer's {len(words)} content words are in the text ('{missing}' is not)")
    in_text, in_question = numbers_in(text), numbers_in(question)
    results: list[float] = []
    unknown: list[float] = []  # operands that are in neither the text nor the question, nor computed before
    from_text: list[float] = []  # distinctive operands the text gave
    for st in statements(reasoning):
        result = parse_number(st.result)
        if result is None:
            continue
        for m in _NUMBER.finditer(st.expression):
            v = parse_number(m.group().lstrip("-"))
            if v is None or any(_near(v, x) for x in (*results, *in_question)):
                continue
            if any(_near(v, x) for x in in_text):
                if not _small(v) and not any(_near(v, x) for x in from_text):
                    from_text.append(v)
            elif not _small(v) and not any(_near(v, x) for x in unknown):
                unknown.append(v)
        results.append(result)
    if len(unknown) > 1 + len(from_text):
        shown = ", ".join(f"{v:g}" for v in unknown[:4])
        return Support(False, f"grounded:unsupported: the reasoning computes with {len(unknown)} numbers the text does not have ({shown}) "
                              f"and {len(from_text)} it has")
    # What the reasoning arrives at: its statements' results, and any number an `=` gives (`x = 20`, `48 quarts = 12 gallons`).
    reached = [*results, *(v for m in _EQUALS.finditer(reasoning) if (v := parse_number(m[1])) is not None)]
    for v in values:
        if not any(_near(v, x) for x in in_text) and not any(_reaches(x, v) for x in reached):
            return Support(False, f"grounded:absent: the answer's {v:g} is not in the text and the reasoning does not compute it")
    return Support(True)


_NOUNS = (r"(?:passages?|texts?|documents?|excerpts?|articles?|paragraphs?|sections?|chapters?|context|readings?|sources?"
          r"|stor(?:y|ies)|reports?|tables?|figures?|pages?|materials?)")
_LEANING = re.compile(
    r"(?ix)"
    rf"\b(?:according\s+to|as\s+(?:stated|described|mentioned|shown|noted|explained|given|discussed)\s+in|based\s+on|refer(?:ring)?\s+to)"
    rf"\s+(?:the|this|that|these)\s+(?:(?:above|given|following|provided|preceding|previous)\s+)?{_NOUNS}\b"
    r"|\b(?:the|this|that)\s+(?:(?:above|given|following|provided|preceding)\s+)?(?:passage|excerpt|paragraph|document)s?\b"
    r"|\b(?:the|this)\s+(?:(?:above|given|provided)\s+)?(?:text|section|chapter|context|article)\b(?!\s+(?:messages?|books?|files?|of)\b)"
    r"|\b(?:mentioned|described|stated|discussed|listed|shown|given)\s+(?:above|earlier|previously|below)\b"
    r"|\b(?:above|aforementioned)\s+(?:text|passage|information|example|story|data|section)\b"
    r"|\bthe\s+(?:author|writer|narrator)\b(?!\s+of\b)"
    r"|\b(?:in|from)\s+(?:the\s+)?(?:text|passage)\s+above\b")


def leans_on_text(question: str) -> str | None:
    """The words by which a question points at a text the reader cannot see, else None.

    >>> leans_on_text("According to the passage, how many clips did Natalia sell?")
    'According to the passage'
    >>> leans_on_text("How many text messages did Tim send?") is None, leans_on_text("What does the author argue?")
    (True, 'the author')
    """
    m = _LEANING.search(question)
    return m.group() if m else None


_ASKS = re.compile(r"^\W*(?:what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can|could|will|would|"
                   r"should|has|have|had|find|compute|calculate|determine|give|name|list|state|explain|describe|estimate)\b",
                   re.IGNORECASE)
_EXPRESSION = re.compile(r"\d\s*[-+*/×÷x]\s*\d.*=|=\s*\d")


_TRIVIAL = re.compile(r"^\s*[\d.,$]+\s*(?:[*×x/÷]\s*1(?:\.0+)?|[-+]\s*0(?:\.0+)?)\s*$|^\s*1\s*[*×x]\s*[\d.,$]+\s*$")


def _trivial(expression: str) -> bool:
    """`1400 * 1`, `1 * 12`, `5 + 0`: a calculation that computes nothing."""
    return bool(_TRIVIAL.match(expression))


def ill_formed(question: str, answer: str, steps: Sequence[str], max_answer_words: int = 30) -> str | None:
    """Why an item is not a question with a short answer (`well_formed:<why>: ...`), else None: the question asks
    nothing (no `?`, no question or instruction word), the answer is a calculation or runs over `max_answer_words`
    words, the reasoning repeats itself (a line twice, or one line that says one thing over and over), or every
    calculation in it computes nothing (`1400 * 1 = 1400`).

    >>> ill_formed("The cinema has 2 screens.", "2", ["2"])
    'well_formed:not-a-question: the question asks nothing (no question mark or question word)'
    >>> ill_formed("How many seats are there?", "180 + 75 = 255", ["180 + 75 = 255"])
    "well_formed:answer-expression: the answer is a calculation ('180 + 75 = 255'), not its result"
    >>> ill_formed("A ferry has 1986 crossing times.", "1986", ["1986, 1986, 1986"])
    'well_formed:not-a-question: the question asks nothing (no question mark or question word)'
    >>> ill_formed("What year?", "2019", ["2019, 2019, 2019"])
    'well_formed:repeated: a reasoning line repeats one thing'
    >>> ill_formed("How many loaves are baked each morning?", "84", ["48 + 36 = 84"]) is None
    True
    """
    if not answer.strip():
        return "well_formed:no-answer: the answer is empty"
    if "?" not in question and not _ASKS.match(question):
        return "well_formed:not-a-question: the question asks nothing (no question mark or question word)"
    if _EXPRESSION.search(answer):
        return f"well_formed:answer-expression: the answer is a calculation ('{answer[:60]}'), not its result"
    if len(answer.split()) > max_answer_words:
        return f"well_formed:long-answer: the answer has {len(answer.split())} words (at most {max_answer_words}); a passage is not an answer"
    found = statements("\n".join(steps))
    if found and all(_trivial(st.expression) for st in found):
        return "well_formed:trivial: every calculation of the reasoning multiplies or divides by 1, or adds 0"
    lines = [" ".join(st.lower().split()) for st in steps if st.strip()]
    twice = next((line for i, line in enumerate(lines) if line in lines[:i]), None)
    if twice is not None:
        return f"well_formed:repeated: the reasoning says '{twice[:60]}' twice"
    if any(len(set(parts)) == 1 and len(parts) >= 3 for parts in ([p.strip() for p in line.split(",")] for line in lines)):
        return "well_formed:repeated: a reasoning line repeats one thing"
    return None


# --------------------------------------------------------------------------------------------
# Near duplicates.
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")


def normalize(question: str) -> tuple[str, tuple[str, ...]]:
    """(lower-cased words and numbers, punctuation dropped; the sorted numbers).

    >>> normalize("How many apples, in total, did Tom buy?  He bought 1,200!")
    ('how many apples in total did tom buy he bought 1200', ('1200',))
    """
    tokens = [t.replace(",", "") if t[0].isdigit() else t for t in _TOKEN.findall(question.lower())]
    return " ".join(tokens), tuple(sorted(t for t in tokens if t[0].isdigit()))


def shingles(text: str, k: int = 4) -> set[str]:
    return {text[i: i + k] for i in range(max(1, len(text) - k + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicates:
    """Questions seen so far; `add` tells whether a new one is a near-duplicate of one of them (and keeps it if not)."""

    def __init__(self, threshold: float, num_perm: int = 128, max_word_changes: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.max_word_changes = threshold, num_perm, max_word_changes
        # The index finds candidates a little below the threshold; the exact Jaccard decides.
        self.lsh = MinHashLSH(threshold=max(0.05, threshold - 0.15), num_perm=num_perm)
        self.kept: dict[str, tuple[set[str], tuple[str, ...], frozenset[str]]] = {}

    def add(self, key: str, question: str) -> tuple[str, float] | None:
        """(the earlier question's key, similarity) when `question` is a near-duplicate, else None (then it is kept)."""
        from datasketch import MinHash

        norm, nums = normalize(question)
        words = frozenset(_stems(norm) | {w for w in norm.split() if w in MEANING})
        grams = shingles(norm)
        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([g.encode() for g in sorted(grams)])
        best: tuple[str, float] | None = None
        for other in self.lsh.query(m):
            o_grams, o_nums, o_words = self.kept[other]
            sim = jaccard(grams, o_grams)
            changed = words ^ o_words
            if (o_nums == nums and len(changed) <= self.max_word_changes and not changed & MEANING and sim >= self.threshold
                    and (best is None or sim > best[1])):
                best = (other, sim)
        if best is None:
            self.lsh.insert(key, m)
            self.kept[key] = (grams, nums, words)
        return best


def near_duplicates(items: Iterable[tuple[str, str]], threshold: float) -> list[tuple[str, float] | None]:
    """Per (key, question), in order: the first question it nearly repeats, else None."""
    index = NearDuplicates(threshold)
    return [index.add(k, q) for k, q in items]
