from __future__ import annotations

import contextlib
import shlex
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import template


def lookup_from(values: dict[str, str]):  # type: ignore[no-untyped-def]
    return values.get


def test_split_first_then_substitute_keeps_values_whole() -> None:
    words = template.split("serve {{model_path}} --port {{port}}")
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
        template.substitute("--token={{HF_TOKEN}}", {}.get, [], {"HF_TOKEN"})
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


@pytest.mark.parametrize(
    "text",
    [
        "{{ a + b }}",
        "{{ bos_token }}",  # a Jinja chat template passes through, as in GPUStack 2.3
        "{%- for m in messages %}{{- m['content'] }}{% endfor %}",
        "{{model_path}",
        "{{}}",
        "{{ port }}",
    ],
)
def test_text_that_is_not_a_placeholder_is_literal(text: str) -> None:
    assert template.substitute(text, {"port": "1"}.get, ["port"]) == text


def test_a_dotted_name_is_a_placeholder_as_in_gpustack() -> None:
    with pytest.raises(template.UndefinedPlaceholder, match=r"\{\{ports\.kv\}\}"):
        template.substitute("--kv={{ports.kv}}", {}.get, [])


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
        # GPUStack's safe_split: JSON after '=' is one word, quotes and spaces kept.
        (
            ['--speculative-config={"method": "ngram", "num_speculative_tokens": 5}'],
            None,
            ['--speculative-config={"method": "ngram", "num_speculative_tokens": 5}'],
        ),
        (
            ['--kv-transfer-config={"kv_connector":"X","kv_role":"kv_both"} --n 2'],
            "equal",
            ['--kv-transfer-config={"kv_connector":"X","kv_role":"kv_both"}', "--n=2"],
        ),
        (['--x=[1, {"a": "b ]"}] --y 3'], None, ['--x=[1, {"a": "b ]"}]', "--y", "3"]),
        (['--x={"a": "unclosed --y 2'], None, ['--x={"a": "unclosed --y 2']),
        # A pasted multi-line snippet: backslash-newline is a space, a last '\' dropped.
        (["--a 1 \\\n--b=2 \\"], None, ["--a", "1", "--b=2"]),
        (["--a=1\\\n--b"], None, ["--a=1", "--b"]),
        (["  ", ""], "space", []),
    ],
)
def test_parameters(entries: list[str], style: str | None, expected: list[str]) -> None:
    words = template.flatten_parameters(entries)
    assert template.normalise_parameters(words, style) == expected


# --- hostile templates: the splitter is shlex's, in linear time -----------------------

_PIECES = st.sampled_from(
    [" ", "  ", "\t", "\n", "'", '"', "\\", "\\\\", "\\'", '\\"', "a", "b c", "--port", "=",
     "{{port}}", "{{ model_path }}", "{{", "}}", "é", "🙂", "$x", ";", "#", "\x0b", "\r"]
)  # fmt: skip


@settings(max_examples=2000, derandomize=True)
@given(st.lists(_PIECES, max_size=14).map("".join))
def test_shell_words_are_shlex_words(text: str) -> None:
    try:
        expected: list[str] | None = shlex.split(text, posix=True)
    except ValueError:
        expected = None
    if "\\\n" in text:
        return  # a line continuation: the one deliberate difference, tested below
    if expected is None:
        with pytest.raises(template.TemplateError, match="^cannot split command: "):
            template.shell_words(text)
    else:
        assert template.shell_words(text) == expected


@given(st.text(max_size=30))
def test_shell_words_match_shlex_on_any_text(text: str) -> None:
    if "\\\n" in text:
        return
    try:
        expected = shlex.split(text, posix=True)
    except ValueError:
        with pytest.raises(template.TemplateError):
            template.shell_words(text)
        return
    assert template.shell_words(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("serve \\\n  --x 1", ["serve", "--x", "1"]),
        ("serve\\\n--x", ["serve--x"]),
        ("a \\\n", ["a"]),
        ("\\\n", []),
        ('"a\\\nb"', ["ab"]),
        ("'a\\\nb'", ["a\\\nb"]),  # single quotes keep everything
        ("a\\\\\nb", ["a\\", "b"]),  # an escaped backslash, then a newline
    ],
)
def test_backslash_newline_is_a_line_continuation(text: str, words: list[str]) -> None:
    assert template.split(text) == words


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("serve 'x", "cannot split command: the ' at character 7 is never closed"),
        ('a "b\\"', 'cannot split command: the " at character 3 is never closed'),
        ("serve \\", "cannot split command: it ends with a backslash"),
    ],
)
def test_split_errors(text: str, message: str) -> None:
    with pytest.raises(template.TemplateError) as caught:
        template.split(text)
    assert str(caught.value) == message


def test_a_placeholder_stays_one_word() -> None:
    assert template.split("x {{model_path}}y '{{port}} z' {{ port }}") == [
        "x",
        "{{model_path}}y",
        "{{port}} z",
        "{{",
        "port",
        "}}",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "serve " + "x" * 1_000_000,  # one word: shlex took 17 s
        "serve " + "'a b' " * 150_000,
        "serve " + '"a\\"b" ' * 150_000,
        "serve " + "a\\ b " * 200_000,
        "serve '" + "x" * 1_000_000,  # unclosed: the error is found in one pass too
    ],
)
def test_splitting_a_megabyte_is_fast(text: str) -> None:
    start = time.perf_counter()
    with contextlib.suppress(template.TemplateError):
        template.shell_words(text)
    assert time.perf_counter() - start < 5  # ~0.2 s


