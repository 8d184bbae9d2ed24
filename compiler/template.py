"""Placeholders: split a command template first, then substitute inside each argument.

Only ``{{name}}`` is template syntax, as in GPUStack 2.3 (``gpustack/utils/template.py``):
no space inside the braces, so ``{{ bos_token }}`` in a Jinja chat template, and any other
text that is not a placeholder, is literal. Nothing is evaluated: a placeholder is looked
up in a dict and its value inserted as text, in one pass, so a value can never add, split
or inject arguments, nor other placeholders. Unlike GPUStack, a placeholder with no value
is an error, never left in the command.

The templates are untrusted (a pull request): splitting is linear, every substituted
value is bounded (MAX_EXPANDED), and env values that refer to each other are evaluated
with an explicit stack, not recursion.

Splitting is hand-written, not ``shlex.split``: shlex builds each word a character at a
time and took 17 s for a 1 MB run command (quadratic). :func:`split` is one pass of one
regular expression, and gives shlex's words (posix, no comments) for every command
shlex accepts, but for a backslash-newline, which is a line continuation as in a POSIX
shell (shlex made it a "\n" argument). tests/test_template.py holds it to shlex.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

# GPUStack's pattern: a name may hold dots (its disaggregated-serving variables, such as
# ``ports.kv_port``); none of those is defined here, so they are undefined placeholders.
PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_.]*)\}\}")

# The longest text a substitution may produce: Linux's MAX_ARG_STRLEN (128 KiB), the
# most one argument or environment entry can hold. Env values that double each other
# (V1 = {{V0}}{{V0}}, ..., V40) reached ~1 GB without it.
MAX_EXPANDED = 128 * 1024
# What substitution may produce in all, for one command's words or one env's values: a
# run command of 20,000 {{V}} with V of 128 KiB would be 2.6 GB. Far above what one
# container may hold (compiler/resolve/draft.py checks that, and says so, once rendered).
MAX_EXPANDED_TOTAL = 1024 * 1024
# Names shown in one message (the defined names, a cycle): a message stays one short line.
_SHOWN_NAMES = 20


class TemplateError(ValueError):
    """A template that cannot be split or substituted; the message is user-facing."""


class UndefinedPlaceholder(TemplateError):
    def __init__(self, names: list[str], defined: list[str]) -> None:
        shown = some(["{{" + name + "}}" for name in names])
        known = some(defined) if defined else "none"
        noun = "placeholder" if len(names) == 1 else "placeholders"
        super().__init__(f"undefined {noun} {shown} (defined: {known})")
        self.names = names


class SecretPlaceholder(TemplateError):
    """A placeholder naming a secret variable: its value is not known when compiling,
    and must never be written into an argument or a plain env value."""

    def __init__(self, names: list[str]) -> None:
        shown = some(["{{" + name + "}}" for name in names])
        verb = "names a secret" if len(names) == 1 else "name secrets"
        super().__init__(
            f"{shown} {verb}; secrets reach the container only as environment variables"
        )
        self.names = names


class ExpansionTooLong(TemplateError):
    def __init__(self, *, together: str = "") -> None:
        if together:
            super().__init__(
                f"{together} expand to more than {MAX_EXPANDED_TOTAL} characters together"
            )
        else:
            super().__init__(
                f"expands to more than {MAX_EXPANDED} characters (the most one argument or"
                " environment variable can hold)"
            )


def some(items: list[str]) -> str:
    """``items`` joined for a message, the first _SHOWN_NAMES of them."""
    if len(items) <= _SHOWN_NAMES:
        return ", ".join(items)
    return ", ".join(items[:_SHOWN_NAMES]) + f", ... ({len(items) - _SHOWN_NAMES} more)"


def split(template: str) -> list[str]:
    """Split ``template`` like a POSIX shell (a placeholder holds no space: it stays
    within its word)."""
    return list(_split(template))


@lru_cache(maxsize=4096)
def _split(template: str) -> tuple[str, ...]:
    # Cached: a fleet has few distinct command templates.
    return tuple(shell_words(template))


# One token of a POSIX shell word list: a run of separators, of plain characters, a
# single-quoted or double-quoted string, or a backslash and the character it escapes;
# else a quote or backslash that opens nothing (unclosed). Each alternative is
# possessive in effect (no two ways to match the same text), so matching is linear.
_TOKEN = re.compile(
    r"""
      (?P<space>[ \t\r\n]+)
    | (?P<plain>[^ \t\r\n'"\\]+)
    | '(?P<single>[^']*)'
    | "(?P<double>[^"\\]*(?:\\.[^"\\]*)*)"
    | \\(?P<escaped>.)
    | (?P<unclosed>['"\\])
    """,
    re.VERBOSE | re.DOTALL,
)
# Inside double quotes only a quote, a backslash (and a newline: a continuation) are
# escaped; any other backslash stays, as in shlex and the shell.
_DOUBLE_ESCAPE = re.compile(r'\\([\\"\n])')


def shell_words(text: str) -> list[str]:
    """``text`` split into words like ``shlex.split(text, posix=True)``, in linear time.

    As in a POSIX shell, a backslash-newline outside single quotes is removed (a line
    continuation). Raises :class:`TemplateError` for an unclosed quote or a trailing
    backslash.
    """
    words: list[str] = []
    pieces: list[str] = []
    in_word = False  # a word has begun (an empty quoted string is a word)
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "unclosed"  # every alternative is a named group
        if kind == "space":
            if in_word:
                words.append("".join(pieces))
                pieces.clear()
                in_word = False
        elif kind == "plain" or kind == "single":
            pieces.append(match.group(kind))
            in_word = True
        elif kind == "double":
            inside = match.group(kind)
            if "\\" in inside:
                inside = _DOUBLE_ESCAPE.sub(_unescape_in_double_quotes, inside)
            pieces.append(inside)
            in_word = True
        elif kind == "escaped":
            character = match.group(kind)
            if character != "\n":  # a continuation: nothing, not even a word break
                pieces.append(character)
                in_word = True
        else:
            where = match.start() + 1
            if match.group(kind) == "\\":
                raise TemplateError("cannot split command: it ends with a backslash")
            raise TemplateError(
                f"cannot split command: the {match.group(kind)} at character {where}"
                " is never closed"
            )
    if in_word:
        words.append("".join(pieces))
    return words


def _unescape_in_double_quotes(match: re.Match[str]) -> str:
    character = match.group(1)
    return "" if character == "\n" else character


def names_in(text: str) -> list[str]:
    return [match.group(1) for match in PLACEHOLDER.finditer(text)]


def substitute(
    text: str,
    lookup: Callable[[str], str | None],
    defined: list[str],
    secrets: Collection[str] = (),
    *,
    room: int | None = None,
    together: str = "",
) -> str:
    """``text`` with every placeholder replaced by ``lookup(name)``; strict about the rest.

    A name that ``lookup`` does not know is an error: :class:`SecretPlaceholder` when it
    is one of ``secrets``, else :class:`UndefinedPlaceholder`. A result longer than
    MAX_EXPANDED, or than ``room`` (what is left of a total: ``together`` names what
    it is the total of), is :class:`ExpansionTooLong`, found before it is built.
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
    pieces = list(parsed.pieces)
    size = parsed.text_size
    for i in range(1, len(pieces), 2):
        pieces[i] = values[pieces[i]] or ""  # never None: a missing name raised above
        size += len(pieces[i])
    if size > MAX_EXPANDED:  # before joining: V40 = {{V39}}{{V39}} would be 1 TB
        raise ExpansionTooLong()
    if room is not None and size > room:
        raise ExpansionTooLong(together=together)
    return "".join(pieces)


def substitute_words(
    words: Iterable[str],
    lookup: Callable[[str], str | None],
    defined: list[str],
    secrets: Collection[str] = (),
) -> tuple[str, ...]:
    """:func:`substitute` in each of ``words`` (most hold no placeholder); the words
    substitution makes no longer than MAX_EXPANDED_TOTAL together (the others are text
    as written, which compiler/resolve/draft.py measures)."""
    out: list[str] = []
    room = MAX_EXPANDED_TOTAL
    for word in words:
        if "{{" in word:
            word = substitute(word, lookup, defined, secrets, room=room, together="the arguments")
            room -= len(word)
        out.append(word)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A text cut at its placeholders."""

    pieces: tuple[str, ...]  # text, name, text, ..., name, text
    names: tuple[str, ...]  # each name once, in order of first use
    text_size: int  # the length of the text around the placeholders


@lru_cache(maxsize=65_536)
def _parse(text: str) -> _Parsed:
    # Cached: a fleet's many workloads share few distinct templates.
    pieces = tuple(PLACEHOLDER.split(text))
    around = sum(len(piece) for piece in pieces[0::2])
    return _Parsed(pieces, tuple(dict.fromkeys(pieces[1::2])), around)


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
            values.own_value(name)
        except TemplateError as error:
            errors[name] = error
    return values.rendered, errors


class _EnvValues:
    """Env values, each rendered once, when first needed: a value may use another.

    Evaluated depth first with an explicit stack (a chain of references is as deep as
    the env is long: recursion failed at ~330). A failure is kept for every variable
    that was waiting on it, so that a long chain is walked once, not once per variable.
    """

    def __init__(
        self, env: Mapping[str, str], builtins: Mapping[str, str], defined: list[str]
    ) -> None:
        self.env = env
        self.builtins = builtins
        self.defined = defined
        self.rendered: dict[str, str] = {}
        self.failed: dict[str, TemplateError] = {}
        self.expanded = 0  # the length of the values substitution made

    def value_of(self, name: str) -> str | None:
        """The value of ``name`` with its placeholders resolved; None if not defined."""
        if name in self.builtins:
            return self.builtins[name]
        if name in self.rendered:
            return self.rendered[name]
        if name not in self.env:
            return None
        if name in self.failed:
            raise self.failed[name]
        text = self.env[name]
        if "{{" not in text:
            self.rendered[name] = text
            return text
        return self._evaluate(name)

    def own_value(self, name: str) -> str:
        """The variable's own value, rendered: for a variable named like a built-in too
        (a placeholder of that name is the built-in's, the variable still reaches the
        container, as in GPUStack)."""
        if name not in self.builtins:
            value = self.value_of(name)
            assert value is not None
            return value
        if name in self.rendered:
            return self.rendered[name]
        if name in self.failed:
            raise self.failed[name]
        if "{{" not in self.env[name]:
            self.rendered[name] = self.env[name]
            return self.env[name]
        return self._evaluate(name)

    def _known(self, name: str) -> str | None:
        # Only called once every name a value uses is rendered (or is not defined).
        if name in self.builtins:
            return self.builtins[name]
        return self.rendered.get(name)

    def _evaluate(self, root: str) -> str:
        env, builtins, rendered = self.env, self.builtins, self.rendered
        # The variables being rendered, each with the names its value has yet to visit.
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(_names(env[root])))]
        depth_of = {root: 0}
        try:
            while stack:
                name, pending = stack[-1]
                for other in pending:
                    if other in builtins or other in rendered or other not in env:
                        continue  # an undefined name is for substitute() to report
                    if other in self.failed:
                        raise self.failed[other]
                    if other in depth_of:
                        raise self._cycle([entry for entry, _ in stack[depth_of[other] :]])
                    depth_of[other] = len(stack)
                    stack.append((other, iter(_names(env[other]))))
                    break
                else:
                    value = substitute(
                        env[name],
                        self._known,
                        self.defined,
                        room=MAX_EXPANDED_TOTAL - self.expanded,
                        together="the env values",
                    )
                    self.expanded += len(value)
                    rendered[name] = value
                    stack.pop()
                    del depth_of[name]
        except TemplateError as error:
            # Kept without its traceback: its frames would keep their values alive.
            error = error.with_traceback(None)
            for name, _ in stack:
                self.failed.setdefault(name, error)
            raise error from None
        return rendered[root]

    def _cycle(self, cycle: list[str]) -> TemplateError:
        """The error of the first variable of ``cycle``; each other variable of it gets
        the same cycle, told from itself (as it would be, were it rendered first)."""
        for offset, name in enumerate(cycle[1:], 1):
            self.failed[name] = _cycle_error(cycle, offset)
        return _cycle_error(cycle, 0)


def _names(text: str) -> tuple[str, ...]:
    return _parse(text).names if "{{" in text else ()


def _cycle_error(cycle: list[str], start: int) -> TemplateError:
    count = len(cycle)
    shown = [cycle[(start + i) % count] for i in range(min(count, _SHOWN_NAMES))]
    if count > _SHOWN_NAMES:
        shown.append(f"... ({count - _SHOWN_NAMES} more)")
    return TemplateError(f"placeholder cycle in env: {' -> '.join(shown + [cycle[start]])}")


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
def flat_parameters(entries: tuple[str, ...]) -> tuple[str, ...]:
    """A parameter list as argv words, before substitution and normalisation.

    Cached: a backend's default parameters recur in each of its deployments.
    """
    return tuple(flatten_parameters(list(entries)))


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
        words.extend(parameter_split(stripped) if is_parameter_key(first) else [stripped])
    return words


# GPUStack's safe_split (gpustack/utils/command.py), for one backend parameter entry: a
# JSON value after ``=`` (``--speculative-config={"method": "ngram"}``) is one word
# whatever spaces and quotes it holds; a backslash-newline is a space; one stray
# trailing backslash is dropped; the rest is split like a shell.
_JSON_START = re.compile(r"=[{\[]")
# Inside a JSON value, as GPUStack scans it: an escape (anywhere), a quote, a bracket,
# or a run of anything else.
_JSON_TOKEN = re.compile(r'\\[\s\S]?|"|[{\[]|[}\]]|[^\\"{}\[\]]+')
_MASK = "\x1f"  # the loader refuses control characters: no entry holds one
_MASKED = re.compile(r"\x1f([0-9]+)\x1f")
_CONTINUATION = re.compile(r"\\\r?\n")


@lru_cache(maxsize=4096)
def parameter_split(entry: str) -> list[str]:
    """One parameter entry that starts with an option, as GPUStack splits it."""
    masked, values = _mask_json(entry)
    masked = _CONTINUATION.sub(" ", masked)
    stripped = masked.rstrip()
    if (len(stripped) - len(stripped.rstrip("\\"))) % 2 == 1:
        masked = stripped[:-1]
    words = shell_words(masked)
    if not values:
        return words
    return [_MASKED.sub(lambda m: values[int(m.group(1))], word) for word in words]


def _mask_json(text: str) -> tuple[str, list[str]]:
    """``text`` with each JSON value after ``=`` replaced by a marker, and the values.

    The value runs to its closing bracket, counted outside strings; an unclosed one
    runs to the end of the text (as in GPUStack). Linear: each character is read once.
    """
    if _MASK in text:
        raise TemplateError("a parameter holds a control character")
    out: list[str] = []
    values: list[str] = []
    position = 0
    while True:
        found = _JSON_START.search(text, position)
        if found is None:
            out.append(text[position:])
            return "".join(out), values
        start = found.start() + 1
        depth = 0
        in_string = False
        end = len(text)
        for token in _JSON_TOKEN.finditer(text, start):
            piece = token.group()
            if piece[0] == "\\":
                continue
            if piece == '"':
                in_string = not in_string
            elif in_string:
                continue
            elif piece in "{[":
                depth += 1
            elif piece in "}]":
                depth -= 1
                if depth == 0:
                    end = token.end()
                    break
        out.append(text[position:start])
        out.append(f"{_MASK}{len(values)}{_MASK}")
        values.append(text[start:end])
        position = end


@lru_cache(maxsize=4096)
def normalised_parameters(words: tuple[str, ...], style: str | None) -> tuple[str, ...]:
    """:func:`normalise_parameters`, cached: deployments of a backend share their words."""
    return tuple(normalise_parameters(list(words), style))


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
