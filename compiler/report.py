"""A Plan, or an apply's result, as text for a terminal, markdown for a pull-request
comment, or JSON (``fleetform.plan/v1``). Pure functions of the plan: the same plan
always prints the same bytes."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from compiler.errors import printable
from compiler.plan import Change, HostPlan, Plan, Step

if TYPE_CHECKING:
    from compiler.apply import ApplyResult
    from compiler.diff import FleetDiff

_SIGN = {"fetch": "v", "create": "+", "update": "~", "delete": "-", "start": ">"}
_COLOR = {"fetch": "34", "create": "32", "update": "33", "delete": "31", "start": "36"}


def summary(plan: Plan) -> str:
    counts = plan.counts()
    hosts = len(plan.hosts)
    fetch = f"{counts['fetch']} model(s) to fetch, " if counts["fetch"] else ""
    return (
        f"Plan: {fetch}{counts['create']} to create, {counts['update']} to update,"
        f" {counts['delete']} to delete, {counts['start']} to start"
        f" ({counts['unchanged']} unchanged) on {hosts} host{'s' if hosts != 1 else ''}"
    )


def plan_text(plan: Plan, *, color: bool = False) -> str:
    def paint(code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if color else text

    lines = [summary(plan)]
    for host in plan.hosts:
        lines.append("")
        lines.append(_host_heading(host))
        for step in host.steps:
            sign = paint(_COLOR[step.action], f"{_SIGN[step.action]} {step.action:<6}")
            # Names and reasons may come from a server (a GPUStack cluster's): escaped.
            lines.append(f"  {sign} {printable(step.name)}  ({printable('; '.join(step.reasons))})")
            for change in step.changes:
                lines.append(f"      {_change(change)}")
            lines.extend(f"      {line}" for line in step.diff)  # systemd: the unit diff
        if not host.steps and host.error is None:
            lines.append("  no changes")
        if host.foreign and host.error is None:
            lines.append(printable(f"  foreign, left alone: {_some(host.foreign)}"))
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines) + "\n"


def _host_heading(host: HostPlan) -> str:
    heading = f"{host.host} ({host.target})"
    if host.error is not None:
        return printable(f"{heading}: error: {host.error}")
    extra = []
    if host.unchanged:
        extra.append(f"{len(host.unchanged)} unchanged")
    if host.empties:
        extra.append("would remove every container fleetform runs here: needs --allow-empty")
    if host.secrets_unknown:
        extra.append("secret values not available here: their changes are not detected")
    return heading + (f": {'; '.join(extra)}" if extra else "")


def _change(change: Change) -> str:
    return f"{change.field}: {_value(change.before)} -> {_value(change.after)}"


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value, ensure_ascii=False)


def plan_markdown(plan: Plan) -> str:
    lines = [f"### fleetform plan: {plan.project}", "", f"**{summary(plan)}**", ""]
    for host in plan.hosts:
        lines.append(f"#### `{host.host}` ({host.target})")
        lines.append("")
        if host.error is not None:
            lines.append(f"> :x: {_md(host.error)}")
            lines.append("")
            continue
        if not host.steps:
            lines.append(
                "No changes." + (f" {len(host.unchanged)} unchanged." if host.unchanged else "")
            )
            lines.append("")
            lines.extend(_foreign_md(host))
            continue
        fetches = any(step.action == "fetch" for step in host.steps)
        noun = "container or model" if fetches else "container"
        if all("/" in step.name for step in host.steps):  # a cluster's backend/…, model/…
            noun = "backend or model"
        lines.append(f"| action | {noun} | why |")
        lines.append("|---|---|---|")
        for step in host.steps:
            why = _md("; ".join(step.reasons))
            lines.append(f"| {_SIGN[step.action]} {step.action} | {_code(step.name)} | {why} |")
        lines.append("")
        changed = [step for step in host.steps if step.changes or step.diff]
        for step in changed:
            name = html.escape(printable(step.name))
            lines.append(f"<details><summary><code>{name}</code>: what changes</summary>")
            lines.append("")
            lines.append("```diff")
            for change in step.changes:
                if change.before is not None:
                    lines.append(f"- {change.field}: {_value(change.before)}")
                if change.after is not None:
                    lines.append(f"+ {change.field}: {_value(change.after)}")
            lines.extend(step.diff)
            lines.append("```")
            lines.append("</details>")
            lines.append("")
        if host.unchanged:
            lines.append(f"{len(host.unchanged)} unchanged.")
            lines.append("")
        lines.extend(_foreign_md(host))
    lines.extend(f"> {note}" for note in plan.notes)
    return "\n".join(lines).rstrip("\n") + "\n"


def _foreign_md(host: HostPlan) -> list[str]:
    if not host.foreign:
        return []
    names = [_code(name) for name in host.foreign[:FOREIGN_SHOWN]]
    more = len(host.foreign) - len(names)
    return [f"Foreign, left alone: {', '.join(names)}{f' (+{more} more)' if more else ''}.", ""]


# Foreign objects named in a text or markdown plan (a server may hold hundreds: plan
# JSON lists them all).
FOREIGN_SHOWN = 12


def _some(names: tuple[str, ...]) -> str:
    more = len(names) - FOREIGN_SHOWN
    return ", ".join(names[:FOREIGN_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def _code(name: str) -> str:
    """A name as a markdown code span that nothing in it can end (a server's names are
    untrusted: a backtick would let the rest render as markdown in a PR comment)."""
    return "`" + _md(printable(name)).replace("`", "'") + "`"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def plan_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def apply_text(result: ApplyResult) -> str:
    lines = ["Apply:"]
    for host in result.hosts:
        done = len(host.done)
        if host.status == "failed":
            lines.append(f"  {host.host}: FAILED after {done} step(s): {host.error}")
        elif host.status == "unchanged":
            lines.append(f"  {host.host}: no changes")
        else:
            lines.append(f"  {host.host}: converged ({done} step(s), {host.seconds:.1f} s)")
    failed = sum(1 for h in result.hosts if h.status == "failed")
    lines.append(
        f"{len(result.hosts) - failed} of {len(result.hosts)} hosts converged"
        + (f", {failed} failed" if failed else "")
    )
    return "\n".join(lines) + "\n"


def steps_text(steps: list[Step]) -> list[str]:
    """The identity of each step, for comparing what was planned with what was done."""
    return [f"{s.host} {s.action} {s.name}" for s in steps]


# --- fleetform diff ---------------------------------------------------------------------

_DIFF_SIGN = {"create": "+", "update": "~", "delete": "-"}
# A pull-request comment holds 65,536 characters; the details stop well before.
MARKDOWN_LIMIT = 60_000


def diff_summary(result: FleetDiff) -> str:
    counts = {action: 0 for action in _DIFF_SIGN}
    for host in result.hosts:
        for replica in host.replicas:
            counts[replica.action] += 1
    hosts = sum(1 for host in result.hosts if host.status != "unchanged")
    if not hosts:
        return f"No changes against {result.base}."
    return (
        f"{counts['create']} to create, {counts['update']} to change, {counts['delete']} to"
        f" remove on {hosts} host{'s' if hosts != 1 else ''} (against {result.base})."
    )


def diff_text(result: FleetDiff) -> str:
    lines = []
    if result.base_error is not None:
        lines.append(f"base {result.base} does not compile: {result.base_error}")
    for host in result.hosts:
        if host.status == "unchanged":
            continue
        lines.append(f"host {host.host} ({host.target}): {host.status}")
        for replica in host.replicas:
            lines.append(f"  {_DIFF_SIGN[replica.action]} {replica.action} {replica.name}")
            lines.extend(f"      {_change(change)}" for change in replica.changes)
            lines.extend(f"      {line}" for line in replica.unit_diff)
    lines.append(diff_summary(result))
    return "\n".join(printable(line) for line in lines) + "\n"


def diff_markdown(result: FleetDiff, *, limit: int = MARKDOWN_LIMIT) -> str:
    head = ["### fleetform diff", ""]
    if result.base_error is not None:
        head += [
            f"> :warning: the base `{_md(result.base)}` does not compile: {_md(result.base_error)}",
            "",
        ]
    head += [f"**{_md(diff_summary(result))}**", ""]
    rows = ["| host | change | create | change | remove |", "|---|---|---:|---:|---:|"]
    details: list[str] = []
    for host in result.hosts:
        if host.status == "unchanged":
            continue
        count = {a: sum(1 for r in host.replicas if r.action == a) for a in _DIFF_SIGN}
        rows.append(
            f"| `{_md(host.host)}` ({host.target}) | {host.status} | {count['create']}"
            f" | {count['update']} | {count['delete']} |"
        )
        details.append(f"<details><summary><code>{_md(host.host)}</code></summary>")
        details.append("")
        details.append("```diff")
        for replica in host.replicas:
            details.append(f"{_DIFF_SIGN[replica.action]} {replica.action} {replica.name}")
            for change in replica.changes:
                if change.before is not None:
                    details.append(f"-     {change.field}: {_value(change.before)}")
                if change.after is not None:
                    details.append(f"+     {change.field}: {_value(change.after)}")
            details.extend(f"      {line}" for line in replica.unit_diff)
        details += ["```", "</details>", ""]
    body = head + (rows + [""] if len(rows) > 2 else [])
    text = "\n".join(body)
    shown: list[str] = []
    size = len(text)
    for line in details:
        size += len(line) + 1
        if size > limit:
            shown += [
                "```",
                "</details>",
                "",
                "> The details are cut here: run `fleetform diff`"
                " with `--format json` (a CI job can keep it as an artifact) for all.",
            ]
            break
        shown.append(printable(line))
    return (text + "\n" + "\n".join(shown)).rstrip("\n") + "\n"


def diff_json(result: FleetDiff) -> str:
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"
