"""The floor of a compile: what no compiler of the same inputs and outputs can beat.

``python bench/probes/floor.py REPO BYTES OUT`` parses every YAML input of ``REPO`` (the
files ``fleetform compile`` reads: ``fleetform.yaml``, ``backends.d``, ``deployments.d``,
``hosts.d``) with PyYAML's C loader, then writes the output files whose bytes ``BYTES``
holds (a pickle of ``{relative path: bytes}``, made by :func:`capture` from a compile's
``output/``) under ``OUT``, a folder that does not exist yet. A process of its own, as the
compile is: interpreter start-up, one import, one read of the bytes, the parse, the
writes. The compile suite (``bench/suites/compile.py``) runs it in turns with ``fleetform
compile``, in the same run.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

INPUTS = ("fleetform.yaml", "backends.d", "deployments.d", "hosts.d")


def inputs(repo: Path) -> list[Path]:
    found: list[Path] = []
    for name in INPUTS:
        path = repo / name
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
    return found


def capture(output: Path, target: Path) -> int:
    """Every file under ``output`` as ``{relative path: bytes}``, pickled to ``target``;
    the number of bytes."""
    files = {
        path.relative_to(output).as_posix(): path.read_bytes()
        for path in sorted(output.rglob("*"))
        if path.is_file()
    }
    target.write_bytes(pickle.dumps(files, protocol=pickle.HIGHEST_PROTOCOL))
    return sum(len(data) for data in files.values())


def main(argv: list[str]) -> int:
    import yaml

    repo, blob, out = (Path(a) for a in argv)
    for path in inputs(repo):
        with path.open("rb") as handle:
            list(yaml.load_all(handle, Loader=yaml.CSafeLoader))
    files: dict[str, bytes] = pickle.loads(blob.read_bytes())
    made: set[Path] = set()
    for relative, data in files.items():
        path = out / relative
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
