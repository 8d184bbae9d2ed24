"""Record what a real engine reports for the containers of tests/plan_specs.py, into
tests/fixtures/inspect/<container>.json, for the pure plan tests (tests/test_plan.py).

Run as root on a machine with the engine harness's tools (see testing/engines.py):

    python3 tests/record_inspect.py

It starts a throwaway dockerd, makes each container the way it happens in real life —
fleetform's own executor for what fleetform creates, the SDK by hand for drift and for
the foreign container — and writes, per container, the engine's ``docker ps`` summary
and ``docker inspect``, the image's own env, and the engine version. Re-record only
on purpose (a new engine version): the tests pin plans made from these files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docker.types import DeviceRequest  # noqa: E402
from docker.types import Mount as SdkMount  # noqa: E402

from compiler.apply import Options, Secrets  # noqa: E402
from compiler.plan import Step, secret_hash  # noqa: E402
from compiler.remote.engine import Engine as EngineClient  # noqa: E402
from compiler.render.container import ContainerSpec  # noqa: E402
from compiler.targets.compose.apply import DockerExecutor  # noqa: E402
from testing.engines import TEST_IMAGE, EngineFactory, cleanup_root, make_root  # noqa: E402
from tests import plan_specs as specs  # noqa: E402

OUT = Path(__file__).resolve().parent / "fixtures" / "inspect"


def create(executor: DockerExecutor, spec: ContainerSpec, secrets: Secrets) -> str:
    step = Step("h1", "compose", "create", spec.name, spec.deployment, spec.replica, ("",))
    executor.run(step, spec, secrets)
    return str(executor.engine.get(f"/containers/{spec.name}/json")["Id"])


def recreate_with_env(api: Any, name: str, env: dict[str, str]) -> None:
    """By hand, as a person would: same name, labels and settings, other env."""
    details = api.inspect_container(name)
    config, host = details["Config"], details["HostConfig"]
    api.remove_container(details["Id"], force=True)
    host_config = api.create_host_config(
        network_mode=host["NetworkMode"],
        shm_size=host["ShmSize"],
        restart_policy=host["RestartPolicy"],
        mounts=[
            SdkMount(m["Target"], m["Source"], type="bind", read_only=m["ReadOnly"])
            for m in host["Mounts"] or []
        ],
        device_requests=[
            DeviceRequest(
                driver=r["Driver"], device_ids=r["DeviceIDs"], capabilities=r["Capabilities"]
            )
            for r in host["DeviceRequests"] or []
        ]
        or None,
    )
    created = api.create_container(
        config["Image"],
        command=config["Cmd"],
        entrypoint=config["Entrypoint"],
        environment=[f"{k}={v}" for k, v in env.items()],
        labels=config["Labels"],
        name=name,
        host_config=host_config,
    )
    api.start(created["Id"])


def main() -> None:
    root = make_root()
    factory = EngineFactory(root)
    try:
        engine = factory("rec")
        client = engine.client()
        api = client.api
        version = api.version()
        recorded_with = (
            f"Docker Engine {version['Version']} (API {version['ApiVersion']},"
            f" {version.get('Os', '')}/{version.get('Arch', '')}, Debian's docker.io),"
            " by tests/record_inspect.py"
        )
        base = api.create_container(TEST_IMAGE, command=["true"])
        api.commit(
            base["Id"],
            repository=specs.IMAGE.split(":")[0],
            tag=specs.IMAGE.split(":")[1],
            changes=[specs.IMAGE_ENV_CHANGE],
        )
        api.remove_container(base["Id"])
        options = Options(stop_timeout=1, label_prefix=specs.PREFIX)
        executor = DockerExecutor(EngineClient(engine.base_url), options, print)
        none = Secrets({}, "")

        create(executor, specs.WEB0, none)
        create(executor, specs.WEB1, none)
        api.stop(specs.WEB1.name, timeout=1)
        create(executor, specs.API0, none)
        recreate_with_env(api, specs.API0.name, {"A": "by-hand"})
        create(executor, specs.OLD0, none)
        previous = create(executor, specs.PREVIOUS, none)
        api.stop(previous, timeout=1)
        token = {"HF_TOKEN": specs.SECRET_VALUE}
        create(executor, specs.TOK0, Secrets(token, secret_hash(specs.TOK0, token)))
        squatter = api.create_container(
            TEST_IMAGE,
            entrypoint=["busybox"],
            command=list(specs.SLEEP),
            name=specs.SQUATTER,
            host_config=api.create_host_config(network_mode="host"),
        )
        api.start(squatter["Id"])

        OUT.mkdir(parents=True, exist_ok=True)
        for summary in api.containers(all=True):
            name = summary["Names"][0].lstrip("/")
            details = api.inspect_container(summary["Id"])
            image = api.inspect_image(details["Config"]["Image"])
            document = {
                "recorded_with": recorded_with,
                "summary": summary,
                "inspect": details,
                "image_env": image["Config"].get("Env"),
            }
            text = json.dumps(document, indent=1, sort_keys=True) + "\n"
            (OUT / f"{name}.json").write_text(text, encoding="utf-8")
            print(f"recorded {name}")
        client.close()
        executor.engine.close()
    finally:
        factory.close()
        cleanup_root(root)


if __name__ == "__main__":
    main()
