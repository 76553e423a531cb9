"""Typed configuration: the schema (one dataclass per section in the module of its stage, `run`, `data`,
`train`, `generator`, `pipeline`, `router`, `eval`, `serve`, `synth`, `writer`, `grpo`, a docstring under every
field, bounds and choices in the types; `schema`: the top-level `Config`, every section re-exported), the
checks that run when a section is built (`checks`), and YAML in and out with file:line errors, dotted
overrides and presets (`loader`).

    from pseudocot.config import load_config
    cfg = load_config("demo", ["train.lr=1e-4"])
    pseudocot config show demo train.lr=1e-4
"""

from pseudocot.config.checks import FieldError
from pseudocot.config.loader import (
    DEFAULT_PRESET,
    PRESET_DIR,
    from_dict,
    load_config,
    parse_override,
    presets,
    resolve_config_path,
    save_config,
    to_dict,
    to_yaml,
)
from pseudocot.config.schema import (
    ArithConfig,
    Config,
    DataConfig,
    DistillConfig,
    DistillStageConfig,
    DocumentsConfig,
    EvalConfig,
    EvalTaskConfig,
    FinetuneConfig,
    GeneratorConfig,
    GrpoConfig,
    LoraConfig,
    ModelSpec,
    PipelineConfig,
    RouterConfig,
    RunConfig,
    ServeConfig,
    SourceConfig,
    SynthConfig,
    SystemConfig,
    TeacherWritesConfig,
    TokenizerConfig,
    TrainConfig,
    WriterConfig,
    field_docs,
    parse_shard,
)
from pseudocot.errors import ConfigError

__all__ = [
    "DEFAULT_PRESET", "PRESET_DIR", "ArithConfig", "Config", "ConfigError", "DataConfig", "DistillConfig",
    "DistillStageConfig", "DocumentsConfig", "EvalConfig", "EvalTaskConfig", "FieldError", "FinetuneConfig", "GrpoConfig", "LoraConfig", "ModelSpec",
    "PipelineConfig", "RouterConfig", "RunConfig", "ServeConfig", "SourceConfig", "SynthConfig", "SystemConfig",
    "GeneratorConfig", "TeacherWritesConfig", "TokenizerConfig", "TrainConfig", "WriterConfig",
    "field_docs", "from_dict", "load_config", "parse_override", "parse_shard", "presets",
    "resolve_config_path", "save_config", "to_dict", "to_yaml",
]
