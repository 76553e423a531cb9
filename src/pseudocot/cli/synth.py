"""The `pseudocot synth` command group.

    pseudocot synth --config C [--shard i/n] [k=v ...]     # the stage: candidates, kept, rejects, stats
    pseudocot synth merge --config C                        # join the shards, then filter
    pseudocot synth filter --task gsm8k --data gold.jsonl --candidates c.jsonl --out kept.jsonl [--checks ...]
    pseudocot synth questions --config C [--shard i/n] [k=v ...]   # questions from your documents (synth.documents)
    pseudocot synth questions merge --config C
    pseudocot synth qfilter --docs DOCS/ --candidates items.jsonl --out kept.jsonl [--checks ...]
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pseudocot.cli.groups import StageGroup, config_option, parse_fields
from pseudocot.config.schema import GeneratorConfig, SynthConfig

SYNTH = SynthConfig()
"""The filter's defaults, as `synth` sets them (`synth filter` shows and uses these)."""


def _judge_spec(base_url: str | None, model: str | None, api_key_env: str):  # -> GeneratorConfig | None
    """The judge endpoint the --judge-* options name, or None."""
    from pseudocot.config.checks import FieldError
    from pseudocot.errors import ConfigError

    if bool(base_url) != bool(model):
        raise ConfigError("--judge-base-url and --judge-model go together; give both (the endpoint and the model it serves).")
    if not base_url:
        return None
    try:
        return GeneratorConfig(base_url=base_url, model=model, api_key_env=api_key_env)
    except FieldError as e:
        flag = {"path": "base-url"}.get(e.key, e.key.replace("_", "-"))
        raise ConfigError(f"--judge-{flag}: {e.message}.") from None


def _echo(stats: dict) -> None:
    click.echo(json.dumps({k: stats.get(k) for k in ("candidates", "kept", "keep_rate", "rejected")}))


@click.group("synth", cls=StageGroup, invoke_without_command=True)
@config_option
@click.option("--shard", default=None, metavar="I/N",
              help="Write only the i-th of n contiguous parts of the questions (0 <= i < n); sets synth.shard.")
