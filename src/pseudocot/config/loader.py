"""Reading and writing configs: YAML with line numbers in, typed `Config` out, YAML with comments back.

A YAML file is an instance of `Config` (`config.schema`). Loading checks every key against the
dataclasses, so an unknown key, a wrong type, a value out of bounds or a missing required value is
one sentence naming the file, its line, the key and what is valid. Dotted overrides (`train.lr=1e-4`, `data.sources.0.train=x.jsonl`) are
applied after the file. A file may start from a preset with `extends: PRESET_OR_FILE`.

    pseudocot config show demo train.lr=1e-4
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from pseudocot.config.base import field_docs
from pseudocot.config.checks import FieldError
from pseudocot.config.schema import Config
from pseudocot.config.train import TrainConfig
from pseudocot.errors import ConfigError
from pseudocot.files import atomic_write_text

PRESET_DIR = Path(__file__).parent.parent / "configs"
DEFAULT_PRESET = "demo"


# --------------------------------------------------------------------------------------------
# YAML with line numbers.
# --------------------------------------------------------------------------------------------


class _Src:
    """Where a value came from: a file and the line of each dotted key, for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self.overrides: dict[str, str] = {}

    def where(self, key: str) -> str:
        for k, text in self.overrides.items():
            if key == k or key.startswith(k + "."):
                return f"override '{text}'"
        # A rule of a whole section (two stages with one name) broken by an override inside it, or a
        # rule between fields (kind hf needs model) broken by an override of a neighbour.
        for scope in (key, key.rpartition(".")[0]):
            inside = [text for k, text in self.overrides.items() if scope and k.startswith(scope + ".")]
            if inside:
                return f"override '{inside[-1]}'"
        line = self.lines.get(key)
        return f"{self.file}:{line}" if line else self.file


def _node_to_python(node: yaml.Node, prefix: str, src: _Src) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for k_node, v_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(k_node)))
            path = f"{prefix}.{key}" if prefix else key
            if key in out:
                raise ConfigError(f"{src.file}:{k_node.start_mark.line + 1}: key '{path}' appears twice; keep one.")
            src.lines[path] = k_node.start_mark.line + 1
            out[key] = _node_to_python(v_node, path, src)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            path = f"{prefix}.{i}"
            src.lines[path] = item.start_mark.line + 1
            items.append(_node_to_python(item, path, src))
        return items
    return yaml.safe_load(yaml.serialize(node))


def _read_yaml(path: Path, src: _Src) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax.") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror}).") from None
    if node is None:
        return {}
    data = _node_to_python(node, "", src)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of sections, not a {type(data).__name__}.")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any], cls: type | None = None) -> dict[str, Any]:
    """`over` on top of `base`. With `cls`, the dataclass both are data of, only its sections (and patches of its
    lists' items, `{1: {...}}`) merge key by key; any other value, a mapping such as `grpo.rewards` included, is
    replaced whole: a file that writes `rewards: {correct: 1}` gets that one reward, not it plus its parent's."""
    hints = _hints(cls) if cls is not None else {}
    out = dict(base)
    for k, v in over.items():
        hint = hints.get(str(k))
        section = _section_type(hint) if cls is not None else None
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        if both and (cls is None or section is not None):
            out[k] = _deep_merge(out[k], v, section)
        elif both and _is_item_patch(v) and _is_item_patch(out[k]) and typing.get_origin(_unannotated(hint)) is list:
            element = _section_type(typing.get_args(_unannotated(hint))[0])
            items = dict(out[k])
            for i, item in v.items():
                items[i] = _deep_merge(items[i], item, element) if isinstance(item, dict) and isinstance(items.get(i), dict) else item
            out[k] = items
        else:
            out[k] = v
    return out


def _is_item_patch(value: dict[str, Any]) -> bool:
    """`{1: {...}, 3: {...}}`: changes to items of a list the file does not write out."""
    return bool(value) and all(str(i).isdigit() for i in value)


