from __future__ import annotations

import pytest

from compiler import template


def lookup_from(values: dict[str, str]):  # type: ignore[no-untyped-def]
    return values.get


def test_split_first_then_substitute_keeps_values_whole() -> None:
    words = template.split("serve {{model_path}} --port {{ port }}")
    assert words == ["serve", "{{model_path}}", "--port", "{{port}}"]
    values = {"model_path": "/m/my model; rm -rf /", "port": "80"}
    out = [template.substitute(w, values.get, sorted(values)) for w in words]
    assert out == ["serve", "/m/my model; rm -rf /", "--port", "80"]


def test_quoted_placeholder_and_adjacent_text() -> None:
    words = template.split("run '--model={{model_path}}' x{{port}}y")
    values = {"model_path": "a b", "port": "1"}
    assert [template.substitute(w, values.get, []) for w in words] == ["run", "--model=a b", "x1y"]


def test_substitution_is_single_pass() -> None:
    values = {"A": "{{B}}", "B": "boom"}
    assert template.substitute("{{A}}", values.get, []) == "{{B}}"


def test_undefined_placeholder_names_what_is_defined() -> None:
    with pytest.raises(template.UndefinedPlaceholder) as caught:
        template.substitute("{{nope}} {{port}}", {"port": "1"}.get, ["port"])
    assert str(caught.value) == "undefined placeholder {{nope}} (defined: port)"


def test_a_secret_is_never_substituted() -> None:
    with pytest.raises(template.SecretPlaceholder) as caught:
        template.substitute("--token={{ HF_TOKEN }}", {}.get, [], {"HF_TOKEN"})
    assert str(caught.value) == (
        "{{HF_TOKEN}} names a secret; secrets reach the container only as environment variables"
    )
    # Built-ins win over a secret variable of the same name, as over any env.
    assert template.substitute("{{port}}", {"port": "80"}.get, [], {"port"}) == "80"


def test_env_naming_a_secret_is_reported_where_it_is_written() -> None:
    rendered, errors = template.render_env(
        {"A": "{{B}}", "B": "Bearer {{TOKEN}} {{KEY}}", "C": "plain"}, {}, {"TOKEN", "KEY"}
    )
    assert sorted(errors) == ["B"]
    assert str(errors["B"]) == (
        "{{TOKEN}}, {{KEY}} name secrets; secrets reach the container only as environment variables"
    )


def test_non_placeholder_syntax_is_rejected() -> None:
    with pytest.raises(template.TemplateError, match="is not a placeholder"):
        template.substitute("{{ a + b }}", {}.get, [])


def test_env_may_refer_to_builtins_and_other_env() -> None:
    rendered, errors = template.render_env(
        {"A": "{{B}}/x", "B": "{{model_name}}", "C": "{{C}}"}, {"model_name": "m"}
    )
    assert rendered == {"A": "m/x", "B": "m"}
    assert str(errors["C"]) == "placeholder cycle in env: C -> C"


def test_builtins_win_over_env_of_the_same_name() -> None:
    rendered, _ = template.render_env({"port": "9", "X": "{{port}}"}, {"port": "80"})
    assert rendered["X"] == "80"


@pytest.mark.parametrize(
    ("entries", "style", "expected"),
    [
        (["--ctx-size 1024"], None, ["--ctx-size", "1024"]),
        (["--ctx-size=1024"], "space", ["--ctx-size", "1024"]),
        (["--ctx-size 1024"], "equal", ["--ctx-size=1024"]),
        (["--dims 1 2"], "equal", ["--dims", "1", "2"]),
        (["--flag", "--k v"], "equal", ["--flag", "--k=v"]),
        (["/path with spaces"], "space", ["/path with spaces"]),
        (["-0.5"], "equal", ["-0.5"]),
        (["--json '{\"a\": 1}'"], "equal", ['--json={"a": 1}']),
        (["  ", ""], "space", []),
    ],
)
def test_parameters(entries: list[str], style: str | None, expected: list[str]) -> None:
    words = template.flatten_parameters(entries)
    assert template.normalise_parameters(words, style) == expected
