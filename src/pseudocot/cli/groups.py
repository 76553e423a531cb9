"""The click pieces every command module shares: errors a user can cause (`PseudocotError`) printed
as one line, the stage group (`pseudocot data [--config X] [k=v ...]` runs the stage, `pseudocot
data arith` a subcommand), and the `--config` option with its overrides. `pseudocot.cli` builds the
command on them.
"""

from __future__ import annotations

from typing import Any

import click

from pseudocot.config import DEFAULT_PRESET
from pseudocot.errors import PseudocotError


class PseudocotGroup(click.Group):
    """Turns every error a user can cause (`PseudocotError`) into one line on stderr and exit code 1,
    not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PseudocotError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)


def _first_positional(args: list[str], value_options: frozenset[str] = frozenset({"--config", "-c"})) -> str | None:
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in value_options:
            skip = True
        elif not a.startswith("-"):
            return a
    return None


class StageGroup(PseudocotGroup):
    """A stage that also has subcommands: `pseudocot data [--config X] [k=v ...]` runs the stage,
    `pseudocot data arith ...` runs a subcommand."""

    def _value_options(self) -> frozenset[str]:
        """The group's own options that take a value (`--config X`, `--shard i/n`)."""
        return frozenset(o for p in self.params if isinstance(p, click.Option) and not p.is_flag and not p.count
                         for o in (*p.opts, *p.secondary_opts))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        value_options = self._value_options()
        first = _first_positional(args, value_options)
        if first is None or first in self.commands:
            return super().parse_args(ctx, args)
        overrides = [a for a in args if not a.startswith("-") and "=" in a]
        rest = [a for a in args if a not in overrides]
        stray = _first_positional(rest, value_options)
        if stray is not None:
            raise click.UsageError(f"'{stray}' is neither a subcommand ({', '.join(self.commands)}) nor an override key=value.", ctx)
        ctx.meta["overrides"] = overrides
        return super().parse_args(ctx, rest)


config_option = click.option("--config", "-c", "config_name", default=DEFAULT_PRESET, show_default=True,
                             metavar="PRESET_OR_FILE", help="A preset name (see `pseudocot config presets`) or a YAML file.")
overrides_argument = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


def parse_fields(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--field FIELD=COLUMN` options as a mapping."""
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k or not v:
            raise click.BadParameter(f"'{p}' is not FIELD=COLUMN (e.g. question=prompt).", param_hint="--field")
        out[k] = v
    return out

