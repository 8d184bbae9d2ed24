"""Stage 1: YAML files → plain documents that remember where every node came from.

Only plain YAML is read: mappings, sequences and the core scalar types. Any tag that
would build an object is an error, duplicate keys are an error, and alias expansion
is bounded so that a "billion laughs" file fails fast instead of eating memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from compiler.errors import ErrorList, FleetformError, LoadError, Mark

Kind = Literal["backend", "deployment", "host", "settings"]

FOLDERS: dict[Kind, str] = {
    "backend": "backends.d",
    "deployment": "deployments.d",
    "host": "hosts.d",
}
SETTINGS_FILE = "fleetform.yaml"

# Nodes reached a second time through an alias; real files stay far below this.
MAX_ALIAS_EXPANSION = 10_000
MAX_DEPTH = 100

KeyPath = tuple[str | int, ...]

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The safe loader, with yaml's tag resolution cut down to what it can meet.

    ``resolve`` runs for every node of every file. The safe loader has no path and
    no wildcard resolvers, so a node's tag depends only on its kind and, for a plain
    scalar, on the implicit resolvers for its first character.
    """

    _implicit = yaml.SafeLoader.yaml_implicit_resolvers
    assert None not in _implicit and not yaml.SafeLoader.yaml_path_resolvers

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode:
            if implicit[0] and value[:1] in self._implicit:
                return _implicit_tag(value)
            return _STR_TAG
        return _MAP_TAG if kind is yaml.MappingNode else _SEQ_TAG


@lru_cache(maxsize=4096)
def _implicit_tag(value: str) -> str:
    """The tag of a plain scalar whose first character some implicit type starts with.

    Cached: such scalars are mostly a few words (keys such as ``name``, ``true``).
    """
    for tag, regexp in _Loader._implicit[value[:1]]:
        if regexp.match(value):
            return str(tag)
    return _STR_TAG


_CONSTRUCTOR: yaml.SafeLoader | None = None


def _constructor() -> yaml.SafeLoader:
    """One shared constructor for typed scalars (int, float, bool, null)."""
    global _CONSTRUCTOR
    if _CONSTRUCTOR is None:
        _CONSTRUCTOR = yaml.SafeLoader("")
    return _CONSTRUCTOR


_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}
_TEXT_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:timestamp")
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class SourceMap:
    """Where each node of one document sits in its file, by key path.

    Positions are kept packed in one int (``line << 20 | column``, both 1-based) and
    made into a :class:`Mark` only when asked for. A large fleet has millions of nodes
    and a compile that succeeds asks for none but each document's root, so the tables
    of the others are filled on the first question, from the file composed again.
    """

    file: str
    root: int = 1 << 20 | 1  # the document's own position, which every compile asks for
    # The text of scalars that YAML read as numbers or booleans, as written.
    raw: dict[KeyPath, str] = field(default_factory=dict)
    # Each node's and each key's position; read them through mark().
    values: dict[KeyPath, int] = field(default_factory=dict)
    keys: dict[KeyPath, int] = field(default_factory=dict)
    # Where to find the tables still to fill: the file, and the object's place in it.
    pending: tuple[_FilePositions, int] | None = field(default=None, repr=False, compare=False)

    def mark(self, path: KeyPath, *, key: bool = False) -> Mark:
        """The position of ``path``, or of its nearest ancestor that has one."""
        if not path:
            return self._unpack(self.root)
        if self.pending is not None:
            positions, index = self.pending
            found = positions.of_object(index)
            self.values, self.keys, self.pending = found.values, found.keys, None
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return self._unpack(table[probe])
            if key and probe in self.values:
                return self._unpack(self.values[probe])
            probe = probe[:-1]
        if () in self.values:
            return self._unpack(self.values[()])
        return Mark(self.file, 1, 1)

    def _unpack(self, position: int) -> Mark:
        return Mark(self.file, position >> 20, position & 0xFFFFF)


@dataclass
class Document:
    """One backend, deployment or host object as written, with its source map."""

    kind: Kind
    value: dict[str, Any]
    source: SourceMap

    @property
    def file(self) -> str:
        return self.source.file

    @property
    def mark(self) -> Mark:
        return self.source.mark(())


@dataclass
class RawRepo:
    """Everything read from a repository, before validation."""

    root: Path
    settings: Document | None
    documents: list[Document]

    def of_kind(self, kind: Kind) -> list[Document]:
        return [doc for doc in self.documents if doc.kind == kind]


