"""The `pseudocot eval` command group.

    pseudocot eval --config demo [eval.max_questions=200] [--shard i/n]   # the stage
    pseudocot eval merge --config demo                                     # results from the shards
    pseudocot eval report A/results.json B/results.json --out compare/     # report from results files
    pseudocot eval score --task gsm8k --data test.jsonl --predictions predictions.jsonl

`score` and `report` need no model. Errors a user can cause (`PseudocotError`) reach the group,
which prints them as one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pseudocot.cli.groups import StageGroup, config_option, parse_fields
from pseudocot.layout import EvalLayout, RunLayout


def _summary(results: dict[str, Any], out: Path) -> None:
    task = results["primary_task"]
    click.echo(f"eval -> {out}: {task}, {results['tasks'][task]['n_questions']} questions")
    for name, s in results["systems"].items():
        lo, hi = s["ci95"]
        calls = s.get("thought_calls_per_question")
        click.echo(f"  {name:16s} accuracy={100 * s['accuracy']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
                   + (f"  thoughts/question={calls:.2f}" if calls is not None else "")
                   + f"  tokens/question={s['generated_tokens_per_question']:.1f}")
    for key, c in results["comparisons"].items():
        click.echo(f"  {key:24s} delta={100 * c['delta']:+.1f} points [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}]"
                   f"  McNemar p={c['p_value']:.3g}")
    click.echo(f"report: {EvalLayout(out).report}")


@click.group("eval", cls=StageGroup, invoke_without_command=True)
@config_option
@click.option("--shard", default=None, metavar="I/N",
              help="Answer only the i-th of n contiguous parts of the questions (0 <= i < n); sets eval.shard.")
@click.pass_context
def eval_group(ctx: click.Context, config_name: str, shard: str | None) -> None:
    """Evaluate systems on tasks: accuracy with intervals, BLEU, ROUGE-L, faithfulness, cost.

    \b
    pseudocot eval --config demo eval.max_questions=200     # the stage -> runs/<name>/eval/
    pseudocot eval --config demo --shard 0/4                # one of four processes; the last one merges
    pseudocot eval merge --config demo                      # results from the shards' caches
    pseudocot eval report A/results.json B/results.json --out cmp/
    pseudocot eval score --task gsm8k --data test.jsonl --predictions p.jsonl   # no model needed

    Answers are cached as they are made, so a killed evaluation started again answers only what is
    missing. Writes results.json, report.md (+ .csv, .json), figures/*.png, predictions/ and traces/.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pseudocot.config import load_config
    from pseudocot.stages import eval as eval_stage

    cfg = load_config(config_name, ctx.meta.get("overrides", []))
    results = eval_stage.main(cfg, shard=shard)
    if results is None:
        click.echo(f"eval: shard {shard or cfg.eval.shard} answered; results are written when every shard is done "
                   f"(or run `pseudocot eval merge`).")
        return
    _summary(results, RunLayout.of(cfg).eval_dir)


@eval_group.command("merge")
@config_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def merge(config_name: str, overrides: tuple[str, ...]) -> None:
    """Write results and the report from the generation cache the shards filled (no model is run)."""
    from pseudocot.config import load_config
    from pseudocot.stages import eval as eval_stage

    cfg = load_config(config_name, overrides)
    results = eval_stage.main(cfg, answer=False)
    assert results is not None
    _summary(results, RunLayout.of(cfg).eval_dir)


@eval_group.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RESULTS...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for report.md, report.csv, report.json and figures/.")
@click.option("--no-figures", is_flag=True, help="Leave out the PNG figures.")
def report(results: tuple[Path, ...], out: Path, no_figures: bool) -> None:
    """Rebuild the report from one or more results.json files (or eval folders), side by side."""
    from pseudocot.evaluate.report import read_results, write_report

    loaded = [read_results(p) for p in results]
    written = write_report(loaded, out, names=[str(p) for p in results], figures=not no_figures)
    click.echo(f"report of {len(loaded)} results file(s) -> {written['report.md']}")


@eval_group.command("score")
@click.option("--task", "task_name", required=True, metavar="TASK",
              help="arith, gsm8k, gsm8k_cot, mmlu:<subject>, jsonl, or package.module:attribute.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="The task's data: a file, or for MMLU the folder of CSVs.")
@click.option("--predictions", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSONL rows with 'id' or 'question', and 'prediction' (or 'loglikelihoods').")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Verdicts JSONL, one row per question [default: PREDICTIONS.verdicts.jsonl].")
@click.option("--field", "fields", multiple=True, metavar="FIELD=COLUMN",
              help="Task jsonl: map an Example field to a column (repeatable).")
@click.option("--extraction", type=click.Choice(["number", "letter", "text"]), default=None,
              help="Task jsonl: how to read the answer [default: number].")
@click.option("--n-boot", type=click.IntRange(min=1), default=10_000, show_default=True, help="Bootstrap resamples of the interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def score(task_name: str, data: Path, predictions: Path, out: Path | None, fields: tuple[str, ...],
          extraction: str | None, n_boot: int, seed: int) -> None:
    """Score given predictions against a task's data, without a model.

    Writes one verdict per question and prints a JSON summary as the last line: accuracy and its
    95% bootstrap interval per extraction, faithfulness, and BLEU / ROUGE-L against the reference
    reasoning where the data has it.
    """
    from pseudocot.data.jsonl import write_jsonl
    from pseudocot.evaluate.score import read_predictions, score_predictions, verdicts_path
    from pseudocot.tasks import get_task

    options: dict[str, Any] = {}
    if fields:
        options["fields"] = parse_fields(fields)
    if extraction:
        options["extraction"] = extraction
    task = get_task(task_name, **options)
    examples = task.load(data)
    rows = read_predictions(predictions, examples, data_name=str(data))
    summary, verdicts = score_predictions(task, rows, n_boot=n_boot, seed=seed)
    out = out or verdicts_path(predictions)
    write_jsonl(out, verdicts)
    summary["verdicts"] = str(out)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary["accuracy"].items())
    click.echo(f"{task.name}: {summary['n']} predictions scored ({shown}); verdicts in {out}")
    click.echo(json.dumps(summary))
