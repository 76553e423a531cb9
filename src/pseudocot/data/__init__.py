"""Data: the `Example` schema, JSONL I/O with FILE:LINE errors, loaders, the built-in `arith` task,
chat rendering and stratified mixing. The `data` stage lives in `pseudocot.data.stage`."""

from pseudocot.data.example import DataError, Example

__all__ = ["DataError", "Example"]
