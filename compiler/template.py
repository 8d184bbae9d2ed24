"""Placeholders: split a command template first, then substitute inside each argument.

Only ``{{name}}`` (spaces inside the braces allowed) is template syntax. Nothing is
evaluated: a placeholder is looked up in a dict and its value inserted as text, in one
pass, so a value can never add, split or inject arguments, nor other placeholders.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Collection, Mapping
from functools import lru_cache

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NEAR_MISS = re.compile(r"\{\{[^\n]*?(\}\}|$)", re.MULTILINE)


class TemplateError(ValueError):
    """A template that cannot be split or substituted; the message is user-facing."""


class UndefinedPlaceholder(TemplateError):
    def __init__(self, names: list[str], defined: list[str]) -> None:
        shown = ", ".join("{{" + name + "}}" for name in names)
        known = ", ".join(defined) if defined else "none"
        noun = "placeholder" if len(names) == 1 else "placeholders"
        super().__init__(f"undefined {noun} {shown} (defined: {known})")
        self.names = names


class SecretPlaceholder(TemplateError):
    """A placeholder naming a secret variable: its value is not known when compiling,
    and must never be written into an argument or a plain env value."""

    def __init__(self, names: list[str]) -> None:
        shown = ", ".join("{{" + name + "}}" for name in names)
        verb = "names a secret" if len(names) == 1 else "name secrets"
        super().__init__(
            f"{shown} {verb}; secrets reach the container only as environment variables"
        )
        self.names = names


def split(template: str) -> list[str]:
    """Split ``template`` like a POSIX shell, keeping ``{{ name }}`` as one word."""
    return list(_split(template))


@lru_cache(maxsize=4096)
def _split(template: str) -> tuple[str, ...]:
    # Cached: a fleet has few distinct command templates and shlex is slow.
    _reject_stray_braces(template)
    normalised = PLACEHOLDER.sub(lambda m: "{{" + m.group(1) + "}}", template)
    try:
        return tuple(shlex.split(normalised, posix=True))
    except ValueError as error:
        raise TemplateError(f"cannot split command: {error}") from None


def names_in(text: str) -> list[str]:
    return [match.group(1) for match in PLACEHOLDER.finditer(text)]


def substitute(
    text: str,
    lookup: Callable[[str], str | None],
    defined: list[str],
    secrets: Collection[str] = (),
) -> str:
    """``text`` with every placeholder replaced by ``lookup(name)``; strict about the rest.

    A name that ``lookup`` does not know is an error: :class:`SecretPlaceholder` when it
    is one of ``secrets``, else :class:`UndefinedPlaceholder`.
    """
    if "{{" not in text:
        return text
    missing = [name for name in dict.fromkeys(names_in(text)) if lookup(name) is None]
    secret = [name for name in missing if name in secrets]
    if secret:
        raise SecretPlaceholder(secret)
    if missing:
        raise UndefinedPlaceholder(missing, defined)
    _reject_stray_braces(text)
    return PLACEHOLDER.sub(lambda m: lookup(m.group(1)) or "", text)


def _reject_stray_braces(text: str) -> None:
    """``{{`` that does not open a ``{{name}}`` placeholder is an error, never text."""
    stray = _NEAR_MISS.search(PLACEHOLDER.sub("", text))
    if stray:
        raise TemplateError(
            f"'{stray.group(0)}' is not a placeholder; only {{{{name}}}} is supported"
        )


def render_env(
    env: Mapping[str, str], builtins: Mapping[str, str], secrets: Collection[str] = ()
) -> tuple[dict[str, str], dict[str, TemplateError]]:
    """Env values with placeholders resolved; env may refer to built-ins and other env.

    Built-ins win over env names. ``secrets`` are the variables whose values are given
    at apply time; no value may refer to one. Returns the rendered values and, per
    variable, the error that stopped it (undefined name, reference cycle, bad syntax, a
    secret). A reference to a secret is reported only at the values that write it, not
    at those that reach it through other variables.
    """
    rendered: dict[str, str] = {}
    errors: dict[str, TemplateError] = {}
    if secrets:
        for name in sorted(env):
            named = [
                other
                for other in dict.fromkeys(names_in(env[name]))
                if other in secrets and other not in builtins
            ]
            if named:
                errors[name] = SecretPlaceholder(named)
        if errors:
            return rendered, errors
    defined = sorted(builtins) + sorted(name for name in env if name not in builtins)

    def value_of(name: str, stack: tuple[str, ...]) -> str | None:
        if name in builtins:
            return builtins[name]
        if name not in env:
            return None
        if name in rendered:
            return rendered[name]
        if name in stack:
            cycle = " -> ".join(stack[stack.index(name) :] + (name,))
            raise TemplateError(f"placeholder cycle in env: {cycle}")
        result = substitute(env[name], lambda other: value_of(other, stack + (name,)), defined)
        rendered[name] = result
        return result

    for name in sorted(env):
        try:
            value_of(name, ())
        except TemplateError as error:
            errors[name] = error
    return rendered, errors


def is_parameter_key(word: str) -> bool:
    """GPUStack's rule: ``-x``/``--x`` but not ``--`` alone, nor a negative number."""
    if len(word) < 2 or not word.startswith("-") or word == "--":
        return False
    try:
        float(word)
    except ValueError:
        return True
    return False


def flatten_parameters(entries: list[str]) -> list[str]:
    """GPUStack's backend_parameters → argv words, before substitution.

    An entry that starts with an option is split like a shell (``--ctx-size 1024`` is two
    words); any other entry stays one word (a path with spaces, JSON, ``-0.5``).
    """
    words: list[str] = []
    for entry in entries:
        stripped = entry.strip()
        if not stripped:
            continue
        first = stripped.split(None, 1)[0]
        words.extend(split(stripped) if is_parameter_key(first) else [stripped])
    return words


def normalise_parameters(words: list[str], style: str | None) -> list[str]:
    """Rewrite ``--k v`` / ``--k=v`` to the backend's ``parameter_format``.

    As GPUStack: only single-valued options are rewritten; options with several values
    stay in space form; positional words pass through.
    """
    if style is None:
        return list(words)
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if not is_parameter_key(word):
            out.append(word)
            i += 1
            continue
        if "=" in word:
            key, _, first = word.partition("=")
            values = [first]
            i += 1
        else:
            key, values = word, []
            i += 1
            while i < len(words) and not is_parameter_key(words[i]):
                values.append(words[i])
                i += 1
        if not values:
            out.append(key)
        elif len(values) == 1 and style == "equal":
            out.append(f"{key}={values[0]}")
        else:
            out.extend([key, *values])
    return out
