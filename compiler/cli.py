"""The thin command-line layer: options in, one library call, an exit code out.

Heavy modules (pydantic, yaml, docker) are imported inside the commands so that
``fleetform --help`` starts fast.
"""

from __future__ import annotations

import gc
import json
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
    _print_fleetform_warnings()


def _print_fleetform_warnings() -> None:
    """fleetform's own warnings (an ignored index, a wait for the lock): each its line."""
    import warnings

    from compiler.errors import FleetformWarning, printable

    default = warnings.showwarning
    if getattr(default, "fleetform", False):
        return

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(category, type) and issubclass(category, FleetformWarning):
            click.echo(printable(str(message)), err=True)
        else:
            default(message, category, *args, **kwargs)

    show.fleetform = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.simplefilter("always", FleetformWarning)


@cli.command()
@repo_option
@click.option("--base", "base", required=True, help="The Git revision to compare with.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
)
@_report_errors
def diff(repo: Path, base: str, output_format: str) -> None:
    """What the change since BASE does to each host and replica (offline, no host access).

    Exit 0 when nothing changes, 2 when something does, 1 on error.
    """
    from compiler import api, report

    result = api.diff(repo, base)
    render = {
        "text": report.diff_text,
        "markdown": report.diff_markdown,
        "json": report.diff_json,
    }[output_format]
    click.echo(render(result), nl=False)
    sys.exit(2 if result.changed else 0)


@cli.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write <kind>.schema.json files here instead of printing them.",
)
@_report_errors
def schema(out: Path | None) -> None:
    """JSON Schemas of the repository's files (backend, deployment, host, settings)."""
    from compiler import schema as schemas

    if out is None:
        click.echo(json.dumps(schemas.schemas(), indent=2, sort_keys=True, ensure_ascii=False))
        return
    out.mkdir(parents=True, exist_ok=True)
    for kind in schemas.KINDS:
        path = out / f"{kind}.schema.json"
        text = schemas.schema_text(kind)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            click.echo(f"wrote {path}")


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


host_option = click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Only this host (repeatable).",
)
format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
)


def _print_plan(plan: Any, output_format: str) -> None:
    from compiler import report

    if output_format == "json":
        click.echo(report.plan_json(plan), nl=False)
    elif output_format == "markdown":
        click.echo(report.plan_markdown(plan), nl=False)
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        click.echo(report.plan_text(plan, color=color), nl=False)


def _progress(host: str, message: str) -> None:
    click.echo(f"{host}: {message}", err=True)


@cli.command()
@repo_option
@host_option
@format_option
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="Save the plan."
)
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 2 when there are changes, 0 when none."
)
@_report_errors
def plan(
    repo: Path,
    hosts: tuple[str, ...],
    output_format: str,
    out: Path | None,
    detailed_exitcode: bool,
) -> None:
    """Show what apply would change on the live hosts."""
    from compiler.remote.connections import Connections

    early = Connections(repo, hosts)  # before the heavy imports: see its docstring
    from compiler import api, report

    planned = api.plan_repo(repo, hosts, early)
    _print_plan(planned.plan, output_format)
    if out is not None:
        out.write_text(report.plan_json(planned.plan), encoding="utf-8")
        click.echo(f"plan saved to {out}", err=True)
    if planned.plan.errors:
        sys.exit(EXIT_ERROR)
    if detailed_exitcode and planned.plan.has_changes:
        sys.exit(EXIT_CHANGES)


