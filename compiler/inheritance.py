"""``extends`` chains: every deployment's (or backend's) ancestors, root first.

The graph is the repository's, so a pull request controls its depth and shape. The
walk is iterative (no recursion on user-controlled depth), each name's chain is made
once and shared by everything that inherits from it (a diamond 30 levels deep is 60
chains, not 2^30 walks), and chains are bounded in depth and size.
"""

from __future__ import annotations

from collections.abc import Mapping

from compiler.errors import FleetformError, Mark, ResolveError
from compiler.load import Document

# How many levels of extends one chain may have, and how many ancestors in all.
MAX_DEPTH = 32
MAX_ANCESTORS = 256


class _CycleError(ResolveError):
    def __init__(self, message: str, mark: Mark, key: str, cycle: tuple[str, ...]) -> None:
        super().__init__(message, mark, key)
        self.members = frozenset(cycle)


def chains(
    names: list[str],
    parents_of: dict[str, list[str]],
    docs: Mapping[str, Document],
    what: str,
    errors: list[FleetformError],
) -> dict[str, list[str]]:
    """The chain of every one of ``names``: its ancestors, root first, each once (its
    first occurrence kept), then the name itself. For ``extends: [a, b]``, ``a``'s chain
    comes before ``b``'s, so ``b`` wins where they differ.

    ``parents_of`` holds every known name's ``extends``; ``docs`` each name's document.
    A broken chain is reported once in ``errors`` (a cycle once in all, whichever
    names reach it) and its name left out of the result.
    """
    done: dict[str, list[str] | ResolveError] = {}
    found: dict[str, list[str]] = {}
    reported: set[str] = set()
    for name in names:
        result = _walk(name, parents_of, docs, what, done)
        if isinstance(result, list):
            found[name] = result
            continue
        identity = str(sorted(result.members)) if isinstance(result, _CycleError) else str(result)
        if identity not in reported:
            reported.add(identity)
            errors.append(result)
    return found


def _walk(
    start: str,
    parents_of: dict[str, list[str]],
    docs: Mapping[str, Document],
    what: str,
    done: dict[str, list[str] | ResolveError],
) -> list[str] | ResolveError:
    """``start``'s chain (or the error that breaks it), filling ``done`` on the way:
    a depth-first walk with an explicit stack, parents in the order written."""
    if start in done:
        return done[start]
    path = [start]  # the names being walked, each a parent of the one before
    on_path = {start}
    stack: list[tuple[str, int]] = [(start, 0)]
    while stack:
        name, next_parent = stack.pop()
        parents = parents_of.get(name, [])
        failure: ResolveError | None = None
        descended = False
        while next_parent < len(parents):
            parent = parents[next_parent]
            if parent not in parents_of:
                failure = _unknown(name, parent, parents_of, docs, what)
                break
            if parent in on_path:
                cycle = (*path[path.index(parent) :], parent)
                mark = docs[cycle[0]].source.mark(("extends",))
                failure = _CycleError(f"cycle {' -> '.join(cycle)}", mark, "extends", cycle)
                break
            known = done.get(parent)
            if known is None:
                if len(path) > MAX_DEPTH:
                    shown = [*path[:2], "…", *path[-2:]] if len(path) > 4 else path
                    failure = ResolveError(
                        f"more than {MAX_DEPTH} levels of inheritance"
                        f" ({' -> '.join(shown)} -> {parent} -> …)",
                        docs[path[0]].source.mark(("extends",)),
                        "extends",
                    )
                    break
                stack.append((name, next_parent))
                stack.append((parent, 0))
                path.append(parent)
                on_path.add(parent)
                descended = True
                break
            if isinstance(known, ResolveError):
                failure = known
                break
            next_parent += 1
        if failure is not None:
            # Everything on the path inherits the failure; the walk ends here.
            for member in path:
                done[member] = failure
            return failure
        if not descended:
            done[name] = _own_chain(name, parents, done, docs, what)
            path.pop()
            on_path.discard(name)
    return done[start]


def _own_chain(
    name: str,
    parents: list[str],
    done: Mapping[str, list[str] | ResolveError],
    docs: Mapping[str, Document],
    what: str,
) -> list[str] | ResolveError:
    order: dict[str, None] = {}
    for parent in parents:
        chain = done[parent]
        assert isinstance(chain, list)
        order.update(dict.fromkeys(chain))
        if len(order) > MAX_ANCESTORS:
            return ResolveError(
                f"{what} '{name}' inherits from more than {MAX_ANCESTORS} {what}s",
                docs[name].source.mark(("extends",)),
                "extends",
            )
    order[name] = None
    return list(order)


def _unknown(
    name: str,
    parent: str,
    parents_of: dict[str, list[str]],
    docs: Mapping[str, Document],
    what: str,
) -> ResolveError:
    known = sorted(parents_of)
    shown = ", ".join(known[:20]) or "none"
    if len(known) > 20:
        shown += f", … ({len(known) - 20} more)"
    return ResolveError(
        f"unknown {what} '{parent}' (known: {shown})",
        docs[name].source.mark(("extends",)),
        "extends",
    )
