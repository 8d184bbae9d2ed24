"""Placeholders: split a command template first, then substitute inside each argument.

Only ``{{name}}`` (spaces inside the braces allowed) is template syntax. Nothing is
evaluated: a placeholder is looked up in a dict and its value inserted as text, in one
pass, so a value can never add, split or inject arguments, nor other placeholders.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
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
    parsed = _parse(text)
    values = {name: lookup(name) for name in parsed.names}
    missing = [name for name, value in values.items() if value is None]
    secret = [name for name in missing if name in secrets]
    if secret:
        raise SecretPlaceholder(secret)
    if missing:
        raise UndefinedPlaceholder(missing, defined)
    if parsed.stray is not None:
        raise TemplateError(parsed.stray)
    pieces = list(parsed.pieces)
    for i in range(1, len(pieces), 2):
        pieces[i] = values[pieces[i]] or ""  # never None: a missing name raised above
    return "".join(pieces)


def substitute_words(
    words: Iterable[str],
    lookup: Callable[[str], str | None],
    defined: list[str],
    secrets: Collection[str] = (),
) -> tuple[str, ...]:
    """:func:`substitute` in each of ``words`` (most hold no placeholder)."""
    return tuple(
        word if "{{" not in word else substitute(word, lookup, defined, secrets) for word in words
    )


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A text cut at its placeholders."""

    pieces: tuple[str, ...]  # text, name, text, ..., name, text
    names: tuple[str, ...]  # each name once, in order of first use
    stray: str | None  # the error for a `{{` that opens no placeholder


@lru_cache(maxsize=65_536)
def _parse(text: str) -> _Parsed:
    # Cached: a fleet's many workloads share few distinct templates.
    pieces = tuple(PLACEHOLDER.split(text))
    stray = _NEAR_MISS.search("".join(pieces[0::2]))
    message = None
    if stray:
        message = f"'{stray.group(0)}' is not a placeholder; only {{{{name}}}} is supported"
    return _Parsed(pieces, tuple(dict.fromkeys(pieces[1::2])), message)


def _reject_stray_braces(text: str) -> None:
    """``{{`` that does not open a ``{{name}}`` placeholder is an error, never text."""
    stray = _parse(text).stray
    if stray is not None:
        raise TemplateError(stray)


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
            return {}, errors
    defined = sorted(builtins) + sorted(name for name in env if name not in builtins)
    values = _EnvValues(env, builtins, defined)
    for name in sorted(env):
        try:
            values.value_of(name)
        except TemplateError as error:
            errors[name] = error
    return values.rendered, errors


class _EnvValues:
    """Env values, each rendered once, when first needed: a value may use another.

    A class, not a closure that calls itself: that would be a reference cycle, left to
    the garbage collector, for every workload of a fleet.
    """

    def __init__(
        self, env: Mapping[str, str], builtins: Mapping[str, str], defined: list[str]
    ) -> None:
        self.env = env
        self.builtins = builtins
        self.defined = defined
        self.rendered: dict[str, str] = {}

    def value_of(self, name: str, stack: tuple[str, ...] = ()) -> str | None:
        if name in self.builtins:
            return self.builtins[name]
        if name not in self.env:
            return None
        if name in self.rendered:
            return self.rendered[name]
        if name in stack:
            cycle = " -> ".join(stack[stack.index(name) :] + (name,))
            raise TemplateError(f"placeholder cycle in env: {cycle}")
        within = stack + (name,)
        result = substitute(
            self.env[name], lambda other: self.value_of(other, within), self.defined
        )
        self.rendered[name] = result
        return result


def is_parameter_key(word: str) -> bool:
    """GPUStack's rule: ``-x``/``--x`` but not ``--`` alone, nor a negative number."""
    if len(word) < 2 or not word.startswith("-") or word == "--":
        return False
    try:
        float(word)
    except ValueError:
        return True
    return False


@lru_cache(maxsize=4096)
def parameter_words(entries: tuple[str, ...], style: str | None) -> tuple[str, ...]:
    """A parameter list as argv words, before substitution: flattened, then normalised.

    Cached: a backend's default parameters recur in each of its deployments.
    """
    return tuple(normalise_parameters(flatten_parameters(list(entries)), style))


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