@cli.command()
@repo_option
@host_option
@click.argument("planfile", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--auto-approve", is_flag=True, help="Apply without asking.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--wait", is_flag=True, help="Wait for each changed container's health check.")
@click.option("--allow-empty", is_flag=True, help="Allow removing every container of a host.")
@click.option("--stop-timeout", default=30, show_default=True, type=click.IntRange(0, 3600))
@_report_errors
def apply(
    repo: Path,
    hosts: tuple[str, ...],
    planfile: Path | None,
    auto_approve: bool,
    parallel: int,
    wait: bool,
    allow_empty: bool,
    stop_timeout: int,
) -> None:
    """Carry out exactly the plan (a saved PLANFILE, or a new one you confirm)."""
    from compiler.remote.connections import Connections

    early = Connections(repo, hosts)  # before the heavy imports: see its docstring
    from compiler import api, report
    from compiler.apply import Options, apply_plan

    planned = api.plan_repo(repo, hosts, early)
    plan = planned.plan
    if planfile is not None:
        saved = api.load_plan(planfile)
        api.check_plan_file(saved, planned)
        plan = saved
    else:
        _print_plan(plan, "text")
        if not plan.has_changes:
            sys.exit(EXIT_ERROR if plan.errors else EXIT_OK)
        if not auto_approve:
            if not sys.stdin.isatty():
                click.echo("no terminal to confirm on: pass --auto-approve", err=True)
                sys.exit(EXIT_ERROR)
            if click.prompt("Apply these changes? Only 'yes' is accepted", default="") != "yes":
                click.echo("Apply cancelled.")
                sys.exit(EXIT_ERROR)
    options = Options.of(planned.settings, stop_timeout=stop_timeout, wait=wait)
    result = apply_plan(
        plan,
        planned.targets,
        planned.settings.project,
        options,
        parallel=parallel,
        allow_empty=allow_empty,
        report=_progress,
    )
    click.echo(report.apply_text(result), nl=False)
    sys.exit(EXIT_OK if result.ok else EXIT_ERROR)


@cli.command()
@repo_option
@host_option
@format_option
@click.option("--heal", is_flag=True, help="Apply the correction of any drift found.")
@click.option("--interval", type=click.FloatRange(min=1), help="Check again every S seconds.")
@click.option("--stop-timeout", default=30, show_default=True, type=click.IntRange(0, 3600))
@_report_errors
def reconcile(
    repo: Path,
    hosts: tuple[str, ...],
    output_format: str,
    heal: bool,
    interval: float | None,
    stop_timeout: int,
) -> None:
    """Check every host for drift (exit 2 when found); --heal corrects it."""
    import time

    from compiler import api, report
    from compiler.apply import Options, apply_plan

    while True:
        planned = api.plan_repo(repo, hosts)
        plan = planned.plan
        code = EXIT_ERROR if plan.errors else (EXIT_CHANGES if plan.has_changes else EXIT_OK)
        if code == EXIT_OK and output_format == "text":
            click.echo("no drift: every host runs what the repository says")
        else:  # json and markdown are for machines and comments: always the report
            _print_plan(plan, output_format)
        if heal and plan.has_changes:
            options = Options.of(planned.settings, stop_timeout=stop_timeout)
            result = apply_plan(
                plan, planned.targets, planned.settings.project, options, report=_progress
            )
            click.echo(report.apply_text(result), nl=False, err=output_format != "text")
            if not result.ok:
                code = EXIT_ERROR
        if interval is None:
            sys.exit(code)
        time.sleep(interval)


@cli.group("import")
def import_group() -> None:
    """Write an existing system's configuration into the repository."""


@import_group.command("gpustack")
@repo_option
@click.option("--url", required=True, help="The GPUStack server, e.g. https://gpustack.example.com")
@click.option("--cluster", required=True, help="The cluster's name (or id) on the server.")
@click.option("--host", help="The hosts.d name for the cluster (default: from its name).")
@click.option(
    "--api-key-env",
    help="The variable holding the API key (default GPUSTACK_API_KEY).",
)
@_report_errors
def import_gpustack(
    repo: Path, url: str, cluster: str, host: str | None, api_key_env: str | None
) -> None:
    """Write a GPUStack cluster's custom backends and models as repository files, and
    mark them as this project's: `fleetform compile` and `plan` then show no changes."""
    from compiler import api
    from compiler.fields import api_url

    try:
        url = api_url(url)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--url") from None
    result = api.import_gpustack(repo, url, cluster, host, api_key_env)
    for path in result.written:
        click.echo(f"wrote {path}")
    for line in result.left_out:
        click.echo(f"left out {line}")
    if result.adopted:
        click.echo(
            f"adopted {len(result.adopted)} object(s) on the server (fleetform's mark ends"
            f" their description): {', '.join(result.adopted)}"
        )
    click.echo("next: fleetform compile, then fleetform plan (it shows no changes)")


@cli.command()
@repo_option
@click.argument("host")
@_report_errors
def unlock(repo: Path, host: str) -> None:
    """Break HOST's apply lock (left by an apply that crashed)."""
    from compiler import api

    if api.unlock(repo, host):
        click.echo(f"{host}: lock removed")
    else:
        click.echo(f"{host}: was not locked")


if __name__ == "__main__":
    cli()  # `python -m compiler.cli` (profilers): a normal exit, with teardown
