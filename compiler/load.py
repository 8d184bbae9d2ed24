"""Stage 1: YAML files → plain documents that remember where every node came from.

Only plain YAML is read: mappings, sequences and the core scalar types. Any tag that
would build an object is an error, duplicate keys are an error, and alias expansion
is bounded so that a "billion laughs" file fails fast instead of eating memory.

The repository is untrusted (a pull request): every input ends in documents or in a
one-line :class:`LoadError` at its ``file:line:col``, within bounded time and memory.
Files are read without following symbolic links, up to a size limit; nesting depth
and node counts are checked while libyaml composes (its composer recurses in C, and
crashes the process (SIGSEGV) past ~30,000 levels; its scanner is quadratic in flow
depth), before any recursion of ours; alias expansion is counted per file and per
repository; text that YAML escapes could smuggle in (NUL, terminal escapes) is refused.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.reader import ReaderError

from compiler.errors import ErrorList, FleetformError, LoadError, Mark

Kind = Literal["backend", "deployment", "host", "settings"]

FOLDERS: dict[Kind, str] = {
    "backend": "backends.d",
    "deployment": "deployments.d",
    "host": "hosts.d",
}
SETTINGS_FILE = "fleetform.yaml"

# Limits on what one repository may make the loader do. The benchmark's fleet of 10,000
# deployments (bench/fleets/synthetic.py) is 4.1 MB of YAML in 131 files, 364,000 nodes; its
# largest file is 38 KB. One file holding that whole fleet would be 3.7 MB, 330,000 nodes.
MAX_FILE_BYTES = 16 * 2**20
MAX_REPO_BYTES = 128 * 2**20  # every file's bytes, plus the text aliases repeat
MAX_FILES = 100_000  # YAML files in the repository
# Composing costs ~3 µs and ~300 bytes per node (libyaml's nodes and their marks).
MAX_NODES = 500_000  # per file, as written
MAX_REPO_NODES = 2_000_000  # every file's nodes, plus the nodes aliases repeat
# Linux's MAX_ARG_STRLEN: no argument or environment entry can be longer anyway.
MAX_SCALAR_BYTES = 128 * 1024
MAX_DEPTH = 100
# Nodes reached again through an alias, in one file (by all its objects together: 3,000
# objects aliasing one anchor of 9,999 nodes took 94 s and 2.4 GB with a budget per
# object). 100 nodes merged (``<<: *defaults``) into each of 1,000 objects is fine.
MAX_ALIAS_EXPANSION = 100_000
# Characters of text that aliases repeat, in one file: no more than a file may hold.
MAX_ALIAS_TEXT = MAX_FILE_BYTES
# Python's own limit for int(str) (sys.int_info.default_max_str_digits).
MAX_INT_DIGITS = 4300
_INT_LIMIT = 10**MAX_INT_DIGITS

KeyPath = tuple[str | int, ...]

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"


class _Overflow(Exception):
    """Raised inside libyaml's composer: a limit was passed at ``mark``."""

    def __init__(self, limit: str, mark: Any) -> None:
        super().__init__(limit)
        self.limit = limit
        self.mark = mark


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The safe loader, with yaml's tag resolution cut down to what it can meet.

    ``resolve`` runs for every node of every file. The safe loader has no path and
    no wildcard resolvers, so a node's tag depends only on its kind and, for a plain
    scalar, on the implicit resolvers for its first character.
    """

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode:
            if implicit[0] and value[:1] in _IMPLICIT:
                return _implicit_tag(value)
            return _STR_TAG
        return _MAP_TAG if kind is yaml.MappingNode else _SEQ_TAG


_IMPLICIT = yaml.SafeLoader.yaml_implicit_resolvers
assert None not in _IMPLICIT and not yaml.SafeLoader.yaml_path_resolvers


def _limit_composing(loader: _Loader, nodes: int) -> Callable[[], int]:
    """Stop ``loader`` past _COMPOSE_DEPTH levels or ``nodes`` nodes; returns a function
    that tells how many nodes it composed.

    yaml calls ``descend_resolver`` and ``ascend_resolver`` around every node that is
    not an alias (no-ops there: there are no path resolvers), in the C composer too:
    the one place to stop composing before its recursion goes deep. They are closures
    set on the instance, not methods: an attribute of a subclass of the C parser costs
    a walk of its bases on every access, which made them 15% of the load.
    """
    depth = 0
    left = nodes

    def descend(current_node: Any, current_index: Any) -> None:
        nonlocal depth, left
        depth += 1
        left -= 1
        if depth > _COMPOSE_DEPTH or left < 0:
            mark = current_node.start_mark if current_node is not None else None
            raise _Overflow("depth" if depth > _COMPOSE_DEPTH else "nodes", mark)

    def ascend() -> None:
        nonlocal depth
        depth -= 1

    loader.descend_resolver = descend
    loader.ascend_resolver = ascend
    return lambda: nodes - left


# The builder counts depth from each object (a document, or an item of a document's
# list) and stops past MAX_DEPTH; composing stops once no object could be shallower.
_COMPOSE_DEPTH = MAX_DEPTH + 2


@lru_cache(maxsize=4096)
def _implicit_tag(value: str) -> str:
    """The tag of a plain scalar whose first character some implicit type starts with.

    Cached: such scalars are mostly a few words (keys such as ``name``, ``true``).
    """
    for tag, regexp in _IMPLICIT[value[:1]]:
        if regexp.match(value):
            # A plain '=' is yaml's !!value, which nothing constructs: it is text.
            return _STR_TAG if tag == _VALUE_TAG else str(tag)
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
_VALUE_TAG = "tag:yaml.org,2002:value"
_NULL_TAG = "tag:yaml.org,2002:null"
_INT_TAG = "tag:yaml.org,2002:int"
_NULL_TEXT = ("", "~", "null", "Null", "NULL")
# What YAML escapes ("\0", "\e", "\x9b", "\N") can put in text and no value needs:
# NUL and the other C0 controls but TAB, LF and CR; DEL; the C1 controls (ESC and CSI
# start terminal sequences); lone surrogates (Python's own YAML reader lets \ud800 in).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# A key is a name: no line breaks or tabs either.
_KEY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


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


@dataclass
class _Budget:
    """What a repository may still make the loader do; shared by all its files."""

    files: int = MAX_FILES
    bytes: int = MAX_REPO_BYTES
    nodes: int = MAX_REPO_NODES


def load_repo(root: Path) -> RawRepo:
    """Read every document of the repository at ``root``; all load errors at once."""
    errors: list[FleetformError] = []
    documents: list[Document] = []
    budget = _Budget()
    for kind, folder in FOLDERS.items():
        paths, problems = _walk(root / folder, root, budget)
        errors.extend(problems)
        for path in paths:
            try:
                documents.extend(load_file(path, root, kind, budget))
            except FleetformError as error:
                errors.append(error)
    settings: Document | None = None
    settings_path = root / SETTINGS_FILE
    if os.path.lexists(settings_path):
        try:
            found = list(load_objects(settings_path, root, budget))
            if len(found) > 1:
                raise LoadError("expected one settings mapping", found[1][1].mark(()))
            if found:
                settings = Document("settings", found[0][0], found[0][1])
        except FleetformError as error:
            errors.append(error)
    if errors:
        raise ErrorList(errors)
    return RawRepo(root, settings, documents)


def load_file(path: Path, root: Path, kind: Kind, budget: _Budget | None = None) -> list[Document]:
    """The objects in one file (one mapping, a list, or several ``---`` documents)."""
    return [Document(kind, value, source) for value, source in load_objects(path, root, budget)]


def load_objects(
    path: Path, root: Path, budget: _Budget | None = None
) -> Iterator[tuple[dict[str, Any], SourceMap]]:
    name = _display_name(path, root)
    budget = budget or _Budget()
    data = _read(path, name)
    budget.bytes -= len(data)
    if budget.bytes < 0:
        raise LoadError(
            f"the repository's YAML files hold more than {MAX_REPO_BYTES} bytes"
            " (with the text aliases repeat)",
            Mark(name, 1, 1),
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = error.object[: error.start]
        line = before.count(b"\n") + 1
        column = error.start - (before.rfind(b"\n") + 1) + 1
        raise LoadError(f"not UTF-8 text ({error.reason})", Mark(name, line, column)) from None
    yield from parse_objects(text, name, budget, size=len(data))


def _read(path: Path, name: str) -> bytes:
    """The bytes of the regular file at ``path``, read without following a symbolic
    link, without blocking on a FIFO, and no more than MAX_FILE_BYTES of them."""
    at = Mark(name, 1, 1)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LoadError(_LINK_MESSAGE, at) from None
        raise LoadError(f"cannot read: {error.strerror}", at) from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise LoadError(f"cannot read: not a regular file ({_file_type(mode)})", at)
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise LoadError(f"cannot read: {error.strerror}", at) from None
    finally:
        os.close(descriptor)
    if len(data) > MAX_FILE_BYTES:
        raise LoadError(f"file is larger than {MAX_FILE_BYTES} bytes", at)
    return data


_LINK_MESSAGE = (
    "is a symbolic link; fleetform follows no links (every file it reads is inside the repository)"
)


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


def parse_objects(
    text: str, name: str, budget: _Budget | None = None, *, size: int | None = None
) -> Iterator[tuple[dict[str, Any], SourceMap]]:
    """Parse YAML ``text`` (reported as file ``name``) into mappings with source maps.

    ``size`` is the text's length in UTF-8 bytes, when known.
    """
    budget = budget or _Budget()
    if size is None:
        size = len(text.encode("utf-8", "surrogatepass"))
    positions = _FilePositions(text, name, size)
    objects = list(_objects(_compose(text, name, budget)))
    expansion = _Expansion(text, size, budget)
    for index in range(len(objects)):
        value, source = _object(objects, index, name, expansion)
        source.pending = (positions, index)
        yield value, source


def _compose(text: str, name: str, budget: _Budget | None = None) -> list[yaml.Node]:
    """The file's documents as node trees (None for an empty document)."""
    allowed = MAX_NODES if budget is None else min(MAX_NODES, budget.nodes)
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # yaml's Python reader checks the characters here
        composed = _limit_composing(loader, allowed)
        nodes: list[yaml.Node] = []
        while loader.check_node():
            nodes.append(loader.get_node())
    except _Overflow as overflow:
        if overflow.limit == "depth":
            raise _too_deep(text, name) from None
        at = _mark(name, overflow.mark) if overflow.mark is not None else Mark(name, 1, 1)
        if allowed < MAX_NODES:
            raise _too_many_in_repo(at) from None
        raise LoadError(f"YAML file has more than {MAX_NODES} nodes", at) from None
    except ReaderError as error:
        raise _reader_error(error, text, name) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        position = _mark(name, mark) if mark is not None else Mark(name, 1, 1)
        problem = error.problem or error.context or "invalid YAML"
        if error.problem and error.context and error.context_mark is not None:
            where = error.context_mark
            problem += f" ({error.context} at line {where.line + 1}, column {where.column + 1})"
        raise LoadError(f"YAML syntax error: {problem}", position) from None
    except RecursionError:  # yaml's pure-Python composer, should the C one be missing
        raise _too_deep(text, name) from None
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise LoadError(f"YAML syntax error: {problem}", Mark(name, 1, 1)) from None
    finally:
        if loader is not None:
            loader.dispose()
    if budget is not None:
        budget.nodes -= composed()
    return nodes


