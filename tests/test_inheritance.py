"""``extends`` chains (compiler/inheritance.py): order, sharing, and bounds on hostile graphs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from compiler import api
from compiler.errors import FleetformError
from compiler.inheritance import MAX_ANCESTORS, MAX_DEPTH
from tests.helpers_repo import make_repo

CONCRETE = "---\nname: d\nbackend: srv\nlocal_path: /m/q\nextends: {parent}\n"


def _templates(names_and_parents: list[tuple[str, list[str]]]) -> str:
    docs = []
    for name, parents in names_and_parents:
        doc = f"name: {name}\nabstract: true\n"
        if parents:
            doc += f"extends: [{', '.join(parents)}]\n"
        docs.append(doc)
    return "---\n".join(docs)


def test_chain_order_is_root_first_each_ancestor_once(tmp_path: Path) -> None:
    text = _templates([("base", []), ("a", ["base"]), ("b", ["base"]), ("c", ["a", "b"])])
    text += "---\nname: d\nbackend: srv\nlocal_path: /m/q\nextends: [c]\nenv: {X: d}\n"
    make_repo(tmp_path, {"deployments.d/d.yaml": text})
    explanation = api.build(tmp_path).fleet.explanations["d"]
    assert explanation.chain == ["base", "a", "b", "c", "d"]


def test_a_chain_at_the_depth_limit_compiles(tmp_path: Path) -> None:
    chain = [(f"t{i}", [f"t{i - 1}"] if i else []) for i in range(MAX_DEPTH)]
    text = _templates(chain) + CONCRETE.format(parent=f"t{MAX_DEPTH - 1}")
    make_repo(tmp_path, {"deployments.d/d.yaml": text})
    assert len(api.build(tmp_path).fleet.explanations["d"].chain) == MAX_DEPTH + 1


def test_a_chain_1000_deep_is_one_error_naming_the_limit(tmp_path: Path) -> None:
    """It was a RecursionError (exit 3)."""
    chain = [(f"t{i}", [f"t{i - 1}"] if i else []) for i in range(1000)]
    text = _templates(chain) + CONCRETE.format(parent="t999")
    make_repo(tmp_path, {"deployments.d/d.yaml": text})
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    line = 4 * 1000 + 3  # the concrete deployment's extends
    assert str(caught.value) == (
        f"deployments.d/d.yaml:{line}:10: extends: more than {MAX_DEPTH} levels of inheritance"
        " (d -> t999 -> … -> t969 -> t968 -> t967 -> …)"
    )


def test_a_diamond_30_levels_deep_is_walked_once_per_name(tmp_path: Path) -> None:
    """Each level extends both templates of the level below: 2^30 paths, 61 chains."""
    levels: list[tuple[str, list[str]]] = [("a0", []), ("b0", [])]
    for i in range(1, 30):
        levels += [(f"a{i}", [f"a{i - 1}", f"b{i - 1}"]), (f"b{i}", [f"b{i - 1}", f"a{i - 1}"])]
    make_repo(
        tmp_path, {"deployments.d/d.yaml": _templates(levels) + CONCRETE.format(parent="a29")}
    )
    started = time.monotonic()
    chain = api.build(tmp_path).fleet.explanations["d"].chain
    assert time.monotonic() - started < 10  # it took minutes; now milliseconds
    assert len(chain) == 60 and chain[0] == "a0" and chain[-2:] == ["a29", "d"]


def test_too_many_ancestors_is_an_error(tmp_path: Path) -> None:
    roots = [(f"r{i}", []) for i in range(MAX_ANCESTORS)]
    groups = [(f"g{j}", [f"r{i}" for i in range(j * 16, (j + 1) * 16)]) for j in range(16)]
    top = [("top", [f"g{j}" for j in range(16)])]
    text = _templates(roots + groups + top) + CONCRETE.format(parent="top")
    make_repo(tmp_path, {"deployments.d/d.yaml": text})
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    assert str(caught.value).endswith(
        f"extends: deployment 'top' inherits from more than {MAX_ANCESTORS} deployments"
    )


def test_a_cycle_is_reported_once_whichever_deployments_reach_it(tmp_path: Path) -> None:
    text = _templates([("a", ["b"]), ("b", ["a"])])
    text += CONCRETE.format(parent="a") + CONCRETE.replace("name: d", "name: e").format(parent="b")
    make_repo(tmp_path, {"deployments.d/d.yaml": text})
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    assert [line.split(": ", 2)[2] for line in str(caught.value).splitlines()] == [
        "cycle a -> b -> a"
    ]


def test_an_unknown_parent_lists_at_most_20_known_names(tmp_path: Path) -> None:
    text = _templates([(f"t{i:02}", []) for i in range(25)]) + CONCRETE.format(parent="nope")
    make_repo(tmp_path, {"deployments.d/d.yaml": text})
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    known = ", ".join(["d", *(f"t{i:02}" for i in range(19))])
    assert str(caught.value).endswith(
        f"extends: unknown deployment 'nope' (known: {known}, … (6 more))"
    )
