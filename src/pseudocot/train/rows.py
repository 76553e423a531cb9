"""Training rows: Example JSONL -> tokenized prompt/completion rows with the loss on the completion
only, the padding collator, which positions are answer tokens, and validation cross-entropy.

    rows = tokenize_examples(read_split(path, "base training data"), tokenizer, with_reasoning=False,
                             system_prompt=None, max_length=128)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pseudocot.data.chat import prompt_and_completion
from pseudocot.data.example import Example
from pseudocot.data.jsonl import read_examples
from pseudocot.errors import DataError

IGNORE_INDEX = -100
logger = logging.getLogger(__name__)


def read_split(path: str | Path, what: str, first: int | None = None) -> list[Example]:
    """The examples of a split file; with `first`, only the first that many (`train.val_examples`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file for the {what}; run `pseudocot data` first or set the file in the config.")
    return read_examples(path).examples[:first]


def thought_pairs(tokenizer: Any, ex: Example, prompts: Any, thoughts: Sequence[str] | None = None,
                  first: int = 0) -> list[tuple[str, str]]:
    """(prompt, answer) with the first j thoughts in the base model's context, j = first..len(thoughts), rendered
    exactly as the pipeline renders them (`prompts` is a `PipelineConfig`); the answer is always the gold one.
    `thoughts`: the example's gold thoughts (its reasoning lines, then its answer line) unless given (the Tiny
    Thought Model's own, right or wrong)."""
    from pseudocot.data.chat import answer_text, base_messages, question_text, split_last_turn, thought_lines

    answer = {"role": "assistant", "content": answer_text(ex, with_reasoning=False)}
    lines = thought_lines(ex) if thoughts is None else list(thoughts)
    return [split_last_turn(tokenizer, base_messages(question_text(ex), lines[:j], prompts) + [answer])
            for j in range(first, len(lines) + 1)]


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, with_reasoning: bool, system_prompt: str | None,
                      max_length: int, thoughts: Any = None, written: Sequence[Sequence[str] | None] | None = None,
                      gold: bool = True) -> list[dict[str, Any]]:
    """Rows of `input_ids` and `labels` (prompt tokens masked with -100): the loss is on the answer only.
    With `thoughts` (a `PipelineConfig`), each example gives one row per number of gold thoughts in
    its context (`thought_pairs`); `written[i]`, where given, adds a row per number of the thoughts a model
    wrote for example i (j >= 1: the row without thoughts is the gold one); `gold=False` keeps only the row
    without thoughts of the gold ones for the examples with written thoughts."""

    def pairs_of(i: int, ex: Example) -> list[tuple[str, str]]:
        if thoughts is None:
            return [prompt_and_completion(tokenizer, ex, with_reasoning, system_prompt)]
        mine = written[i] if written is not None and i < len(written) else None
        # A question the model wrote no thoughts for keeps its gold rows, whatever `gold` says.
        out = thought_pairs(tokenizer, ex, thoughts) if gold or mine is None else thought_pairs(tokenizer, ex, thoughts, [])
        return out + (thought_pairs(tokenizer, ex, thoughts, mine, first=1) if mine else [])

    return tokenize_pairs([(i, pair) for i, ex in enumerate(examples) for pair in pairs_of(i, ex)], tokenizer, max_length)


def tokenize_pairs(pairs: Sequence[tuple[int, tuple[str, str]]], tokenizer: Any, max_length: int,
                   uncut: str | None = None) -> list[dict[str, Any]]:
    """Rendered (prompt, completion) pairs, each with the index of what it came from, as rows of `input_ids` and
    `labels` (the prompt masked with -100: the loss is on the completion only), cut at `max_length`. `uncut`: the key
    that sets `max_length`, when a cut row is an error rather than a warning (a completion that must end whole)."""
    rows, cut = [], 0
    # One batched call per side: the fast tokenizer encodes a list far quicker than one text at a time.
    p_all = tokenizer([p for _, (p, _) in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    c_all = tokenizer([c for _, (_, c) in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    for (i, _), p_ids, c_ids in zip(pairs, p_all, c_all):
        cut += len(p_ids) + len(c_ids) > max_length
        ids = (p_ids + c_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(p_ids) + c_ids)[:max_length]
        if all(t == IGNORE_INDEX for t in labels[1:]):
            continue  # the prompt alone fills max_length: nothing to learn from this row
        rows.append({"input_ids": ids, "labels": labels, "index": i})
    if cut and uncut:
        raise DataError(f"{cut} of {len(pairs)} rows are longer than {uncut}={max_length} tokens, and a cut completion never "
                        f"ends; raise {uncut} to at least {max(len(a) + len(b) for a, b in zip(p_all, c_all))}.")
    if not rows:
        raise DataError(f"no example fits in train.max_length={max_length} tokens with room for its answer; raise max_length.")
    if cut:
        logger.warning("%d of %d rows are longer than train.max_length=%d tokens and were cut at the end "
                       "(their final answer may be lost); raise max_length to keep them whole.", cut, len(pairs), max_length)
    return rows


class PadCollator:
    """Right-pads a list of rows into (B, T) tensors: input_ids, attention_mask, labels (and index)."""

    def __init__(self, pad_id: int, keep_index: bool = False) -> None:
        self.pad_id = pad_id
        self.keep_index = keep_index  # the row's position in the dataset, for looking up a teacher cache

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.keep_index:
            batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        return batch


EVAL_LOGITS = 32 * 2**20
"""Most logits (batch x length x vocabulary floats) one validation batch may hold: 128 MiB in fp32."""


def eval_batches(rows: Sequence[dict[str, Any]], batch_size: int, vocab_size: int,
                 max_logits: int = EVAL_LOGITS) -> list[list[dict[str, Any]]]:
    """`rows` sorted by length, longest first (a batch too large for memory fails at once), in
    batches of at most `batch_size` rows whose (B, T, V) logits stay under `max_logits` (one row at least)."""
    ordered = sorted(rows, key=lambda r: len(r["input_ids"]), reverse=True)
    batches, start = [], 0
    while start < len(ordered):
        width = len(ordered[start]["input_ids"])  # the longest row of the batch sets its width
        n = max(1, min(batch_size, max_logits // max(width * vocab_size, 1)))
        batches.append(ordered[start : start + n])
        start += n
    return batches


@torch.no_grad()
def eval_ce(model: Any, rows: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 32, max_logits: int = EVAL_LOGITS) -> float:
    """Mean cross-entropy per answer token over `rows` (the model's validation loss). Rows go in
    length-sorted batches (little padding), small enough that their logits stay under `max_logits`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = PadCollator(pad_id)
    head = model.get_output_embeddings()
    vocab_size = head.weight.shape[0] if head is not None else model.config.vocab_size
    total, count = 0.0, 0
    for chunk in eval_batches(rows, batch_size, vocab_size, max_logits):
        batch = collate(chunk)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        # position t predicts token t+1: (B, T-1, V) against (B, T-1)
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:].to(device)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
        total += loss.item()
        count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> (B, T-1) bool: positions whose next token is an answer token (the trained ones)."""
    return labels[:, 1:] != IGNORE_INDEX
