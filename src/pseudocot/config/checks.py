"""The checks a config value gets beyond its base type: bounds written into the type
(`Annotated[int, Ge(1)]`), `Literal` choices, and the `Section` base that runs them (plus a
section's own cross-field rules) whenever a section is built, from a file or in Python.

A broken check raises `FieldError(key, what)`; the loader adds the file:line of the key.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pseudocot.errors import ConfigError


@dataclass(frozen=True)
class Ge:
    """The value (or each value of a list) is at least `bound`."""

    bound: float

    def check(self, value: Any) -> str | None:
        return None if value >= self.bound else f"at least {self.bound:g}"


@dataclass(frozen=True)
class Gt:
    """The value is more than `bound`."""

    bound: float

    def check(self, value: Any) -> str | None:
        return None if value > self.bound else f"more than {self.bound:g}"


@dataclass(frozen=True)
class Le:
    """The value is at most `bound`."""

    bound: float

    def check(self, value: Any) -> str | None:
        return None if value <= self.bound else f"at most {self.bound:g}"


@dataclass(frozen=True)
class Lt:
    """The value is less than `bound`."""

    bound: float

    def check(self, value: Any) -> str | None:
        return None if value < self.bound else f"less than {self.bound:g}"


@dataclass(frozen=True)
class NonEmpty:
    """A list with at least one item."""

    def check(self, value: Any) -> str | None:
        return None if len(value) else "a non-empty list"


@dataclass(frozen=True)
class Unique:
    """A list without repeated items."""

    def check(self, value: Any) -> str | None:
        seen = [v for i, v in enumerate(value) if v in value[:i]]
        return None if not seen else f"a list without repeats ({seen[0]!r} appears twice)"


@dataclass(frozen=True)
class PlainName:
    """A name usable as a folder name: not empty, no `/`, not starting with `.`."""

    def check(self, value: Any) -> str | None:
        return None if value and "/" not in value and not value.startswith(".") else "a plain name (no '/', not starting with '.')"


class FieldError(ConfigError):
    """A cross-field rule of a section failed: `key` is the field (relative to the section)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"key '{key}' {message}")
        self.key, self.message = key, message


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def problem_with(tp: Any, value: Any) -> str | None:
    """What `value` must be to fit the type `tp` (its `Literal` choices and `Annotated` bounds), or
    None when it fits. Base types are the loader's business; this checks what it has converted."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *constraints = typing.get_args(tp)
        for c in constraints:
            problem = c.check(value)
            if problem:
                return problem
        return problem_with(base, value)
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return next((p for p in (problem_with(item, v) for v in value) if p), None)
    if origin is Literal:
        return None if value in typing.get_args(tp) else "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        found = [problem_with(a, value) for a in typing.get_args(tp) if a is not type(None)]
        return None if any(p is None for p in found) else found[0]
    return None


class Section:
    """Base of every config section: construction checks each field against its type's bounds and
    choices, then the section's own cross-field rules (`validate`). Errors are `FieldError`s."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            problem = problem_with(_hints(type(self))[f.name], value)
            if problem:
                raise FieldError(f.name, f"must be {problem}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Rules that span fields; raise `FieldError(field, what is wrong and what to do)`."""
