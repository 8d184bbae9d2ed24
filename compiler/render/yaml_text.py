"""A small block-style YAML writer for the artifacts fleetform emits.

PyYAML's pure-Python emitter was most of a large compile's time; the artifacts use
only mappings, sequences, strings, integers, booleans and null, so this writes them
directly, in PyYAML's layout (sequences at their key's indent, no line folding).

Strings are written plain only when no YAML 1.1 or 1.2 reader could take them for
anything but that string (they start with a letter, ``_``, ``/`` or ``--x`` and are not
a boolean or null word); otherwise single-quoted, or double-quoted with escapes when
they hold a character a reader would fold or reject (line breaks, controls,
noncharacters). Everything is deterministic: mappings keep their insertion order.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import yaml

_PLAIN = re.compile(
    r"(?:[A-Za-z0-9_/]|[-+.][A-Za-z0-9_/.+-])"
    r"(?:[A-Za-z0-9_./=@+,%$~()-]|:(?=\S)| (?=[^\s#]))*"
)
# Plain text that a YAML 1.1 or 1.2 reader (PyYAML, go-yaml) takes for a number or a
# boolean/null word; PyYAML's resolver catches the rest of 1.1 (timestamps, 1:20, ...).
_NUMBER_LIKE = re.compile(
    r"[-+]?(?:0x[0-9a-f_]*(?:\.[0-9a-f_]*)?(?:p[-+]?[0-9_]+)?|0o[0-7_]+|0b[01_]+"
    r"|[0-9_]*\.?[0-9_]*(?:e[-+]?[0-9_]+)?|\.?(?:inf|infinity|nan))",
    re.IGNORECASE,
)
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})
_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
_RESOLVER = yaml.resolver.Resolver()
# The first characters of the text the resolver may take for another type than str.
_TYPED_STARTS = frozenset(start for start in _RESOLVER.yaml_implicit_resolvers if start)
_STR_TAG = "tag:yaml.org,2002:str"
# Characters a single-quoted scalar can hold as written.
_SINGLE_SAFE = re.compile(
    r"[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufdcf\ufdf0-\ufefe\uff00-\ufffd]*"
)


def dump(document: dict[str, Any]) -> str:
    """``document`` as block YAML text ending in a newline."""
    lines: list[str] = []
    _mapping(document, "", lines)
    lines.append("")
    return "\n".join(lines)


@lru_cache(maxsize=65_536)
def scalar(value: str) -> str:
    """One string as a YAML scalar that reads back as exactly that string."""
    if _is_plain(value):
        return value
    if _SINGLE_SAFE.fullmatch(value):
        return "'" + value.replace("'", "''") + "'"
    return '"' + "".join(_escape(char) for char in value) + '"'


def _is_plain(value: str) -> bool:
    if not _PLAIN.fullmatch(value) or value.startswith(("---", "...")):
        return False
    if value.lower() in _RESERVED or _NUMBER_LIKE.fullmatch(value):
        return False
    if value[0] not in _TYPED_STARTS:
        return True  # the resolver has no implicit type for it
    tag: str = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    return tag == _STR_TAG


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char == '"':
        return '\\"'
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if _SINGLE_SAFE.fullmatch(char):
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    if (code & 0xFFFE) == 0xFFFE:
        return f"\\U{code:08x}"
    return char  # a supplementary-plane character other than a noncharacter


def _mapping(mapping: dict[str, Any], indent: str, lines: list[str]) -> None:
    for key, value in mapping.items():
        kind = type(value)
        if kind is str:
            lines.append(f"{indent}{scalar(key)}: {scalar(value)}")
        elif kind is dict and value:
            lines.append(f"{indent}{scalar(key)}:")
            _mapping(value, indent + "  ", lines)
        elif kind is list and value:
            lines.append(f"{indent}{scalar(key)}:")
            _sequence(value, indent, lines)
        else:
            lines.append(f"{indent}{scalar(key)}: {_other(value)}")


def _sequence(items: list[Any], indent: str, lines: list[str]) -> None:
    for item in items:
        kind = type(item)
        if kind is str:
            lines.append(f"{indent}- {scalar(item)}")
        elif (kind is dict or kind is list) and item:
            start = len(lines)
            if kind is dict:
                _mapping(item, indent + "  ", lines)
            else:
                _sequence(item, indent + "  ", lines)
            lines[start] = f"{indent}- {lines[start][len(indent) + 2 :]}"
        else:
            lines.append(f"{indent}- {_other(item)}")


def _other(value: Any) -> str:
    """Any value but a non-empty map or list, or a string."""
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    if isinstance(value, str):
        return scalar(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")
