"""The teacher that writes solutions (and the judge that grades them): a local model through the
batched `HFGenerator`, or an OpenAI-compatible endpoint through `OpenAIGenerator`, behind one class.

A reasoning model's thinking is kept apart from its answer: an endpoint's `reasoning_content` or
`reasoning` field, or `<think>...</think>` at the start of the text (`split_thinking`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pseudocot.config import GeneratorConfig
from pseudocot.errors import ConfigError
from pseudocot.files import append_jsonl, complete_lines
from pseudocot.freshness import model_fingerprint
from pseudocot.generate.base import Completion, GenerationParams, open_generator

Messages = list[dict[str, str]]

_THINK_OPEN = re.compile(r"^\s*<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def split_thinking(text: str, reasoning: str | None = None) -> tuple[str | None, str]:
    """(thinking, answer): the endpoint's separate reasoning, or what a `<think>` block holds (also when
    the opening tag was in the prompt, as DeepSeek-R1's template puts it), and the text after it.

    >>> split_thinking("<think>2 and 2 make 4</think>\\n\\nFinal answer: 4")
    ('2 and 2 make 4', 'Final answer: 4')
    """
    thinking = reasoning.strip() if reasoning and reasoning.strip() else None
    m = _THINK_CLOSE.search(text)
    if m:
        inside = _THINK_OPEN.sub("", text[: m.start()]).strip()
        thinking = "\n".join(t for t in (thinking, inside) if t) or None
        text = text[m.end():]
    return thinking, text.strip()


def chat_messages(user: str, system_prompt: str | None = None) -> Messages:
    """The messages of one request: the system prompt, if any, then the user turn."""
    messages: Messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": user}]


class Teacher:
    """A local model (`spec.path`) or an endpoint (`spec.base_url`) that answers prompts."""

    def __init__(self, spec: GeneratorConfig, device: str = "auto", system_prompt: str | None = None) -> None:
        self.spec, self.system_prompt = spec, system_prompt
        self.local = spec.path is not None
        self.name = str(spec.path) if self.local else f"{spec.base_url}#{spec.model}"
        self.gen: Any = open_generator(spec, device=device)

    def prompt(self, user: str) -> Any:
        """What one request sends: chat messages (rendered through the chat template for a local model) or text."""
        messages = chat_messages(user, self.system_prompt)
        if not self.spec.chat:
            return "\n\n".join(m["content"] for m in messages)
        if self.local:
            from pseudocot.data.chat import render

            return render(self.gen.tokenizer, messages, add_generation_prompt=True)
        return messages

    def generate(self, prompts: Sequence[Any], params: GenerationParams) -> list[Completion]:
        """A local model's batch (seeded once for the batch), or an endpoint's requests in flight together."""
        return self.gen.generate(list(prompts), params)

    def complete(self, prompt: Any, params: GenerationParams) -> Completion:
        """One endpoint request, with its retries."""
        return self.gen.complete(prompt, params)

    def counters(self) -> dict[str, Any]:
        """Requests sent and retries by cause (an endpoint's; a local model makes none)."""
        if self.local:
            return {"requests": 0, "retries": {}}
        return {"requests": self.gen.requests, "retries": dict(sorted(self.gen.retries.items()))}

    def close(self) -> None:
        if not self.local:
            self.gen.close()


_VERDICT = re.compile(r"(?<![\d.])([01])(?!\d|\.\d)")  # `1` and `1.`, not `10` or `0.5`


def read_verdict(reply: str) -> int | None:
    """The last standalone 0 or 1 of a judge's reply (after any thinking: judges explain, then answer), else None.

    >>> read_verdict("<think>step 2 is off by one</think>0"), read_verdict("Step 1 is right, step 2 is not. Verdict: 0.")
    (0, 0)
    >>> read_verdict("Verdict: 1"), read_verdict("yes")
    (1, None)
    """
    found = _VERDICT.findall(split_thinking(reply)[1])
    return int(found[-1]) if found else None


class Judge:
    """An LLM judge with a 0/1 rubric; verdicts are cached in a JSONL file by (rubric, judge, question,
    solution), appended as each arrives, so a rerun asks only for what it has not seen. A reply without a
    verdict is not cached (a longer `max_new_tokens` may give one)."""

    def __init__(self, teacher: Teacher, prompt: str, cache: Path | None, max_new_tokens: int = 1024) -> None:
        self.teacher, self.template, self.cache = teacher, prompt, cache
        self.params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        # A local judge is its weights: retrained at the same path, it judges afresh.
        self.identity = teacher.name if not teacher.local else f"{teacher.name}@{model_fingerprint(teacher.name)}"
        self.known: dict[str, int] = {}
        self._lock = threading.Lock()
        if cache is not None and cache.is_file():
            for _, raw in complete_lines(cache):
                try:
                    row = json.loads(raw)
                    self.known[str(row["key"])] = int(row["verdict"])
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                    raise ConfigError(f"{cache}: not a judge cache (a line without key and verdict); delete it to ask again.") from None

    def _key(self, template: str, values: Sequence[str]) -> str:
        blob = json.dumps([template, self.identity, *values]).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def _record(self, key: str, reply: str) -> int | None:
        verdict = read_verdict(reply)
        if verdict is not None:
            with self._lock:
                self.known[key] = verdict
                if self.cache is not None:
                    append_jsonl(self.cache, [{"key": key, "verdict": verdict, "reply": reply[-200:]}])
        return verdict

    def verdicts(self, items: Sequence[tuple[str, str]]) -> list[int | None]:
        """1 (sound), 0 (not) or None (no verdict in the reply) per (question, solution), by the judge's rubric."""
        return self.ask(self.template, [{"question": q, "solution": s} for q, s in items])

    def ask(self, template: str, rows: Sequence[dict[str, str]]) -> list[int | None]:
        """1, 0 or None per row of fields that fill `template` (another rubric: is an answer grounded in a text)."""
        keys = [self._key(template, list(row.values())) for row in rows]
        todo: dict[str, dict[str, str]] = {}
        for k, row in zip(keys, rows):
            if k not in self.known:
                todo.setdefault(k, row)
        got: dict[str, int | None] = {}
        prompts = {k: self.teacher.prompt(template.format(**row)) for k, row in todo.items()}
        if self.teacher.local:
            for k, c in zip(prompts, self.teacher.generate(list(prompts.values()), self.params)):
                got[k] = self._record(k, c.text)
        elif prompts:
            with ThreadPoolExecutor(max_workers=self.teacher.spec.concurrency) as pool:  # each verdict cached as it lands
                futures = {k: pool.submit(self.teacher.complete, p, self.params) for k, p in prompts.items()}
                for k, fut in futures.items():
                    got[k] = self._record(k, fut.result().text)
        return [self.known.get(k, got.get(k)) for k in keys]
