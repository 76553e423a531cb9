"""The faithfulness filter: which teacher-written solutions to keep.

A solution is kept when every configured check passes; each failed check gives a reason string
`code: detail` (`arithmetic:false: line 2: 7 + 5 = 13, but 7 + 5 is 12`), and the summary counts
rejected solutions per code. The checks are pure functions in a registry, like the tasks, with a
dotted-path escape hatch (`package.module:function`) for your own:

- `format`: a final answer line (`Final answer: N`, `The answer is N`, `#### N`, ...) after one step
  per line, `min_steps`..`max_steps` steps, none longer than `max_step_chars`, not cut off at the
  token limit; an exact duplicate of an earlier sample of the same question is dropped.
- `answer`: the final answer is right under the task's own scoring (`Task.is_correct`, the one
  definition of correct); skipped for a question without a gold answer.
- `arithmetic`: every explicit arithmetic statement is true (`synth.arithmetic`).
- `follows`: a numeric final answer equals the value the last step computed (its last statement's
  result, else its last number): a chain whose answer does not follow from it is unfaithful even
  when the answer is right.
- `consistency`: the question's majority answer holds at least `min_agreement` of its samples
  (self-consistency; works without gold answers); samples that disagree with it are dropped.
- `judge`: an LLM grades the solution with a logical-correctness rubric (0/1), cached.

Three more read a question written from a document (`pseudocot synth questions`; the candidate's
`context` is the chunk it was written from; the rules are `synth.grounding`'s):
- `grounded`: the answer is supported by the chunk: its numbers are in the chunk or follow from the
  chunk's numbers by the reasoning's true arithmetic; an answer without numbers has most of its content
  words in the chunk. Where the rule says no and a judge is configured, the judge decides.
- `self_contained`: the question does not point at a text the reader cannot see (`According to the
  passage`); with a judge, the judge is also asked whether it can be answered without the chunk.
- `well_formed`: the item is a question (a `?` or a question or instruction word) with a short answer
  that is not a calculation, and a reasoning that does not repeat itself or compute nothing (`1400 * 1`).
- `duplicate`: a near-duplicate (MinHash over the normalised question, numbers kept) of a question
  kept before it, of another id, is dropped.

A check takes the candidates of one question and returns one list of reasons per candidate; `grounded`
and `self_contained` take every candidate at once (a judge's calls then run together), `duplicate` and
`judge` every candidate that passed the other checks (so a rejected question never shadows a good one,
and the judge costs as few calls as possible).

    pseudocot synth filter --task gsm8k --data gold.jsonl --candidates c.jsonl --out kept.jsonl
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pseudocot.config.schema import GROUNDED_PROMPT, SELF_CONTAINED_PROMPT
from pseudocot.data.example import Example
from pseudocot.dotted import lookup
from pseudocot.errors import ConfigError
from pseudocot.synth.arithmetic import close, parse_number, statements
from pseudocot.synth.grounding import ill_formed, leans_on_text, near_duplicates, support
from pseudocot.tasks.extract import INVALID
from pseudocot.tasks.task import Task

_FINAL_LINE = re.compile(r"(?i)(\bfinal\s+answer\b|\bthe\s+(?:final\s+)?answer\s+is\b|\banswer\s*:|####|\\boxed\{)")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?%?")


def is_answer_line(line: str) -> bool:
    """Whether a line states a final answer (`Final answer: 12`, `The answer is 12.`, `#### 12`, `\\boxed{12}`)."""
    return bool(_FINAL_LINE.search(line))


def split_solution(text: str) -> tuple[list[str], str | None]:
    """(step lines, final answer line): the last non-empty line is the answer line when it states an
    answer; the steps are the non-empty lines before it.

    >>> split_solution("3 + 4 = 7\\n\\n7 * 2 = 14\\nFinal answer: 14")
    (['3 + 4 = 7', '7 * 2 = 14'], 'Final answer: 14')
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and is_answer_line(lines[-1]):
        return lines[:-1], lines[-1]
    return lines, None


@dataclass
class Candidate:
    """One teacher solution of one question, parsed once for every check."""

    id: str
    """The question's id."""
    sample: int
    """Which of the question's samples (0-based)."""
    question: str
    completion: str
    """The text the checks read: steps, one per line, then the final answer line."""
    gold: Example | None = None
    """The question with its gold answer (None: no gold answer)."""
    finish_reason: str = "stop"
    """`length` when the teacher was cut off at max_new_tokens."""
    row: dict[str, Any] = field(default_factory=dict)
    """The candidate row as read (written back beside the verdict)."""
    context: str | None = None
    """The text the question was written from (a document chunk), for `grounded`; None: none known."""
    steps: list[str] = field(default_factory=list)
    final: str | None = None
    answer: str = INVALID
    """The final answer, as the task's extraction reads it."""


