"""The built-in task `arith`: multi-step arithmetic word problems generated from a seed.

A problem is a start value and k operations (k = 1..max_steps) applied to a running total, worded
with varied names, items and sentence templates. The gold solution is one line per step
(`12 + 7 = 19`) and the answer is the last value. All values stay in 0..max_value and division is
exact, so every step is checkable. The same settings and seed give byte-identical files.

    pseudocot data arith --n 2000 --max-steps 4 --seed 0 --out arith.jsonl
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pseudocot.config import ArithConfig
from pseudocot.data.example import Example
from pseudocot.errors import DataError

NAMES = [("Mia", "she", "her"), ("Leo", "he", "him"), ("Ava", "she", "her"), ("Noah", "he", "him"),
         ("Zoe", "she", "her"), ("Omar", "he", "him"), ("Ines", "she", "her"), ("Ravi", "he", "him"),
         ("Lena", "she", "her"), ("Tom", "he", "him"), ("Yuki", "she", "her"), ("Sam", "he", "him")]
ITEMS = ["apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pencils", "stamps", "cookies"]
START = ["{name} has {a} {item}.", "{name} starts with {a} {item}.", "There are {a} {item} in {name}'s box.",
         "{name} collects {a} {item}."]
STEP = {
    "+": ["{Pron} gets {b} more {item}.", "Then {pron} finds {b} more.", "A friend gives {obj} {b} more {item}.",
          "{Pron} buys {b} more {item}."],
    "-": ["{Pron} gives away {b} of them.", "Then {pron} loses {b} {item}.", "{Pron} sells {b} {item}.",
          "{Pron} uses {b} of them."],
    "*": ["Then the number of {item} becomes {b} times as large.", "{Pron} ends up with {b} times as many {item}.",
          "{Pron} multiplies the pile by {b}."],
    "/": ["{Pron} splits the {item} into {b} equal groups and keeps one group.",
          "{Pron} shares them equally among {b} boxes and keeps one box."],
}
END = ["How many {item} does {name} have now?", "How many {item} does {name} have in the end?",
       "How many {item} are left?"]
OPERATIONS = tuple(STEP)


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a} / {b} is not exact")
        return a // b
    raise ValueError(f"unknown operation {op!r}")


def _operand_choices(a: int, op: str, cfg: ArithConfig) -> list[int]:
    """Operands b that keep the running value in 1..max_value (division exact, never by 1)."""
    hi = cfg.max_operand
    if op == "+":
        return list(range(1, min(hi, cfg.max_value - a) + 1))
    if op == "-":
        return list(range(1, min(hi, a - 1) + 1))
    if op == "*":
        return list(range(2, min(hi, cfg.max_value // max(a, 1)) + 1)) if a > 0 else []
    return [b for b in range(2, min(hi, a - 1) + 1) if a % b == 0]


def make_problem(rng: random.Random, k: int, cfg: ArithConfig) -> tuple[str, list[str], int, list[str]]:
    """One problem with k steps: (question, solution lines, answer, operations)."""
    parts, lines, value, ops = problem_parts(rng, k, cfg)
    return " ".join(parts), lines, value, ops


def problem_parts(rng: random.Random, k: int, cfg: ArithConfig) -> tuple[list[str], list[str], int, list[str]]:
    """One problem with k steps as its sentences (the start, one per step, the question), solution lines, answer and
    operations."""
    while True:
        a = rng.randint(2, 2 * cfg.max_operand)
        value, lines, ops, ok = a, [], [], True
        sentences: list[tuple[str, int]] = []
        for _ in range(k):
            options = [(op, bs) for op in cfg.operations if (bs := _operand_choices(value, op, cfg))]
            if not options:
                ok = False
                break
            op, bs = rng.choice(options)
            b = rng.choice(bs)
            new = apply_op(value, op, b)
            lines.append(f"{value} {op} {b} = {new}")
            ops.append(op)
            sentences.append((op, b))
            value = new
        if ok:
            break
    name, pron, obj = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    words = {"name": name, "pron": pron, "Pron": pron.capitalize(), "obj": obj, "item": item}
    parts = [rng.choice(START).format(a=a, **words)]
    parts += [rng.choice(STEP[op]).format(b=b, **words) for op, b in sentences]
    parts.append(rng.choice(END).format(**words))
    return parts, lines, value, ops


def generate(n: int, cfg: ArithConfig, seed: int | None = None, exclude: Sequence[str] | set[str] = (),
             split: str = "all") -> list[Example]:
    """n problems with unique question texts, none of them in `exclude`."""
    rng = random.Random(cfg.seed if seed is None else seed)
    out: list[Example] = []
    for question, lines, answer, ops, k in _unique(n, cfg, exclude, "problems", lambda k: (*make_problem(rng, k, cfg), k), rng):
        out.append(Example(id=f"arith/{split}/{len(out)}", question=question, answer=str(answer),
                           reasoning="\n".join(lines), source="arith", meta={"steps": k, "ops": ops}))
    return out


def _unique(n: int, cfg: ArithConfig, exclude: Sequence[str] | set[str], what: str, draw: Any, rng: random.Random) -> list[Any]:
    """n draws (`draw(k)`, k from 1..max_steps by `step_weights`) whose first element, their text, is new and not in
    `exclude`."""
    ks = list(range(1, cfg.max_steps + 1))
    weights = cfg.step_weights or [1.0] * cfg.max_steps
    taken = set(exclude)
    out: list[Any] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise DataError(f"data.arith: only {len(out)} unique {what} could be made out of {n} asked; "
                            "raise max_operand, max_value or max_steps, or ask for fewer.")
        made = draw(rng.choices(ks, weights)[0])
        if made[0] not in taken:
            taken.add(made[0])
            out.append(made)
    return out


def story(rng: random.Random, k: int, cfg: ArithConfig) -> tuple[str, list[dict[str, Any]]]:
    """A story of k steps without its question (a document), and the k questions it answers, one after each step:
    the story so far and the question, `{question, answer, reasoning}` (the steps as a list)."""
    parts, lines, _, _ = problem_parts(rng, k, cfg)
    items = [{"question": " ".join([*parts[: j + 1], parts[-1]]), "answer": lines[j - 1].rsplit("= ", 1)[1],
              "reasoning": lines[:j]} for j in range(1, k + 1)]
    return " ".join(parts[:-1]), items


def stories(n: int, cfg: ArithConfig, seed: int, exclude: Sequence[str] | set[str] = ()) -> list[tuple[str, list[dict[str, Any]]]]:
    """n stories with unique texts, none of them in `exclude`, and their questions (`story`); k is drawn as for the
    problems (`max_steps`, `step_weights`).

    >>> text, items = stories(1, ArithConfig(max_steps=2, step_weights=[0, 1], operations=["+"]), seed=0)[0]
    >>> len(items), items[0]["question"].startswith(text.split(". ")[0]), items[1]["reasoning"][0] == items[0]["reasoning"][0]
    (2, True, True)
    """
    rng = random.Random(seed)
    return _unique(n, cfg, exclude, "stories", lambda k: story(rng, k, cfg), rng)


def generate_splits(cfg: ArithConfig) -> dict[str, list[Example]]:
    """Train, val and test, disjoint by question text. Test is drawn first, from its own stream,
    so the held-out set does not change when n_train or n_val does."""
    test = generate(cfg.n_test, cfg, seed=cfg.seed * 1_000_003 + 3, split="test")
    val = generate(cfg.n_val, cfg, seed=cfg.seed * 1_000_003 + 2, exclude={e.question for e in test}, split="val")
    taken = {e.question for e in test} | {e.question for e in val}
    train = generate(cfg.n_train, cfg, seed=cfg.seed * 1_000_003 + 1, exclude=taken, split="train")
    return {"train": train, "val": val, "test": test}


def stats(examples: Sequence[Example]) -> dict[str, Any]:
    """Counts per k and per operation, answer range: what `stats.json` holds for one file."""
    steps = Counter(int(e.meta.get("steps", 0)) for e in examples)
    ops = Counter(op for e in examples for op in e.meta.get("ops", []))
    answers = [float(e.answer) for e in examples]
    return {
        "n": len(examples),
        "per_steps": {str(k): steps[k] for k in sorted(steps)},
        "per_operation": {op: ops[op] for op in sorted(ops)},
        "answer_min": min(answers, default=None),
        "answer_max": max(answers, default=None),
        "answer_mean": round(sum(answers) / len(answers), 3) if answers else None,
    }
