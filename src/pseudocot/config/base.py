"""What the config sections share: the bounded number types (`Count`, `Positive`, `Fraction`, `Weight`), the
choices and constants used by more than one section, and `field_docs`, which reads each field's docstring from the source.
"""

from __future__ import annotations

import ast
import functools
import inspect
from typing import Annotated, Literal

from pseudocot.config.checks import Ge, Le

Count = Annotated[int, Ge(0)]
Positive = Annotated[int, Ge(1)]
Fraction = Annotated[float, Ge(0), Le(1)]
Weight = Annotated[float, Ge(0)]

Dtype = Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]
Mode = Literal["never", "always", "router", "depth"]

MIN_TOKENIZER_VOCAB = 256 + 7
"""A trained tokenizer holds the 256 byte symbols and the 7 special tokens of `models.tokenizer`."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Return {field name: docstring} for a dataclass whose fields carry a string literal below."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