@dataclass
class FilterSettings:
    task: Task
    """Reads and scores answers."""
    extraction: str | None = None
    """The extraction that reads a solution's answer; None: `answer-line` where the task has it (it reads the
    default prompt's `Final answer: N`, `The answer is N` and `#### N`), else the task's primary."""
    min_agreement: float = 0.5
    min_steps: int = 1
    max_steps: int = 40
    max_step_chars: int = 600
    judge: Any = None
    """A `synth.judge.Judge` (for the `judge` check, and the judge's part of `grounded` and `self_contained`)."""
    duplicate_threshold: float = 0.6
    """duplicate: the Jaccard similarity of normalised questions from which the later one is a near-duplicate."""
    min_word_overlap: float = 0.6
    """grounded: share of a non-numeric answer's content words that must be in the chunk."""
    min_topic_overlap: float = 0.15
    """grounded: share of the question's and reasoning's content words that must be in the chunk."""
    grounded_prompt: str = GROUNDED_PROMPT
    self_contained_prompt: str = SELF_CONTAINED_PROMPT

    def __post_init__(self) -> None:
        if self.extraction is None:
            self.extraction = "answer-line" if "answer-line" in self.task.extractions else self.task.primary
        elif self.extraction not in self.task.extractions:
            raise ConfigError(f"task '{self.task.name}' has no extraction '{self.extraction}'; it has {', '.join(self.task.extractions)}.")

    def read(self, c: Candidate) -> Candidate:
        """Fill in a candidate's steps, final line and answer."""
        c.steps, c.final = split_solution(c.completion)
        c.answer = self.task.extract(c.completion)[str(self.extraction)]
        return c

    def same(self, a: str, b: str) -> bool:
        return self.task.metric(a, b)


Reasons = list[list[str]]
Check = Callable[[Sequence[Candidate], FilterSettings], Reasons]


# --------------------------------------------------------------------------------------------
# The checks.
# --------------------------------------------------------------------------------------------


def format_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    out: Reasons = []
    seen: dict[str, int] = {}
    for c in cands:
        r = []
        if c.final is None:
            r.append("format:no-answer-line: the last line states no final answer")
        if c.finish_reason == "length":
            r.append("format:cut-off: the teacher stopped at max_new_tokens")
        if not s.min_steps <= len(c.steps) <= s.max_steps:
            r.append(f"format:steps: {len(c.steps)} steps, not {s.min_steps}..{s.max_steps}")
        long = next((i for i, step in enumerate(c.steps, 1) if len(step) > s.max_step_chars), None)
        if long is not None:
            r.append(f"format:long-step: step {long} has {len(c.steps[long - 1])} characters (at most {s.max_step_chars}), "
                     "not one step per line")
        text = " ".join(c.completion.split())
        if text in seen:
            r.append(f"format:duplicate: the same text as sample {seen[text]}")
        else:
            seen[text] = c.sample
        out.append(r)
    return out


def answer_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    out: Reasons = []
    for c in cands:
        if c.gold is None or not c.gold.answer:
            out.append([])  # no gold answer: consistency stands in
        elif c.answer == INVALID:
            out.append(["answer:none: the task reads no answer in the solution"])
        elif not s.task.is_correct(c.completion, c.gold, s.extraction):
            out.append([f"answer:wrong: {c.answer}, the gold answer is {c.gold.answer}"])
        else:
            out.append([])
    return out


def arithmetic_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    out: Reasons = []
    for c in cands:
        bad = [st for st in statements(c.completion) if not st.ok]
        out.append([f"arithmetic:false: line {st.line}: {st.text}"
                    + (f", but it is {st.value:g}" if st.value is not None else ", which cannot be computed")
                    for st in bad[:1]])
    return out


def last_step_value(steps: Sequence[str]) -> tuple[int, str] | None:
    """(step number, number as written) the chain arrived at: in the last step that holds a number,
    its last arithmetic statement's result, else its last number.

    >>> last_step_value(["Natalia sold 48/2 = 24 clips in May.", "She sold 48 + 24 = 72 clips in 2 months."])
    (2, '72')
    """
    for i in range(len(steps) - 1, -1, -1):
        found = statements(steps[i])
        if found:
            plain = [st for st in found if st.kind == "text"] or found
            return i + 1, plain[-1].result
        numbers = _NUMBER.findall(steps[i])
        if numbers:
            return i + 1, numbers[-1]
    return None


