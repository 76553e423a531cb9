"""Train a small BPE tokenizer offline and save it as an ordinary HF tokenizer folder.

Digits are split one per token (so arithmetic is learnable by tiny models), roles and the end of a
turn are special tokens, and a chat template is attached, so `AutoTokenizer.from_pretrained(folder)`
and `apply_chat_template` work as for any chat model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pseudocot.config.schema import MIN_TOKENIZER_VOCAB
from pseudocot.errors import ConfigError

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLES = ("system", "user", "assistant", "thought")
ROLE_TOKENS = tuple(f"<|{r}|>" for r in ROLES)
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)
assert MIN_TOKENIZER_VOCAB == 256 + len(SPECIAL_TOKENS), "the config's tokenizer.vocab_size bound follows the special tokens"

# Every turn is `<|role|>content<|eos|>`; the generation prompt opens an assistant turn, so a
# model trained on rendered chats stops by emitting <|eos|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 384, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with single-digit tokens and role tokens."""
    if vocab_size < MIN_TOKENIZER_VOCAB:
        raise ConfigError(f"tokenizer.vocab_size must be at least {MIN_TOKENIZER_VOCAB} (256 bytes + "
                          f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | os.PathLike[str]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder


# Text whose ids two tokenizers must agree on before one model is distilled into the other:
# words, digits, punctuation, whitespace runs and non-ASCII.
_PROBE = "The answer is 12,345.67 — naïve café: 3 + 4 = 7.\n\tQ: Why?  A: Because 10% of 250 is 25! {x: [1, 2]} 日本"


def _describe(tok: Any, i: int | None) -> str:
    return "nothing" if i is None else f"{i} ({tok.convert_ids_to_tokens(i)!r})"


def vocabulary_mismatch(teacher: Any, student: Any, teacher_name: str, student_name: str) -> str | None:
    """None if the two tokenizers share one vocabulary (size, special-token ids and the ids of a
    probe text); otherwise one sentence naming both models and the first difference."""
    who = f"teacher '{teacher_name}' and student '{student_name}'"
    if len(teacher) != len(student):
        return f"the tokenizers of {who} differ: {len(teacher)} vs {len(student)} tokens."
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        a, b = getattr(teacher, attr, None), getattr(student, attr, None)
        if a is not None and b is not None and a != b:
            return f"the tokenizers of {who} differ: {attr} is {a} vs {b}."
    specials = sorted(set(teacher.all_special_tokens) | set(student.all_special_tokens))
    for t in specials:
        a, b = teacher.convert_tokens_to_ids(t), student.convert_tokens_to_ids(t)
        if a != b:
            return f"the tokenizers of {who} differ: special token {t!r} has id {a} vs {b}."
    ids_t = teacher(_PROBE, add_special_tokens=False)["input_ids"]
    ids_s = student(_PROBE, add_special_tokens=False)["input_ids"]
    for pos in range(max(len(ids_t), len(ids_s))):
        a = ids_t[pos] if pos < len(ids_t) else None
        b = ids_s[pos] if pos < len(ids_s) else None
        if a != b:
            return (f"the tokenizers of {who} differ: at token {pos} of the probe text the teacher gives "
                    f"{_describe(teacher, a)} and the student {_describe(student, b)}.")
    return None
