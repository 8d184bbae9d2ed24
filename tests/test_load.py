"""Stage 1 on hostile input: every file ends in documents or in one LoadError line at
its ``file:line:col`` and key path, within bounded time and memory (compiler/load.py).

Resource checks use generous bounds (seconds, tracemalloc peaks) that a busy machine
still meets by far; the limits themselves are tested small where the real ones would
make a slow test, by passing a smaller budget.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from compiler import load
from compiler.errors import ErrorList, FleetformError, LoadError

F = "deployments.d/chat.yaml"


def parse(text: str) -> list[dict[str, Any]]:
    return [value for value, _ in load.parse_objects(text, F)]


def error_of(text: str) -> str:
    with pytest.raises(LoadError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- explicit tags on text that is not of that type -----------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('!!int "two"', "'two' is not a valid !!int"),
        ('!!int ""', "'' is not a valid !!int"),
        ("!!int 0x", "'0x' is not a valid !!int"),
        ("!!int 0b", "'0b' is not a valid !!int"),
        ("!!int 0o", "'0o' is not a valid !!int"),
        ('!!int "-"', "'-' is not a valid !!int"),
        ('!!int "1:x"', "'1:x' is not a valid !!int"),
        ("!!int 1.5", "'1.5' is not a valid !!int"),
        ('!!float "abc"', "'abc' is not a valid !!float"),
        ('!!float ""', "'' is not a valid !!float"),
        ('!!float "-"', "'-' is not a valid !!float"),
        ('!!float "1:x"', "'1:x' is not a valid !!float"),
        ('!!bool "maybe"', "'maybe' is not a valid !!bool"),
        ('!!bool ""', "'' is not a valid !!bool"),
        ('!!null "x"', "'x' is not a valid !!null"),
        ('!!int "' + "x" * 100 + '"', "'" + "x" * 40 + "...' is not a valid !!int"),
        ('!!int "a\\nb"', "'a\\nb' is not a valid !!int"),
    ],
)
def test_a_tag_on_text_of_another_type_is_an_error(value: str, message: str) -> None:
    assert error_of(f"name: chat\nreplicas: {value}\n") == f"{F}:2:11: replicas: {message}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('!!int "12"', 12),
        ("!!int 0x1f", 31),
        ("!!int 1_000", 1000),
        ("!!int 1:30", 90),
        ('!!float "1.5"', 1.5),
        ("!!float .inf", float("inf")),
        ('!!bool "yes"', True),
        ('!!null ""', None),
        ("!!null ~", None),
        ('!!timestamp "not a date"', "not a date"),  # timestamps are read as text
        ('!!str "1"', "1"),
        ("=", "="),  # yaml's !!value: plain text
    ],
)
def test_a_tag_on_its_own_type_reads(value: str, expected: object) -> None:
    assert parse(f"x: {value}\n") == [{"x": expected}]


@pytest.mark.parametrize(
    "value",
    [
        "1" * 4301,
        "-" + "1" * 4301,
        "1_" * 4300 + "1",
        "0x" + "f" * 3600,  # 4,300 hex digits read, but more than 4,300 decimal ones
        "!!int 0b" + "1" * 15_000,
        '!!int "' + ":".join(["59"] * 2500) + '"',  # sexagesimal: 60**2500
    ],
)
def test_an_integer_too_long_to_print_is_an_error(value: str) -> None:
    assert error_of(f"replicas: {value}\n") == (
        f"{F}:1:11: replicas: integer has more than 4300 digits (quote it to make it text)"
    )


def test_long_integers_and_huge_floats_that_fit_read() -> None:
    assert parse(f"a: {'9' * 4300}\nb: 1.0e+400\nc: -.inf\n") == [
        {"a": int("9" * 4300), "b": float("inf"), "c": float("-inf")}
    ]


# --- control characters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("escape", "name"),
    [
        ("\\0", "U+0000"),
        ("\\x01", "U+0001"),
        ("\\e", "U+001B"),
        ("\\x7f", "U+007F"),
        ("\\N", "U+0085"),
        ("\\x9b", "U+009B"),
        ("\\u009f", "U+009F"),
    ],
)
def test_control_characters_in_values_are_refused(escape: str, name: str) -> None:
    text = f'name: chat\nenv:\n  A: ok\n  B: "x{escape}y"\n'
    assert error_of(text) == f"{F}:4:6: env.B: control character {name} is not allowed"


def test_tab_newline_and_carriage_return_stay_allowed_in_values() -> None:
    assert parse('a: "x\\ty\\r\\nz"\nb: |\n  l1\n  l2\n') == [{"a": "x\ty\r\nz", "b": "l1\nl2\n"}]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ('"a\\0b"', "control character U+0000 is not allowed in a key ('a\\x00b')"),
        ('"a\\eb"', "control character U+001B is not allowed in a key ('a\\x1bb')"),
        ('"a\\tb"', "control character U+0009 is not allowed in a key ('a\\tb')"),
        ('"a\\nb"', "control character U+000A is not allowed in a key ('a\\nb')"),
    ],
)
def test_control_characters_and_line_breaks_in_keys_are_refused(key: str, message: str) -> None:
    assert error_of(f"env:\n  {key}: x\n") == f"{F}:2:3: env: {message}"


def test_a_multi_line_complex_key_is_refused() -> None:
    assert error_of('? "a\n\n  b"\n: 1\n') == (
        f"{F}:1:3: control character U+000A is not allowed in a key ('a\\nb')"
    )


@pytest.mark.parametrize(
    ("raw", "where", "name"),
    [
        ("name: chat\nport: 80\x07\n", "2:9", "control character U+0007"),
        ("name: chat\nenv: {é: ok}\ncomment: é\x00\n", "3:11", "control character U+0000"),
        ("name: chat\n# \x1b[2J\n", "2:3", "control character U+001B"),
        ("x: \x9b\n", "1:4", "control character U+009B"),
        ("x: \U0001f600\x7f\n", "1:5", "control character U+007F"),
        ("a: 1\rb: 2\r\nc: \x01\n", "3:4", "control character U+0001"),  # CR, CRLF
    ],
)
def test_a_character_yaml_refuses_is_one_line_at_its_position(
    raw: str, where: str, name: str
) -> None:
    assert error_of(raw) == f"{F}:{where}: YAML syntax error: {name} is not allowed"


def test_a_control_character_in_a_file_is_reported_through_load_repo(tmp_path: Path) -> None:
    (tmp_path / "deployments.d").mkdir()
    (tmp_path / F).write_bytes(b"name: chat\nbackend: v\x00llm\n")
    with pytest.raises(ErrorList) as caught:
        load.load_repo(tmp_path)
    assert str(caught.value) == (
        f"{F}:2:11: YAML syntax error: control character U+0000 is not allowed"
    )


# --- keys, documents, encodings --------------------------------------------------------


def test_keys_are_their_text_as_written() -> None:
    text = "1: a\ntrue: b\n~: c\n0.10: d\n01: e\n'2': f\n"
    assert parse(text) == [{"1": "a", "true": "b", "~": "c", "0.10": "d", "01": "e", "2": "f"}]


def test_tags_on_keys() -> None:
    assert parse("!!str 5: a\n") == [{"5": "a"}]
    assert error_of("!!python/name:os.system x: 1\n") == (
        f"{F}:1:1: unsupported YAML tag '!!python/name:os.system': fleetform reads plain YAML only"
    )
    assert error_of("a:\n  [x]: 1\n") == f"{F}:2:3: a: mapping keys must be plain scalars"


@pytest.mark.parametrize(
    "text",
    [
        "name: a\n---\n",
        "name: a\n---\n# only a comment\n",
        "---\n---\nname: a\n---\n",
        "name: a\n--- null\n",
        "name: a\n--- ~\n...\n",
        "# nothing but comments\n---\nname: a\n",
    ],
)
def test_empty_and_null_documents_hold_nothing(text: str) -> None:
    assert parse(text) == [{"name": "a"}]


def test_a_comment_only_file_holds_nothing() -> None:
    assert parse("# nothing here\n") == []
    assert parse("") == []


def test_a_null_list_item_is_still_an_error() -> None:
    assert error_of("- name: a\n-\n") == f"{F}:2:2: expected a mapping, got null"


def test_bom_and_crlf_keep_positions(tmp_path: Path) -> None:
    (tmp_path / "deployments.d").mkdir()
    (tmp_path / F).write_bytes(b"\xef\xbb\xbfname: chat\r\nport: !!int x\r\n")
    with pytest.raises(ErrorList) as caught:
        load.load_repo(tmp_path)
    assert str(caught.value) == f"{F}:2:7: port: 'x' is not a valid !!int"
    (tmp_path / F).write_bytes(b"\xef\xbb\xbfname: chat\r\nport: 1\r\n")
    [document] = load.load_repo(tmp_path).documents
    assert document.value == {"name": "chat", "port": 1}
    assert str(document.source.mark(("port",))) == f"{F}:2:7"


# --- nesting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: a\nlabels: " + "[" * 100_000 + "\n", "2:9: labels"),
        ("name: a\nlabels: " + "[" * 100_000 + "]" * 100_000 + "\n", "2:9: labels"),
        ("name: a\nlabels: " + "{a: " * 100_000 + "\n", "2:9: labels"),
        ("name: a\nlabels:\n" + "- " * 1_000_000 + "x\n", "3:1: labels"),
        ("- " * 1_000_000 + "x\n", "1:5: [0]"),
        ("- name: a\n- env: " + "[" * 300 + "]" * 300 + "\n", "2:8: env"),
        ("name: a\nx:\n" + "".join(" " * i + "- a:\n" for i in range(0, 400, 2)), "3:1: x"),
    ],
)
def test_deep_nesting_is_a_clean_error_quickly(text: str, where: str) -> None:
    # libyaml's composer recursed in C and crashed the process (SIGSEGV) past ~30,000
    # levels; its scanner is quadratic in flow depth (40,000 levels: 3 s).
    start = time.perf_counter()
    assert error_of(text) == f"{F}:{where}: YAML nesting is deeper than 100 levels"
    assert time.perf_counter() - start < 5


def test_a_deep_value_under_a_key_that_cannot_be_shown_names_no_key() -> None:
    assert error_of('"a\\eb": ' + "[" * 200_000 + "\n") == (
        f"{F}:1:9: YAML nesting is deeper than 100 levels"
    )


def test_messages_quote_long_text_shortly() -> None:
    assert error_of('"' + "y" * 100 + '"\n') == (
        f"{F}:1:1: expected a mapping, got str '{'y' * 40}...'"
    )


def test_nesting_at_the_limit_reads() -> None:
    [value] = parse("x: " + "[" * 100 + "]" * 100 + "\n")
    inner, depth = value["x"], 1
    while inner:
        inner, depth = inner[0], depth + 1
    assert depth == 100
    assert error_of("x: " + "[" * 101 + "]" * 101 + "\n") == (
        f"{F}:1:4: x: YAML nesting is deeper than 100 levels"
    )


def test_aliases_cannot_nest_deeper_than_the_text() -> None:
    inner = "[" * 60 + "]" * 60
    text = f"a: &a {inner}\nb: " + "[" * 50 + "*a" + "]" * 50 + "\n"
    assert error_of(text) == f"{F}:2:4: b: YAML nesting is deeper than 100 levels"


# --- sizes and counts ------------------------------------------------------------------


def test_too_many_nodes_in_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "MAX_NODES", 1000)
    parse("x: [" + "1, " * 997 + "]\n")
    assert error_of("x: [" + "1, " * 998 + "]\n") == f"{F}:1:4: YAML file has more than 1000 nodes"


def test_too_many_nodes_in_the_repository() -> None:
    budget = load._Budget(nodes=5000)
    for _ in range(4):
        list(load.parse_objects("x: [" + "1, " * 1000 + "]\n", F, budget))
    with pytest.raises(LoadError) as caught:
        list(load.parse_objects("x: [" + "1, " * 1000 + "]\n", F, budget))
    assert str(caught.value) == (
        f"{F}:1:4: the repository's YAML has more than 2000000 nodes"
        " (with the nodes aliases repeat)"
    )


def test_a_file_at_the_node_limit_fails_within_bounds() -> None:
    text = "x: [" + "1," * (load.MAX_NODES + 10) + "]\n"
    tracemalloc.start()
    start = time.perf_counter()
    try:
        assert error_of(text) == f"{F}:1:4: YAML file has more than 500000 nodes"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 60  # ~2 s; tracemalloc slows it several times
    assert peak < 400 * 2**20


def test_a_scalar_longer_than_an_argument_can_be() -> None:
    fits = "a" * load.MAX_SCALAR_BYTES
    assert parse(f"x: {fits}\n") == [{"x": fits}]
    assert error_of(f"x: {fits}é\n") == (
        f"{F}:1:4: x: text is longer than 131072 bytes"
        " (the most a command-line argument or an environment variable can hold)"
    )
    # Escapes that grow in UTF-8 ("\L" is 2 characters, 3 bytes) are measured as text.
    assert error_of('x: "' + "\\L" * 50_000 + '"\n').startswith(f"{F}:1:4: x: text is longer")
    assert error_of(f"? {fits}b\n: 1\n").startswith(f"{F}:1:3: text is longer")


def test_a_file_over_the_size_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    (tmp_path / "deployments.d").mkdir()
    with open(tmp_path / F, "wb") as file:
        file.write(b"name: chat\n# " + b"x" * (load.MAX_FILE_BYTES - 14) + b"\n")
    assert (tmp_path / F).stat().st_size == load.MAX_FILE_BYTES
    [document] = load.load_repo(tmp_path).documents
    with open(tmp_path / F, "ab") as file:
        file.write(b"\n")
    tracemalloc.start()
    try:
        with pytest.raises(ErrorList) as caught:
            load.load_repo(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == f"{F}:1:1: file is larger than 16777216 bytes"
    assert peak < 3 * load.MAX_FILE_BYTES


def test_too_many_files(tmp_path: Path) -> None:
    folder = tmp_path / "deployments.d"
    (folder / "team").mkdir(parents=True)
    for i in range(3):
        (folder / "team" / f"{i}.yaml").write_text(f"name: d{i}\n")
    paths, problems = load._walk(folder, tmp_path, load._Budget(files=3))
    assert len(paths) == 3 and problems == []
    paths, problems = load._walk(folder, tmp_path, load._Budget(files=2))
    assert [str(problem) for problem in problems] == [
        "deployments.d/team:1:1: more than 100000 YAML files"
    ]


# --- aliases ---------------------------------------------------------------------------


def _alias_bomb(items: int, anchor: int) -> str:
    anchored = ", ".join(["x"] * anchor)
    return "- name: a\n  anchor: &a [" + anchored + "]\n" + "".join(
        f"- name: d{i}\n  labels: *a\n" for i in range(items)
    )


def test_the_alias_budget_is_shared_by_every_object_of_a_file() -> None:
    # One anchor of 9,999 nodes aliased by 3,000 documents: 94 s and 2.4 GB when every
    # object had a budget of its own.
    tracemalloc.start()
    start = time.perf_counter()
    try:
        message = error_of(_alias_bomb(3000, 9_999))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (
        f"{F}:2:11: labels: aliases expand to more than 100000 nodes (a 'billion laughs' file?)"
    )
    assert time.perf_counter() - start < 30  # ~1 s without tracemalloc
    assert peak < 200 * 2**20


def test_aliases_within_the_budget_read() -> None:
    objects = parse(_alias_bomb(9, 9_999))
    assert len(objects) == 10 and objects[5]["labels"] == ["x"] * 9_999


def test_aliased_text_is_counted() -> None:
    big = "y" * 100_000
    text = f"a: &a {big}\nb: [" + ", ".join(["*a"] * 200) + "]\n"
    assert error_of(text) == f"{F}:1:4: b: aliases expand to more than 16777216 characters"


def test_the_repository_alias_budget() -> None:
    text = "a: &a [" + ", ".join(["x"] * 500) + "]\nb: [*a, *a, *a, *a]\n"
    # 502 nodes composed, 4 × 501 repeated; the second file composes, then runs out.
    budget = load._Budget(nodes=2 * 502 + 4 * 501 + 100)
    list(load.parse_objects(text, F, budget))
    with pytest.raises(LoadError) as caught:
        list(load.parse_objects(text, F, budget))
    assert str(caught.value) == (
        f"{F}:1:287: b: the repository's YAML has more than 2000000 nodes"
        " (with the nodes aliases repeat)"
    )


def test_recursive_alias_still_reported() -> None:
    assert error_of("name: a\nlabels: &l {self: *l}\n") == f"{F}:2:9: labels.self: recursive alias"


# --- files that are not plain files ------------------------------------------------------


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for folder in ("backends.d", "deployments.d", "hosts.d"):
        (repo / folder).mkdir(parents=True)
    (repo / F).write_text("name: chat\n")
    return repo


def _errors(repo: Path) -> list[str]:
    with pytest.raises(ErrorList) as caught:
        load.load_repo(repo)
    return str(caught.value).splitlines()


LINK = (
    "is a symbolic link; fleetform follows no links (every file it reads is inside the repository)"
)


def test_a_symlinked_yaml_file_is_refused_not_read(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    outside = tmp_path / "secret.yaml"
    outside.write_text("name: stolen\n")
    (repo / "deployments.d" / "link.yaml").symlink_to(outside)
    (repo / "deployments.d" / "inside.yaml").symlink_to(repo / F)
    assert _errors(repo) == [
        f"deployments.d/inside.yaml:1:1: {LINK}",
        f"deployments.d/link.yaml:1:1: {LINK}",
    ]


def test_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.yaml").write_text("name: x\n")
    (repo / "backends.d" / "team").symlink_to(tmp_path / "elsewhere")
    (repo / "hosts.d").rmdir()
    (repo / "hosts.d").symlink_to(tmp_path / "elsewhere")
    assert _errors(repo) == [f"backends.d/team:1:1: {LINK}", f"hosts.d:1:1: {LINK}"]


def test_a_symlinked_settings_file_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (tmp_path / "settings.yaml").write_text("project: x\n")
    (repo / "fleetform.yaml").symlink_to(tmp_path / "settings.yaml")
    assert _errors(repo) == [f"fleetform.yaml:1:1: {LINK}"]


def test_skipped_names_may_be_links(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "deployments.d" / ".cache").symlink_to(tmp_path)
    (repo / "deployments.d" / "_old.yaml").symlink_to("/nonexistent")
    assert [doc.value for doc in load.load_repo(repo).documents] == [{"name": "chat"}]


def test_a_fifo_does_not_hang(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    os.mkfifo(repo / "deployments.d" / "pipe.yaml")
    os.mkfifo(repo / "fleetform.yaml")
    assert _errors(repo) == [
        "deployments.d/pipe.yaml:1:1: cannot read: not a regular file (a FIFO)",
        "fleetform.yaml:1:1: cannot read: not a regular file (a FIFO)",
    ]


def test_folders_that_are_files_and_files_that_are_folders(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "hosts.d").rmdir()
    (repo / "hosts.d").write_text("not a folder\n")
    (repo / "fleetform.yaml").mkdir()
    (repo / "deployments.d" / "more.yaml").mkdir()  # a folder named so is a folder
    (repo / "deployments.d" / "more.yaml" / "x.yml").write_text("name: x\n")
    assert _errors(repo) == [
        "fleetform.yaml:1:1: cannot read: not a regular file (a folder)",
        "hosts.d:1:1: is not a folder",
    ]


def test_an_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(tmp_path)
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith("chat.yaml"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    # The tests run as root, which chmod 000 does not stop.
    monkeypatch.setattr(os, "open", refusing_open)
    assert _errors(repo) == [f"{F}:1:1: cannot read: Permission denied"]


def test_yaml_files_refuses_links_for_its_other_callers(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "hosts.d" / "h.yaml").symlink_to(tmp_path)
    with pytest.raises(FleetformError, match="hosts.d/h.yaml:1:1: is a symbolic link"):
        load.yaml_files(repo / "hosts.d", repo)
    assert load.yaml_files(repo / "deployments.d", repo) == [repo / F]
