"""Data: the `Example` schema, JSONL I/O with FILE:LINE errors, loaders, the built-in `arith` task,
chat rendering, stratified mixing and a run's splits. The `data` stage is `pseudocot.stages.data`."""

from pseudocot.data.example import Example

__all__ = ["Example"]