def _too_many_in_repo(at: Mark, key: str = "") -> LoadError:
    return LoadError(
        f"the repository's YAML has more than {MAX_REPO_NODES} nodes"
        " (with the nodes aliases repeat)",
        at,
        key,
    )


def _reader_error(error: ReaderError, text: str, name: str) -> LoadError:
    """A character YAML does not allow in a file, at its line and column.

    libyaml reports the offset in UTF-8 bytes; yaml's Python reader in characters.
    """
    offset = int(error.position)
    if _BaseLoader is not yaml.SafeLoader:
        offset = len(text.encode("utf-8", "surrogatepass")[:offset].decode("utf-8", "ignore"))
    breaks = list(_LINE_BREAK.finditer(text, 0, offset))
    line = len(breaks) + 1
    column = offset - (breaks[-1].end() if breaks else 0) + 1
    character = error.character
    code = ord(character) if isinstance(character, str) else int(character)
    return LoadError(
        f"YAML syntax error: {_character_name(code)} is not allowed", Mark(name, line, column)
    )


# What YAML counts as a line break (yaml's marks count lines so).
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _character_name(code: int) -> str:
    kind = "surrogate" if 0xD800 <= code <= 0xDFFF else "control character"
    if code > 0x9F and kind != "surrogate":
        kind = "character"
    return f"{kind} U+{code:04X}"


