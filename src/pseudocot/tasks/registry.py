"""Tasks by plain name, with a dotted-path escape hatch for a user's own task.

    get_task("gsm8k", fewshot="gsm8k/train.jsonl")       # 5-shot, as lm-evaluation-harness
    get_task("mmlu:college_mathematics", num_fewshot=5, fewshot="mmlu/")
    get_task("jsonl", fields={"answer": "label"}, extraction="text")
    get_task("my_pkg.tasks:trivia")                      # a Task, or a function returning one
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from pseudocot.dotted import import_dotted
from pseudocot.errors import ConfigError
from pseudocot.tasks.arith import arith
from pseudocot.tasks.gsm8k import gsm8k, gsm8k_cot
from pseudocot.tasks.jsonl import jsonl
from pseudocot.tasks.mmlu import mmlu
from pseudocot.tasks.task import Task

TASKS: dict[str, Callable[..., Task]] = {"arith": arith, "gsm8k": gsm8k, "gsm8k_cot": gsm8k_cot, "jsonl": jsonl}
"""Plain names and the functions that build them; `mmlu:<subject>` is handled beside these."""

NAMES = (*TASKS, "mmlu:<subject>")


def _build(name: str, factory: Callable[..., Task], options: dict[str, Any], fixed: dict[str, Any] | None = None) -> Task:
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [p for p in params if p not in (fixed or {})]
    unknown = sorted(k for k in options if k not in valid)
    if unknown and not takes_any:
        raise ConfigError(f"task '{name}' has no option '{unknown[0]}'; its options are {', '.join(valid) or 'none'}.")
    task = factory(**(fixed or {}), **options)
    if not isinstance(task, Task):
        raise ConfigError(f"task '{name}' did not build a Task (got {type(task).__name__}); return a pseudocot.tasks.Task.")
    return task


def _from_dotted(path: str, options: dict[str, Any]) -> Task:
    obj = import_dotted(path, "task", "attribute of a Task")
    if isinstance(obj, Task):
        if options:
            raise ConfigError(f"task '{path}' is a ready Task and takes no options; drop {', '.join(sorted(options))}.")
        return obj
    if callable(obj):
        return _build(path, obj, options)
    raise ConfigError(f"task '{path}' is a {type(obj).__name__}, not a Task or a function that returns one.")


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, built with `options` (num_fewshot, fewshot, ... as each task takes).

    Every task also takes `primary`: the extraction its accuracy, the router's labels and rewards
    use (default: the task's own, e.g. `strict-match` for MMLU, `letter` to accept `The answer is (B)`)."""
    primary = options.pop("primary", None)
    task = _get_task(name, options)
    if primary is not None:
        if primary not in task.extractions:
            raise ConfigError(f"task '{name}' has no extraction '{primary}' to make primary; it has {', '.join(task.extractions)}.")
        task = dataclasses.replace(task, primary=primary)
    return task


def task_from(t: Any) -> Task:
    """The `Task` a config's task section (`EvalTaskConfig`: name and options) names: the one way a config's task is made."""
    return get_task(t.name, **t.options)


def _get_task(name: str, options: dict[str, Any]) -> Task:
    if name in TASKS:
        return _build(name, TASKS[name], options)
    if name == "mmlu" or name.startswith("mmlu:"):
        subject = name.partition(":")[2]
        if not subject:
            raise ConfigError("task 'mmlu' needs a subject: mmlu:college_mathematics, say.")
        return _build(name, mmlu, options, fixed={"subject": subject})
    if ":" in name:
        return _from_dotted(name, options)
    raise ConfigError(f"unknown task '{name}'; use one of {', '.join(NAMES)}, or package.module:attribute for your own.")
