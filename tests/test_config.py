"""Config loading: presets, `extends`, overrides, error messages, YAML round trip, atomic saves."""

from __future__ import annotations

import dataclasses
import os
import stat
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pseudocot.config import (
    ArithConfig,
    Config,
    ConfigError,
    DataConfig,
    SourceConfig,
    field_docs,
    from_dict,
    load_config,
    presets,
    save_config,
    to_yaml,
)
from pseudocot.files import atomic_open
from pseudocot.freshness import digest
from pseudocot.layout import RunLayout


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- presets


def test_presets_are_listed():
    assert {"demo", "smoke", "gsm8k"} <= set(presets())


def test_demo_preset_values():
    cfg = load_config("demo")
    assert isinstance(cfg, Config)
    assert cfg.run.name == "demo"
    assert cfg.run.device == "cpu"
    assert [(s.name, s.format) for s in cfg.data.sources] == [("arith", "arith")]
    assert cfg.data.arith.n_test >= 1000  # the demo evaluates on at least 1,000 held-out problems
    assert cfg.tokenizer.train is True
    assert cfg.tokenizer.vocab_size == 384
    # Keys the preset leaves out keep their defaults.
    assert cfg.train.lr == 3e-3
    assert cfg.run.out_dir == "runs"
    assert RunLayout.of(cfg).root == Path("runs") / "demo"


def test_default_is_demo():
    assert load_config() == load_config("demo")


def test_smoke_extends_demo():
    cfg = load_config("smoke")
    assert cfg.run.name == "smoke"
    # from smoke itself
    assert (cfg.data.arith.n_train, cfg.data.arith.n_val, cfg.data.arith.n_test) == (600, 100, 200)
    assert cfg.data.arith.max_steps == 3
    # inherited from demo (deep merge keeps sibling keys of the same section)
    assert cfg.run.device == "cpu"
    demo = load_config("demo")
    assert cfg.data.arith.max_operand == demo.data.arith.max_operand
    assert cfg.data.arith.operations == demo.data.arith.operations
    assert cfg.data.arith.step_weights == demo.data.arith.step_weights
    assert cfg.tokenizer.train is True
    assert [s.format for s in cfg.data.sources] == ["arith"]


def test_extends_from_a_user_file(tmp_path):
    f = write(tmp_path / "mine.yaml", "extends: smoke\nrun:\n  name: mine\ntrain:\n  lr: 0.01\n")
    cfg = load_config(f)
    assert cfg.run.name == "mine"
    assert cfg.train.lr == 0.01
    assert cfg.data.arith.n_train == 600  # from smoke
    assert cfg.run.device == "cpu"  # from demo, through smoke


def test_extends_a_relative_file(tmp_path):
    write(tmp_path / "base.yaml", "run:\n  name: base\n  seed: 7\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nrun:\n  name: child\n")
    cfg = load_config(child)
    assert (cfg.run.name, cfg.run.seed) == ("child", 7)


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as e:
        load_config("no_such_preset")
    msg = str(e.value)
    assert "no_such_preset" in msg
    assert "demo" in msg and "smoke" in msg


# ----------------------------------------------------------------------------- overrides


def test_dotted_overrides():
    cfg = load_config("demo", ["train.lr=0.5", "run.name=x", "data.arith.n_train=10", "tokenizer.train=false"])
    assert cfg.train.lr == 0.5
    assert cfg.run.name == "x"
    assert cfg.data.arith.n_train == 10
    assert cfg.tokenizer.train is False


def test_override_list_index():
    cfg = load_config("demo", ["data.sources.0.train=x.jsonl", "data.sources.0.weight=2"])
    assert cfg.data.sources[0].train == "x.jsonl"
    assert cfg.data.sources[0].weight == 2.0
    assert isinstance(cfg.data.sources[0].weight, float)
    assert cfg.data.sources[0].name == "arith"  # the rest of the item is kept


def test_override_whole_list_and_mapping():
    cfg = load_config("demo", ["data.arith.step_weights=[1, 2, 3]", "data.sources.0.fields={question: prompt}"])
    assert cfg.data.arith.step_weights == [1.0, 2.0, 3.0]
    assert cfg.data.sources[0].fields == {"question": "prompt"}


