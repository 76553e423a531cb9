"""A run's train/val/test splits from the configured sources: each source's splits (a missing
`val` carved out of `train`), the training splits mixed by weight, held-out questions removed from
training, and per-split statistics. The `data` stage (`pseudocot.stages.data`) writes them.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from pseudocot.config.schema import Config, SourceConfig
from pseudocot.data import arith
from pseudocot.data.example import Example
from pseudocot.data.jsonl import Reject, read_examples
from pseudocot.data.loaders import load_file
from pseudocot.data.mix import mix
from pseudocot.errors import DataError

SPLITS = ("train", "val", "test")


def load_source(src: SourceConfig, cfg: Config, rejects: list[Reject], questions: Path | None = None) -> dict[str, list[Example]]:
    """One source's splits; a missing `val` is carved out of `train` (`data.val_fraction`). `questions`: the folder
    of the questions stage, whose train/val/test files a source of format `questions` reads."""
    if src.format == "arith":
        return arith.generate_splits(cfg.data.arith)
    if src.format == "questions":
        files = {split: (questions or Path("questions")) / f"{split}.jsonl" for split in SPLITS}
        if not all(f.is_file() for f in files.values()):
            raise DataError(f"data source '{src.name}' (questions): {questions} has no questions split by document yet; "
                            "run `pseudocot synth questions` first (synth.documents.paths names the documents).")
        # The source is the data source's name, as for every other format; the chunk stays in meta.span.
        return {split: [dataclasses.replace(e, source=src.name, meta={**e.meta, "span": e.meta.get("span") or e.source})
                        for e in read_examples(f).examples] for split, f in files.items()}
    parts: dict[str, list[Example]] = {}
    for split in SPLITS:
        path = getattr(src, split)
        if path:
            result = load_file(src.format, path, src.fields, cfg.data.skip_bad, source=src.name)
            parts[split] = result.examples
            rejects += result.rejects
    if not parts:
        i = cfg.data.sources.index(src)
        raise DataError(f"data source '{src.name}' ({src.format}) names no train, val or test file; give them, e.g. "
                        f"data.sources.{i}.train=PATH data.sources.{i}.test=PATH.")
    if "train" in parts and "val" not in parts and cfg.data.val_fraction > 0:
        train = list(parts["train"])
        random.Random(cfg.data.seed).shuffle(train)
        n_val = max(1, round(len(train) * cfg.data.val_fraction))
        parts["val"], parts["train"] = train[:n_val], train[n_val:]
    return parts


def build_splits(cfg: Config, questions: Path | None = None) -> tuple[dict[str, list[Example]], list[Reject], dict[str, Any]]:
    rejects: list[Reject] = []
    per_split: dict[str, dict[str, list[Example]]] = {s: {} for s in SPLITS}
    for src in cfg.data.sources:
        for split, examples in load_source(src, cfg, rejects, questions).items():
            if examples:
                per_split[split][src.name] = examples
    weights = {s.name: s.weight for s in cfg.data.sources}
    train = mix(per_split["train"], {n: weights[n] for n in per_split["train"]}, cfg.data.max_train, cfg.data.seed)
    val = mix(per_split["val"], seed=cfg.data.seed)[: cfg.data.max_val]
    test = mix(per_split["test"], seed=cfg.data.seed)[: cfg.data.max_test]
    # Held-out questions never appear in training, whatever the sources did.
    held_out = {e.question for e in val} | {e.question for e in test}
    kept = [e for e in train if e.question not in held_out]
    extra = {"train_dropped_overlap": len(train) - len(kept)}
    return {"train": kept, "val": val, "test": test}, rejects, extra


def split_stats(examples: list[Example]) -> dict[str, Any]:
    by_source: dict[str, int] = {}
    for e in examples:
        by_source[e.source] = by_source.get(e.source, 0) + 1
    out: dict[str, Any] = {"n": len(examples), "per_source": by_source,
                           "with_reasoning": sum(e.reasoning is not None for e in examples),
                           "with_choices": sum(e.choices is not None for e in examples)}
    arith_examples = [e for e in examples if e.source == "arith"]
    if arith_examples:
        out["arith"] = arith.stats(arith_examples)
    return out
