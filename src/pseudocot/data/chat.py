"""Chat rendering: an `Example` as messages, and messages as text through a tokenizer's chat template.

The prompt / completion split is what supervised fine-tuning needs to put the loss on the
assistant's part only; generation uses the prompt alone.
"""

from __future__ import annotations

from typing import Any

from pseudocot.data.example import CHOICE_LETTERS, DataError, Example

ANSWER_PREFIX = "The answer is"


def question_text(ex: Example) -> str:
    """The user's turn: the question, and the lettered options of a multiple-choice question."""
    if not ex.choices:
        return ex.question
    options = "\n".join(f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(ex.choices))
    return f"{ex.question}\n{options}"


def answer_text(ex: Example, with_reasoning: bool = True) -> str:
    """The assistant's turn: the reference reasoning (if asked and present), then `The answer is X.`"""
    final = f"{ANSWER_PREFIX} {ex.answer}."
    if with_reasoning and ex.reasoning:
        return f"{ex.reasoning}\n{final}"
    return final


def messages_for(ex: Example, with_reasoning: bool = True, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question_text(ex)})
    messages.append({"role": "assistant", "content": answer_text(ex, with_reasoning)})
    return messages


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Messages as one string through the tokenizer's chat template (an error if it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(f"tokenizer '{name}' has no chat template; use an instruct/chat checkpoint or set one on the tokenizer.")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_and_completion(tokenizer: Any, ex: Example, with_reasoning: bool = True,
                          system: str | None = None) -> tuple[str, str]:
    """(prompt with the generation prompt, completion) whose concatenation is the full rendered chat."""
    messages = messages_for(ex, with_reasoning, system)
    prompt = render(tokenizer, messages[:-1], add_generation_prompt=True)
    full = render(tokenizer, messages)
    if not full.startswith(prompt):
        raise DataError("the chat template renders the conversation so that the prompt is not a prefix of it; "
                        "supply a template whose generation prompt matches the assistant turn.")
    return prompt, full[len(prompt):]
