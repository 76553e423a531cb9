"""The `synth` section: teacher-written solutions and their faithfulness filter, questions written from documents
(`synth.documents`), their default prompts and the names of the checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pseudocot.config.base import Count, Fraction, Positive, Weight
from pseudocot.config.checks import FieldError, Ge, Gt, Le, NonEmpty, Section
from pseudocot.config.eval import EvalTaskConfig, parse_shard
from pseudocot.config.generator import GeneratorConfig

SYNTH_PROMPT = ("Solve the following problem step by step. Write one step per line, each a short sentence with its "
                "calculation written out (like `48 / 2 = 24`). End with a last line `Final answer: <answer>` and "
                "nothing after it.\n\nProblem: {question}")
"""`synth.prompt`'s default: one step per line and a final answer line, for an instruction-following teacher."""

JUDGE_PROMPT = ("You check worked solutions. Read the problem and the solution below. Answer 1 if every step is "
                "logically and arithmetically correct and the final answer follows from the steps; answer 0 if any "
                "step is wrong, unjustified or does not lead to the answer. Reply with the single digit 0 or 1.\n\n"
                "Problem: {question}\n\nSolution:\n{solution}")
"""`synth.judge_prompt`'s default: a logical-correctness rubric with a 0/1 verdict."""

SYNTH_CHECKS = ("format", "answer", "arithmetic", "follows", "consistency", "grounded", "self_contained", "well_formed", "duplicate",
                "judge")
"""The checks of `pseudocot.synth.filter`, in the order they run: per question, then over the whole set
(`grounded`, `self_contained`), then over what is left (`duplicate`; `judge` last: it costs calls)."""

QUESTIONS_PROMPT = (
    "Read the text below and write up to {k} questions a reader could answer from it, each with its answer and the "
    "reasoning that reaches the answer from the text. Mix the kinds: a fact the text states, a computation of several "
    "steps from the text's numbers, a concept the text explains. Each question must stand on its own: name what it asks "
    "about and never refer to \"the text\", \"the passage\" or \"the document\". Write the reasoning as short steps, "
    "one per line, with each calculation written out (like `48 / 2 = 24`).\n\n"
    "Reply with only a JSON list, no other text: "
    '[{{"question": "...", "answer": "...", "reasoning": ["step 1", "step 2"]}}]\n\n'
    "Text:\n{text}")
"""`synth.documents.prompt`'s default: up to {k} self-contained questions of three kinds, as a JSON list."""

GROUNDED_PROMPT = ("Here is a text, a question about it and an answer. Answer 1 if the text states the answer or it "
                   "follows from what the text says; answer 0 if it does not. Reply with the single digit 0 or 1.\n\n"
                   "Text:\n{text}\n\nQuestion: {question}\nAnswer: {answer}")
"""`synth.documents.grounded_prompt`'s default: is the answer supported by the chunk (0/1)."""

SELF_CONTAINED_PROMPT = ("Here is a question written from a document the reader has not seen. Answer 1 if it names "
                         "everything it asks about, so it can be understood and answered without that document; "
                         "answer 0 if it refers to a text, passage, section or figure the reader cannot see. Reply "
                         "with the single digit 0 or 1.\n\nQuestion: {question}")
"""`synth.documents.self_contained_prompt`'s default: does the question stand on its own (0/1)."""

DOCUMENT_CHECKS = ("grounded", "self_contained", "well_formed")
"""Checks that read an item written from a document (its chunk, its own answer): not for `synth.checks`."""

QUESTION_CHECKS = ["grounded", "self_contained", "well_formed", "duplicate", "format", "arithmetic", "follows"]
"""`synth.documents.checks`' default."""


