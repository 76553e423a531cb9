"""Tasks: a `Task` per benchmark builds prompts (plain text or chat messages, 0/k-shot), extracts
answers from a model's text, scores them the way lm-evaluation-harness does, and pays the same
check as a reward.

    from pseudocot.tasks import get_task
    task = get_task("gsm8k", fewshot="gsm8k/train.jsonl")
    examples = task.load("gsm8k/test.jsonl")
    prompts = task.prompts(examples)               # or task.messages(examples) for a chat model
    task.score(completion, examples[0])            # {"strict-match": True, "flexible-extract": True, ...}

Scoring given predictions without a model: `pseudocot eval score --task gsm8k --data F --predictions P`.
"""

from pseudocot.tasks.registry import NAMES, TASKS, get_task
from pseudocot.tasks.task import Task, pick_choice

__all__ = ["NAMES", "TASKS", "Task", "get_task", "pick_choice"]