def _objects(nodes: list[yaml.Node]) -> Iterator[yaml.Node]:
    """The objects of a file's documents: each document, or each item of a list.

    An empty document (a trailing ``---``, or only comments) holds no object; so does
    an explicit ``null`` document, the same value written out.
    """
    for node in nodes:
        if node is None or (
            type(node) is yaml.ScalarNode and node.tag == _NULL_TAG and node.value in _NULL_TEXT
        ):
            continue
        if isinstance(node, yaml.SequenceNode):
            yield from node.value
        else:
            yield node


def _too_deep(text: str, name: str) -> LoadError:
    """Where nesting first passes MAX_DEPTH, named as the builder names it.

    Found from the event stream (yaml's parser keeps its own stack, it does not
    recurse); it stops there, before libyaml's scanner goes deep enough to be slow.
    The depth is counted from the object (a document, or an item of a document that
    is a list), the error placed at the value of the object's key that holds it.
    """
    depth = 0  # collections open around the next node
    objects_at = 0  # the depth of a document's objects: 1 when the document is a list
    in_mapping = True  # the object is a mapping (else keys are indexes)
    children = 0  # nodes met directly in the object (keys and values alternate)
    top: KeyPath = ()
    where: Any = None
    for event in yaml.parse(text, Loader=_Loader):
        if not isinstance(event, yaml.NodeEvent):
            if isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            continue
        if depth == 0:
            objects_at = 1 if isinstance(event, yaml.SequenceStartEvent) else 0
        if depth == objects_at:
            in_mapping = isinstance(event, yaml.MappingStartEvent)
            children, top, where = 0, (), event.start_mark
        elif depth == objects_at + 1:
            if not in_mapping:
                top, where = (children,), event.start_mark
            elif children % 2 == 0:
                key = event.value if isinstance(event, yaml.ScalarEvent) else ""
                # Not yet checked: a key that could not be shown on one line is left out.
                top = (key,) if 0 < len(key) <= 200 and not _KEY_CONTROL.search(key) else ()
            else:
                where = event.start_mark
            children += 1
        if depth - objects_at > MAX_DEPTH:
            return LoadError(
                f"YAML nesting is deeper than {MAX_DEPTH} levels", _mark(name, where), _dotted(top)
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
    return LoadError(f"YAML nesting is deeper than {MAX_DEPTH} levels", Mark(name, 1, 1))


class _Expansion:
    """What building one file's objects shares: the nodes reached so far (an alias
    reaches them again) and what alias expansion has cost, against the file's and
    the repository's limits; and which checks the file's text can need."""

    def __init__(self, text: str, size: int, budget: _Budget) -> None:
        # Only a file with anchors can reach a node twice (through aliases), so only
        # there are expansions counted and recursion looked for.
        self.shared = "&" in text
        # YAML's reader refuses control characters in a file; only an escape in a
        # double-quoted scalar (or the escape of a line break, NEL) puts one in text.
        self.escapes = "\\" in text or "\x85" in text
        # Escapes and line folding shrink text, but for "\L" and "\P" (2 → 3 bytes).
        self.long = size * 3 // 2 > MAX_SCALAR_BYTES
        self.budget = budget
        self.seen: set[int] = set()
        self.nodes = 0
        self.text = 0

    def again(self) -> _Expansion:
        """A fresh copy, to build the same objects again with the same outcome."""
        copy = _Expansion("", 0, _Budget())
        copy.shared, copy.escapes, copy.long = self.shared, self.escapes, self.long
        return copy


def _object(
    objects: list[yaml.Node], index: int, name: str, expansion: _Expansion
) -> tuple[dict[str, Any], SourceMap]:
    node = objects[index]
    source = SourceMap(name, _pack(node.start_mark))
    try:
        value = _Builder(source, expansion).build(node, ())
    except LoadError:
        # Again with every position recorded, so that the error names its place; the
        # objects before it first, as they shared the file's alias budget with it.
        again = expansion.again()
        for before in objects[:index]:
            _Builder(SourceMap(name), again).build(before, ())
        _Builder(SourceMap(name, source.root), again, record=True).build(node, ())
        raise
    if not isinstance(value, dict):
        raise LoadError(f"expected a mapping, got {_describe(value)}", _mark(name, node.start_mark))
    return value, source


class _FilePositions:
    """A file's text, kept to find its objects' positions when first asked for."""

    def __init__(self, text: str, name: str, size: int) -> None:
        self.text = text
        self.name = name
        self.size = size
        self._maps: list[SourceMap] | None = None

    def of_object(self, index: int) -> SourceMap:
        """The source map, every position recorded, of the file's object ``index``."""
        if self._maps is None:
            self._maps = []
            expansion = _Expansion(self.text, self.size, _Budget())
            for node in _objects(_compose(self.text, self.name)):
                source = SourceMap(self.name, _pack(node.start_mark))
                _Builder(source, expansion, record=True).build(node, ())
                self._maps.append(source)
        return self._maps[index]


class _Builder:
    """Turns a composed YAML node tree into plain values, filling the source map.

    It recurses, at most MAX_DEPTH levels: composing stopped any deeper text, and
    :meth:`build` stops aliases from nesting deeper.
    """

    def __init__(self, source: SourceMap, expansion: _Expansion, *, record: bool = False) -> None:
        self.source = source
        self.expansion = expansion
        self.shared = expansion.shared
        self.record = record  # fill the source map's position tables
        self.active: set[int] = set()

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
        expansion = self.expansion
        if node_id in expansion.seen:
            if node_id in self.active:
                raise LoadError("recursive alias", self._mark(node), _dotted(path))
            expansion.nodes += 1
            expansion.budget.nodes -= 1
            if type(node) is yaml.ScalarNode:
                expansion.text += len(node.value)
                expansion.budget.bytes -= len(node.value)
            self._check_expansion(node, path)
        expansion.seen.add(node_id)
        self.active.add(node_id)
        try:
            return self._value(node, path, depth)
        finally:
            self.active.discard(node_id)

    def _check_expansion(self, node: yaml.Node, path: KeyPath) -> None:
        expansion = self.expansion
        where = (self._mark(node), _dotted(path[:1]))
        if expansion.nodes > MAX_ALIAS_EXPANSION:
            raise LoadError(
                f"aliases expand to more than {MAX_ALIAS_EXPANSION} nodes"
                " (a 'billion laughs' file?)",
                *where,
            )
        if expansion.text > MAX_ALIAS_TEXT:
            raise LoadError(f"aliases expand to more than {MAX_ALIAS_TEXT} characters", *where)
        if expansion.budget.nodes < 0:
            raise _too_many_in_repo(*where)
        if expansion.budget.bytes < 0:
            raise LoadError(
                f"the repository's YAML files hold more than {MAX_REPO_BYTES} bytes"
                " (with the text aliases repeat)",
                *where,
            )

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
        check = self.expansion.long
        for key_node, value_node in node.value:
            tag = key_node.tag
            if tag == _MERGE_TAG:
                merged.update(self._merge(value_node, path, depth))
                continue
            key = key_node.value
            if tag != _STR_TAG or check or not key.isprintable():
                key = self._key(key_node, path)
            here = path + (key,)
            if key in result:
                first = self.source.mark(here, key=True)
                raise LoadError(
                    f"duplicate key {_shown(key)} (first defined at line {first.line})",
                    self._mark(key_node),
                    _dotted(here),
                )
            if self.record:
                keys[here] = _pack(key_node.start_mark)
            result[key] = self.build(value_node, here, depth + 1)
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def _key(self, node: yaml.Node, path: KeyPath) -> str:
        """A mapping key as written: ``1:`` and ``true:`` are the keys '1' and 'true'."""
        if type(node) is not yaml.ScalarNode:
            raise LoadError("mapping keys must be plain scalars", self._mark(node), _dotted(path))
        if node.tag not in _SCALAR_TAGS:
            raise LoadError(_tag_message(node.tag), self._mark(node), _dotted(path))
        key = str(node.value)
        if not key.isprintable():
            found = _KEY_CONTROL.search(key)
            if found is not None:
                raise LoadError(
                    f"{_character_name(ord(found.group()))} is not allowed in a key"
                    f" ({_shown(key)})",
                    self._mark(node),
                    _dotted(path),
                )
        if self.expansion.long:
            self._check_length(node, key, path)
        return key

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
        tag = node.tag
        if tag not in _SCALAR_TAGS:
            raise LoadError(
                _tag_message(tag), _mark(self.source.file, node.start_mark), _dotted(path)
            )
        text = str(node.value)
        expansion = self.expansion
        if expansion.escapes:
            found = _CONTROL.search(text)
            if found is not None:
                raise LoadError(
                    f"{_character_name(ord(found.group()))} is not allowed",
                    self._mark(node),
                    _dotted(path),
                )
        if expansion.long:
            self._check_length(node, text, path)
        if tag in _TEXT_TAGS:
            return text
        self.source.raw[path] = text
        return self._typed(node, text, path)

    def _check_length(self, node: yaml.Node, text: str, path: KeyPath) -> None:
        if len(text) * 4 > MAX_SCALAR_BYTES and len(text.encode("utf-8")) > MAX_SCALAR_BYTES:
            raise LoadError(
                f"text is longer than {MAX_SCALAR_BYTES} bytes (the most a command-line"
                " argument or an environment variable can hold)",
                self._mark(node),
                _dotted(path),
            )

    def _typed(self, node: yaml.Node, text: str, path: KeyPath) -> Any:
        """An int, float, bool or null scalar, refused with a message if its text is not
        one (``!!int "two"``), or an int too long to print."""
        tag = node.tag
        if tag == _NULL_TAG:
            if text in _NULL_TEXT:
                return None
        elif tag == _INT_TAG and len(text.replace("_", "").lstrip("+-")) > MAX_INT_DIGITS:
            raise LoadError(_too_long_int(), self._mark(node), _dotted(path))
        else:
            constructor = _constructor()
            try:
                value = constructor.construct_object(node, deep=True)
            except (ValueError, LookupError, yaml.YAMLError):
                pass
            else:
                if type(value) is int and value.bit_length() > 14_000 and abs(value) >= _INT_LIMIT:
                    raise LoadError(_too_long_int(), self._mark(node), _dotted(path))
                return value
            finally:
                constructor.constructed_objects.clear()  # it would keep every node alive
        shown = tag.replace("tag:yaml.org,2002:", "!!")
        raise LoadError(f"{_shown(text)} is not a valid {shown}", self._mark(node), _dotted(path))


def _too_long_int() -> str:
    return f"integer has more than {MAX_INT_DIGITS} digits (quote it to make it text)"


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for a one-line message: escaped, and cut when long."""
    if len(text) > limit:
        return repr(text[:limit])[:-1] + "...'"
    return repr(text)


def _tag_message(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    return f"unsupported YAML tag '{shown}': fleetform reads plain YAML only"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"str {_shown(value)}"
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 40 else shown[:40] + '...'}"


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


def yaml_files(folder: Path, root: Path | None = None) -> list[Path]:
    """YAML files below ``folder``, sorted; names starting with ``.`` or ``_`` skipped.

    A symbolic link, or too many files, is an error (:class:`ErrorList`).
    """
    paths, problems = _walk(folder, root if root is not None else folder.parent, _Budget())
    if problems:
        raise ErrorList(problems)
    return paths


def _walk(folder: Path, root: Path, budget: _Budget) -> tuple[list[Path], list[FleetformError]]:
    """The YAML files below ``folder``, and the problems met on the way.

    Iterative, never following a symbolic link: a link (to a file or a folder, inside
    the repository or not) is an error naming it, as is a ``folder`` that is a file.
    A folder named like a YAML file is a folder; any other entry named so is read
    (and refused there, if it is not a regular file).
    """
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return [], []
    except OSError as error:
        return [], [_path_error(folder, root, f"cannot read: {error.strerror}")]
    if stat.S_ISLNK(info.st_mode):
        return [], [_path_error(folder, root, _LINK_MESSAGE)]
    if not stat.S_ISDIR(info.st_mode):
        return [], [_path_error(folder, root, "is not a folder")]
    found: list[Path] = []
    problems: list[FleetformError] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as error:
            problems.append(_path_error(current, root, f"cannot read: {error.strerror}"))
            continue
        for entry in entries:
            if entry.name.startswith((".", "_")):
                continue
            path = current / entry.name
            if entry.is_symlink():
                problems.append(_path_error(path, root, _LINK_MESSAGE))
            elif entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif path.suffix in (".yaml", ".yml"):
                budget.files -= 1
                if budget.files < 0:
                    problems.append(_path_error(current, root, f"more than {MAX_FILES} YAML files"))
                    return sorted(found), problems
                found.append(path)
    return sorted(found), problems


def _path_error(path: Path, root: Path, message: str) -> LoadError:
    return LoadError(message, Mark(_display_name(path, root), 1, 1))
