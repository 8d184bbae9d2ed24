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
        return ": ".join(parts)


class LoadError(FleetformError):
    """YAML that cannot be read: syntax, duplicate keys, unsafe tags, alias bombs."""


class ValidationError(FleetformError):
    """A document that does not match its schema (unknown key, wrong type, bad value)."""


class ResolveError(FleetformError):
    """Inheritance, placeholders or placement that cannot be resolved."""


class OutputError(FleetformError):
    """The output folder cannot be written or read."""


class HostError(FleetformError):
    """A live host could not be observed or changed."""


class PlanError(FleetformError):
    """A plan that cannot be made, read or carried out as it stands."""


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
