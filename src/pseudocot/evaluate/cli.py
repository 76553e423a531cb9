"""The `pseudocot eval` command group.

    pseudocot eval score --task gsm8k --data test.jsonl --predictions predictions.jsonl

`score` needs no model: it scores predictions already written. Errors a user can cause (DataError,
ConfigError) reach the top-level group, which prints them as one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.group("eval", invoke_without_command=True)
@click.pass_context
def eval_group(ctx: click.Context) -> None:
    """Evaluate systems on tasks: accuracy with intervals, BLEU, ROUGE-L, faithfulness.

    \b
    pseudocot eval score --task gsm8k --data test.jsonl --predictions p.jsonl   # no model needed
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _fields(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k or not v:
            raise click.BadParameter(f"'{p}' is not FIELD=COLUMN (e.g. answer=label).", param_hint="--field")
        out[k] = v
    return out


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
        options["fields"] = _fields(fields)
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
