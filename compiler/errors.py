"""One root error; one class per pipeline stage.

Every expected failure is a :class:`FleetformError`. Configuration errors carry the
source position (file, line, column) and the dotted key path they are about, and
print as one line: ``file:line:col: key.path: message``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class Mark:
    """A position in a source file; line and column are 1-based."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class FleetformError(Exception):
    """The root of every error fleetform expects and reports without a traceback."""

    def __init__(
        self, message: str, mark: Mark | None = None, key: str = "", *, same_as: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.key = key
        # Errors with equal identities are one mistake, reported once.
        self.identity = same_as or f"{mark}|{key}|{message}"

    def __str__(self) -> str:
        parts = []
        if self.mark is not None:
            parts.append(str(self.mark))
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        # One line, whatever a file name or a quoted value holds: a line break or a
        # terminal escape in it could otherwise forge further lines of output.
        return printable(": ".join(parts))


class LoadError(FleetformError):
    """YAML that cannot be read: syntax, duplicate keys, unsafe tags, alias bombs."""


class ValidationError(FleetformError):
    """A document that does not match its schema (unknown key, wrong type, bad value)."""


class ResolveError(FleetformError):
    """Inheritance, placeholders or placement that cannot be resolved."""


class OutputError(FleetformError):
    """The output folder cannot be written or read."""


class FleetformWarning(UserWarning):
    """Something fleetform set aside and went on without (an ignored index, a wait).

    Raised through :mod:`warnings`, so a library user filters or records it as any other
    warning; the CLI prints each as its one line on stderr.
    """


class ErrorList(FleetformError):
    """Several independent errors found in one pass, reported together."""

    def __init__(self, errors: list[FleetformError]) -> None:
        # The same mistake met through several deployments is reported once.
        flat = [item for error in errors for item in flatten(error)]
        unique = {error.identity: error for error in reversed(flat)}
        ordered = sorted(unique.values(), key=_error_order)
        super().__init__(str(ordered[0]) if ordered else "no errors")
        self.errors = ordered

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


def _error_order(error: FleetformError) -> tuple[str, int, int, str]:
    if error.mark is None:
        return ("", 0, 0, str(error))
    return (error.mark.file, error.mark.line, error.mark.column, str(error))


def flatten(error: FleetformError) -> list[FleetformError]:
    """The individual errors behind ``error``, in reporting order."""
    if isinstance(error, ErrorList):
        return list(error.errors)
    return [error]


def printable(text: str) -> str:
    """``text`` with each character a terminal would not print as itself (line breaks,
    tabs, escapes, bidirectional controls) written as a backslash escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else escape(char) for char in text)


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape(char: str) -> str:
    """One character as a C-style escape: ``\\n``, ``\\x1b``, ``\\u202e``."""
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def describe(error: BaseException) -> str:
    """One line for an unexpected error: its message, else its kind."""
    message = error.message if isinstance(error, FleetformError) else str(error)
    return " ".join((message or type(error).__name__).split())[:400]
