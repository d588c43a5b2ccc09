"""The ``htmengine`` console script: run, inspect and feed the engine from a shell.

It reads the same configuration as the services (``APPLICATION_CONFIG_PATH``, defaulting to the
source checkout's ``conf/`` like ``scripts/up.sh``) and works through the project's own modules:
the repository for tables, the message bus for queues, the custom datasource adapter for models.
Every expected failure (suite not running, unknown metric, bad file, config error) is reported as
one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from htmengine import config
from htmengine.cli.common import describe_error


class HtmengineGroup(click.Group):
    """A click group whose errors are one line each: usage errors exit 2, failures exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = describe_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "htmengine"
            click.echo(f"Error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


@click.group(
    "htmengine", cls=HtmengineGroup, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--conf",
    "conf_dir",
    type=click.Path(file_okay=False),
    help="Configuration directory (default: $APPLICATION_CONFIG_PATH, else the checkout's conf/).",
)
def cli(conf_dir: str | None) -> None:
    """Run, inspect and feed the HTM Engine."""
    if conf_dir is not None:
        os.environ[config.CONFIG_PATH_ENV] = os.path.abspath(conf_dir)
        config.clear_cache()


def _register() -> None:
    from htmengine.cli import manage, results, send, suite

    for module in (suite, manage, send, results):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point.

    Library log records (the bus's reconnect warnings, ...) stay quiet unless HTMENGINE_LOG_LEVEL
    asks for them: the CLI reports what matters itself, one line per failure.
    """
    level = logging.getLevelName(os.environ.get("HTMENGINE_LOG_LEVEL", "CRITICAL").upper())
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
    )
    cli(prog_name="htmengine")
