"""The library's entry points: one call per command, no click, no printing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.errors import FleetformError, Mark, OutputError
from compiler.hub import hub_source, per_folder
from compiler.load import load_repo
from compiler.model import Repo, Settings, validate_repo
from compiler.output import (
    Changes,
    OutputPlace,
    OutputTree,
    PriorState,
    Writer,
    check_not_interrupted,
    confine,
    diff_output,
    locked,
    read_state,
    recover,
    scan_output,
)
from compiler.remote.connections import Connections
from compiler.render.fleet import render_fleet
from compiler.resolve import Fleet, resolve_fleet
from compiler.targets import driver_for

if TYPE_CHECKING:
    from compiler.apply import Target
    from compiler.diff import FleetDiff
    from compiler.plan import Plan
    from compiler.targets.gpustack.importer import Imported


@dataclass(frozen=True)
class Compiled:
    repo: Repo
    fleet: Fleet
    files: dict[str, bytes]
    place: OutputPlace

    @property
    def output_dir(self) -> Path:
        return self.place.path


def load(root: Path) -> Repo:
    return _load(root)[0]


def _load(root: Path) -> tuple[Repo, OutputPlace]:
    """The validated repository, and where its output folder is (and is set)."""
    raw = load_repo(root)
    repo = validate_repo(raw)
    setting: Mark | None = None
    if raw.settings is not None and "output_dir" in raw.settings.value:
        setting = raw.settings.source.mark(("output_dir",))
    relative = repo.settings.output_dir
    return repo, OutputPlace(root / relative, relative, setting)


def output_dir(root: Path, repo: Repo) -> Path:
    """The output folder, refused unless the path to it is plain folders (no link).

    Settings validation already rejects absolute paths and '..'; without links on the
    way, the folder is inside the repository.
    """
    place = OutputPlace(root / repo.settings.output_dir, repo.settings.output_dir, None)
    confine(root, place)
    return place.path


@contextmanager
def _located(place: OutputPlace) -> Iterator[None]:
    """Every error about ``output/`` located at its setting, as every error has a place."""
    try:
        yield
    except OutputError as error:
        if error.mark is None:
            raise place.error(error.message) from None
        raise


def _read_output(place: OutputPlace) -> tuple[OutputTree, PriorState]:
    """``output/`` scanned and its indexes read (the caller holds the lock)."""
    check_not_interrupted(place)
    tree = scan_output(place)
    return tree, read_state(tree)


def build(root: Path) -> Compiled:
    """Load, validate, resolve and render, entirely in memory."""
    repo, place = _load(root)
    with _located(place):
        confine(root, place)
        with locked(root, place, exclusive=False):
            _, state = _read_output(place)
    fleet = resolve_fleet(repo, state.prior)
    return Compiled(repo, fleet, render_fleet(fleet), place)


def stale_files(root: Path, compiled: Compiled) -> Changes:
    """What ``compile`` would change in ``output/`` (empty: it is current)."""
    place = compiled.place
    with _located(place), locked(root, place, exclusive=False):
        return diff_output(scan_output(place), compiled.files)


def compile_repo(root: Path, *, check: bool = False) -> Changes:
    """Write ``output/`` (or, with ``check``, only report what would change).

    One compile of a repository at a time (a second one waits); the new ``output/``
    replaces the old one in one step, or not at all (see :mod:`compiler.output`).
    """
    repo, place = _load(root)
    with _located(place):
        return _compile(root, repo, place, check)


def _compile(root: Path, repo: Repo, place: OutputPlace, check: bool) -> Changes:
    confine(root, place)
    if check:
        with locked(root, place, exclusive=False):
            tree, state = _read_output(place)
            files = render_fleet(resolve_fleet(repo, state.prior))
            return diff_output(tree, files)
    with locked(root, place, exclusive=True) as parent_fd:
        assert parent_fd is not None
        recover(place)
        tree = scan_output(place)
        state = read_state(tree)
        fleet = resolve_fleet(repo, state.prior)
        writer = Writer(tree, state.managed, parent_fd)  # writes while the rest is rendered
        try:
            render_fleet(fleet, writer.add)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()


def explain(root: Path, deployment: str) -> str:
    from compiler.explain import explain_deployment

    compiled = build(root)
    if deployment not in compiled.fleet.explanations:
        known = ", ".join(sorted(compiled.fleet.explanations)) or "none"
        raise FleetformError(f"no deployment '{deployment}' (deployments: {known})")
    return explain_deployment(compiled.fleet, deployment)


def diff(root: Path, base: str) -> FleetDiff:
    """What the repository now does to each host, against itself at Git revision ``base``
    (offline: no host is contacted, the working tree is not touched)."""
    from compiler.diff import FleetDiff, base_tree, diff_fleets, temporary_folder

    now = build(root)
    with temporary_folder() as folder:
        tree = base_tree(root, base, Path(folder))
        try:
            before: Compiled | None = build(tree)
            error = None
        except FleetformError as failure:
            before = None
            lines = str(failure).splitlines()
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            error = f"{lines[0] if lines else failure}{more}"
    return FleetDiff(base, error, diff_fleets(before, now))


# --- live hosts: plan, apply, unlock -------------------------------------------------


@dataclass(frozen=True)
class Planned:
    plan: Plan
    targets: dict[str, Target]
    settings: Settings


def targets_of(compiled: Compiled, hosts: Sequence[str] = ()) -> dict[str, Target]:
    """Each selected host's desired containers and engine address (all hosts if none)."""
    from compiler.apply import Target, secret_values
    from compiler.plan import DesiredHost
    from compiler.render.container import container_spec

    fleet = compiled.fleet
    unknown = sorted(set(hosts) - set(fleet.hosts))
    if unknown:
        raise FleetformError(
            f"no host {', '.join(repr(h) for h in unknown)} (hosts: {', '.join(fleet.hosts)})"
        )
    targets: dict[str, Target] = {}
    for name, host in fleet.hosts.items():
        if hosts and name not in hosts:
            continue
        specs = tuple(container_spec(w, fleet.settings, host.address) for w in fleet.on_host(name))
        names = {secret for spec in specs for secret in spec.secrets.values()}
        values, missing = secret_values(names)
        driver = driver_for(host.target)
        compared = [
            driver.compared_file(w, fleet.settings, compiled.files) for w in fleet.on_host(name)
        ]
        # The file each replica's plan compares, by its name on the host (systemd units).
        units = dict(found for found in compared if found is not None) or None
        hashes = (
            None
            if missing
            else {s.name: driver.secrets_hash(s, values) for s in specs if s.secrets}
        )
        # One fetch per host for every replica that needs the same model folder.
        models = per_folder(w.hub_model for w in fleet.on_host(name) if w.hub_model)
        desired = DesiredHost(
            name,
            host.target,
            host.address,
            specs,
            hashes,
            units,
            host.unit_dir,
            models if driver.fetches_models else (),
            hub_source(fleet.settings, models) if models and driver.fetches_models else "",
        )
        if driver.schedules_itself:  # a cluster: its documents are what the plan compares
            prefix = f"{name}/"
            desired = replace(
                desired,
                documents={
                    path[len(prefix) :]: text.decode()
                    for path, text in compiled.files.items()
                    if path.startswith(prefix) and driver.is_artifact_path(path[len(prefix) :])
                },
            )
        base_url = host.url or host.docker_host or "unix:///var/run/docker.sock"
        targets[name] = Target(desired, base_url, host.ssh, host.cluster, host.api_key_env)
    return targets