@dataclass
class DocumentsConfig(Section):
    paths: list[str] = field(default_factory=list)
    """Files or folders of documents (.txt, .md, .pdf, .html, .jsonl) the teacher writes questions from (`builtin:docs`,
    `builtin:stories`: those shipped with pseudocot; empty: none; `pseudocot run` runs the questions stage before `data`
    when this is set)."""
    text_field: Annotated[str, NonEmpty()] = "text"
    """.jsonl documents: the field that holds each row's text."""
    chunk_tokens: Annotated[int, Ge(16)] = 384
    """Tokens per chunk (a chunk ends early at a sentence or line break in its second half)."""
    chunk_overlap: Count = 48
    """Tokens a chunk shares with the one before it."""
    tokenizer: str | None = None
    """The tokenizer that counts chunk tokens (a folder); null: the local teacher's, else whitespace-separated words."""
    max_chunks: Positive | None = None
    """Use the first this many chunks (null: all)."""
    items_per_chunk: Positive = 3
    """Questions asked per chunk ({k} in the prompt); a reply's items beyond it are dropped."""
    prompt: str = QUESTIONS_PROMPT
    """The user turn sent to the teacher per chunk ({text}: the chunk, {k}: items_per_chunk); the reply must hold a
    JSON list of {question, answer, reasoning} objects."""
    retry_temperature: Annotated[float, Gt(0)] = 0.7
    """A malformed reply is asked once more, sampled at this temperature (and another seed); then it is rejected."""
    checks: list[str] = field(default_factory=lambda: list(QUESTION_CHECKS))
    """Checks an item must pass: grounded, self_contained, well_formed, duplicate, format, arithmetic, follows, judge (with synth.judge:
    it also decides grounding and self-containment where the rules cannot), or package.module:function."""
    duplicate_threshold: Annotated[float, Gt(0), Le(1)] = 0.6
    """duplicate: Jaccard similarity of two questions' character 4-grams (after lower-casing and dropping punctuation,
    numbers kept and required equal) at which the later one is a near-duplicate."""
    min_word_overlap: Fraction = 0.6
    """grounded, an answer without numbers: share of its content words that must appear in the chunk."""
    min_topic_overlap: Fraction = 0.15
    """grounded: share of the question's and reasoning's distinct content words that must appear in the chunk."""
    grounded_prompt: str = GROUNDED_PROMPT
    """judge: is the answer supported by the chunk ({text}, {question}, {answer})."""
    self_contained_prompt: str = SELF_CONTAINED_PROMPT
    """judge: does the question stand without the chunk ({question})."""
    split: Literal["document", "question"] = "document"
    """How the kept questions are split into train/val/test: by document (every question of a document in one split,
    so evaluation never asks about a text the model trained on), or by question (evaluation on the trained texts)."""
    val_documents: Fraction = 0.1
    """Share of the documents (or, with split: question, of the questions) that form the validation split."""
    test_documents: Fraction = 0.2
    """Share of the documents (or, with split: question, of the questions) that form the test split."""
    seed: int = 0
    """Seed of the split."""

    def prompt_for(self, text: str) -> str:
        """The user turn asked about one chunk: `prompt` with the chunk and `items_per_chunk`."""
        return self.prompt.format(text=text, k=self.items_per_chunk)

    def validate(self) -> None:
        for name, allowed in (("prompt", ("text", "k")), ("grounded_prompt", ("text", "question", "answer")),
                              ("self_contained_prompt", ("question",))):
            try:
                getattr(self, name).format(**{k: "" for k in allowed})
            except (KeyError, IndexError, ValueError) as e:
                raise FieldError(name, f"cannot be filled ({type(e).__name__}: {e}); use only "
                                       f"{', '.join('{' + k + '}' for k in allowed)} and write literal braces as {{{{ }}}}") from None
        if self.chunk_overlap >= self.chunk_tokens:
            raise FieldError("chunk_overlap", f"must be smaller than chunk_tokens = {self.chunk_tokens}")
        _check_names(self.checks)
        if self.val_documents + self.test_documents >= 1:
            raise FieldError("test_documents", "and val_documents must leave some documents for training (their sum below 1)")


def _check_names(checks: list[str]) -> None:
    unknown = next((c for c in checks if c not in SYNTH_CHECKS and ":" not in c), None)
    if unknown:
        raise FieldError("checks", f"has unknown check '{unknown}'; use {', '.join(SYNTH_CHECKS)} or package.module:function")
    twice = next((c for i, c in enumerate(checks) if c in checks[:i]), None)
    if twice:
        raise FieldError("checks", f"names '{twice}' twice")


