"""The writer stage: a question writer trained in the run (Bonito's idea, a model fine-tuned to turn text into
tasks), which the questions stage then asks in place of `synth.teacher`.

It learns from pairs of a text and the items a writer should reply with (a JSON list of question, answer and
reasoning), each rendered as the questions stage will ask: `synth.documents.prompt` with the text and
`items_per_chunk`, through the writer's chat template. The pairs are a JSONL file of `{text, items}` rows
(`writer.pairs`), or stories of the built-in arith task, each with the question it answers after every step; no
story is the text of a document the questions stage will read, so the writer never saw what it is asked about.

    <run>/writer/                 the model and its tokenizer (a preset trains its own on the pairs), metrics.json
    <run>/writer/pairs/           train.jsonl, val.jsonl: what it learnt from

    pseudocot synth writer --config docs      # alone; `pseudocot run` runs it before the questions stage
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pseudocot.config import Config
from pseudocot.data.jsonl import iter_json_lines, write_jsonl
from pseudocot.errors import DataError
from pseudocot.freshness import writer_key
from pseudocot.layout import KEY_FILE, RunLayout
from pseudocot.stages import prepare

Pair = dict[str, Any]
"""`{text, items: [{question, answer, reasoning}]}`."""


def _check_pair(row: Any, where: str) -> Pair:
    """A `{text, items}` row whose items the questions stage would read back whole (`parse_reply`), else one line."""
    from pseudocot.synth.questions import parse_reply

    if isinstance(row, DataError):
        raise DataError(f"{where}: {row}; fix the line.")
    items = row.get("items") if isinstance(row, dict) else None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(items, list) or not items:
        raise DataError(f"{where}: a writer pair needs 'text' (a string) and 'items' (a non-empty list of "
                        "{question, answer, reasoning}); fix the line.")
    reply = parse_reply(json.dumps(items, ensure_ascii=False), len(items))
    problem = reply.error or (reply.problems[0] if reply.problems else None)
    if problem:
        raise DataError(f"{where}: the questions stage would not read these items back ({problem}); fix the line.")
    return {"text": row["text"], "items": items}


def make_pairs(cfg: Config) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, validation pairs): the rows of `writer.pairs`, or arith stories none of which is a document."""
    from pseudocot.data import arith
    from pseudocot.data.documents import read_documents

    w = cfg.writer
    need = w.n_train + w.n_val
    if w.pairs:
        path = Path(w.pairs)
        if not path.is_file():
            raise DataError(f"writer.pairs: no such file {path}; give a JSONL of {{text, items}} rows, or null for arith stories.")
        rows = [_check_pair(row, f"{path}:{lineno}") for lineno, _, row in iter_json_lines(path)]
        if len(rows) <= w.n_train:
            raise DataError(f"{path}: {len(rows)} pairs, but writer.n_train is {w.n_train} and validation needs at least one "
                            "more; lower writer.n_train or add pairs.")
        return rows[: w.n_train], rows[w.n_train: need]
    paths = RunLayout.of(cfg).document_paths
    texts = {doc.text.strip() for doc in read_documents(paths, cfg.synth.documents.text_field).documents} if paths else set()
    stories = arith.stories(need, cfg.data.arith, seed=w.seed, exclude=texts)
    rows = [{"text": text, "items": items} for text, items in stories]
    return rows[: w.n_train], rows[w.n_train:]


def reply_of(pair: Pair, k: int) -> str:
    """What the writer learns to reply: the first `k` items as a JSON list (the form `parse_reply` reads)."""
    return json.dumps(pair["items"][:k], ensure_ascii=False)


def chat_of(cfg: Config, pair: Pair) -> list[dict[str, str]]:
    """The pair as the chat the questions stage sends (`Teacher.prompt`: its system prompt, the prompt with the text)
    and the reply."""
    from pseudocot.synth.teacher import chat_messages

    d = cfg.synth.documents
    return [*chat_messages(d.prompt_for(pair["text"]), cfg.synth.system_prompt),
            {"role": "assistant", "content": reply_of(pair, d.items_per_chunk)}]


def _tokenizer(cfg: Config, train: Sequence[Pair], folder: Path, key: str) -> Any:
    """The checkpoint's (or the spec's) tokenizer; for a preset, one trained on the training pairs' prompts and replies,
    saved under the stage's key so that a resumed stage trains with the same one."""
    from pseudocot.freshness import read_key, write_key
    from pseudocot.models.loading import load_tokenizer
    from pseudocot.models.tokenizer import save_tokenizer, train_tokenizer
    from pseudocot.train.setup import load_spec_tokenizer

    w = cfg.writer
    if w.model.path or w.model.tokenizer:
        return load_spec_tokenizer(w.model, folder)
    key_file = folder / KEY_FILE
    if read_key(key_file) != key:
        key_file.unlink(missing_ok=True)
        d = cfg.synth.documents
        texts = [t for p in train for t in (d.prompt_for(p["text"]), reply_of(p, d.items_per_chunk))]
        save_tokenizer(train_tokenizer(texts, w.vocab_size, cfg.tokenizer.min_frequency), folder)
        write_key(key_file, key)
    return load_tokenizer(str(folder))


def main(cfg: Config) -> dict[str, Any]:
    """Train the writer into `<run>/writer/`; returns its metrics."""
    from transformers import Trainer

    from pseudocot.data.chat import split_last_turn
    from pseudocot.train.checkpoints import finished_metrics, train_and_save
    from pseudocot.train.rows import PadCollator, tokenize_pairs
    from pseudocot.train.setup import shardable, spec_name, trainable_model, training_args

    prepare(cfg)
    layout, w = RunLayout.of(cfg), cfg.writer
    out, key = layout.writer_dir, writer_key(cfg)
    done = finished_metrics(out, key)
    if done is not None:
        return done
    train, val = make_pairs(cfg)
    for name, rows in (("train", train), ("val", val)):
        write_jsonl(layout.writer_pairs(name), rows)
    tokenizer = _tokenizer(cfg, train, layout.writer_tokenizer_dir, key)
    t = w.train

    def rows_of(pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        return tokenize_pairs([(i, split_last_turn(tokenizer, chat_of(cfg, p))) for i, p in enumerate(pairs)], tokenizer, t.max_length,
                              uncut="writer.train.max_length")  # a reply cut short never closes its JSON

    train_rows, val_rows = rows_of(train), rows_of(val)
    # writer.seed, not run.seed: the questions, like the data, stay the same for every training seed of the system.
    args = training_args(t, out, w.seed, cfg.run.device, has_eval=True)
    model = trainable_model(w.model, tokenizer, w.method, w.lora, cfg.run.device, w.seed, t.gradient_checkpointing)
    trainer = shardable(Trainer)(model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    metrics = {"stage": "writer", "model": spec_name(w.model), "method": w.method, "pairs": w.pairs or "arith stories",
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "train_pairs": len(train), "val_pairs": len(val), "vocab_size": len(tokenizer)}
    return train_and_save(trainer, out, key, tokenizer, val_rows, t.batch_size, metrics)