def observe(
    targets: dict[str, Target],
    settings: Settings,
    parallel: int = 8,
    early: Connections | None = None,
) -> dict[str, Any]:
    """Observe every target host at once (threads: the time is the engines').

    ``early``: connections opened while the repository was compiled."""
    from concurrent.futures import ThreadPoolExecutor

    from compiler.observed import ObservedHost

    def one(target: Target) -> ObservedHost:
        return driver_for(target.desired.target).observe(target, settings, early)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        found = list(pool.map(one, targets.values()))
    return {observed.host: observed for observed in found}


def plan_repo(root: Path, hosts: Sequence[str] = (), early: Connections | None = None) -> Planned:
    """Desired (from the repository) against what the hosts run."""
    early = early or Connections(root, hosts)
    try:
        return _plan_repo(root, hosts, early)
    finally:
        early.close()


def _plan_repo(root: Path, hosts: Sequence[str], early: Connections) -> Planned:
    from compiler.plan import make_plan

    compiled = build(root)
    stale = stale_files(root, compiled)
    if not stale.empty:
        raise FleetformError(
            f"output/ is stale ({len(stale.lines())} file(s) differ): run `fleetform compile`"
            " and commit, so that what is applied is what the pull request shows"
        )
    settings = compiled.repo.settings
    targets = targets_of(compiled, hosts)
    observed = observe(targets, settings, early=early)
    plan = make_plan(
        settings.project, [t.desired for t in targets.values()], observed, settings.label_prefix
    )
    fetched = {s.model_key for s in plan.steps if s.action == "fetch"}
    if fetched:  # what the hub says they weigh (no token: see compiler/remote/hub.py)
        from compiler.plan import with_model_sizes
        from compiler.remote.hub import model_sizes

        wanted = {m.key: m for t in targets.values() for m in t.desired.models if m.key in fetched}
        plan = with_model_sizes(plan, model_sizes(list(wanted.values()), settings))
    return Planned(plan, targets, settings)


def load_plan(path: Path) -> Plan:
    import json

    from compiler.plan import Plan

    try:
        return Plan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FleetformError(f"{path}: not a readable fleetform plan ({error})") from None


def check_plan_file(saved: Plan, planned: Planned) -> None:
    """Refuse a saved plan once the repository or any of its hosts changed."""
    if saved.project != planned.plan.project:
        raise FleetformError(f"the plan is for project '{saved.project}'")
    if saved.fingerprint() != planned.plan.fingerprint():
        now = {h.host: h for h in planned.plan.hosts}
        changed = [
            h.host
            for h in saved.hosts
            if h.host not in now
            or (h.observed, h.desired) != (now[h.host].observed, now[h.host].desired)
        ]
        raise FleetformError(
            "stale plan: since it was made, "
            + (f"host(s) {', '.join(changed)} changed" if changed else "the fleet changed")
            + "; run `fleetform plan` again"
        )


def import_gpustack(
    root: Path, url: str, cluster: str, host: str | None = None, key_env: str | None = None
) -> Imported:
    """A GPUStack cluster's custom backends and models as repository files, adopted."""
    from compiler.targets.gpustack.importer import import_cluster

    return import_cluster(root, url, cluster, host, key_env)


def unlock(root: Path, host: str) -> bool:
    compiled = build(root)
    target = targets_of(compiled, [host])[host]
    return driver_for(target.desired.target).unlock(target, compiled.repo.settings.project)
