"""The value types of the schema: what a field may hold, checked where values enter.

A repository is untrusted input (a pull request reaches ``validate`` and ``compile``),
and its values end up as arguments of ``docker run``, keys of ``compose.yaml`` and
paths on hosts. Each type here accepts what Docker, compose and systemd themselves
accept for that field (the grammars are theirs, cited per type) and refuses the rest,
so that no value can turn into an option of another program, a path outside what it
names, or an artifact that compose or systemd reject. Control characters never get
this far: the loader refuses them in every scalar.

Each check takes the text and returns it, or raises ``ValueError`` with a user-facing
message; :mod:`compiler.model` makes each a field type, and pydantic reports the error
at the value's position as ``file:line:col: key.path: message``. The module imports no
pydantic: ``plan`` checks a ``docker_host`` with it before the heavy imports.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable


def _q(value: str) -> str:
    """A value quoted for a message, cut short: the message is one line to read."""
    return repr(value) if len(value) <= 80 else f"{value[:60]!r}… ({len(value)} characters)"


def _matching(pattern: re.Pattern[str], is_not: str) -> Callable[[str], str]:
    """A check that a value matches ``pattern`` whole; ``is_not`` ends its message."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{_q(value)} {is_not}")
        return value

    return check


# Docker's distribution/reference grammar (reference/regexp.go), ASCII only.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?",
    re.ASCII,
)
_IMAGE_NAME_MAX = 255  # the repository name's limit in the same package


def image_reference(value: str) -> str:
    name = value.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    if not IMAGE_REFERENCE.fullmatch(value) or len(name) > _IMAGE_NAME_MAX:
        raise ValueError(
            f"{_q(value)} is not an image reference"
            " ([registry/]name[:tag][@digest], lowercase name, as docker reads it)"
        )
    return value


# A label key: reverse-DNS style words. No '=' (docker reads --label k=v up to the
# first '='), no '$' (compose interpolates values, never keys), no spaces or quotes.
_LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,253}[A-Za-z0-9])?", re.ASCII)


def label_key(key: str) -> str:
    if not _LABEL_KEY.fullmatch(key):
        raise ValueError(
            f"invalid label key {_q(key)} (letters, digits, '.', '-', '_' and '/',"
            " starting and ending with a letter or digit, at most 255)"
        )
    return key


# docker/go-units RAMInBytes, which `docker run --shm-size`, compose and the Engine's own
# flags use: a number (one decimal part at most: go-units' regexp allows more, its
# ParseFloat does not), an optional space, a binary unit k/m/g/t/p, then "i" and "b" as
# decoration ("2GB", "2gib" and "2g" are all 2 GiB). Hand-written: the docker SDK's
# parse_bytes reads a narrower language ("2GB" and "1 g" fail, "t" is unknown).
_SIZE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,15})?) ?([kmgtp]?)i?b?", re.ASCII | re.IGNORECASE)
_BINARY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_INT64_MAX = (1 << 63) - 1


def size_in_bytes(value: str) -> int:
    """A size as docker reads it, in bytes: ``int64(ParseFloat(number) * unit)``."""
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{_q(value)} is not a size like 10g, 512m or 1073741824 (bytes)")
    number = int(float(match.group(1)) * _BINARY_UNITS[match.group(2).lower()])
    if number > _INT64_MAX:
        raise ValueError(f"{_q(value)} is more bytes than docker can hold (2^63 - 1)")
    return number


def size(value: str) -> str:
    size_in_bytes(value)
    return value


# A published port, compose's short syntax as docker's nat.ParsePortSpec reads it:
# [[IP:][HOST_PORT]:]CONTAINER_PORT[/PROTOCOL], ports or ranges of ports.
_PORT_SPEC = re.compile(
    r"(?:(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:.]+\]):)?(?P<host>[0-9]{1,5}(?:-[0-9]{1,5})?)?:)?"
    r"(?P<container>[0-9]{1,5}(?:-[0-9]{1,5})?)(?:/(?P<protocol>tcp|udp|sctp))?",
    re.ASCII,
)