def answer_follows(steps: Sequence[str], answer: str) -> bool | None:
    """Whether a numeric `answer` equals the value the steps arrived at (`last_step_value`, as rounded to
    the digits shown); None when the answer is not a number or no step holds one.

    >>> answer_follows(["3 + 4 = 7", "7 * 2 = 14 apples"], "14"), answer_follows(["3 + 4 = 7"], "8")
    (True, False)
    >>> answer_follows(["48 + 24 = 72", "She sold 72 clips in 2 months."], "72")
    True
    """
    value = parse_number(answer) if answer != INVALID else None
    last = last_step_value(steps)
    if value is None or last is None:
        return None
    if not statements(steps[last[0] - 1]):  # a step in words ("She has 72 clips after 2 months."): any of its numbers
        return any(close(value, n) for n in _NUMBER.findall(steps[last[0] - 1]))
    return close(value, last[1])


def follows_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    out: Reasons = []
    for c in cands:
        if c.answer == INVALID or parse_number(c.answer) is None:
            out.append([])  # not a number (a letter, a word): nothing to compute it from
            continue
        verdict = answer_follows(c.steps, c.answer)
        if verdict is None:
            out.append([f"follows:no-result: no step computes the answer {c.answer}"])
        elif not verdict:
            last = last_step_value(c.steps)
            assert last is not None
            out.append([f"follows:mismatch: step {last[0]} arrives at {last[1]}, but the answer is {c.answer}"])
        else:
            out.append([])
    return out


def consistency_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    if len(cands) < 2:
        return [[] for _ in cands]
    # One key per answer as the task compares them (`$1,250` and `1250` are one answer).
    keys: list[str | None] = []
    for c in cands:
        if c.answer == INVALID:
            keys.append(None)
            continue
        keys.append(next((k for k in keys if k is not None and s.same(c.answer, k)), c.answer))
    counts = Counter(k for k in keys if k is not None)
    top = counts.most_common(2)
    share = top[0][1] / len(cands) if top else 0.0
    if not top or (len(top) > 1 and top[1][1] == top[0][1]) or share < s.min_agreement:
        held = f"{top[0][1]} of {len(cands)}" if top else f"0 of {len(cands)}"
        why = "a tie" if len(top) > 1 and top[1][1] == top[0][1] else f"the top answer holds {held}"
        return [[f"consistency:no-majority: {why} (at least {s.min_agreement:g} needed)"] for _ in cands]
    major = top[0][0]
    return [[] if k == major else [f"consistency:minority: {c.answer}, the majority answer is {major} ({top[0][1]} of {len(cands)})"]
            for c, k in zip(cands, keys)]


def judge_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    if s.judge is None:
        raise ConfigError("the judge check needs a judge; set synth.judge (an endpoint or a local model).")
    verdicts = s.judge.verdicts([(c.question, c.completion) for c in cands])
    return [[] if v == 1 else ["judge:unreadable: the judge's reply holds no 0/1 verdict"] if v is None
            else ["judge:rejected: the judge found the reasoning wrong"] for v in verdicts]


def _reasoning(c: Candidate) -> str:
    return "\n".join(c.steps)


def grounded_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    out: Reasons = []
    for c in cands:
        if c.context is None:
            out.append(["grounded:no-source: the item names no text it was written from"])
            continue
        answer = c.answer if c.answer != INVALID else (c.final or "")
        verdict = support(c.context, c.question, answer, _reasoning(c), s.min_word_overlap, s.min_topic_overlap)
        out.append([] if verdict.ok else [verdict.reason])
    if s.judge is not None:  # where the rule says no, the judge decides
        asked = [i for i, (c, r) in enumerate(zip(cands, out)) if r and c.context is not None]
        rows = [{"text": str(cands[i].context), "question": cands[i].question, "answer": cands[i].answer} for i in asked]
        for i, v in zip(asked, s.judge.ask(s.grounded_prompt, rows) if rows else []):
            out[i] = [] if v == 1 else [f"{out[i][0]}; the judge " + ("agrees" if v == 0 else "gave no verdict")]
    return out


def self_contained_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    out: Reasons = []
    for c in cands:
        words = leans_on_text(c.question)
        out.append([f"self_contained:refers: the question leans on a text the reader cannot see ('{words}')"] if words else [])
    if s.judge is not None:
        asked = [i for i, r in enumerate(out) if not r]
        for i, v in zip(asked, s.judge.ask(s.self_contained_prompt, [{"question": cands[i].question} for i in asked]) if asked else []):
            if v != 1:
                out[i] = ["self_contained:judge: the judge " + ("cannot answer it without its text" if v == 0 else "gave no verdict")]
    return out


def well_formed_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    out: Reasons = []
    for c in cands:
        answer = c.answer if c.answer != INVALID else (c.final or "")
        why = ill_formed(c.question, str(c.row.get("answer", answer)), c.steps)
        out.append([why] if why else [])
    return out