def load_repo(root: Path) -> RawRepo:
    """Read every document of the repository at ``root``; all load errors at once."""
    errors: list[FleetformError] = []
    documents: list[Document] = []
    for kind, folder in FOLDERS.items():
        for path in yaml_files(root / folder):
            try:
                documents.extend(load_file(path, root, kind))
            except FleetformError as error:
                errors.append(error)
    settings: Document | None = None
    settings_path = root / SETTINGS_FILE
    if settings_path.is_file():
        try:
            found = list(load_objects(settings_path, root))
            if len(found) > 1:
                raise LoadError("expected one settings mapping", found[1][1].mark(()))
            if found:
                settings = Document("settings", found[0][0], found[0][1])
        except FleetformError as error:
            errors.append(error)
    if errors:
        raise ErrorList(errors)
    return RawRepo(root, settings, documents)


def load_file(path: Path, root: Path, kind: Kind) -> list[Document]:
    """The objects in one file (one mapping, a list, or several ``---`` documents)."""
    return [Document(kind, value, source) for value, source in load_objects(path, root)]


def load_objects(path: Path, root: Path) -> Iterator[tuple[dict[str, Any], SourceMap]]:
    name = _display_name(path, root)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        before = error.object[: error.start]
        line = before.count(b"\n") + 1
        column = error.start - (before.rfind(b"\n") + 1) + 1
        raise LoadError(f"not UTF-8 text ({error.reason})", Mark(name, line, column)) from None
    except OSError as error:
        raise LoadError(f"cannot read: {error.strerror}", Mark(name, 1, 1)) from None
    yield from parse_objects(text, name)


def parse_objects(text: str, name: str) -> Iterator[tuple[dict[str, Any], SourceMap]]:
    """Parse YAML ``text`` (reported as file ``name``) into mappings with source maps."""
    positions = _FilePositions(text, name)
    for index, node in enumerate(_objects(_compose(text, name))):
        value, source = _object(node, name, positions.shared)
        source.pending = (positions, index)
        yield value, source


def _compose(text: str, name: str) -> list[yaml.Node]:
    try:
        return list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        position = _mark(name, mark) if mark is not None else Mark(name, 1, 1)
        problem = error.problem or error.context or "invalid YAML"
        if error.problem and error.context and error.context_mark is not None:
            where = error.context_mark
            problem += f" ({error.context} at line {where.line + 1}, column {where.column + 1})"
        raise LoadError(f"YAML syntax error: {problem}", position) from None
    except RecursionError:
        raise _too_deep(text, name) from None
    except yaml.YAMLError as error:
        raise LoadError(f"YAML syntax error: {error}", Mark(name, 1, 1)) from None


def _objects(nodes: list[yaml.Node]) -> Iterator[yaml.Node]:
    """The objects of a file's documents: each document, or each item of a list."""
    for node in nodes:
        if node is None:
            continue
        if isinstance(node, yaml.SequenceNode):
            yield from node.value
        else:
            yield node


def _too_deep(text: str, name: str) -> LoadError:
    """Where nesting first passes MAX_DEPTH, found from the (non-recursive) event stream."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                return LoadError(
                    f"YAML nesting is deeper than {MAX_DEPTH} levels", _mark(name, event.start_mark)
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    return LoadError(f"YAML nesting is deeper than {MAX_DEPTH} levels", Mark(name, 1, 1))


def _object(node: yaml.Node, name: str, shared: bool) -> tuple[dict[str, Any], SourceMap]:
    source = SourceMap(name, _pack(node.start_mark))
    try:
        value = _Builder(source, shared).build(node, ())
    except LoadError:
        # Again with every position recorded, so that the error names its place.
        _Builder(SourceMap(name, source.root), shared, record=True).build(node, ())
        raise
    if not isinstance(value, dict):
        raise LoadError(f"expected a mapping, got {_describe(value)}", _mark(name, node.start_mark))
    return value, source


class _FilePositions:
    """A file's text, kept to find its objects' positions when first asked for."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.shared = "&" in text  # an alias needs an anchor
        self._maps: list[SourceMap] | None = None

    def of_object(self, index: int) -> SourceMap:
        """The source map, every position recorded, of the file's object ``index``."""
        if self._maps is None:
            self._maps = []
            for node in _objects(_compose(self.text, self.name)):
                source = SourceMap(self.name, _pack(node.start_mark))
                _Builder(source, self.shared, record=True).build(node, ())
                self._maps.append(source)
        return self._maps[index]