def _port_range_of(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def port_spec(value: str) -> str:
    bad = ValueError(
        f"{_q(value)} is not a port mapping like 8080:80, 127.0.0.1:8080:80/tcp or 9000-9001:80"
    )
    match = _PORT_SPEC.fullmatch(value)
    if match is None:
        raise bad
    ip = match.group("ip")
    if ip is not None:
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise bad from None
    low, high = _port_range_of(match.group("container"))
    if not 1 <= low <= high <= 65535:
        raise bad
    if match.group("host"):
        host_low, host_high = _port_range_of(match.group("host"))
        if not 1 <= host_low <= host_high <= 65535:
            raise bad
        if high > low and host_high - host_low != high - low:
            raise ValueError(f"{_q(value)}: the host and container port ranges differ in length")
    return value


def _is_normal_absolute(path: str) -> bool:
    return (
        path.startswith("/")
        and not path.startswith("//")
        and posixpath.normpath(path) == path
        and path.isprintable()  # no line break, tab or invisible control in a path
    )


def absolute_path(value: str) -> str:
    if not _is_normal_absolute(value):
        raise ValueError(
            f"{_q(value)} must be an absolute, normalised path on the host"
            " (starting with '/', no '.', '..', '//', trailing '/' or control characters)"
        )
    return value


def host_folder(value: str) -> str:
    """A folder on the host that fleetform mounts or writes into: never '/' itself."""
    absolute_path(value)
    if value == "/":
        raise ValueError("'/' is the host's root; name a folder below it")
    return value


_VOLUME_MODES = frozenset(
    {"ro", "rw", "z", "Z", "shared", "rshared", "slave", "rslave", "private", "rprivate"}
    | {"consistent", "cached", "delegated"}
)


def volume(value: str) -> str:
    """A bind mount in compose's short syntax, ``/host:/container[:mode,…]``.

    Named volumes are refused: compose needs them declared at the top level (and
    scopes their names by project), while ``docker run`` does not, so the same text
    would mean two different volumes.
    """
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(
            f"{_q(value)} is not a volume like /host/path:/container/path[:ro]"
            " (an absolute host path, an absolute container path, an optional mode)"
        )
    source, target = parts[0], parts[1]
    if not _is_normal_absolute(source):
        raise ValueError(
            f"volume {_q(value)}: the source must be an absolute, normalised host path"
            " (named and relative volumes are not supported)"
        )
    if not _is_normal_absolute(target) or target == "/":
        raise ValueError(
            f"volume {_q(value)}: the target must be an absolute, normalised path"
            " in the container, not '/'"
        )
    if "," in source or "," in target:
        raise ValueError(f"volume {_q(value)}: a path may not hold ','")
    if len(parts) == 3:
        modes = parts[2].split(",")
        unknown = [mode for mode in modes if mode not in _VOLUME_MODES]
        if unknown or len(set(modes)) != len(modes):
            raise ValueError(
                f"volume {_q(value)}: unknown mode {','.join(unknown or modes)!r}"
                f" (modes: {', '.join(sorted(_VOLUME_MODES))})"
            )
    return value


def _is_device_permissions(text: str) -> bool:
    return 1 <= len(text) <= 3 and set(text) <= set("rwm") and len(set(text)) == len(text)


def device(value: str) -> str:
    """``/dev/host[:/dev/container[:rwm]]``.

    ``docker run --device`` also reads ``/dev/host:rwm``, but compose reads the same
    text as a container path ``rwm``: that short form is refused, so that both mean
    the same thing.
    """
    parts = value.split(":")
    paths = parts[:2]
    if (
        len(parts) > 3
        or "," in value
        or any(not _is_normal_absolute(path) or path == "/" for path in paths)
        or (len(parts) == 3 and not _is_device_permissions(parts[2]))
    ):
        raise ValueError(
            f"{_q(value)} is not a device like /dev/foo, /dev/foo:/dev/bar or /dev/foo:/dev/foo:rw"
        )
    return value


# host, bridge, none, container:<name> or a network's name (docker's name rule).
_NETWORK_MODE = re.compile(r"(?:container:)?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}", re.ASCII)


network_mode = _matching(
    _NETWORK_MODE, "is not a network mode (host, bridge, none, container:NAME or a network's name)"
)

_URL_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,2047}", re.ASCII)