@click.pass_context
def synth_group(ctx: click.Context, config_name: str, shard: str | None) -> None:
    """A teacher writes step-by-step solutions; a faithfulness filter keeps the trustworthy ones.

    \b
    pseudocot synth --config gsm8k synth.teacher.base_url=http://localhost:8001/v1 synth.teacher.model=deepseek-r1
    pseudocot synth --config demo synth.teacher.path=runs/demo/teacher synth.prompt='{question}'
    pseudocot synth --config C --shard 0/4                  # one of four processes; then `synth merge`
    pseudocot synth filter --task gsm8k --data gold.jsonl --candidates c.jsonl --out kept.jsonl

    Solutions are appended as they come, so a killed run started again asks only for what is missing.
    Writes <run>/synth/candidates.jsonl, kept.jsonl (Example JSONL the teacher and the TTM train on),
    rejects.jsonl (with reasons) and stats.json.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pseudocot.config import load_config
    from pseudocot.stages import synth as synth_stage

    flags = [f"synth.shard={shard}"] if shard else []
    cfg = load_config(config_name, (*ctx.meta.get("overrides", []), *flags))
    stats = synth_stage.main(cfg)
    if not shard:
        _echo(stats)


@synth_group.command("merge")
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def merge(config_name: str, overrides: tuple[str, ...]) -> None:
    """Join the candidates every shard wrote (all must be complete), then filter them (no teacher is run)."""
    from pseudocot.config import load_config
    from pseudocot.stages import synth as synth_stage

    _echo(synth_stage.merge(load_config(config_name, overrides)))


@synth_group.command("filter")
@click.option("--task", "task_name", required=True, metavar="TASK",
              help="arith, gsm8k, gsm8k_cot, mmlu:<subject>, jsonl, or package.module:attribute: its scoring decides right answers.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="The gold questions and answers (the task's data file); without it the answer check has nothing to compare.")
@click.option("--candidates", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSONL rows with 'id' or 'question', and 'completion' (optional 'sample', 'finish_reason').")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Kept solutions as Example JSONL; the rejects go to OUT.rejects.jsonl with their reasons.")
@click.option("--checks", default=",".join(SYNTH.checks), show_default=True,
              help="Comma-separated checks: format, answer, arithmetic, follows, consistency, judge, or package.module:function.")
@click.option("--extraction", default=None,
              help="The task's extraction that reads a solution's answer [default: answer-line where the task has it, else its primary].")
@click.option("--field", "fields", multiple=True, metavar="FIELD=COLUMN", help="Task jsonl: map an Example field to a column (repeatable).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=SYNTH.min_agreement, show_default=True,
              help="consistency: share of a question's samples its majority answer must hold.")
@click.option("--min-steps", type=click.IntRange(min=1), default=SYNTH.min_steps, show_default=True, help="format: fewest steps.")
@click.option("--max-steps", type=click.IntRange(min=1), default=SYNTH.max_steps, show_default=True, help="format: most steps.")
@click.option("--max-step-chars", type=click.IntRange(min=1), default=SYNTH.max_step_chars, show_default=True,
              help="format: longest step line.")
@click.option("--judge-base-url", default=None, help="judge: an OpenAI-compatible endpoint (e.g. http://localhost:8000/v1).")
@click.option("--judge-model", default=None, help="judge: the model name the endpoint serves.")
@click.option("--judge-api-key-env", default=GeneratorConfig.api_key_env, show_default=True,
              help="judge: the variable holding the API key.")
def filter_command(task_name: str, data: Path | None, candidates: Path, out: Path, checks: str, extraction: str | None,
                   fields: tuple[str, ...], min_agreement: float, min_steps: int, max_steps: int, max_step_chars: int,
                   judge_base_url: str | None, judge_model: str | None, judge_api_key_env: str) -> None:
    """Run the faithfulness filter over a candidates file, without a teacher.

    Prints one JSON summary as the last line: {"candidates", "kept", "keep_rate", "rejected": {reason: count}}.
    """

    from pseudocot.config.checks import FieldError
    from pseudocot.errors import ConfigError
    from pseudocot.synth.rows import filter_files
    from pseudocot.synth.teacher import Judge, Teacher
    from pseudocot.tasks import get_task

    names = [c.strip() for c in checks.split(",") if c.strip()]
    judge_spec = _judge_spec(judge_base_url, judge_model, judge_api_key_env)
    try:
        settings = SynthConfig(checks=names, min_agreement=min_agreement, min_steps=min_steps, max_steps=max_steps,
                               max_step_chars=max_step_chars, judge=judge_spec, extraction=extraction)
    except FieldError as e:
        hint = " (give --judge-base-url and --judge-model)" if e.key == "judge" else ""
        raise ConfigError(f"--{e.key.replace('_', '-')}: {e.message}{hint}.") from None
    options: dict = {"fields": parse_fields(fields)} if fields else {}
    task = get_task(task_name, **options)
    judge = None
    if "judge" in names and judge_spec is not None:
        judge = Judge(Teacher(judge_spec), settings.judge_prompt, out.with_name(out.name.removesuffix(".jsonl") + ".judge.jsonl"))
    if extraction and extraction not in task.extractions:
        raise ConfigError(f"--extraction: task '{task.name}' has no extraction '{extraction}'; it has {', '.join(task.extractions)}.")
    try:
        summary = filter_files(task, str(data) if data else None, str(candidates), str(out), names, settings, judge)
    finally:
        if judge is not None:
            judge.teacher.close()
    click.echo(f"synth filter: kept {summary['kept']} of {summary['candidates']} -> {out}", err=True)
    click.echo(json.dumps(summary))


@synth_group.group("questions", cls=StageGroup, invoke_without_command=True)
@config_option
@click.option("--shard", default=None, metavar="I/N",
              help="Ask about only the i-th of n contiguous parts of the chunks (0 <= i < n); sets synth.shard.")
@click.pass_context
def questions_group(ctx: click.Context, config_name: str, shard: str | None) -> None:
    """Questions from your own documents: a teacher writes question, answer and reasoning per chunk; the checks keep
    the grounded, self-contained, non-repeated ones.

    \b
    pseudocot synth questions --config C synth.documents.paths=[docs/] synth.teacher.base_url=URL synth.teacher.model=NAME
    pseudocot synth questions --config C --shard 0/4        # one of four processes; then `synth questions merge`

    Reads .txt, .md, .pdf, .html and .jsonl (synth.documents.text_field) under synth.documents.paths; chunks keep their
    document and character span. Replies are appended as they come, so a killed run started again asks only for what
    is missing; a malformed reply is asked once more, then rejected with its reason. Writes <run>/questions/: kept.jsonl
    (Example JSONL, source = NAME#START-END), rejects.jsonl, train/val/test.jsonl split by document, stats.json.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pseudocot.config import load_config
    from pseudocot.stages import questions as questions_stage

    flags = [f"synth.shard={shard}"] if shard else []
    cfg = load_config(config_name, (*ctx.meta.get("overrides", []), *flags))
    stats = questions_stage.main(cfg)
    if not shard:
        click.echo(json.dumps({k: stats.get(k) for k in ("documents", "chunks", "items", "kept", "rejected_by_check")}))


@questions_group.command("merge")
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def questions_merge(config_name: str, overrides: tuple[str, ...]) -> None:
    """Join the replies every shard wrote (all must be complete), then filter them (no teacher is run)."""
    from pseudocot.config import load_config
    from pseudocot.stages import questions as questions_stage

    stats = questions_stage.merge(load_config(config_name, overrides))
    click.echo(json.dumps({k: stats.get(k) for k in ("documents", "chunks", "items", "kept", "rejected_by_check")}))


@synth_group.command("writer")
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def writer_command(config_name: str, overrides: tuple[str, ...]) -> None:
    """Train the question writer (`writer` section) that the questions stage then asks in place of synth.teacher.

    \b
    pseudocot synth writer --config docs                      # -> runs/docs/writer/
    pseudocot synth writer --config C writer.enabled=true writer.pairs=pairs.jsonl

    It learns to reply to synth.documents.prompt with a JSON list of items, from writer.pairs ({text, items} rows) or,
    without a file, from stories of the built-in arith task that are not among the documents.
    """
    from pseudocot.config import load_config
    from pseudocot.errors import ConfigError
    from pseudocot.stages import writer as writer_stage

    cfg = load_config(config_name, overrides)
    if not cfg.writer.enabled:
        raise ConfigError("writer.enabled is false, so the questions stage would not use a writer; set writer.enabled=true.")
    metrics = writer_stage.main(cfg)
    click.echo(json.dumps({k: metrics.get(k) for k in ("model", "train_pairs", "steps", "train_loss", "val_loss", "skipped")}))


@synth_group.command("qfilter")
@click.option("--docs", "docs", multiple=True, required=True, type=click.Path(exists=True, path_type=Path), metavar="DIR_OR_FILE",
              help="The documents (repeatable): a row's source PATH#START-END is PATH relative to the folder (or a file's name).")
@click.option("--candidates", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSONL rows {question, answer, reasoning, source} (reasoning: text, one step per line, or a list of steps).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Kept items as Example JSONL; the rejects go to OUT.rejects.jsonl with their failed checks.")
@click.option("--checks", default="grounded,self_contained,well_formed,duplicate,format,arithmetic,follows", show_default=True,
              help="Comma-separated: grounded, self_contained, well_formed, duplicate, format, arithmetic, follows, judge, or module:function.")
@click.option("--duplicate-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.6, show_default=True,
              help="duplicate: similarity (Jaccard of character 4-grams) from which a later question is a near-duplicate.")
@click.option("--min-word-overlap", type=click.FloatRange(0, 1), default=0.6, show_default=True,
              help="grounded: share of a non-numeric answer's content words that must be in its chunk.")
@click.option("--min-topic-overlap", type=click.FloatRange(0, 1), default=0.15, show_default=True,
              help="grounded: share of the question's and reasoning's content words that must be in its chunk.")
@click.option("--text-field", default="text", show_default=True, help=".jsonl documents: the field holding each row's text.")
@click.option("--judge-base-url", default=None, help="judge: an OpenAI-compatible endpoint (e.g. http://localhost:8000/v1).")
@click.option("--judge-model", default=None, help="judge: the model name the endpoint serves.")
@click.option("--judge-api-key-env", default="OPENAI_API_KEY", show_default=True, help="judge: the variable holding the API key.")
def qfilter_command(docs: tuple[Path, ...], candidates: Path, out: Path, checks: str, duplicate_threshold: float, min_word_overlap: float,
                    min_topic_overlap: float, text_field: str, judge_base_url: str | None, judge_model: str | None, judge_api_key_env: str) -> None:
    """Check questions written from documents, without a teacher: grounded in their source span, self-contained,
    not near-duplicates, and the reasoning checks. No model is needed unless `judge` is among the checks.

    Prints one JSON summary as the last line: {"candidates", "kept", "keep_rate", "rejected", "rejected_by_check"}.
    """
    from pseudocot.config import DocumentsConfig, SynthConfig
    from pseudocot.config.checks import FieldError
    from pseudocot.errors import ConfigError
    from pseudocot.stages import questions as questions_stage
    from pseudocot.synth.teacher import Judge, Teacher

    names = [c.strip() for c in checks.split(",") if c.strip()]
    judge_spec = _judge_spec(judge_base_url, judge_model, judge_api_key_env)
    try:
        documents = DocumentsConfig(checks=names, duplicate_threshold=duplicate_threshold, min_word_overlap=min_word_overlap,
                                    min_topic_overlap=min_topic_overlap, text_field=text_field)
        synth = SynthConfig(judge=judge_spec, documents=documents)
    except FieldError as e:
        hint = " (give --judge-base-url and --judge-model)" if e.key == "judge" else ""
        raise ConfigError(f"--{e.key.replace('_', '-')}: {e.message}{hint}.") from None
    judge = None
    if "judge" in names and judge_spec is not None:
        judge = Judge(Teacher(judge_spec), synth.judge_prompt, out.with_name(out.name.removesuffix(".jsonl") + ".judge.jsonl"))
    try:
        summary = questions_stage.qfilter([str(d) for d in docs], candidates, out, names, questions_stage.filter_settings(synth, documents, judge),
                                          warn=lambda line: click.echo(line, err=True), text_field=text_field)
    finally:
        if judge is not None:
            judge.teacher.close()
    click.echo(f"synth qfilter: kept {summary['kept']} of {summary['candidates']} -> {out}", err=True)
    click.echo(json.dumps(summary))
