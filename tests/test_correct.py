"""One definition of correct: the router's labels and evaluation's verdicts both come from the task's
own scoring (`Task.is_correct`), so they agree on every answer, letters included.

The router used to judge a base answer by its own rule (the text after "The answer is", compared
as a number or a case-folded string), which called "The answer is (B)." wrong against B while the
MMLU scorer's `letter` extraction calls it right.
"""

from __future__ import annotations

import numpy as np
import pytest

from pseudocot.config import load_config
from pseudocot.data.example import Example
from pseudocot.evaluate.results import score_system
from pseudocot.pipeline import Answer, Thought, Trace
from pseudocot.router.labels import outcomes
from pseudocot.tasks import get_task

QUESTION = Example(id="q1", question="Which of these is 2 + 2?", answer="B", choices=["3", "4", "5", "6"],
                   source="mmlu:college_mathematics")
TEXTS = ["The answer is (B).", "B", "(b)", "B) 4", "The answer is C.", "I think it is A", "b."]


def trace_of(texts: list[str]) -> Trace:
    """A forced trace whose answers are `texts` (a thought between each two)."""
    answers = [Answer(text=t, final=t, tokens=3, prompt_tokens=10, cached_tokens=0, seconds=0.0) for t in texts]
    thoughts = [Thought(text=f"thought {i}", tokens=2, seconds=0.0) for i in range(len(texts) - 1)]
    return Trace(id=QUESTION.id, question=QUESTION.question, mode="always", answers=answers, thoughts=thoughts)


def eval_verdicts(task, texts: list[str]) -> list[bool]:
    """Evaluation's verdict on each text as a system's final answer (its accuracy counts exactly this)."""
    out = []
    for t in texts:
        rows = {0: {QUESTION.id: {"id": QUESTION.id, "text": t, "reasoning": t, "tokens": {"model": 3}}}}
        _, correct, _ = score_system(task, [QUESTION], rows, n_boot=10)
        out.append(bool(correct[0, 0]))
    return out


@pytest.mark.parametrize("primary", ["letter", "strict-match"])
def test_router_labels_equal_evaluation_verdicts(primary):
    task = get_task("mmlu:college_mathematics", primary=primary)
    correct, available = outcomes([trace_of(TEXTS)], [QUESTION], task, max_thoughts=len(TEXTS) - 1)
    assert available.tolist() == [len(TEXTS) - 1]
    assert correct[0].tolist() == eval_verdicts(task, TEXTS)


def test_a_letter_in_a_sentence_is_right_for_both():
    task = get_task("mmlu:college_mathematics", primary="letter")
    correct, _ = outcomes([trace_of(["The answer is (B)."])], [QUESTION], task, max_thoughts=0)
    assert correct[0, 0] and eval_verdicts(task, ["The answer is (B)."]) == [True]
    assert task.is_correct("The answer is (B).", QUESTION)
    # The harness's generative MMLU reads the first line only: both call the sentence wrong there.
    strict = get_task("mmlu:college_mathematics")
    assert strict.primary == "strict-match" and not strict.is_correct("The answer is (B).", QUESTION)
    assert strict.is_correct("(b)", QUESTION)


def test_the_router_is_labelled_by_the_first_eval_task_unless_told(tmp_path):
    task = {"name": "mmlu:college_mathematics", "data": "x.csv", "options": {"primary": "letter"}}
    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", f"eval.tasks=[{task}]"])
    assert cfg.router.task is None and cfg.task_of("router") is cfg.eval.tasks[0]
    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", f"eval.tasks=[{task}]", "router.task={name: arith}"])
    assert cfg.task_of("router").name == "arith"


def test_numbers_follow_the_task_too():
    arith = get_task("arith")
    ex = Example(id="a", question="Mia has 5 apples. She gets 3 more. How many?", answer="8")
    texts = ["The answer is 8.", "5 + 3 = 8", "The answer is 8.0.", "The answer is 9."]
    correct, _ = outcomes([Trace(id="a", question=ex.question, mode="always",
                                 answers=[Answer(t, t, 1, 1, 0, 0.0) for t in texts])], [ex], arith, max_thoughts=3)
    rows = [{0: {"a": {"id": "a", "text": t, "reasoning": t, "tokens": {"model": 1}}}} for t in texts]
    verdicts = [bool(score_system(arith, [ex], r, n_boot=10)[1][0, 0]) for r in rows]
    assert correct[0].tolist() == verdicts == [True, False, False, False]
    assert np.array_equal(correct, np.array([[True, False, False, False]]))
