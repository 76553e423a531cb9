"""The teacher cache of `distill.mode: cached`: the teacher runs once over the training rows and its
top-k log-probabilities at every answer token are stored as safetensors shards, so any number of
epochs (and re-runs) train from them without the teacher.

    <stage>/teacher_cache/cache.json            key, k, shard list
    <stage>/teacher_cache/shard-00000.safetensors
        logprobs (n_tokens, k) float32, ids (n_tokens, k) int32,
        offsets (n_rows + 1,) int64, index (n_rows,) int64

The cache is reused only when its key (the token rows, the teacher's content fingerprint and k)
matches, and rebuilt otherwise. The stored log-probabilities are of the logits the teacher really
produces (`train.heads.LogitHead`: bias, logit scaling, soft-capping).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pseudocot.files import atomic_path, atomic_write_text
from pseudocot.models.heads import decoder_hidden, logit_head
from pseudocot.train.rows import PadCollator, answer_positions

ROWS_PER_SHARD = 1024


def cache_key(rows: Sequence[dict[str, Any]], teacher: str | None, k: int) -> str:
    """Changes with the token rows, the teacher's content fingerprint and k."""
    h = hashlib.sha256()
    h.update(json.dumps({"teacher": teacher, "k": k}, sort_keys=True).encode())
    for r in rows:
        h.update(json.dumps([r["index"], r["input_ids"], r["labels"]]).encode())
    return h.hexdigest()[:24]


class TeacherCache:
    """Top-k teacher log-probabilities per training row, gathered per batch in the loss's token order."""

    def __init__(self, logprobs: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, index: torch.Tensor) -> None:
        self.logprobs, self.ids, self.offsets = logprobs, ids, offsets
        self.row_of = {int(i): r for r, i in enumerate(index.tolist())}

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, k) log-probs and ids for the answer positions of the rows `index`, concatenated in order."""
        spans = [(int(self.offsets[self.row_of[int(i)]]), int(self.offsets[self.row_of[int(i)] + 1])) for i in index]
        lp = torch.cat([self.logprobs[a:b] for a, b in spans])
        ids = torch.cat([self.ids[a:b] for a, b in spans])
        return lp, ids.long()

    @classmethod
    def load(cls, folder: Path, key: str) -> TeacherCache | None:
        meta_file = folder / "cache.json"
        if not meta_file.is_file():
            return None
        meta = json.loads(meta_file.read_text())
        if meta.get("key") != key or not all((folder / s).is_file() for s in meta["shards"]):
            return None
        parts = [load_file(folder / s) for s in meta["shards"]]
        offsets, base = [torch.zeros(1, dtype=torch.long)], 0
        for p in parts:
            offsets.append(p["offsets"][1:] + base)
            base += int(p["offsets"][-1])
        return cls(torch.cat([p["logprobs"] for p in parts]), torch.cat([p["ids"] for p in parts]),
                   torch.cat(offsets), torch.cat([p["index"] for p in parts]))


@torch.no_grad()
def build(folder: Path, key: str, rows: Sequence[dict[str, Any]], teacher: Any, k: int, pad_id: int,
          batch_size: int = 16, progress: bool = True) -> TeacherCache:
    """Run the teacher once over `rows` and write the cache (shards first, `cache.json` last)."""
    from pseudocot.progress import progress as bar

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cache.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    device = next(teacher.parameters()).device
    head = logit_head(teacher)  # the logits the teacher really produces (bias, scaling, soft-cap)
    collate = PadCollator(pad_id, keep_index=True)
    shards: list[str] = []
    buf: dict[str, list[torch.Tensor]] = {"logprobs": [], "ids": [], "counts": [], "index": []}

    def flush() -> None:
        if not buf["index"]:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        counts = torch.tensor(buf["counts"], dtype=torch.long)
        tensors = {"logprobs": torch.cat(buf["logprobs"]).contiguous(), "ids": torch.cat(buf["ids"]).contiguous(),
                   "offsets": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
                   "index": torch.tensor(buf["index"], dtype=torch.long)}
        with atomic_path(folder / name) as tmp:
            save_file(tensors, tmp)
        shards.append(name)
        for v in buf.values():
            v.clear()

    # Rows sorted by length waste little padding; the cache maps rows by index, so order is free.
    ordered = sorted(rows, key=lambda r: len(r["input_ids"]))
    for start in bar(range(0, len(ordered), batch_size), desc="teacher cache", unit="batch", disable=not progress):
        batch = collate(list(ordered[start : start + batch_size]))
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        hidden = decoder_hidden(teacher, ids, mask)[:, :-1]  # (B, T-1, H): logits only where needed
        pos = answer_positions(batch["labels"]).to(device)
        for r in range(ids.size(0)):
            lp = torch.log_softmax(head(hidden[r][pos[r]]).float(), dim=-1)  # (n_r, V)
            top = lp.topk(min(k, lp.size(-1)), dim=-1)
            buf["logprobs"].append(top.values.cpu())
            buf["ids"].append(top.indices.to(torch.int32).cpu())
            buf["counts"].append(lp.size(0))
            buf["index"].append(int(batch["index"][r]))
        if len(buf["index"]) >= ROWS_PER_SHARD:
            flush()
    flush()
    atomic_write_text(folder / "cache.json", json.dumps({"key": key, "k": k, "rows": len(rows), "shards": shards}, indent=2) + "\n")
    cache = TeacherCache.load(folder, key)
    assert cache is not None
    return cache
