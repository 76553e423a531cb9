"""Chat rendering: an `Example` as messages, and messages as text through a tokenizer's chat template.

The prompt / completion split is what supervised fine-tuning needs to put the loss on the
assistant's part only; generation uses the prompt alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pseudocot.data.example import CHOICE_LETTERS, Example
from pseudocot.errors import DataError

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
    return split_last_turn(tokenizer, messages_for(ex, with_reasoning, system))


def split_last_turn(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, str]:
    """A chat ending in an assistant turn as (everything before it + the generation prompt, the turn)."""
    prompt = render(tokenizer, messages[:-1], add_generation_prompt=True)
    full = render(tokenizer, messages)
    if not full.startswith(prompt):
        raise DataError("the chat template renders the conversation so that the prompt is not a prefix of it; "
                        "supply a template whose generation prompt matches the assistant turn.")
    return prompt, full[len(prompt):]


# --------------------------------------------------------------------------------------------
# Pseudo-CoT prompts: the base model answering with thoughts in its context, and the Tiny Thought
# Model continuing a list of thoughts. Training the base with thoughts (`base.thoughts_in_context`)
# renders through the same functions as the pipeline, so the two always agree.
# --------------------------------------------------------------------------------------------


def _fill(template: str, key: str, **values: str) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"pipeline.{key}: the template {template!r} cannot be filled ({e}); "
                        f"use only the fields {', '.join('{' + k + '}' for k in values)} and write literal braces as {{{{ }}}}.") from e


def base_messages(question: str, thoughts: list[str], prompts: Any,
                  history: Sequence[dict[str, str]] = ()) -> list[dict[str, str]]:
    """The base model's conversation: earlier turns (`history`, from a chat client), then its user turn
    carrying the question and, once there are any, the thoughts, one per line (`prompts` is a
    `PipelineConfig`). A system message in `history` replaces `prompts.system_prompt`."""
    if thoughts:
        user = _fill(prompts.base_prompt_with_thoughts, "base_prompt_with_thoughts", question=question,
                     thoughts="\n".join(thoughts))
    else:
        user = _fill(prompts.base_prompt, "base_prompt", question=question)
    system = [{"role": "system", "content": prompts.system_prompt}] if prompts.system_prompt else []
    if any(m["role"] == "system" for m in history):
        system = []
    return system + list(history) + [{"role": "user", "content": user}]


def ttm_prompt(tokenizer: Any, question: str, thoughts: list[str], last_answer: str, prompts: Any) -> str:
    """The Tiny Thought Model's prompt: its user turn, then (with `ttm_continues_thoughts`) its own
    turn opened with the thoughts so far, one per line, so that it writes the next line."""
    user = _fill(prompts.ttm_prompt, "ttm_prompt", question=question, answer=last_answer, thoughts="\n".join(thoughts))
    system = [{"role": "system", "content": prompts.ttm_system_prompt}] if prompts.ttm_system_prompt else []
    text = render(tokenizer, system + [{"role": "user", "content": user}], add_generation_prompt=True)
    if prompts.ttm_continues_thoughts and thoughts:
        text += "".join(t + "\n" for t in thoughts)
    return text


def thought_lines(ex: Example) -> list[str]:
    """The gold thoughts of an example: its reasoning lines, then its answer line."""
    lines = [line.strip() for line in (ex.reasoning or "").splitlines() if line.strip()]
    return lines + [f"{ANSWER_PREFIX} {ex.answer}."]


def thoughts_from_text(text: str, max_thoughts: int) -> list[str]:
    """The thoughts a Tiny Thought Model's turn gives the pipeline when it continues its own thoughts
    (`ttm_continues_thoughts`, one thought per line): its lines, stripped, up to the first empty one (the
    pipeline stops on an empty thought), at most `max_thoughts`.

    >>> thoughts_from_text("3 + 4 = 7\\n7 - 2 = 5\\nThe answer is 5.", 2)
    ['3 + 4 = 7', '7 - 2 = 5']
    >>> thoughts_from_text("3 + 4 = 7\\n\\nThe answer is 7.", 4)
    ['3 + 4 = 7']
    """
    out: list[str] = []
    for line in text.split("\n"):
        if not line.strip() or len(out) == max_thoughts:
            break
        out.append(line.strip())
    return out


def final_answer(text: str) -> str:
    """The answer a response commits to: what follows the last `The answer is` (or `answer:`), else the
    last number, else the whole stripped text; compared across iterations to see if an answer changed."""
    import re

    m = re.findall(r"answer(?: is|:)\s*\$?(.+?)\s*\.?\s*$", text, flags=re.IGNORECASE | re.MULTILINE)
    if m:
        return m[-1].replace(",", "").strip()
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    if nums:
        return nums[-1].replace(",", "")
    return text.strip()
