"""A base model that weighs its thoughts (`base.thoughts_from: ttm | mix`): its rows carry the Tiny Thought Model's
own thoughts on the training questions, written as the pipeline writes them and labelled with the gold answer; the
thoughts are kept under the stage key and reused by a resumed stage; the config checks."""

from __future__ import annotations

import json

import pytest

from pseudocot.config import load_config
from pseudocot.data.chat import base_messages, question_text, render, thought_lines
from pseudocot.errors import ConfigError, ModelError
from pseudocot.freshness import finetune_key, ttm_thoughts_key
from pseudocot.layout import RunLayout
from pseudocot.models.loading import load_tokenizer
from pseudocot.pipeline import ttm_thoughts_of
from pseudocot.stages import data as data_stage
from pseudocot.stages import finetune
from pseudocot.train.rows import read_split, tokenize_examples

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["data.arith.n_train=60", "data.arith.n_val=12", "data.arith.n_test=12", "train.max_length=96", "train.batch_size=8",
         "teacher.train.max_steps=4", "distill.stages.0.train.max_steps=2", "distill.stages.1.train.max_steps=2",
         "base.train.max_steps=2"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, trained_tiny):
    """A smoke run with its data, whose Tiny Thought Model (`pipeline.ttm`) is the session's `trained_tiny` model: it
    writes `a op b = c` lines and an answer line, right or wrong (its tokenizer is not the run's: thoughts are text)."""
    out = tmp_path_factory.mktemp("thoughts")
    model, tok = trained_tiny
    ttm = out / "ttm"
    model.save_pretrained(ttm)
    tok.save_pretrained(ttm)
    data_stage.main(_cfg(out))
    return out


def _cfg(out, *extra):
    """The chain's config; a base that reads the TTM's thoughts gets them on the first 20 training questions."""
    ttm = [] if "base.thoughts_from=gold" in extra or not any(x.startswith("base.thoughts_from=") for x in extra) \
        else ["base.ttm_questions=20"]
    return load_config("smoke", [f"run.out_dir={out}", *SMALL, f"pipeline.ttm={out / 'ttm'}", *ttm, *extra])


def test_mix_trains_on_gold_rows_and_the_ttms_own(chain):
    cfg = _cfg(chain, "base.thoughts_from=mix")
    layout = RunLayout.of(cfg)
    metrics = finetune.main(cfg, "base")
    examples = read_split(layout.split("train"), "train")
    written = [json.loads(line) for line in layout.base_ttm_thoughts.read_text().splitlines()]
    assert [w["id"] for w in written] == [e.id for e in examples[:20]]
    # The thoughts are the pipeline's: the TTM alone, greedy, at most max_thoughts each.
    again = ttm_thoughts_of(cfg, layout.distilled_ttm, [(e.id, question_text(e)) for e in examples[:20]])
    assert [w["thoughts"] for w in written] == again
    assert all(len(t) <= cfg.pipeline.max_thoughts for t in again) and any(again)
    tok = load_tokenizer(str(layout.tokenizer_dir))
    gold_rows = tokenize_examples(examples, tok, False, None, 96, cfg.pipeline)
    ttm_rows = sum(len(t) for t in again)  # one row per number of its thoughts in context, j >= 1
    assert metrics["train_rows"] == len(gold_rows) + ttm_rows and metrics["thoughts_from"] == "mix"
    stats = metrics["ttm_thoughts"]
    assert stats["questions"] == 20 and stats["thoughts_per_question"] == pytest.approx(ttm_rows / 20, abs=1e-3)
    # A row with the TTM's thoughts carries them as the pipeline renders them, and the gold answer.
    ex, thoughts = next((e, w["thoughts"]) for e, w in zip(examples, written) if w["thoughts"])
    prompt = render(tok, base_messages(question_text(ex), thoughts, cfg.pipeline), add_generation_prompt=True)
    rows = tokenize_examples([ex], tok, False, None, 96, cfg.pipeline, written=[thoughts])
    texts = [tok.decode(r["input_ids"]) for r in rows]
    assert any(t.startswith(prompt) and t[len(prompt):].startswith(f"The answer is {ex.answer}.") for t in texts)
    assert len(rows) == len(thought_lines(ex)) + 1 + len(thoughts)


def test_ttm_rows_without_gold_thoughts_and_the_key(chain):
    gold, mix, ttm = (_cfg(chain, f"base.thoughts_from={w}") for w in ("gold", "mix", "ttm"))
    assert len({finetune_key(c, "base") for c in (gold, mix, ttm)}) == 3
    metrics = finetune.main(ttm, "base")
    examples = read_split(RunLayout.of(ttm).split("train"), "train")
    # ttm: the first 20 questions' rows without thoughts and the TTM's rows, no gold thoughts; the questions the TTM
    # wrote nothing for keep their gold rows.
    tok = load_tokenizer(str(RunLayout.of(ttm).tokenizer_dir))
    rest = len(tokenize_examples(examples[20:], tok, False, None, 96, ttm.pipeline))
    assert metrics["train_rows"] == 20 + round(metrics["ttm_thoughts"]["thoughts_per_question"] * 20) + rest
    # The TTM's thoughts follow the TTM: another TTM, another key (and the teacher's key does not move).
    stage = RunLayout.of(ttm).distilled_ttm / "model.safetensors"  # pipeline.ttm
    before = finetune_key(ttm, "base"), finetune_key(ttm, "teacher"), finetune_key(gold, "base")
    stage.write_bytes(stage.read_bytes() + b" ")
    after = finetune_key(ttm, "base"), finetune_key(ttm, "teacher"), finetune_key(gold, "base")
    assert after[0] != before[0] and after[1:] == before[1:]
    # Greedy thoughts do not depend on the pipeline's batching; sampled ones do (each batch draws its own seed).
    key = lambda *x: ttm_thoughts_key(_cfg(chain, "base.thoughts_from=ttm", *x))  # noqa: E731
    assert key("pipeline.batch_size=7") == key()
    assert key("base.ttm_temperature=0.7", "pipeline.batch_size=7") != key("base.ttm_temperature=0.7")


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"base.thoughts_from.*needs thoughts_in_context: true"):
        load_config("smoke", ["base.thoughts_from=mix", "base.thoughts_in_context=false"])
    with pytest.raises(ConfigError, match=r"teacher.thoughts_from.*must be gold"):
        load_config("smoke", ["teacher.thoughts_in_context=true", "teacher.thoughts_from=ttm"])
    with pytest.raises(ConfigError, match=r"pipeline.ttm_prompt uses \{answer\}"):
        load_config("smoke", ["base.thoughts_from=ttm", "pipeline.ttm_prompt='{question} {answer}'"])
    with pytest.raises(ConfigError, match=r"base.ttm_temperature.*thoughts_from is gold"):
        load_config("smoke", ["base.ttm_temperature=0.7"])
    with pytest.raises(ConfigError, match=r"base.ttm_questions.*thoughts_from is gold"):
        load_config("smoke", ["base.ttm_questions=5"])
    with pytest.raises(ConfigError, match=r"needs a Tiny Thought Model"):
        load_config("smoke", ["base.thoughts_from=ttm", "distill.stages=[]"])
    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", *SMALL, "base.thoughts_from=ttm"])  # no TTM trained yet
    data_stage.main(cfg)
    with pytest.raises(ModelError, match=r"no Tiny Thought Model at .*run `pseudocot distill` first"):
        finetune.main(cfg, "base")