def duplicate_check(cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    out: Reasons = []
    for c, hit in zip(cands, near_duplicates([(str(i), c.question) for i, c in enumerate(cands)], s.duplicate_threshold)):
        other = cands[int(hit[0])] if hit else None
        if other is None or other.id == c.id:  # the samples of one question share it: not duplicates
            out.append([])
        else:
            out.append([f"duplicate:near: repeats the question of {other.id} (similarity {hit[1]:.2f})"])  # type: ignore[index]
    return out


CHECKS: dict[str, Check] = {"format": format_check, "answer": answer_check, "arithmetic": arithmetic_check,
                            "follows": follows_check, "consistency": consistency_check, "grounded": grounded_check,
                            "self_contained": self_contained_check, "well_formed": well_formed_check, "duplicate": duplicate_check,
                            "judge": judge_check}
"""The checks by plain name; `judge` always runs last, on what the others kept."""

WHOLE_SET = ("grounded", "self_contained")
"""Checks that take every candidate at once."""
SURVIVORS = ("duplicate", "judge")
"""Checks that take, in this order, every candidate the checks before them kept."""


def get_check(name: str) -> Check:
    """A check by plain name or `package.module:function`."""
    return lookup(name, CHECKS, "check", "(candidates, settings) -> reasons")


# --------------------------------------------------------------------------------------------
# Running them.
# --------------------------------------------------------------------------------------------


@dataclass
class FilterResult:
    kept: list[Candidate]
    rejected: list[tuple[Candidate, list[str]]]
    """Each rejected candidate with its reasons (one per failed check)."""

    def summary(self) -> dict[str, Any]:
        """`{"candidates", "kept", "rejected": {code: candidates}}` (a candidate counts under each code it failed)."""
        codes = Counter(reason.split(": ", 1)[0] for _, reasons in self.rejected for reason in reasons)
        checks = Counter(check for _, reasons in self.rejected for check in {r.split(":", 1)[0] for r in reasons})
        n = len(self.kept) + len(self.rejected)
        return {"candidates": n, "kept": len(self.kept), "keep_rate": round(len(self.kept) / n, 4) if n else None,
                "rejected": dict(sorted(codes.items())), "rejected_by_check": dict(sorted(checks.items()))}


def _apply(check_name: str, check: Check, cands: Sequence[Candidate], s: FilterSettings) -> Reasons:
    reasons = check(cands, s)
    if not isinstance(reasons, list) or len(reasons) != len(cands):
        raise ConfigError(f"check '{check_name}' returned {type(reasons).__name__} of length "
                          f"{len(reasons) if hasattr(reasons, '__len__') else '?'} for {len(cands)} candidates; "
                          "return one list of reason strings per candidate.")
    return reasons


def run_filter(cands: Sequence[Candidate], settings: FilterSettings, checks: Sequence[str]) -> FilterResult:
    """Run `checks` over candidates (grouped by question id, in order); keep those with no reason."""
    fns = [(name, get_check(name)) for name in checks]
    for c in cands:
        settings.read(c)
    reasons: dict[int, list[str]] = {id(c): [] for c in cands}
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.id, []).append(c)
    for name, fn in fns:
        if name in SURVIVORS:
            continue
        for group in [list(cands)] if name in WHOLE_SET else groups.values():
            for c, r in zip(group, _apply(name, fn, group, settings)):
                reasons[id(c)] += r
    for name in SURVIVORS:
        survivors = [c for c in cands if not reasons[id(c)]]
        if name in checks and survivors:
            for c, r in zip(survivors, _apply(name, CHECKS[name], survivors, settings)):
                reasons[id(c)] += r
    kept = [c for c in cands if not reasons[id(c)]]
    return FilterResult(kept, [(c, reasons[id(c)]) for c in cands if reasons[id(c)]])


def kept_example(c: Candidate, teacher: str, checks: Sequence[str]) -> Example:
    """A kept solution as an Example the data, teacher and distillation stages read: the question, the
    teacher's answer, its steps as the reasoning, and `meta.synth` (teacher, sample, checks passed)."""
    gold = c.gold
    meta = {k: v for k, v in (gold.meta if gold else {}).items() if k not in ("solution", "target")}
    meta["synth"] = {"question_id": c.id, "sample": c.sample, "teacher": teacher, "checks": list(checks),
                     "gold": gold.answer if gold and gold.answer else None}
    answer = c.answer if c.answer != INVALID else (c.final or INVALID)
    return Example(id=f"{c.id}/s{c.sample}", question=gold.question if gold else c.question, answer=answer.strip(),
                   choices=gold.choices if gold else None, reasoning="\n".join(c.steps) or None,
                   source=(gold.source if gold else "") or "synth", meta=meta)
