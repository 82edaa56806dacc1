"""--quiet / --verbose / --log-json, the same on every console script: they configure `pyimgano` logging as
click parses them, so a command's own code only logs."""

from __future__ import annotations

import click

from pyimgano.runtime import logs


def _configure(ctx: click.Context, param: click.Parameter, value) -> None:
    # click runs these callbacks in an order that depends on the command line, so each one applies what is
    # known so far; after the last of the three the configuration is complete.
    flags = ctx.meta.setdefault("pyimgano_log_flags", {})
    flags[param.name] = value
    if flags.get("quiet") and flags.get("verbose"):
        raise click.UsageError("--quiet and --verbose exclude each other")
    verbosity = "verbose" if flags.get("verbose") else "quiet" if flags.get("quiet") else "normal"
    logs.configure(verbosity, json_lines=bool(flags.get("log_json")))


def logging_options(command):
    """Decorates a click command with the three logging flags (not passed to the command function)."""
    for decorator in reversed((
        click.option("--quiet", "quiet", is_flag=True, expose_value=False, is_eager=True, callback=_configure,
                     help="Log warnings and errors only; no progress bars."),
        click.option("--verbose", "verbose", is_flag=True, expose_value=False, is_eager=True, callback=_configure,
                     help="Log debug messages too."),
        click.option("--log-json", "log_json", is_flag=True, expose_value=False, is_eager=True, callback=_configure,
                     help="Log as one JSON object per line on stderr (time, level, logger, message, fields)."),
    )):
        command = decorator(command)
    return command