# --- bounded substitution and env evaluation ------------------------------------------


def test_doubling_env_values_stop_at_the_size_limit() -> None:
    env = {"V0": "x" * 100}
    env.update({f"V{i}": f"{{{{V{i - 1}}}}}{{{{V{i - 1}}}}}" for i in range(1, 41)})
    tracemalloc.start()
    try:
        rendered, errors = template.render_env(env, {"port": "80"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20  # ~1 GB before the limit
    assert len(rendered["V10"]) == 102_400
    assert sorted(errors, key=lambda name: int(name[1:]))[0] == "V11"
    assert str(errors["V11"]) == (
        "expands to more than 131072 characters"
        " (the most one argument or environment variable can hold)"
    )
    assert set(errors) == {f"V{i}" for i in range(11, 41)}


def test_a_substituted_argument_is_bounded() -> None:
    values = {"A": "a" * 70_000}
    assert len(template.substitute("{{A}}", values.get, [])) == 70_000
    with pytest.raises(template.ExpansionTooLong):
        template.substitute("{{A}}{{A}}", values.get, [])


def test_a_deep_chain_of_env_references_is_evaluated_without_recursion() -> None:
    count = 20_000  # recursion failed at ~330
    env = {f"V{i}": f"{{{{V{i + 1}}}}}" for i in range(count)}
    env[f"V{count}"] = "end"
    rendered, errors = template.render_env(env, {})
    assert errors == {} and rendered["V0"] == "end"


def test_a_long_chain_into_an_undefined_name_is_walked_once() -> None:
    count = 20_000
    env = {f"V{i}": f"{{{{V{i + 1}}}}}" for i in range(count)}
    env[f"V{count}"] = "{{nope}}"
    start = time.perf_counter()
    rendered, errors = template.render_env(env, {})
    assert time.perf_counter() - start < 10  # quadratic: minutes
    assert len(errors) == count + 1
    message = str(errors["V0"])
    assert message.startswith("undefined placeholder {{nope}} (defined: V0, V1, V10, V100,")
    assert message.endswith(", ... (19981 more))")


def test_cycles_are_told_from_each_variable() -> None:
    rendered, errors = template.render_env({"A": "{{B}}", "B": "{{A}}", "X": "{{A}}"}, {})
    assert rendered == {}
    assert str(errors["A"]) == "placeholder cycle in env: A -> B -> A"
    assert str(errors["B"]) == "placeholder cycle in env: B -> A -> B"
    assert str(errors["X"]) == "placeholder cycle in env: A -> B -> A"


def test_a_long_cycle_has_a_short_message() -> None:
    count = 5000
    env = {f"V{i}": f"{{{{V{(i + 1) % count}}}}}" for i in range(count)}
    _, errors = template.render_env(env, {})
    assert len(errors) == count
    assert str(errors["V7"]) == (
        "placeholder cycle in env: "
        + " -> ".join(f"V{i}" for i in range(7, 27))
        + " -> ... (4980 more) -> V7"
    )


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("-" + "1" * 100_000, False),
        ("-1e" + "9" * 100_000, False),
        ("-" + "1_" * 50_000 + "1", False),
        ("--" + "1" * 100_000, True),
        ("-x" + "1" * 100_000, True),
    ],
)
def test_parameter_keys_with_long_digit_strings(word: str, expected: bool) -> None:
    assert template.is_parameter_key(word) is expected


def test_parameters_of_many_words_flatten_in_linear_time() -> None:
    entries = ["--k v " * 50_000, "-0.5", "--" + "x" * 100_000]
    start = time.perf_counter()
    words = template.normalise_parameters(template.flatten_parameters(entries), "equal")
    assert time.perf_counter() - start < 5
    assert len(words) == 50_003  # the last --k takes v and -0.5: two values, space form


def test_many_env_values_copying_a_long_one_are_bounded_together() -> None:
    env = {"V0": "x" * 100_000}
    env.update({f"V{i}": "{{V0}}" for i in range(1, 20_001)})  # 2 GB once rendered
    tracemalloc.start()
    try:
        rendered, errors = template.render_env(env, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20
    assert len(rendered) == 11  # V0 as written, and ten copies within 1 MiB
    assert str(errors["V9999"]) == (
        "the env values expand to more than 1048576 characters together"
    )


def test_the_words_of_a_command_are_bounded_together() -> None:
    values = {"V": "x" * 100_000}
    words = template.split(" ".join(["{{V}}"] * 20_000))  # 2 GB once substituted
    assert len(template.substitute_words(words[:10], values.get, [])) == 10
    tracemalloc.start()
    try:
        with pytest.raises(template.ExpansionTooLong) as caught:
            template.substitute_words(words, values.get, [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == "the arguments expand to more than 1048576 characters together"
    assert peak < 100 * 2**20


def test_an_env_variable_named_like_a_builtin_keeps_its_own_value() -> None:
    """The placeholder is the built-in's; the variable still reaches the container (as
    in GPUStack), with its own value rendered."""
    rendered, errors = template.render_env({"port": "{{X}}-1", "X": "{{port}}"}, {"port": "80"})
    assert (rendered, errors) == ({"X": "80", "port": "80-1"}, {})
