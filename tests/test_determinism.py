"""Same input, same output; placement that does not move existing deployments."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import yaml

from compiler import api

ROOT = Path(__file__).resolve().parents[1]


def _copy_example(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("backends.d", "deployments.d", "hosts.d"):
        shutil.copytree(ROOT / name, repo / name)
    shutil.copy(ROOT / "fleetform.yaml", repo / "fleetform.yaml")
    return repo


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_compiling_twice_gives_identical_bytes(tmp_path: Path) -> None:
    repo = _copy_example(tmp_path)
    first = api.build(repo).files
    api.compile_repo(repo)
    second = api.build(repo).files
    assert first == second
    assert api.compile_repo(repo).empty


def test_shuffled_files_and_documents_give_identical_bytes(tmp_path: Path) -> None:
    repo = _copy_example(tmp_path)
    expected = api.build(repo).files
    rng = random.Random(7)
    for trial in range(3):
        shuffled = tmp_path / f"shuffled-{trial}"
        shuffled.mkdir()
        shutil.copy(repo / "fleetform.yaml", shuffled / "fleetform.yaml")
        for folder in ("backends.d", "deployments.d", "hosts.d"):
            objects = []
            for path in sorted((repo / folder).glob("*.yaml")):
                for document in yaml.safe_load_all(path.read_text()):
                    objects.extend(document if isinstance(document, list) else [document])
            rng.shuffle(objects)
            (shuffled / folder).mkdir()
            # Re-split the objects over differently named files, in a different order,
            # mixing the three file shapes (one object, a list, --- documents).
            for index, chunk in enumerate(_chunks(objects, rng)):
                name = f"{rng.randrange(10**6):06d}-{index}.{rng.choice(['yaml', 'yml'])}"
                shape = rng.choice(["list", "docs"]) if len(chunk) > 1 else "one"
                if shape == "list":
                    text = yaml.safe_dump(chunk, sort_keys=bool(rng.getrandbits(1)))
                elif shape == "docs":
                    text = yaml.safe_dump_all(chunk, sort_keys=bool(rng.getrandbits(1)))
                else:
                    text = yaml.safe_dump(chunk[0], sort_keys=bool(rng.getrandbits(1)))
                (shuffled / folder / name).write_text(text)
        assert api.build(shuffled).files == expected


def _chunks(items: list[object], rng: random.Random) -> list[list[object]]:
    out: list[list[object]] = []
    while items:
        size = rng.randint(1, 3)
        out.append(items[:size])
        items = items[size:]
    return out


def _placements(repo: Path) -> dict[str, tuple[str, list[int], int]]:
    placements = {}
    for index in (repo / "output").glob("*/index.json"):
        document = json.loads(index.read_text())
        for entry in document["workloads"]:
            placements[entry["name"]] = (document["host"], entry["gpus"], entry["port"])
    return placements


def test_adding_an_unrelated_deployment_moves_nothing(tmp_path: Path) -> None:
    repo = _copy_example(tmp_path)
    api.compile_repo(repo)
    before = _placements(repo)
    # Sorts before every existing name, so a naive first-fit would hand it their GPUs.
    (repo / "deployments.d" / "aaa.yaml").write_text(
        "name: aaa-newcomer\nbackend: vllm-custom\nhuggingface_repo_id: org/new\n"
        "worker_selector: {gpu: h100}\nreplicas: 1\n"
    )
    api.compile_repo(repo)
    after = _placements(repo)
    assert "aaa-newcomer-0" in after
    for name, placement in before.items():
        assert after[name] == placement, name
    newcomer_host, newcomer_gpus, newcomer_port = after["aaa-newcomer-0"]
    taken = {(h, g) for n, (h, gs, _) in before.items() for g in gs}
    assert all((newcomer_host, g) not in taken for g in newcomer_gpus)
    assert newcomer_port not in {p for n, (h, _, p) in before.items() if h == newcomer_host}


def test_removing_a_deployment_moves_nothing_else(tmp_path: Path) -> None:
    repo = _copy_example(tmp_path)
    api.compile_repo(repo)
    before = _placements(repo)
    chat = repo / "deployments.d" / "chat.yaml"
    chat.write_text(chat.read_text().split("---\nname: llama-70b")[0])
    api.compile_repo(repo)
    after = _placements(repo)
    assert "llama-70b-0" not in after
    for name, placement in after.items():
        assert before[name] == placement, name


def test_placement_without_history_is_deterministic(tmp_path: Path) -> None:
    repo = _copy_example(tmp_path)
    first = api.build(repo).files
    shutil.rmtree(repo / "output", ignore_errors=True)
    assert api.build(repo).files == first