@dataclass
class SynthConfig(Section):
    enabled: bool = False
    """`pseudocot run` runs the synth stage after `data`, and the teacher and the distillation chain train on its
    kept solutions (`<run>/synth/kept.jsonl`) wherever their `train_file` is null."""
    questions: str | None = None
    """The questions to solve (gold answers optional); null: the run's `data/train.jsonl`."""
    format: Literal["jsonl", "gsm8k", "mmlu", "csv", "hf_disk"] = "jsonl"
    """How `questions` is read (an Example JSONL needs no mapping; a question-only file is fine)."""
    fields: dict[str, str] = field(default_factory=dict)
    """Field mapping for `jsonl`, `csv` and `hf_disk`: Example field -> column name."""
    max_questions: Positive | None = None
    """Solve the first this many questions (null: all)."""
    teacher: GeneratorConfig | None = None
    """Who writes the solutions: a local model (`path`) or an endpoint (`base_url` + `model`)."""
    prompt: str = SYNTH_PROMPT
    """The user turn sent to the teacher ({question}: the question, with lettered options for multiple choice)."""
    system_prompt: str | None = None
    """A system message for the teacher (null: none)."""
    samples: Positive = 4
    """Solutions asked per question."""
    temperature: Weight = 0.7
    """Sampling temperature (each sample has its own seed, so samples differ and a rerun gives the same ones)."""
    top_p: Annotated[float, Gt(0), Le(1)] = 0.95
    """Nucleus sampling mass."""
    max_new_tokens: Positive = 1024
    """Most tokens per solution (a reasoning model's thinking counts where the endpoint counts it)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings."""
    seed: int = 0
    """Seed of every sample's seed."""
    reasoning_from: Literal["content", "thinking"] = "content"
    """Where the steps are: the answer's content (an instruction model; a reasoning model's summary), or the
    thinking (`reasoning_content`, `reasoning`, `<think>`) followed by the content's answer line (`pseudocot serve`)."""
    chunk_questions: Positive = 16
    """Local model: questions generated together (each with all its samples); a killed run loses at most one chunk."""
    task: EvalTaskConfig | None = None
    """The task whose scoring decides whether a solution's answer is right (name and options); null: the run's
    first eval task."""
    extraction: str | None = None
    """The task's extraction that reads a solution's answer (null: `answer-line` where the task has it, which reads the
    default prompt's `Final answer: N` as well as `The answer is N` and `#### N`; else the task's primary)."""
    checks: list[str] = field(default_factory=lambda: ["format", "answer", "arithmetic", "follows", "consistency"])
    """Faithfulness checks a solution must pass to be kept: format, answer, arithmetic, follows, consistency, judge, or
    package.module:function for your own (empty: keep every candidate, the unfiltered baseline)."""
    min_agreement: Fraction = 0.5
    """consistency: the question's majority answer must hold at least this share of its samples."""
    min_steps: Positive = 1
    """format: fewest reasoning lines before the final answer line."""
    max_steps: Positive = 40
    """format: most reasoning lines."""
    max_step_chars: Positive = 600
    """format: longest reasoning line (a paragraph is not a step)."""
    judge: GeneratorConfig | None = None
    """judge: the model that grades each solution (an endpoint or a local model); needed when `checks` has judge."""
    judge_prompt: str = JUDGE_PROMPT
    """judge: the rubric ({question}, {solution}); the reply's first 0 or 1 is the verdict."""
    shard: str | None = None
    """This process's share of the questions, `i/n` (whole chunks); `pseudocot synth merge` filters once all are done."""
    documents: DocumentsConfig = field(default_factory=DocumentsConfig)
    """Questions from your own documents (`pseudocot synth questions`): the teacher above writes question, answer and
    reasoning per chunk, with this section's prompt, and its sampling (temperature, top_p, max_new_tokens, seed)."""

    def validate(self) -> None:
        for name, allowed in (("prompt", ("question",)), ("judge_prompt", ("question", "solution"))):
            try:
                getattr(self, name).format(**{k: "" for k in allowed})
            except (KeyError, IndexError, ValueError) as e:
                raise FieldError(name, f"cannot be filled ({type(e).__name__}: {e}); use only "
                                       f"{', '.join('{' + k + '}' for k in allowed)} and write literal braces as {{{{ }}}}") from None
        _check_names(self.checks)
        only_items = next((c for c in self.checks if c in DOCUMENT_CHECKS), None)
        if only_items:
            raise FieldError("checks", f"has '{only_items}', a check of questions written from documents; put it in "
                                       "synth.documents.checks (or `pseudocot synth qfilter --checks`)")
        if ("judge" in self.checks or "judge" in self.documents.checks) and self.judge is None:
            raise FieldError("judge", "is needed when checks has judge: an endpoint (base_url, model) or a local path")
        if self.min_steps > self.max_steps:
            raise FieldError("min_steps", f"must be at most max_steps = {self.max_steps}")
        if self.shard is not None:
            parse_shard(self.shard)