http_path = _matching(_URL_PATH, "is not an HTTP path like /health (no spaces)")

# Hugging Face's repo id rule (huggingface_hub validate_repo_id): [namespace/]name of
# letters, digits, '-', '_' and '.', no '--' or '..', at most 96; ModelScope's ids are
# of the same form. A model id becomes a folder below model_dir: it must stay below.
_MODEL_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)


def model_id(value: str) -> str:
    if (
        not _MODEL_ID.fullmatch(value)
        or ".." in value
        or "--" in value
        or value.endswith((".", "-", ".git"))
        or len(value) > 96
    ):
        raise ValueError(
            f"{_q(value)} is not a model id like Qwen/Qwen2.5-7B-Instruct (namespace/name:"
            " letters, digits, '-', '_', '.'; no '..' or '--'; at most 96)"
        )
    return value


# One file of a hub repository (huggingface_filename, model_scope_file_path): a relative
# path inside the repository. GPUStack also takes an fnmatch pattern and matches it
# against the hub's file list when downloading; a compile cannot ask the hub, so the
# exact name is needed here.
_HUB_FILE = re.compile(r"[A-Za-z0-9_.+@=-]+(?:/[A-Za-z0-9_.+@=-]+)*", re.ASCII)


def hub_file(value: str) -> str:
    if any(char in value for char in "*?["):
        raise ValueError(
            f"{_q(value)} is a pattern; fleetform needs the exact file name in the repository"
            " (GPUStack matches patterns when downloading)"
        )
    if (
        not _HUB_FILE.fullmatch(value)
        or any(part in (".", "..") for part in value.split("/"))
        or len(value) > 1024
    ):
        raise ValueError(
            f"{_q(value)} is not a file of the repository like model-Q4_K_M.gguf or"
            " sub/model.gguf (letters, digits, '_', '.', '+', '@', '=', '-'; no '..')"
        )
    return value


# A hub revision: a branch, a tag or a commit (huggingface_hub's ``revision``).
_REVISION = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]{0,127}", re.ASCII)


def hub_revision(value: str) -> str:
    if not _REVISION.fullmatch(value) or ".." in value or value.endswith(("/", ".lock")):
        raise ValueError(
            f"{_q(value)} is not a revision like main, v1.0 or a commit id (letters, digits,"
            " '_', '.', '/', '-'; no '..'; at most 128)"
        )
    return value


# One allow_patterns entry: an fnmatch pattern over the repository's file paths.
_HUB_PATTERN = re.compile(r"[A-Za-z0-9_.+@=*?\[\]!-]+(?:/[A-Za-z0-9_.+@=*?\[\]!-]+)*", re.ASCII)


def hub_pattern(value: str) -> str:
    if (
        not _HUB_PATTERN.fullmatch(value)
        or any(part in (".", "..") for part in value.split("/"))
        or len(value) > 1024
    ):
        raise ValueError(
            f"{_q(value)} is not a file pattern of the repository like *.safetensors or"
            " sub/*.json (letters, digits, '_', '.', '+', '@', '=', '-', '*', '?', '[]';"
            " no '..')"
        )
    return value


# A hub endpoint (a Hugging Face mirror): http(s)://host[:port][/path], no credentials
# (a token is given at apply time, as HF_TOKEN) and nothing a shell or URL would reread.
_HUB_ENDPOINT = re.compile(
    r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?", re.ASCII
)