def _section_type(hint: Any) -> type | None:
    """The dataclass a field holds (`X`, `X | None`, `Annotated[X, ...]`), else None."""
    if hint is None:
        return None
    tp = _unannotated(hint)
    options = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (Union, types.UnionType) else [tp]
    return options[0] if len(options) == 1 and dataclasses.is_dataclass(options[0]) else None


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A path to an existing file, or the name of a preset in `configs/`."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    preset = PRESET_DIR / f"{p.name}.yaml"
    if not p.suffix and preset.is_file():
        return preset
    raise ConfigError(
        f"no config file or preset named '{name_or_path}'; give a YAML file or one of the presets: {', '.join(presets())}."
    )


def _load_raw(path: Path, src: _Src, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back to a file that extends it; remove the cycle.")
    data = _read_yaml(path, src)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{src.where('extends')}: 'extends' must be a preset name or a file path.")
    parent_path = resolve_config_path(parent if Path(parent).is_absolute() or not (path.parent / parent).is_file() else path.parent / parent)
    parent_src = _Src(str(parent_path))
    base = _load_raw(parent_path, parent_src, seen + (path.resolve(),))
    # Lines of the child win; keys only in the parent keep the parent's file in messages.
    for k, line in parent_src.lines.items():
        src.lines.setdefault(k, line)
    return _deep_merge(base, data, Config)


# --------------------------------------------------------------------------------------------
# Overrides.
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (["a", "b", "c"], VALUE parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' is not of the form section.key=value (e.g. train.lr=1e-4).")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, dict) and ":" not in value:
        parsed = value  # `{question}` is a prompt template, not a YAML mapping of null values
    return key.split("."), parsed


def _apply_override(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ConfigError(f"override '{text}': '{'.'.join(keys[: i + 1])}' is not an index of a list of {len(node)}.")
            node = node[int(k)]
        else:
            if not isinstance(node.get(k), (dict, list)):
                node[k] = {}
            node = node[k]
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override '{text}': '{last}' is not an index of a list of {len(node)}.")
        node[int(last)] = value
    else:
        node[last] = value


# --------------------------------------------------------------------------------------------
# Typed conversion.
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        return _type_name(_unannotated(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, src: _Src) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"{src.where(key)}: key '{key}' must be {_type_name(tp)}, got {value!r}.")

    if tp is Any:
        return value
    if typing.get_origin(tp) is Annotated:
        return _convert(value, _unannotated(tp), key, src)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, key, src)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        sections = [a for a in args if dataclasses.is_dataclass(_unannotated(a))]
        if isinstance(value, dict) and len(sections) == 1:  # a mapping is that section: its own error, not "a or b"
            return _convert(value, sections[0], key, src)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, src)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise bad()
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad()
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}.{i}", src) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        _, v_tp = typing.get_args(tp)
        return {str(k): _convert(v, v_tp, f"{key}.{k}", src) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        # PyYAML reads `1e-4` (no dot) as a string: accept any string that is a number.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    raise bad()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _unannotated(tp: Any) -> Any:
    """`Annotated[T, bounds...]` -> T (the bounds are checked when the section is built)."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def yaml_key(name: str) -> str:
    """A field's key in YAML: a Python keyword is a field with a trailing underscore (`from_` is `from`)."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def _build(cls: type, data: dict[str, Any], prefix: str, src: _Src) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        k = f"{k}_" if keyword.iskeyword(str(k)) else k
        if k not in fields:
            where = f"under '{prefix}'" if prefix else "at the top level"
            raise ConfigError(f"{src.where(key)}: unknown key '{key}'; valid keys {where}: {', '.join(map(yaml_key, fields))}.")
        f = fields[k]
        tp = _unannotated(hints[k])
        if isinstance(v, dict) and dataclasses.is_dataclass(tp) and f.default_factory is not dataclasses.MISSING:
            # A partial section starts from the field's own default (which may differ from the class defaults).
            v = _deep_merge(dataclasses.asdict(f.default_factory()), v, tp)
        elif isinstance(v, dict) and v and all(str(i).isdigit() for i in v) and typing.get_origin(tp) is list \
                and f.default_factory is not dataclasses.MISSING:
            v = _patch_default_list(f.default_factory(), v, key, src)
        kwargs[k] = _convert(v, hints[k], key, src)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{src.file}: missing required key '{key}' ({field_docs(cls).get(name, '')}).")
    try:
        return cls(**kwargs)
    except FieldError as e:
        key = f"{prefix}.{yaml_key(e.key)}" if prefix else yaml_key(e.key)
        raise ConfigError(f"{src.where(key)}: key '{key}' {e.message}.") from None


def _patch_default_list(default: list[Any], items: dict[str, Any], key: str, src: _Src) -> list[Any]:
    """An override such as `eval.systems.2.threshold=0.3` on a list the file does not write out: the
    field's default list with item 2 changed."""
    out = [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x for x in default]
    for i, item in items.items():
        if int(i) >= len(out):
            where = next((f"override '{text}'" for k, text in src.overrides.items() if k.startswith(f"{key}.{i}")), src.where(key))
            raise ConfigError(f"{where}: '{key}.{i}' is not an index of the default list of {len(out)}; "
                              f"write the list '{key}' out in the config file.")
        element = type(default[int(i)]) if dataclasses.is_dataclass(default[int(i)]) else None
        out[int(i)] = _deep_merge(out[int(i)], item, element) if isinstance(item, dict) and isinstance(out[int(i)], dict) else item
    return out


def from_dict(data: dict[str, Any], cls: type = Config, file: str = "<dict>") -> Any:
    """Build a config dataclass from plain data, with the same checks as a YAML file."""
    return _build(cls, data, "", _Src(file))


def load_config(name_or_path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset or YAML file, apply dotted overrides, and check every key and type."""
    path = resolve_config_path(name_or_path or DEFAULT_PRESET)
    src = _Src(str(path))
    data = _load_raw(path, src)
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value, text)
        src.overrides[".".join(keys)] = text
    _retire(data, src)
    _inherit_train(data)
    return _build(Config, data, "", src)


RETIRED = {"generation": "nothing read it but `batch_size`, which is now eval.batch_size"}
"""Top-level sections that configs written by earlier versions (a run folder's config.yaml) may hold."""


def _retire(data: dict[str, Any], src: _Src) -> None:
    """Drop a retired section with a warning, so an older run folder still loads."""
    import warnings

    for key, why in RETIRED.items():
        if key in data:
            data.pop(key)
            warnings.warn(f"{src.where(key)}: section '{key}' is no longer used ({why}); it was ignored.", stacklevel=3)


def _inherit_train(data: dict[str, Any]) -> None:
    """Give every stage's `train` the top-level `train` keys it does not set itself."""
    shared = data.get("train")
    if not isinstance(shared, dict) or not shared:
        return
    stages: list[Any] = [data.setdefault(role, {}) for role in ("teacher", "base", "writer")]
    distill = data.get("distill")
    if isinstance(distill, dict) and isinstance(distill.get("stages"), list):
        stages += distill["stages"]
    for stage in stages:
        if isinstance(stage, dict) and isinstance(stage.get("train", {}), dict):
            stage["train"] = _deep_merge(shared, stage.get("train") or {}, TrainConfig)


# --------------------------------------------------------------------------------------------
# Writing configs back out.
# --------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def to_yaml(cfg: Any, comments: bool = True, indent: int = 0) -> str:
    """The config as YAML, each field preceded by its docstring as a comment; loads back equal."""
    lines: list[str] = []
    pad = " " * indent
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = yaml_key(f.name)
        if comments and docs.get(f.name):
            lines.append(f"{pad}# {docs[f.name]}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{name}:")
            lines.append(to_yaml(value, comments, indent + 2).rstrip("\n"))
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            # A list of sections as a block sequence: "- " opens each item's mapping.
            lines.append(f"{pad}{name}:")
            for item in value:
                body = to_yaml(item, False, indent + 4).rstrip("\n")
                lines.append(f"{pad}  - " + body[indent + 4 :])
        else:
            lines.append(f"{pad}{name}: {_scalar(to_dict(value) if not isinstance(value, list) else [to_dict(v) for v in value])}")
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config atomically (every default written out)."""
    return atomic_write_text(path, to_yaml(cfg))
