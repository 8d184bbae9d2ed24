"""The YAML writer: every string reads back as exactly that string, in PyYAML (YAML
1.1) and in docker compose (go-yaml, YAML 1.2), however much it looks like a number,
a boolean, a date or YAML syntax."""

from __future__ import annotations

from pathlib import Path

import yaml
from helpers import compose_config, compose_value
from hypothesis import given
from hypothesis import strategies as st

from compiler.render import yaml_text

# Plain text that some YAML reader takes for something else, and YAML syntax.
LOOKALIKES = [
    "1e5", "1E5", "05267e3602369212", "0x1f", "0x1p-2", "0o17", "0b101", "1_000", "-1",
    "+1", ".5", "1.", "1.2e-3", ".inf", "-.inf", "+.INF", ".nan", "NaN", "inf", "-Infinity",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "1:20", "190:20:30", "y", "Y", "n", "yes",
    "No", "on", "OFF", "true", "False", "null", "Null", "~", "", " ", "=", "<<", "-", "--",
    "---", "...", "- x", "? x", ": x", "a: b", "a #b", "#x", "&a", "*a", "!x", "!!str",
    "%x", "@x", "`x", "|", ">", "[a]", "{a: 1}", "'", '"', "a\nb", "\t", "\x85", "\u2028",
    "\ufeff", "\x7f", "é", "🙂", "\U0001fffe", "x ", " x", "1 2",
]  # fmt: skip
# Plain text that stays plain: the common case reads as written in a diff.
PLAIN = ["vllm", "--port", "vllm/vllm-openai:v0.11.0", "198.51.100.11", "16g", "2,3", "50%"]


def test_lookalikes_round_trip_through_pyyaml() -> None:
    document = {"values": LOOKALIKES, "keys": {value: value for value in LOOKALIKES}}
    assert yaml.safe_load(yaml_text.dump(document)) == document


def test_common_values_stay_plain() -> None:
    for value in PLAIN:
        assert yaml_text.scalar(value) == value


def test_layout_is_block_style() -> None:
    document = {"a": {"b": ["x", {"c": "1", "d": []}], "e": {}}, "f": [["g"]], "h": 2}
    assert yaml_text.dump(document) == (
        "a:\n  b:\n  - x\n  - c: '1'\n    d: []\n  e: {}\nf:\n- - g\nh: 2\n"
    )


@given(st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=12), max_size=8))
def test_any_text_round_trips_through_pyyaml(values: list[str]) -> None:
    document = {"values": values, "keys": {f"k{i}": value for i, value in enumerate(values)}}
    assert yaml.safe_load(yaml_text.dump(document)) == document


def test_lookalikes_round_trip_through_compose(tmp_path: Path) -> None:
    """go-yaml reads ``1e5``, ``0x1p-2``, ``0o17`` and dates as non-strings when plain."""
    values = [v for v in LOOKALIKES if "\x00" not in v]
    service = {
        "image": "busybox",
        "command": values,
        "environment": {f"V{i}": value for i, value in enumerate(values)},
        "labels": {f"l{i}": value for i, value in enumerate(values)},
    }
    text = yaml_text.dump({"name": "p", "services": {"s": service}}).replace("$", "$$")
    (tmp_path / "compose.yaml").write_text(text, encoding="utf-8")
    read = compose_config(tmp_path / "compose.yaml")["services"]["s"]
    assert [compose_value(word) for word in read["command"]] == values
    env = {key: compose_value(value) for key, value in read["environment"].items()}
    assert env == service["environment"]
    assert {key: compose_value(value) for key, value in read["labels"].items()} == service["labels"]