def hub_endpoint(value: str) -> str:
    return _http_url(
        value,
        "a hub endpoint like https://hf-mirror.example.com",
        "the token comes from HF_TOKEN at apply time",
    )


def modelscope_endpoint(value: str) -> str:
    return _http_url(
        value,
        "a ModelScope endpoint like https://modelscope.cn",
        "the token comes from MODELSCOPE_API_TOKEN at apply time",
    )


def api_url(value: str) -> str:
    """A server's API (a GPUStack cluster's)."""
    return _http_url(
        value,
        "a server URL like https://gpustack.example.com",
        "the API key comes from the environment at plan and apply time",
    )


def _http_url(value: str, like: str, secret: str) -> str:
    """http(s)://host[:port][/path], no credentials and nothing a shell or URL rereads."""
    if not _HUB_ENDPOINT.fullmatch(value) or len(value) > 512:
        raise ValueError(
            f"{_q(value)} is not {like} (http or https, a host, an optional port and path;"
            f" no user or password: {secret})"
        )
    return value.rstrip("/")


# RFC 1123 host names, and IP addresses.
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?",
    re.ASCII,
)


def is_host_name(value: str) -> bool:
    """An IP address or a DNS host name; never something ssh could read as an option."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(value))
    return True


def address(value: str) -> str:
    if not is_host_name(value):
        raise ValueError(f"{_q(value)} is not an IP address or a DNS host name")
    return value


# A login name as useradd accepts it; it must not start with '-' (an ssh option).
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", re.ASCII)


def split_ssh_target(value: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (IPv6 in brackets) → parts, or ``ValueError``."""
    user, at, rest = value.rpartition("@")
    if at and not _USER.fullmatch(user):
        raise ValueError(f"{_q(value)}: {_q(user)} is not a user name")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else None
        if not bracket or (tail and port_text is None):
            raise ValueError(f"{_q(value)} is not [user@]host[:port]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_q(value)}: {_q(host)} is not an IPv6 address") from None
    else:
        host, colon, port_text_or_empty = rest.partition(":")
        port_text = port_text_or_empty if colon else None
        if not is_host_name(host):
            raise ValueError(f"{_q(value)}: {_q(host)} is not an IP address or a DNS host name")
    port = None
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text, re.ASCII) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{_q(value)}: {_q(port_text)} is not a port (1-65535)")
        port = int(port_text)
    return (user if at else None), host, port


def ssh_target(value: str) -> str:
    user, _, _ = split_ssh_target(value)
    if user is None:
        raise ValueError(f"{_q(value)} is not user@host[:port]")
    return value


def docker_host(value: str) -> str:
    """``unix:///path``, ``ssh://[user@]host[:port]`` or ``tcp://host:port``."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("unix", "ssh", "tcp"):
        raise ValueError(f"{_q(value)} must start with unix://, ssh:// or tcp://")
    if scheme == "unix":
        if not _is_normal_absolute(rest) or rest == "/":
            raise ValueError(f"{_q(value)}: the socket must be an absolute, normalised path")
        return value
    target = rest[:-1] if rest.endswith("/") else rest
    user, _, port = split_ssh_target(target)
    if scheme == "tcp" and (user is not None or port is None):
        raise ValueError(f"{_q(value)} is not tcp://host:port")
    return value


def is_docker_host(value: str) -> bool:
    """Whether ``value`` is a ``docker_host`` that validation accepts."""
    try:
        docker_host(value)
    except ValueError:
        return False
    return True


# Names shown in messages and explain (backend names, version keys, GPU uuids):
# printable, one line, no surrounding spaces.
_NAME = re.compile(r"[^\s](?:[^\x00-\x1f\x7f]{0,253}[^\s])?")


def name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{_q(value)} is not a name (1-255 characters, no surrounding spaces)")
    return value