def test_scientific_notation_string_becomes_float(tmp_path):
    # PyYAML reads `1e-4` (no dot) as a string; the loader turns it into a float.
    assert yaml.safe_load("1e-4") == "1e-4"
    cfg = load_config("demo", ["train.lr=1e-4"])
    assert cfg.train.lr == pytest.approx(0.0001)
    assert isinstance(cfg.train.lr, float)
    f = write(tmp_path / "c.yaml", "train:\n  lr: 3e-5\n  weight_decay: 1e-2\n")
    cfg = load_config(f)
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.train.weight_decay == pytest.approx(0.01)


def test_override_index_out_of_range_names_override():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["data.sources.3.train=x"])
    msg = str(e.value)
    assert "override 'data.sources.3.train=x'" in msg
    assert "list of 1" in msg


def test_override_unknown_key_names_override_and_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["train.nope=1"])
    msg = str(e.value)
    assert msg.startswith("override 'train.nope=1'")
    assert "'train.nope'" in msg
    for key in ("lr", "max_steps", "batch_size", "max_length"):
        assert key in msg


def test_override_wrong_type_names_override():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["train.lr=abc"])
    msg = str(e.value)
    assert msg.startswith("override 'train.lr=abc'")
    assert "'train.lr'" in msg and "a number" in msg and "'abc'" in msg


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=3", ".lr=3"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        load_config("demo", [text])


# ----------------------------------------------------------------------------- errors in files


def test_unknown_key_names_key_file_line_and_valid_keys(tmp_path):
    f = write(tmp_path / "file.yaml", "run:\n  name: t\n  nmae: bad\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:3:")
    assert "file.yaml:3:" in msg
    assert "unknown key 'run.nmae'" in msg
    assert "valid keys under 'run': name, out_dir, seed, device" in msg


