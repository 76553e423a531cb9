"""The `data` stage: build `<run>/data/{train,val,test}.jsonl` and `stats.json` from the configured
sources (and, for tiny models trained from scratch, `<run>/tokenizer/`).

    pseudocot data --config demo data.arith.n_train=2000
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pseudocot.config import Config, SourceConfig, config_hash, save_config
from pseudocot.data import arith
from pseudocot.data.chat import answer_text, question_text
from pseudocot.data.example import DataError, Example
from pseudocot.data.jsonl import Reject, write_examples, write_jsonl
from pseudocot.data.loaders import load_file
from pseudocot.data.mix import mix
from pseudocot.files import atomic_write_text

SPLITS = ("train", "val", "test")


def load_source(src: SourceConfig, cfg: Config, rejects: list[Reject]) -> dict[str, list[Example]]:
    """One source's splits; a missing `val` is carved out of `train` (`data.val_fraction`)."""
    if src.format == "arith":
        return arith.generate_splits(cfg.data.arith)
    parts: dict[str, list[Example]] = {}
    for split in SPLITS:
        path = getattr(src, split)
        if path:
            result = load_file(src.format, path, src.fields, cfg.data.skip_bad, source=src.name)
            parts[split] = result.examples
            rejects += result.rejects
    if not parts:
        raise DataError(f"data source '{src.name}' ({src.format}) names no train, val or test file; set data.sources.N.train.")
    if "train" in parts and "val" not in parts and cfg.data.val_fraction > 0:
        train = list(parts["train"])
        random.Random(cfg.data.seed).shuffle(train)
        n_val = max(1, round(len(train) * cfg.data.val_fraction))
        parts["val"], parts["train"] = train[:n_val], train[n_val:]
    return parts


def build_splits(cfg: Config) -> tuple[dict[str, list[Example]], list[Reject], dict[str, Any]]:
    names = [s.name for s in cfg.data.sources]
    if len(set(names)) != len(names):
        raise DataError(f"data.sources: the name '{next(n for n in names if names.count(n) > 1)}' is used twice; give each source its own name.")
    if not names:
        raise DataError("data.sources is empty; name at least one source.")
    rejects: list[Reject] = []
    per_split: dict[str, dict[str, list[Example]]] = {s: {} for s in SPLITS}
    for src in cfg.data.sources:
        for split, examples in load_source(src, cfg, rejects).items():
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


def train_run_tokenizer(cfg: Config, train: list[Example], folder: Path) -> Any:
    from pseudocot.models.tokenizer import save_tokenizer, train_tokenizer  # heavy: only when asked

    texts = (question_text(e) + "\n" + answer_text(e) for e in train)
    tok = train_tokenizer(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    save_tokenizer(tok, folder)
    return tok


def main(cfg: Config) -> dict[str, Any]:
    """Build the run's data folder; returns the stats it wrote."""
    run_dir = cfg.run_dir
    out = run_dir / "data"
    save_config(cfg, run_dir / "config.yaml")
    splits, rejects, extra = build_splits(cfg)
    if not splits["train"] and not splits["test"]:
        raise DataError("the configured sources gave no training and no test examples; check data.sources.")
    for split, examples in splits.items():
        write_examples(out / f"{split}.jsonl", examples)
    rejects_file = out / "rejects.jsonl"
    if rejects:
        write_jsonl(rejects_file, (r.to_dict() for r in rejects))
    else:
        rejects_file.unlink(missing_ok=True)
    stats: dict[str, Any] = {split: split_stats(examples) for split, examples in splits.items()}
    stats.update(extra, rejects=len(rejects))
    if cfg.tokenizer.train:
        tok = train_run_tokenizer(cfg, splits["train"], run_dir / "tokenizer")
        stats["tokenizer"] = {"path": str(run_dir / "tokenizer"), "vocab_size": len(tok)}
    # Written last: its config hash marks the folder complete for this data config.
    stats["config_hash"] = config_hash({"data": cfg.data, "tokenizer": cfg.tokenizer})
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    return stats
