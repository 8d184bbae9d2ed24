"""The thin command-line layer: options in, one library call, an exit code out.

Heavy modules (pydantic, yaml, docker) are imported inside the commands so that
``fleetform --help`` starts fast.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


def _report_errors(command: F) -> F:
    """Expected errors: one line each, exit 1. Bugs: traceback to a file, exit 3."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from compiler.errors import FleetformError, flatten

        try:
            return command(*args, **kwargs)
        except FleetformError as error:
            for item in flatten(error):
                click.echo(str(item), err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("fleetform: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as error:  # a bug: say so, and where the traceback went
            fd, path = tempfile.mkstemp(prefix="fleetform-crash-", suffix=".txt")
            with os.fdopen(fd, "w") as handle:
                traceback.print_exc(file=handle)
            click.echo(
                f"fleetform: internal error (this is a bug): {type(error).__name__}: {error};"
                f" traceback written to {path}",
                err=True,
            )
            sys.exit(EXIT_BUG)

    return wrapper  # type: ignore[return-value]


repo_option = click.option(
    "--repo",
    "repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The fleet repository.",
)


def main() -> None:
    """The console script: run the command, then leave without tearing down the heap.

    A large compile ends with millions of live objects; freeing them one by one takes
    a third of a second and serves no purpose at exit (mypy exits the same way).
    """
    try:
        cli()
        code = EXIT_OK
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (EXIT_OK if done.code is None else 1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = code or EXIT_ERROR
    os._exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fleetform")
def cli() -> None:
    """fleetform: compile a GPU inference fleet from Git into compose and systemd."""
    # A compile builds millions of small, long-lived objects and frees few cycles; with
    # the default thresholds the cyclic collector rescans them over and over (a third
    # of a large compile's time). mypy raises its thresholds for the same reason.
    gc.set_threshold(50_000, 20, 20)


@cli.command()
@repo_option
@_report_errors
def validate(repo: Path) -> None:
    """Load, resolve and check the repository; write nothing."""
    from compiler import api

    compiled = api.build(repo)
    hosts = len(compiled.fleet.hosts)
    workloads = len(compiled.fleet.workloads)
    click.echo(f"ok: {hosts} hosts, {workloads} workloads")


@cli.command(name="compile")
@repo_option
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when output/ is stale.")
@_report_errors
def compile_command(repo: Path, check: bool) -> None:
    """Write output/ (compose projects, systemd units, per-host index)."""
    from compiler import api

    changes = api.compile_repo(repo, check=check)
    if check:
        if changes.empty:
            click.echo("output/ is up to date")
            return
        for line in changes.lines():
            click.echo(f"stale: would be {line}", err=True)
        click.echo("output/ is stale: run `fleetform compile` and commit the result", err=True)
        sys.exit(EXIT_ERROR)
    for line in changes.lines():
        click.echo(line)
    if changes.empty:
        click.echo("output/ is up to date; nothing written")


@cli.command()
@repo_option
@click.argument("deployment")
@_report_errors
def explain(repo: Path, deployment: str) -> None:
    """Show DEPLOYMENT resolved, and where each value came from."""
    from compiler import api

    click.echo(api.explain(repo, deployment), nl=False)


if __name__ == "__main__":
    main()
