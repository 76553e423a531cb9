"""Launched by `torchrun --nproc_per_node 2` from tests/test_train.py: runs `pseudocot distill` for a
prepared run and records, per rank, every file the process opened for writing.

    torchrun --nproc_per_node 2 tests/ddp/distill_writes.py CONFIG.yaml LOG_DIR [KEY=VALUE ...]

Writes LOG_DIR/writes-rank{R}.txt: a header line `world_size=W rank=R` and then one line per
write: `<kind>\t<absolute path>` (kind: open, rename, safetensors, torch.save).
"""

from __future__ import annotations

import atexit
import os
import sys

WRITES: list[tuple[str, str]] = []


def _record(kind: str, path: object) -> None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, (str, os.PathLike)):
        WRITES.append((kind, os.path.abspath(os.fspath(path))))


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing:
            _record("open", path)
    elif event == "os.rename":  # os.rename and os.replace: the target is (re)written
        _record("rename", args[1])


# Installed before transformers, peft, accelerate or safetensors are imported, so their
# `from safetensors.torch import save_file` binds the recording wrapper. safetensors and torch.save
# write from native code, which the audit hook does not see.
sys.addaudithook(_audit)

import safetensors.torch  # noqa: E402
import torch  # noqa: E402

_save_file, _save_model, _torch_save = safetensors.torch.save_file, safetensors.torch.save_model, torch.save


def _wrapped_save_file(tensors, filename, *a, **kw):
    _record("safetensors", filename)
    return _save_file(tensors, filename, *a, **kw)


def _wrapped_save_model(model, filename, *a, **kw):
    _record("safetensors", filename)
    return _save_model(model, filename, *a, **kw)


def _wrapped_torch_save(obj, f, *a, **kw):
    _record("torch.save", f)
    return _torch_save(obj, f, *a, **kw)


safetensors.torch.save_file = _wrapped_save_file
safetensors.torch.save_model = _wrapped_save_model
torch.save = _wrapped_torch_save


def main() -> None:
    config_file, log_dir, *overrides = sys.argv[1:]
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    log_file = os.path.join(log_dir, f"writes-rank{rank}.txt")

    def dump() -> None:
        lines = [f"world_size={world} rank={rank}"] + [f"{k}\t{p}" for k, p in WRITES]
        with open(log_file + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(log_file + ".tmp", log_file)

    atexit.register(dump)

    from pseudocot.config import load_config
    from pseudocot.stages import distill

    cfg = load_config(config_file, overrides)
    summary = distill.main(cfg)
    seen = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    WRITES.append(("info", f"distributed_world_size={seen} stages={[s['stage'] for s in summary['stages']]}"))


if __name__ == "__main__":
    main()
