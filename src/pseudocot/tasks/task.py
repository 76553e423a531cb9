"""The `Task`: prompts (plain text or chat messages, 0/k-shot), answer extraction, scoring, reward.

A task is data, not a subclass: each benchmark is a function that fills in a `Task` (`gsm8k.py`,
`mmlu.py`, ...). Prompt assembly follows lm-evaluation-harness (`lm_eval/api/task.py`):

    description + (doc_to_text(shot) + target_delimiter + doc_to_target(shot) + fewshot_delimiter) * k
                + doc_to_text(question)

Few-shot sampler `random` is `random.Random(fewshot_seed).sample(pool, k)` with one generator that
keeps advancing over the questions in order, so the shots of question i depend on the questions before
it, exactly as in the harness: build the prompts of a whole list at once (`prompts(examples)`).
Sampler `first_n` takes the first k of the pool in file order. A shot equal to the question itself
(same question and answer) is dropped; when the pool holds questions of the list being prompted
(pool and test are the same split), one extra shot is drawn to make up for it, as the harness does.

As chat messages (for models with a chat template), the description is the system turn and each
shot a user turn (`doc_to_text`) and an assistant turn (`doc_to_target`), as the harness's
`--apply_chat_template --fewshot_as_multiturn`; `multiturn=False` puts the whole few-shot text in
the one user turn instead.

Scoring: each extraction turns a model's text into an answer string; `metric` (the harness's
exact_match with the task's settings) compares it with `reference(example)`. `reward()` is the
score of one extraction as 0.0/1.0, so training rewards exactly what evaluation counts.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pseudocot.data.example import CHOICE_LETTERS, Example
from pseudocot.errors import ConfigError
from pseudocot.tasks.extract import ExactMatch

Messages = list[dict[str, str]]


def gold_answer(ex: Example) -> str:
    return ex.answer


def pick_choice(loglikelihoods: Sequence[float]) -> int:
    """Index of the highest log-likelihood; the first one on a tie (as `numpy.argmax`).

    >>> pick_choice([-3.2, -0.7, -0.7, -9.0])
    1
    """
    if not loglikelihoods:
        raise ValueError("no log-likelihoods to choose from")
    return max(range(len(loglikelihoods)), key=lambda i: loglikelihoods[i])


@dataclass
class Task:
    name: str
    """Registry name (`gsm8k`, `mmlu:college_mathematics`, ...)."""
    loader: Callable[[str | os.PathLike[str]], list[Example]]
    """Reads the task's data file (or folder) into Examples."""
    doc_to_text: Callable[[Example], str]
    """The question as the prompt shows it (`Question: ...\\nAnswer:`)."""
    doc_to_target: Callable[[Example], str]
    """What a few-shot example shows after the question (the worked solution, a letter, ...)."""
    extractions: dict[str, Callable[[str], str]]
    """Named ways to read an answer out of a model's text, in report order."""
    metric: ExactMatch = field(default_factory=ExactMatch)
    """How an extracted answer is compared with the reference."""
    reference: Callable[[Example], str] = gold_answer
    """The gold string an extraction is compared with."""
    primary: str = ""
    """The extraction `reward()` uses and summaries lead with; the first extraction when empty."""
    description: str = ""
    """Text before the few-shot examples (MMLU's subject line); the system turn as chat."""
    num_fewshot: int = 0
    """Number of solved examples before the question."""
    fewshot: list[Example] = field(default_factory=list)
    """The pool few-shot examples are drawn from."""
    sampler: str = "random"
    """`random` (seeded, advancing over the questions) or `first_n` (the pool's first k, in order)."""
    fewshot_seed: int = 1234
    """Seed of the `random` sampler (the harness default)."""
    target_delimiter: str = " "
    """Between a shot's question and its target."""
    fewshot_delimiter: str = "\n\n"
    """After each shot."""
    stop: tuple[str, ...] = ()
    """Generation stops at any of these strings."""
    n_choices: int = 0
    """Number of options of a multiple-choice task (0: free answer); enables log-likelihood scoring."""

    def __post_init__(self) -> None:
        if not self.extractions:
            raise ConfigError(f"task '{self.name}' has no extractions; give at least one.")
        self.primary = self.primary or next(iter(self.extractions))
        if self.primary not in self.extractions:
            raise ConfigError(f"task '{self.name}': primary extraction '{self.primary}' is not one of {', '.join(self.extractions)}.")
        if self.sampler not in ("random", "first_n"):
            raise ConfigError(f"task '{self.name}': sampler '{self.sampler}' is not one of random, first_n.")
        if self.num_fewshot < 0:
            raise ConfigError(f"task '{self.name}': num_fewshot must be 0 or more, got {self.num_fewshot}.")

    # ------------------------------------------------------------------ data

    def load(self, path: str | os.PathLike[str]) -> list[Example]:
        return self.loader(path)

    # ------------------------------------------------------------------ prompts

    def shots(self, examples: Sequence[Example]) -> list[list[Example]]:
        """The few-shot examples of each question, drawn in order with one generator."""
        k = self.num_fewshot
        if k == 0:
            return [[] for _ in examples]
        pool = self.fewshot
        if not pool:
            raise ConfigError(f"task '{self.name}' uses {k} few-shot examples but has none; "
                              "pass fewshot=PATH (or a list of Examples), or num_fewshot=0.")
        keys = {(e.question, e.answer) for e in pool}
        # The harness draws one more when the few-shot split is the test split, to replace the question.
        n_draw = k + 1 if any((e.question, e.answer) in keys for e in examples) else k
        if n_draw > len(pool):
            raise ConfigError(f"task '{self.name}' asks for {k} few-shot examples but the pool has {len(pool)}; "
                              "lower num_fewshot or give a larger fewshot file.")
        rng = random.Random(self.fewshot_seed)
        out = []
        for ex in examples:
            drawn = pool[:n_draw] if self.sampler == "first_n" else rng.sample(pool, n_draw)
            out.append([s for s in drawn if (s.question, s.answer) != (ex.question, ex.answer)][:k])
        return out

    def fewshot_text(self, shots: Sequence[Example]) -> str:
        return "".join(self.doc_to_text(s) + self.target_delimiter + self.doc_to_target(s) + self.fewshot_delimiter
                       for s in shots)

    def prompts(self, examples: Sequence[Example]) -> list[str]:
        """Plain-text prompts (no chat template), one per example, in order."""
        return [self.description + self.fewshot_text(shots) + self.doc_to_text(ex)
                for ex, shots in zip(examples, self.shots(examples))]

    def prompt(self, example: Example) -> str:
        """The prompt of one question (its shots are those of the first question of a list)."""
        return self.prompts([example])[0]

    def messages(self, examples: Sequence[Example], multiturn: bool = True, system: str | None = None) -> list[Messages]:
        """Chat messages per example: [system], shots as user/assistant turns, the question as the
        last user turn. `system` goes before the description in the system turn."""
        head = [p for p in (system, self.description) if p]
        out = []
        for ex, shots in zip(examples, self.shots(examples)):
            msgs: Messages = [{"role": "system", "content": self.fewshot_delimiter.join(head)}] if head else []
            if multiturn:
                for s in shots:
                    msgs.append({"role": "user", "content": self.doc_to_text(s)})
                    msgs.append({"role": "assistant", "content": self.doc_to_target(s)})
                msgs.append({"role": "user", "content": self.doc_to_text(ex)})
            else:
                msgs.append({"role": "user", "content": self.fewshot_text(shots) + self.doc_to_text(ex)})
            out.append(msgs)
        return out

    def chat_prompts(self, tokenizer: Any, examples: Sequence[Example], multiturn: bool = True,
                     system: str | None = None) -> list[str]:
        """`messages()` rendered through the tokenizer's chat template, with the generation prompt."""
        from pseudocot.data.chat import render

        return [render(tokenizer, m, add_generation_prompt=True) for m in self.messages(examples, multiturn, system)]

    # ------------------------------------------------------------------ scoring

    def extract(self, text: str) -> dict[str, str]:
        """{extraction name: extracted answer} (`[invalid]` where the text holds none)."""
        return {name: fn(text) for name, fn in self.extractions.items()}

    def score(self, text: str, example: Example) -> dict[str, bool]:
        """{extraction name: correct?} for one model output."""
        return {name: self.is_correct(text, example, name) for name in self.extractions}

    def is_correct(self, text: str, example: Example, extraction: str | None = None) -> bool:
        """Whether `text` answers `example` right by `extraction` (default: the primary one): THE
        definition of correct. Evaluation's accuracy, the router's labels and training rewards all
        call it, so they never disagree.

        >>> from pseudocot.tasks import get_task
        >>> ex = Example(id="q", question="Which?", answer="B", choices=["1", "2", "3", "4"])
        >>> task = get_task("mmlu:x", primary="letter")
        >>> task.is_correct("The answer is (B).", ex), task.is_correct("The answer is (B).", ex, "strict-match")
        (True, False)
        """
        name = extraction or self.primary
        if name not in self.extractions:
            raise ConfigError(f"task '{self.name}' has no extraction '{name}'; it has {', '.join(self.extractions)}.")
        return self.metric(self.extractions[name](text), self.reference(example))

    def reward(self, text: str, example: Example, extraction: str | None = None) -> float:
        """1.0 when `text` is correct (`is_correct`), else 0.0: training rewards what evaluation counts."""
        return float(self.is_correct(text, example, extraction))

    # ------------------------------------------------------------------ multiple choice by log-likelihood

    def choice_letters(self, example: Example) -> str:
        if not self.n_choices:
            raise ConfigError(f"task '{self.name}' is not multiple choice; it has no log-likelihood scoring.")
        return CHOICE_LETTERS[: len(example.choices or ()) or self.n_choices]

    def loglikelihood_requests(self, example: Example, context: str | None = None) -> list[tuple[str, str]]:
        """(context, continuation) per option: the prompt and `" A"` ... `" D"` (target_delimiter + letter).
        `context` defaults to `prompt(example)`; pass `prompts(examples)[i]` to keep a list's shots."""
        context = self.prompt(example) if context is None else context
        return [(context, self.target_delimiter + letter) for letter in self.choice_letters(example)]

    def score_loglikelihoods(self, loglikelihoods: Sequence[float], example: Example) -> dict[str, bool]:
        """{"acc": the highest log-likelihood option is the gold one}, given one value per request."""
        letters = self.choice_letters(example)
        if len(loglikelihoods) != len(letters):
            raise ValueError(f"expected {len(letters)} log-likelihoods (one per option), got {len(loglikelihoods)}")
        return {"acc": letters[pick_choice(loglikelihoods)] == example.answer.strip().upper()}
