"""The benchmark suites that ``bench/run.py`` runs: each measures, then renders its results.

A suite module has a ``run(...)`` that returns a :class:`Report`; the driver writes it to
the suite's results file and sets the exit status.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Report:
    markdown: str  # the results file, as printed
    passed: bool  # every target met and every step went right


class Unavailable(RuntimeError):
    """This machine lacks what the suite needs; nothing was measured."""
