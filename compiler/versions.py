"""Which backend version a deployment runs when it names none: GPUStack's choice.

A backend with no ``default_version`` and several versions runs, in GPUStack 2.3.0, the
"latest" by ``gpustack_runtime.deployer.__utils__.compare_versions`` (0.2.6), scanned in
the order the versions are written (``InferenceBackend.resolve_target_version``).
fleetform follows it exactly, so that a backend pasted from GPUStack runs the same image
here: never a silently different pick. Its order is not semver's — ``1.9rc1`` sorts
above ``1.10``, ``2.0.0rc1`` above ``2.0.0``, ``x-sm120`` above ``x`` — which is why
``explain`` names the rule, and the README advises setting ``default_version``.

Hand-written, not imported: the function is 40 lines of a package (gpustack-runtime)
whose import pulls in docker, kubernetes and the vendors' management libraries.
tests/test_gpustack_parity.py holds this copy to GPUStack's own, run as the oracle.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

_Part = int | list[int]


def compare_versions(v1: str | None, v2: str | None) -> int:
    """-1, 0 or 1 as ``v1`` is lower than, equal to or higher than ``v2``, in
    gpustack_runtime's order: a leading ``v`` dropped; ``-``, ``_``, ``+`` and ``.``
    separate parts; a part of digits is a number; ``alpha``/``beta``/``rc`` parts sort
    below a number; any other part compares by its characters' code points, above any
    number it is compared with when its first character is above the number; missing
    parts count as 0.

    May raise (a part such as ``²`` passes ``isdigit`` but is no ``int``), as GPUStack's
    does; :func:`gpustack_latest` then falls back to text order, as GPUStack does.
    """
    a = (v1 or "").removeprefix("v")
    b = (v2 or "").removeprefix("v")
    if a == b:
        return 0
    parts1 = list(_explode(a))
    parts2 = list(_explode(b))
    if len(parts1) > len(parts2):
        parts2.extend([0] * (len(parts1) - len(parts2)))
    elif len(parts2) > len(parts1):
        parts1.extend([0] * (len(parts2) - len(parts1)))
    for p1, p2 in zip(parts1, parts2, strict=True):
        left = p1 if isinstance(p1, list) or not isinstance(p2, list) else [p1]
        right = p2 if isinstance(p2, list) or not isinstance(p1, list) else [p2]
        if left < right:  # type: ignore[operator]
            return -1
        if left > right:  # type: ignore[operator]
            return 1
    return 0


@functools.lru_cache(maxsize=4096)
def _explode(version: str) -> tuple[_Part, ...]:
    text = version.replace("-", ".").replace("_", ".").replace("+", ".")
    parts: list[_Part] = []
    for part in text.split("."):
        if part.isdigit():
            parts.append(int(part))
        elif part.startswith("alpha"):
            parts.append([-3, *(ord(c) for c in part[5:])])
        elif part.startswith("beta"):
            parts.append([-2, *(ord(c) for c in part[4:])])
        elif part.startswith("rc"):
            parts.append([-1, *(ord(c) for c in part[2:])])
        else:
            parts.append([ord(c) for c in part])
    return tuple(parts)


def gpustack_latest(versions: Iterable[str]) -> str:
    """The version GPUStack 2.3.0 runs for a backend with no default_version: the first
    of ``versions`` (in written order) that no later one compares above."""
    ordered = list(versions)
    try:
        latest = ordered[0]
        for version in ordered[1:]:
            if compare_versions(version, latest) > 0:
                latest = version
        return latest
    except Exception:  # GPUStack's own fallback, for the same failures
        return sorted(ordered)[-1]