def test_unknown_top_level_section(tmp_path):
    f = write(tmp_path / "file.yaml", "run:\n  name: t\ntrainer:\n  lr: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "file.yaml:3:" in msg
    assert "'trainer'" in msg
    assert "at the top level" in msg
    for key in ("run", "data", "tokenizer", "train", "pipeline", "eval"):
        assert key in msg


def test_unknown_key_inside_a_list_item(tmp_path):
    f = write(tmp_path / "file.yaml", "data:\n  sources:\n    - name: a\n      formt: jsonl\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "file.yaml:4:" in msg
    assert "'data.sources.0.formt'" in msg
    assert "format" in msg and "weight" in msg


def test_wrong_type_in_file(tmp_path):
    f = write(tmp_path / "file.yaml", "extends: smoke\ntrain:\n  lr: 1e-4\n  max_steps: ten\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "file.yaml:4:" in msg
    assert "key 'train.max_steps' must be an integer" in msg
    assert "'ten'" in msg


def test_wrong_literal_lists_choices(tmp_path):
    f = write(tmp_path / "file.yaml", "data:\n  sources:\n    - name: a\n      format: parquet\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "file.yaml:4:" in msg
    assert "'parquet'" in msg
    assert "'gsm8k'" in msg and "'hf_disk'" in msg


def test_bool_is_not_a_number(tmp_path):
    f = write(tmp_path / "file.yaml", "train:\n  lr: true\n")
    with pytest.raises(ConfigError, match="file.yaml:2: key 'train.lr' must be a number"):
        load_config(f)


def test_section_must_be_a_mapping(tmp_path):
    f = write(tmp_path / "file.yaml", "train: 3\n")
    with pytest.raises(ConfigError, match="file.yaml:1: key 'train' must be a mapping"):
        load_config(f)


def test_duplicate_key(tmp_path):
    f = write(tmp_path / "file.yaml", "run:\n  name: a\n  name: b\n")
    with pytest.raises(ConfigError, match=r"file.yaml:3: key 'run.name' appears twice"):
        load_config(f)


def test_invalid_yaml_names_file_and_line(tmp_path):
    f = write(tmp_path / "file.yaml", "run:\n  name: a\n  seed: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "file.yaml:" in str(e.value) and "not valid YAML" in str(e.value)


def test_top_level_must_be_a_mapping(tmp_path):
    f = write(tmp_path / "file.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(f)


def test_empty_file_gives_defaults(tmp_path):
    f = write(tmp_path / "empty.yaml", "")
    assert load_config(f) == Config()


@dataclass
class _Needs:
    name: str
    """The thing's name."""
    size: int = 3
    """How big it is."""


@dataclass
class _Outer:
    inner: _Needs
    """A nested section with a required key."""


def test_missing_required_key():
    with pytest.raises(ConfigError) as e:
        from_dict({"size": 4}, _Needs, file="mine.yaml")
    msg = str(e.value)
    assert msg.startswith("mine.yaml:")
    assert "missing required key 'name'" in msg
    assert "The thing's name." in msg
    ok = from_dict({"name": "x"}, _Needs)
    assert ok == _Needs(name="x", size=3)


def test_missing_required_nested_key():
    with pytest.raises(ConfigError, match=r"missing required key 'inner\.name'"):
        from_dict({"inner": {"size": 1}}, _Outer)
    assert from_dict({"inner": {"name": "n"}}, _Outer) == _Outer(inner=_Needs(name="n"))


def test_from_dict_checks_types_and_keys():
    with pytest.raises(ConfigError, match=r"<dict>: unknown key 'bogus'; valid keys at the top level: name, size\."):
        from_dict({"name": "a", "bogus": 1}, _Needs)
    with pytest.raises(ConfigError, match=r"key 'size' must be an integer, got 2\.5"):
        from_dict({"name": "a", "size": 2.5}, _Needs)


def test_optional_and_union_types():
    cfg = from_dict({"step_weights": None, "n_train": "1_000"}, ArithConfig)
    assert cfg.step_weights is None
    assert cfg.n_train == 1000
    with pytest.raises(ConfigError, match="step_weights"):
        from_dict({"step_weights": "heavy"}, ArithConfig)
    with pytest.raises(ConfigError, match=r"<dict>: key .train. must be a string, got \[1\]"):
        from_dict({"train": [1]}, SourceConfig)


# ----------------------------------------------------------------------------- writing back


def _tricky_config() -> Config:
    cfg = load_config("smoke", [
        "train.lr=1e-4",
        "data.arith.step_weights=[1, 2.5, 0]",
        "run.name=123",
        "data.sources.0.fields={question: 'prompt: text', answer: '#label'}",
        "data.max_train=50",
    ])
    cfg.pipeline.answer_stop = ["\n\n", "Question:", "# end", "yes", "'quoted'", "ünïcode"]
    return cfg


@pytest.mark.parametrize("comments", [True, False])
def test_to_yaml_round_trip(tmp_path, comments):
    for cfg in [load_config("demo"), load_config("smoke"), load_config("gsm8k"), _tricky_config()]:
        f = tmp_path / "out.yaml"
        f.write_text(to_yaml(cfg, comments=comments), encoding="utf-8")
        back = load_config(f)
        assert back == cfg
    assert _tricky_config().run.name == "123"  # an int-looking string stays a string


def test_to_yaml_has_docs_as_comments():
    text = to_yaml(load_config("demo"))
    assert "# Peak learning rate.\n  lr: 0.003\n" in text
    assert "#" not in to_yaml(load_config("demo"), comments=False)
    # every field written out, even defaults the preset does not mention
    assert yaml.safe_load(text)["eval"]["batch_size"] == 32


def _dataclasses_in(tp) -> list[type]:
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [c for a in typing.get_args(tp) for c in _dataclasses_in(a)]


def test_every_config_field_has_a_docstring():
    seen: set[type] = set()
    todo = [Config]
    missing = []
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not docs.get(f.name, "").strip():
                missing.append(f"{cls.__name__}.{f.name}")
            todo += _dataclasses_in(hints[f.name])
    assert missing == []
    # the walk reached the nested sections, including the list item type
    assert {Config, DataConfig, SourceConfig, ArithConfig} <= seen
    assert len(seen) == 24  # + SynthConfig, GeneratorConfig, GrpoConfig, TeacherWritesConfig, DocumentsConfig, WriterConfig


def test_save_config_is_atomic_with_normal_permissions(tmp_path):
    out = tmp_path / "run" / "config.yaml"
    save_config(load_config("demo"), out)
    assert load_config(out) == load_config("demo")
    assert os.listdir(out.parent) == ["config.yaml"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask

    # A write that fails half way leaves the old file untouched and no temp file.
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_open(out) as f:
            f.write("half a fi")
            raise RuntimeError("killed")
    assert out.read_bytes() == before
    assert os.listdir(out.parent) == ["config.yaml"]

    # Overwriting replaces the content.
    save_config(load_config("smoke"), out)
    assert load_config(out).run.name == "smoke"
    assert os.listdir(out.parent) == ["config.yaml"]


def test_digest():
    a, b = load_config("demo"), load_config("demo")
    h = digest(a)
    assert len(h) == 16 and all(c in "0123456789abcdef" for c in h)
    assert h == digest(a) == digest(b)
    assert digest(load_config("demo", ["train.lr=0.002"])) != h
    assert digest(load_config("demo", ["data.sources.0.weight=2"])) != h
    # hash of a section: changes only with that section
    assert digest(a.data) == digest(load_config("demo", ["train.lr=0.002"]).data)
    assert digest(a.data) != digest(load_config("demo", ["data.seed=1"]).data)
    # key order of plain dicts does not matter
    assert digest({"x": 1, "y": 2}) == digest({"y": 2, "x": 1})


def test_a_mapping_value_is_replaced_whole_while_sections_merge(tmp_path):
    """`grpo.rewards` names the rewards: a file or override that gives two gets those two, not those plus the
    default's or the parent file's; a section (`grpo.train`) still merges key by key."""
    assert load_config("demo", ["grpo.rewards={correct: 1.0}"]).grpo.rewards == {"correct": 1.0}
    child = tmp_path / "child.yaml"
    child.write_text("extends: demo-grpo\ngrpo:\n  rewards: {correct: 2.0}\n  train: {max_steps: 7}\n")
    cfg = load_config(child)
    assert cfg.grpo.rewards == {"correct": 2.0}
    assert cfg.grpo.train.max_steps == 7 and cfg.grpo.train.batch_size == 64  # the parent's other train keys stay
    assert load_config("demo-grpo").grpo.rewards == {"base_correct": 1.0, "arithmetic": 0.25}


def test_list_item_patches_still_merge_across_extends(tmp_path):
    parent, child = tmp_path / "p.yaml", tmp_path / "c.yaml"
    parent.write_text("extends: demo\neval:\n  systems:\n    1: {max_thoughts: 2}\n")
    child.write_text(f"extends: {parent}\neval:\n  systems:\n    1: {{threshold: 0.3}}\n")
    system = load_config(child).eval.systems[1]
    assert (system.max_thoughts, system.threshold) == (2, 0.3)


def test_an_eval_system_with_its_own_ttm_is_not_replaced_by_the_grpo_one(tmp_path):
    from pseudocot.layout import RunLayout

    cfg = load_config("demo-grpo", [f"run.out_dir={tmp_path}", f"eval.systems.1.ttm={tmp_path / 'other'}"])
    assert RunLayout.of(cfg).ttm == RunLayout.of(cfg).grpo_dir
    assert RunLayout.of(cfg.for_system(cfg.eval.systems[1])).ttm == tmp_path / "other"
    assert RunLayout.of(cfg.for_system(cfg.eval.systems[2])).ttm == RunLayout.of(cfg).grpo_dir


@pytest.mark.parametrize(("key", "value"), [("max_length", 64), ("val_examples", 8), ("eval_every_steps", 5), ("lr", 0.1)])
def test_grpo_train_refuses_the_train_keys_grpo_never_reads(key, value):
    with pytest.raises(ConfigError, match=rf"grpo\.train\.{key}' is not read by GRPO"):
        load_config("demo-grpo", [f"grpo.train.{key}={value}"])
