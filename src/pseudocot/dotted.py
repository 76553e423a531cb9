"""Registries by plain name with a dotted-path escape hatch (`package.module:function`): the one way the
tasks, the synth filter's checks and the GRPO rewards find a user's own code."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pseudocot.errors import ConfigError


def import_dotted(path: str, what: str, shape: str = "function") -> Any:
    """The object `package.module:attribute` names; one line naming `what` when it cannot be imported."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{what} '{path}' cannot be imported ({e}); give package.module:{shape}.") from None


def lookup(name: str, registry: Mapping[str, Any], what: str, signature: str) -> Any:
    """`registry[name]`, or the function `package.module:function` names (`signature` describes what it must be)."""
    if name in registry:
        return registry[name]
    if ":" not in name:
        raise ConfigError(f"unknown {what} '{name}'; use one of {', '.join(registry)} or package.module:function.")
    fn = import_dotted(name, what)
    if not callable(fn):
        raise ConfigError(f"{what} '{name}' is a {type(fn).__name__}, not a function {signature}.")
    return fn
