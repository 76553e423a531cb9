"""The `data` stage: `<run>/data/{train,val,test}.jsonl` and `stats.json` from the configured sources
and, for tiny models trained from scratch (`tokenizer.train`), the run's tokenizer.

    pseudocot data --config demo data.arith.n_train=2000
"""

from __future__ import annotations

import json
from typing import Any

from pseudocot.config import Config, save_config
from pseudocot.data.chat import answer_text, question_text
from pseudocot.data.jsonl import write_examples, write_jsonl
from pseudocot.data.splits import build_splits, split_stats
from pseudocot.errors import DataError
from pseudocot.files import atomic_write_text
from pseudocot.layout import RunLayout
from pseudocot.stages import prepare


def main(cfg: Config) -> dict[str, Any]:
    """Build the run's data folder (and tokenizer); returns the stats it wrote."""
    prepare(cfg)
    layout = RunLayout.of(cfg)
    save_config(cfg, layout.config_file)
    splits, rejects, extra = build_splits(cfg, layout.questions_dir)
    if not splits["train"] and not splits["test"]:
        raise DataError("the configured sources gave no training and no test examples; check data.sources.")
    for split, examples in splits.items():
        write_examples(layout.split(split), examples)
    if rejects:
        write_jsonl(layout.data_rejects, (r.to_dict() for r in rejects))
    else:
        layout.data_rejects.unlink(missing_ok=True)
    stats: dict[str, Any] = {split: split_stats(examples) for split, examples in splits.items()}
    stats.update(extra, rejects=len(rejects))
    if cfg.tokenizer.train:
        from pseudocot.models.tokenizer import save_tokenizer, train_tokenizer  # heavy: only when asked

        texts = (question_text(e) + "\n" + answer_text(e) for e in splits["train"])
        tok = train_tokenizer(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        save_tokenizer(tok, layout.tokenizer_dir)
        stats["tokenizer"] = {"path": str(layout.tokenizer_dir), "vocab_size": len(tok)}
    atomic_write_text(layout.data_stats, json.dumps(stats, indent=2) + "\n")
    return stats
