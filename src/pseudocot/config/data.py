"""The data sections: the sources a run reads, splits and mixes (`data`), the built-in arithmetic task
(`data.arith`), and the tokenizer trained for the tiny models (`tokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pseudocot.config.base import MIN_TOKENIZER_VOCAB, Count, Positive, Weight
from pseudocot.config.checks import FieldError, Ge, Gt, Lt, NonEmpty, PlainName, Section

ArithOp = Literal["+", "-", "*", "/"]


@dataclass
class ArithConfig(Section):
    n_train: Count = 4000
    """Number of training problems of the built-in arithmetic task."""
    n_val: Count = 500
    """Number of validation problems."""
    n_test: Count = 1000
    """Number of held-out test problems (disjoint from train and val by question text)."""
    max_steps: Positive = 4
    """Largest number of operations k in one problem; k is drawn from 1..max_steps."""
    step_weights: list[Weight] | None = None
    """Relative frequency of k = 1..max_steps (one weight per k); null means uniform."""
    max_operand: Annotated[int, Ge(2)] = 12
    """Largest operand of a step (operands are drawn from 1..max_operand; the start from 2..2*max_operand)."""
    max_value: int = 99
    """Largest value any intermediate or final result may take (all values stay non-negative); at least 2 * max_operand."""
    operations: Annotated[list[ArithOp], NonEmpty()] = field(default_factory=lambda: ["+", "-", "*", "/"])
    """Operations to draw from: any of `+`, `-`, `*`, `/` (division is always exact)."""
    seed: int = 0
    """Seed of the problem generator; the same seed gives byte-identical files."""

    def validate(self) -> None:
        if self.step_weights is not None and (len(self.step_weights) != self.max_steps or sum(self.step_weights) <= 0):
            raise FieldError("step_weights", f"needs {self.max_steps} non-negative weights (one per k = 1..max_steps) "
                                             "with a positive sum")
        if self.max_value < 2 * self.max_operand:
            raise FieldError("max_value", f"must be at least 2 * max_operand = {2 * self.max_operand}, got {self.max_value}")


@dataclass
class SourceConfig(Section):
    name: Annotated[str, PlainName()] = "arith"
    """Name of this source; it is written into each example's `source` field."""
    format: Literal["arith", "gsm8k", "mmlu", "jsonl", "csv", "hf_disk", "questions"] = "arith"
    """How to read it: the built-in task (`arith`, settings under `data.arith`), GSM8K JSONL, MMLU CSV, generic
    JSONL or CSV, a `datasets` folder saved with `save_to_disk`, or `questions`: the questions stage's kept questions
    from `synth.documents`, split by document (no files to name)."""
    train: str | None = None
    """Training file (for `hf_disk`: `FOLDER` or `FOLDER:SPLIT`); null for a source used only for evaluation."""
    val: str | None = None
    """Validation file; null carves `data.val_fraction` out of the training file."""
    test: str | None = None
    """Test file; null means this source adds nothing to the test split."""
    fields: dict[str, str] = field(default_factory=dict)
    """Field mapping for `jsonl`, `csv` and `hf_disk`: Example field -> column name, e.g. `{question: prompt, answer: label}`."""
    weight: Annotated[float, Gt(0)] = 1.0
    """Relative share of this source in the mixed training split (paper section 4.1)."""


@dataclass
class DataConfig(Section):
    sources: Annotated[list[SourceConfig], NonEmpty()] = field(default_factory=lambda: [SourceConfig()])
    """Datasets to load; several are mixed so every shard holds the same share of each."""
    arith: ArithConfig = field(default_factory=ArithConfig)
    """Settings of the built-in arithmetic task (used by a source of format `arith`)."""
    val_fraction: Annotated[float, Ge(0), Lt(1)] = 0.1
    """Share of a source's training file held out as validation when it has no `val` file."""
    max_train: Count | None = None
    """Cap on the mixed training split (null: everything the sources give)."""
    max_val: Count | None = None
    """Cap on the validation split (null: no cap)."""
    max_test: Count | None = None
    """Cap on the test split (null: no cap)."""
    skip_bad: bool = False
    """Skip malformed rows (written with their reasons to `data/rejects.jsonl`) instead of stopping."""
    seed: int = 0
    """Seed for shuffling, the validation carve-out and mixing."""

    def validate(self) -> None:
        names = [s.name for s in self.sources]
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise FieldError("sources", f"uses the name '{twice}' twice; give each source its own name")


@dataclass
class TokenizerConfig(Section):
    train: bool = False
    """Train a BPE tokenizer on the run's training data into `<run>/tokenizer/` (for tiny models trained from scratch)."""
    vocab_size: Annotated[int, Ge(MIN_TOKENIZER_VOCAB)] = 384
    """Vocabulary size of a trained tokenizer (special tokens and the byte alphabet included: at least 263)."""
    min_frequency: Positive = 2
    """A merge must occur at least this often in the training text to be learned."""