class _Builder:
    """Turns a composed YAML node tree into plain values, filling the source map."""

    def __init__(self, source: SourceMap, shared: bool, *, record: bool = False) -> None:
        self.source = source
        # Only a file with anchors can reach a node twice (through aliases), so only
        # there are expansions counted and recursion looked for.
        self.shared = shared
        self.record = record  # fill the source map's position tables
        self.seen: set[int] = set()
        self.active: set[int] = set()
        self.expanded = 0

    def build(self, node: yaml.Node, path: KeyPath, depth: int = 0) -> Any:
        source = self.source
        if self.record and path not in source.values:
            source.values[path] = _pack(node.start_mark)
        if depth > MAX_DEPTH:
            top = path[:1]
            raise LoadError(
                f"YAML nesting is deeper than {MAX_DEPTH} levels", source.mark(top), _dotted(top)
            )
        if self.shared:
            return self._visit(node, path, depth)
        return self._value(node, path, depth)

    def _visit(self, node: yaml.Node, path: KeyPath, depth: int) -> Any:
        """:meth:`_value`, for a node that aliases may reach more than once."""
        node_id = id(node)
        if node_id in self.seen:
            self.expanded += 1
            if self.expanded > MAX_ALIAS_EXPANSION:
                raise LoadError(
                    f"aliases expand to more than {MAX_ALIAS_EXPANSION} nodes"
                    " (a 'billion laughs' file?)",
                    self._mark(node),
                    _dotted(path[:1]),
                )
            if node_id in self.active:
                raise LoadError("recursive alias", self._mark(node), _dotted(path))
        self.seen.add(node_id)
        self.active.add(node_id)
        try:
            return self._value(node, path, depth)
        finally:
            self.active.discard(node_id)

    def _value(self, node: yaml.Node, path: KeyPath, depth: int) -> Any:
        if type(node) is yaml.ScalarNode:
            return self._scalar(node, path)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if node.tag != _SEQ_TAG:
            raise LoadError(_tag_message(node.tag), self._mark(node), _dotted(path))
        return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]

    def _mark(self, node: yaml.Node) -> Mark:
        return _mark(self.source.file, node.start_mark)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[str, Any]:
        if node.tag != _MAP_TAG:
            raise LoadError(
                _tag_message(node.tag), _mark(self.source.file, node.start_mark), _dotted(path)
            )
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        keys = self.source.keys
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.update(self._merge(value_node, path, depth))
                continue
            if type(key_node) is not yaml.ScalarNode:
                raise LoadError("mapping keys must be plain scalars", self._mark(key_node))
            key = str(key_node.value)
            here = path + (key,)
            if key in result:
                first = self.source.mark(here, key=True)
                raise LoadError(
                    f"duplicate key '{key}' (first defined at line {first.line})",
                    self._mark(key_node),
                    _dotted(here),
                )
            if self.record:
                keys[here] = _pack(key_node.start_mark)
            result[key] = self.build(value_node, here, depth + 1)
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def _merge(self, node: yaml.Node, path: KeyPath, depth: int) -> dict[str, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in reversed(sources):
            value = self.build(source, path, depth + 1)
            if not isinstance(value, dict):
                raise LoadError(
                    "'<<' merges mappings only", _mark(self.source.file, source.start_mark)
                )
            merged.update(value)
        return merged

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise LoadError(
                _tag_message(node.tag), _mark(self.source.file, node.start_mark), _dotted(path)
            )
        text = str(node.value)
        if node.tag in _TEXT_TAGS:
            return text
        self.source.raw[path] = text
        constructor = _constructor()
        try:
            return constructor.construct_object(node, deep=True)
        finally:
            constructor.constructed_objects.clear()  # it would keep every node alive


def _tag_message(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    return f"unsupported YAML tag '{shown}': fleetform reads plain YAML only"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _mark(name: str, mark: Any) -> Mark:
    return Mark(name, mark.line + 1, mark.column + 1)


def _pack(mark: Any) -> int:
    """A YAML mark as ``SourceMap``'s packed 1-based position."""
    line: int = mark.line + 1
    column: int = mark.column + 1
    return line << 20 | (column if column < 0xFFFFF else 0xFFFFF)


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


dotted = _dotted


def _display_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def yaml_files(folder: Path) -> list[Path]:
    """YAML files below ``folder``, sorted; names starting with ``.`` or ``_`` skipped."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if any(part.startswith((".", "_")) for part in relative):
            continue
        if path.suffix in (".yaml", ".yml") and path.is_file():
            found.append(path)
    return sorted(found)
