"""Real Docker engines, a GPU stand-in, a busybox test image and ``ssh://`` hosts for tests.

The tests of ``fleetform plan/apply/reconcile`` drive real engines, not mocks:

* :func:`start_engine` runs a real ``dockerd`` (as root) with every path of its own under
  ``root/name``: socket, data root, exec root, pid file, config file, its own managed
  containerd (``dockerd`` starts one per instance under ``<exec-root>/containerd``) and its
  own cgroup parent. No iptables rules, no bridge: containers use ``network_mode: host``
  (or ``none``), so nothing but loopback is ever touched.
* The GPU stand-in: ``dockerd`` registers its ``nvidia`` device driver only when an
  executable named ``nvidia-container-runtime-hook`` is on its ``PATH`` at start-up. With
  ``gpu_hook=True`` a stand-in script comes first on that ``PATH``: the engine then accepts
  ``--gpus``/``DeviceRequest(driver="nvidia", ...)``, runc runs the stand-in as a prestart
  hook (it records the container id and ``NVIDIA_VISIBLE_DEVICES`` and succeeds), and
  ``docker inspect`` shows the exact ``HostConfig.DeviceRequests``. Without it the engine
  answers ``could not select device driver "nvidia" with capabilities: [[gpu]]``.
* :func:`load_test_image` imports ``fleetform-test/busybox:1``: a rootfs holding Debian's
  static busybox (``sh``, ``sleep``, ``httpd``, ...), built once per root without any
  network and imported like ``docker import``. ``busybox httpd -f -p 127.0.0.1:PORT -h
  /var/www`` serves ``/health`` (200, ``ok``). A process that is PID 1 ignores SIGTERM
  unless it handles it (busybox ``sleep`` does not): run containers with ``init=True``
  (``docker-init``, Debian's tini) or stop them with a short timeout.
* :func:`start_sshd` runs a real OpenSSH ``sshd`` on a loopback address whose sessions get
  ``DOCKER_HOST`` of one engine (``SetEnv``), so ``ssh://root@127.0.0.2:2201`` reaches that
  engine through ``docker system dial-stdio`` — with the docker CLI, the SDK's paramiko
  mode and the SDK's OpenSSH-client mode. The client side lives in one folder per root
  (key, ``known_hosts``, ssh ``config``, an ``ssh`` wrapper): :attr:`SshHost.env` holds the
  ``HOME``/``PATH`` that make the ssh clients use it; root's own ``~/.ssh`` is never read.

Everything a test starts is stopped by :meth:`EngineFactory.close` (the ``engines``
fixture) and, as a last resort, by :func:`cleanup_root` (the ``engine_root`` fixture):
processes naming the root are killed, mounts under it unmounted, cgroups removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import docker

REQUIRE_TOOLS_ENV = "FLEETFORM_REQUIRE_TOOLS"
TEST_IMAGE = "fleetform-test/busybox:1"
HOOK_NAME = "nvidia-container-runtime-hook"
ROOT_PREFIX = "ffe-"
# sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107
# The longest socket dockerd's managed containerd creates below an engine's folder.
_LONGEST_SOCKET = Path("exec", "containerd", "containerd-debug.sock")
_LOG_TAIL_LINES = 40

# Executables the harness needs, with the Debian package that ships each.
_TOOLS = {
    "dockerd": "docker.io",
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
    "docker-init": "tini (a dependency of docker.io)",
    "docker": "docker.io (the remote side of ssh:// runs `docker system dial-stdio`)",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


# --- requirements ------------------------------------------------------------------------


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN)
    return shutil.which(name, path=path)


def busybox_path() -> Path | None:
    """A statically linked busybox (Debian's ``busybox-static``), or None."""
    for candidate in (_which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and _is_static_elf(Path(candidate)):
            return Path(candidate)
    return None


def missing_engine_tools() -> list[str]:
    """What this machine lacks to run the harness, one readable line each."""
    missing = [f"{tool} (apt: {package})" for tool, package in _TOOLS.items() if not _which(tool)]
    if not os.access("/usr/sbin/sshd", os.X_OK):
        missing.append("/usr/sbin/sshd (apt: openssh-server)")
    if busybox_path() is None:
        missing.append("a static busybox (apt: busybox-static)")
    for module, package in (("docker", "docker>=7"), ("paramiko", "paramiko")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"python module {module} (pip: {package})")
    if os.geteuid() != 0:
        missing.append("root privileges (dockerd and sshd run as root)")
    return missing


def require_engine_tools() -> None:
    require_tools("the real-engine harness", missing_engine_tools())


def require_tools(what: str, missing: list[str]) -> None:
    """Fail (under ``FLEETFORM_REQUIRE_TOOLS=1``, as in CI) or skip when tools are missing."""
    if not missing:
        return
    message = f"{what} needs: " + "; ".join(missing)
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(message + f" ({REQUIRE_TOOLS_ENV}=1: CI installs these, see .ci/run)")
    pytest.skip(message)


# --- the session's root folder -----------------------------------------------------------


def make_root() -> Path:
    """A fresh short root folder (``/tmp/ffe-XXXXXXXX``): unix socket paths stay short."""
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir="/tmp"))
    root.chmod(0o755)
    return root


def cleanup_root(root: Path) -> None:
    """Kill every process naming ``root``, unmount what is under it, remove it all."""
    _kill_processes(_pids_naming(root))
    _unmount_under(root)
    for directory in _cgroup_dirs(f"{root.name}-"):
        _remove_cgroup(directory)
    shutil.rmtree(root, ignore_errors=True)


# --- engines -----------------------------------------------------------------------------


class EngineStartError(RuntimeError):
    """dockerd or sshd did not come up; the message holds the tail of its log."""


@dataclass
class Engine:
    """One running ``dockerd`` and everything it owns below ``dir``."""

    name: str
    dir: Path
    socket: Path
    base_url: str
    log: Path
    cgroup_parent: str
    gpu_hook_log: Path | None
    process: subprocess.Popen[bytes] = field(repr=False)

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A docker SDK client of this engine (API version negotiated)."""
        import docker

        return docker.DockerClient(base_url=self.base_url, timeout=timeout)

    def cli_env(self) -> dict[str, str]:
        """The environment for the docker CLI (or compose) to talk to this engine."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = self.base_url
        return env

    def gpu_assignments(self) -> dict[str, str]:
        """Container id → ``NVIDIA_VISIBLE_DEVICES``, for every container the hook ran for."""
        if self.gpu_hook_log is None or not self.gpu_hook_log.exists():
            return {}
        assignments: dict[str, str] = {}
        for line in self.gpu_hook_log.read_text(encoding="utf-8").splitlines():
            container, _, devices = line.partition(" ")
            assignments[container] = devices
        return assignments

    def stop(self, remove: bool = True) -> None:
        """Stop dockerd (SIGTERM, then SIGKILL) and every process, mount and cgroup it left."""
        if self.process.poll() is None:
            self._kill_containers()
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while self.process.poll() is None:
                # dockerd 20.10 lingers ~1s redialling its containerd after a complete
                # shutdown; once that containerd is gone nothing is left for it to do.
                if time.monotonic() > deadline or self._shut_down():
                    self.process.kill()
                time.sleep(0.02)
        # containerd, its shims and the containers' processes, should any be left.
        cgroups = _cgroup_dirs(self.cgroup_parent.strip("/"), exact=True)
        pids = set(_pids_naming(self.dir))
        for directory in cgroups:
            pids.update(_cgroup_pids(directory))
        _kill_processes(pids)
        _unmount_under(self.dir)
        for directory in cgroups:
            _remove_cgroup(directory)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _shut_down(self) -> bool:
        """Whether dockerd logged a complete shutdown and its containerd has exited."""
        try:
            with self.log.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 8192))
                if b"Daemon shutdown complete" not in log.read():
                    return False
        except OSError:
            return False
        return not [pid for pid in _pids_naming(self.dir) if pid != self.process.pid]

    def _kill_containers(self) -> None:
        """SIGKILL running containers first: dockerd would wait out each stop timeout."""
        with contextlib.suppress(Exception):  # best effort: dockerd stops them anyway
            client = self.client(timeout=10)
            try:
                for container in client.api.containers(quiet=True):
                    with contextlib.suppress(Exception):
                        client.api.kill(container["Id"])
            finally:
                client.close()


def start_engine(
    root: Path,
    name: str,
    *,
    gpu_hook: bool = True,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> Engine:
    """Start a real ``dockerd`` under ``root/name`` and wait until it answers ``/_ping``."""
    directory = root / name
    _check_socket_path(directory / _LONGEST_SOCKET)
    directory.mkdir(parents=True)
    sock = directory / "docker.sock"
    log = directory / "dockerd.log"
    config = directory / "daemon.json"
    config.write_text("{}\n", encoding="utf-8")  # never /etc/docker/daemon.json
    cgroup_parent = f"/{root.name}-{name}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "NOTIFY_SOCKET"))}
    search = [d for d in env.get("PATH", "").split(os.pathsep) if d]
    search += [d for d in _SBIN if d not in search]
    hook_log: Path | None = None
    if gpu_hook:
        hook_log = directory / "gpu-hook.log"
        search.insert(0, str(_write_gpu_hook(directory / "gpu")))
        env["FFE_GPU_HOOK_LOG"] = str(hook_log)  # runc gives the hook dockerd's environment
    elif real_hook := shutil.which(HOOK_NAME, path=os.pathsep.join(search)):
        raise RuntimeError(
            f"a real {HOOK_NAME} is on PATH ({real_hook}): "
            "an engine without the GPU driver cannot be had on this machine"
        )
    env["PATH"] = os.pathsep.join(search)
    dockerd = shutil.which("dockerd", path=env["PATH"])
    if dockerd is None:
        raise RuntimeError("dockerd is not installed (apt: docker.io)")
    argv = [
        dockerd,
        "--config-file", str(config),
        "--host", f"unix://{sock}",
        "--data-root", str(directory / "data"),
        "--exec-root", str(directory / "exec"),
        "--pidfile", str(directory / "docker.pid"),
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--exec-opt", "native.cgroupdriver=cgroupfs",
        "--cgroup-parent", cgroup_parent,
        # Own namespaces too, in case dockerd finds a system containerd and shares it.
        "--containerd-namespace", f"ffe-{name}",
        "--containerd-plugins-namespace", f"ffe-{name}-plugins",
        *extra_args,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    engine = Engine(
        name=name,
        dir=directory,
        socket=sock,
        base_url=f"unix://{sock}",
        log=log,
        cgroup_parent=cgroup_parent,
        gpu_hook_log=hook_log,
        process=process,
    )
    deadline = time.monotonic() + timeout
    while not _ping(sock):
        if process.poll() is not None or time.monotonic() > deadline:
            state = "exited" if process.poll() is not None else f"gave no answer in {timeout:g}s"
            engine.stop(remove=False)
            raise EngineStartError(
                f"dockerd {name!r} {state} (exit code {process.returncode}), "
                f"unix://{sock}\n{_log_tail(log)}"
            )
        time.sleep(0.05)
    return engine


def _ping(sock: Path) -> bool:
    """Whether the engine answers ``GET /_ping`` with 200 (stdlib only: no SDK needed)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(str(sock))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = conn.recv(64)
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.") and answer.split(b" ")[1:2] == [b"200"]


_GPU_HOOK = """#!/bin/sh
# Stand-in for nvidia-container-runtime-hook (fleetform tests): runc runs it as an OCI
# prestart hook with the container's state JSON on stdin. It records the container id and
# the NVIDIA_VISIBLE_DEVICES dockerd gave it, then succeeds. No GPU is touched.
state=$(cat)
if [ -n "$FFE_GPU_HOOK_LOG" ]; then
  id=$(printf '%s' "$state" | sed -n 's/.*"id":"\\([^"]*\\)".*/\\1/p')
  bundle=$(printf '%s' "$state" | sed -n 's/.*"bundle":"\\([^"]*\\)".*/\\1/p')
  devices=$(grep -o 'NVIDIA_VISIBLE_DEVICES=[^"]*' "$bundle/config.json" | head -n 1)
  printf '%s %s\\n' "$id" "${devices#NVIDIA_VISIBLE_DEVICES=}" >> "$FFE_GPU_HOOK_LOG"
fi
exit 0
"""


def _write_gpu_hook(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    hook = folder / HOOK_NAME
    hook.write_text(_GPU_HOOK, encoding="utf-8")
    hook.chmod(0o755)
    return folder


# --- the test image ----------------------------------------------------------------------


def build_rootfs(root: Path) -> Path:
    """The busybox rootfs tar, built once per root (no network: Debian's static busybox)."""
    target = root / "busybox-rootfs.tar"
    if target.exists():
        return target
    busybox = busybox_path()
    if busybox is None:
        raise RuntimeError("no static busybox (apt: busybox-static)")
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "etc/group": "root:x:0:\nnogroup:x:65534:\n",
        "var/www/health": "ok\n",
        "var/www/index.html": "fleetform test image\n",
    }
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for name in ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr", "usr/bin", "var"):
            _add_entry(tar, name, tarfile.DIRTYPE, mode=0o1777 if name == "tmp" else 0o755)
        _add_entry(tar, "var/www", tarfile.DIRTYPE, mode=0o755)
        with busybox.open("rb") as binary:
            _add_entry(tar, "bin/busybox", tarfile.REGTYPE, 0o755, binary.read())
        for applet in sorted(set(applets) - {"busybox"}):
            _add_entry(tar, f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        _add_entry(tar, "usr/bin/env", tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        for name, text in files.items():
            _add_entry(tar, name, tarfile.REGTYPE, 0o644, text.encode("utf-8"))
    partial.replace(target)
    return target


def _add_entry(
    tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def load_test_image(engine: Engine, tag: str = TEST_IMAGE) -> str:
    """Import the busybox test image into ``engine`` as ``tag``; returns the image id."""
    return import_rootfs(engine, build_rootfs(engine.dir.parent), tag, changes=['CMD ["sh"]'])


def import_rootfs(
    engine: Engine, rootfs: Path, tag: str, changes: Sequence[str] = (), timeout: int = 60
) -> str:
    """Import the tarball ``rootfs`` into ``engine`` as ``tag``, like ``docker import``
    (``changes`` as its ``--change``); returns the image id."""
    repository, _, version = tag.rpartition(":")
    if not repository or "/" in version:
        repository, version = tag, "latest"
    client = engine.client(timeout=timeout)
    try:
        client.api.import_image_from_file(
            str(rootfs), repository=repository, tag=version, changes=list(changes)
        )
        image_id: str = client.images.get(f"{repository}:{version}").id
    finally:
        client.close()
    return image_id


# --- ssh:// hosts ------------------------------------------------------------------------

_HOME_LOCK = threading.Lock()


@dataclass
class SshHost:
    """A running ``sshd`` whose sessions talk to one engine (``DOCKER_HOST``)."""

    address: str
    port: int
    user: str
    dir: Path
    log: Path
    docker_socket: Path
    client_home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.address}:{self.port}"

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A docker SDK client of the engine behind this host, in paramiko mode.

        The SDK reads ``~/.ssh/config`` and ``~/.ssh/known_hosts`` when the client is made,
        so ``HOME`` points at the client folder just for that. For the OpenSSH client (the
        docker CLI, ``use_ssh_client=True``) run with :attr:`env` instead.
        """
        import docker

        with _HOME_LOCK, _environ(HOME=str(self.client_home)):
            return docker.DockerClient(base_url=self.url, use_ssh_client=False, timeout=timeout)

    def stop(self, remove: bool = True) -> None:
        """Stop sshd and every session it forked (they outlive a stopped listener)."""
        sessions = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        _kill_processes(sessions | set(_pids_naming(self.dir)))
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)


def ssh_client_home(root: Path) -> Path:
    """The ssh client folder of ``root`` (one key for every host), made once.

    ``.ssh/id_ed25519``, ``.ssh/known_hosts`` (one line per started sshd), ``.ssh/config``
    (absolute paths, strict host key checking, batch mode) and ``bin/ssh``, a wrapper that
    runs the real ``ssh -F .ssh/config``: OpenSSH reads the passwd entry's home, not
    ``$HOME``, so the wrapper is what points the docker CLI at this folder.
    """
    home = root / "ssh-client"
    dot_ssh, bin_dir = home / ".ssh", home / "bin"
    if (bin_dir / "ssh").exists():
        return home
    dot_ssh.mkdir(parents=True, mode=0o700)
    bin_dir.mkdir(mode=0o755)
    key = dot_ssh / "id_ed25519"
    _keygen(key, "fleetform-test-client")
    known_hosts = dot_ssh / "known_hosts"
    known_hosts.touch(mode=0o600)
    config = dot_ssh / "config"
    config.write_text(
        "Host *\n"
        f"  IdentityFile {key}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known_hosts}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 10\n"
        "  LogLevel ERROR\n",
        encoding="utf-8",
    )
    config.chmod(0o600)
    real_ssh = shutil.which("ssh", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    if real_ssh is None:
        raise RuntimeError("ssh is not installed (apt: openssh-client)")
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {real_ssh} -F {config} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    return home


def ssh_env(client_home: Path) -> dict[str, str]:
    """``HOME`` (paramiko mode) and ``PATH`` (the ``ssh`` wrapper first) for ssh clients."""
    path = os.environ.get("PATH", "")
    return {"HOME": str(client_home), "PATH": f"{client_home / 'bin'}{os.pathsep}{path}"}


def start_sshd(
    root: Path,
    address: str = "127.0.0.2",
    port: int = 2201,
    *,
    docker_socket: Path,
    user: str = "root",
    timeout: float = 15.0,
) -> SshHost:
    """Run OpenSSH's ``sshd`` on ``address:port`` (loopback); its sessions reach one engine."""
    if not address.startswith("127."):
        raise ValueError(f"test sshd must listen on loopback (127.0.0.0/8), not {address}")
    _check_free(address, port)
    home = ssh_client_home(root)
    directory = root / f"sshd-{address}-{port}"
    directory.mkdir()
    host_key = directory / "ssh_host_ed25519_key"
    _keygen(host_key, f"fleetform-test-{address}-{port}")
    authorized = directory / "authorized_keys"
    shutil.copyfile(home / ".ssh" / "id_ed25519.pub", authorized)
    authorized.chmod(0o600)
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress {address}:{port}\n"
        f"HostKey {host_key}\n"
        f"PidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        f"AllowUsers {user}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # /tmp is world-writable: StrictModes would refuse the key files below it.
        "StrictModes no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "X11Forwarding no\n"
        "MaxSessions 64\n"
        "MaxStartups 64:30:128\n"
        "LogLevel INFO\n"
        # Every session (the SDK's and the CLI's `docker system dial-stdio`) gets the engine.
        f"SetEnv DOCKER_HOST=unix://{docker_socket}\n",
        encoding="utf-8",
    )
    sshd = "/usr/sbin/sshd"  # sshd insists on an absolute path
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation folder
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise EngineStartError(f"sshd rejects {config}:\n{check.stderr}")
    log = directory / "sshd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    trust_host_key(home, address, port, directory / "ssh_host_ed25519_key.pub")
    host = SshHost(
        address=address,
        port=port,
        user=user,
        dir=directory,
        log=log,
        docker_socket=docker_socket,
        client_home=home,
        env=ssh_env(home),
        process=process,
    )
    deadline = time.monotonic() + timeout
    while not _listening(address, port):
        if process.poll() is not None or time.monotonic() > deadline:
            host.stop(remove=False)
            raise EngineStartError(
                f"sshd on {address}:{port} did not start (exit code {process.returncode})\n"
                f"{_log_tail(log)}"
            )
        time.sleep(0.05)
    return host


_KNOWN_HOSTS_LOCK = threading.Lock()


def trust_host_key(home: Path, address: str, port: int, public_key: Path) -> None:
    """Record a host's key in the client's known_hosts, replacing the line of an earlier
    host on the same address and port (which had another key)."""
    known_hosts = home / ".ssh" / "known_hosts"
    pattern = f"[{address}]:{port}"
    kind, key = public_key.read_text(encoding="utf-8").split()[:2]
    with _KNOWN_HOSTS_LOCK:
        kept = [
            line
            for line in known_hosts.read_text(encoding="utf-8").splitlines()
            if line.split(" ", 1)[0] != pattern
        ]
        kept.append(f"{pattern} {kind} {key}")
        known_hosts.write_text("\n".join(kept) + "\n", encoding="utf-8")


def free_port(address: str, start: int = 2201, stop: int = 2400) -> int:
    """A port in ``[start, stop)`` free on ``address``: the first free one from an offset
    that depends on the process, so that two test runs on one machine do not race for
    the same port (one sshd would fail to bind and the other's answer in its place)."""
    span = stop - start
    offset = os.getpid() % span
    for step in range(span):
        port = start + (offset + step) % span
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}..{stop - 1} on {address}")


def _check_free(address: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError as error:
            raise RuntimeError(f"{address}:{port} is taken: {error}") from error


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- the fixture's factory ---------------------------------------------------------------


class EngineFactory:
    """Starts engines and ssh hosts for one test; :meth:`close` stops them all.

    ``engines("a")`` starts an engine with the GPU stand-in and the test image;
    ``engines.ssh(engine)`` starts an sshd for it on the next loopback address
    (127.0.0.2, 127.0.0.3, ...).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.engines: list[Engine] = []
        self.hosts: list[SshHost] = []

    def __call__(
        self,
        name: str,
        *,
        gpu_hook: bool = True,
        image: bool = True,
        extra_args: Sequence[str] = (),
    ) -> Engine:
        engine = start_engine(self.root, name, gpu_hook=gpu_hook, extra_args=extra_args)
        self.engines.append(engine)
        if image:
            load_test_image(engine)
        return engine

    def ssh(self, engine: Engine, address: str | None = None, port: int | None = None) -> SshHost:
        address = address or f"127.0.0.{2 + len(self.hosts)}"
        host = start_sshd(
            self.root, address, port or free_port(address), docker_socket=engine.socket
        )
        self.hosts.append(host)
        return host

    def close(self) -> None:
        errors: list[BaseException] = []
        stoppables: list[SshHost | Engine] = [*reversed(self.hosts), *reversed(self.engines)]
        for stoppable in stoppables:
            try:
                stoppable.stop()
            except Exception as error:  # stop the rest, then report the first
                errors.append(error)
        self.hosts.clear()
        self.engines.clear()
        if errors:
            raise errors[0]


# --- processes, mounts, cgroups ----------------------------------------------------------


def _processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, parent pid, command line) of every live process."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] != b"Z":
            yield int(entry.name), int(fields[1]), cmdline


def _pids_naming(path: Path) -> list[int]:
    """Processes whose command line names ``path`` or something below it."""
    needle = str(path).encode()
    return [
        pid
        for pid, _, cmdline in _processes()
        if pid != os.getpid()
        and any(arg == needle or needle + b"/" in arg for arg in cmdline.split(b"\0"))
    ]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for child, parent, _ in _processes():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = list(children.get(pid, []))
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(children.get(current, []))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


def _kill_processes(pids: Iterable[int], timeout: float = 10.0) -> None:
    pending = {pid for pid in pids if pid != os.getpid()}
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if _alive(pid)}
        time.sleep(0.02)


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        raw = line.split(" ")[4]
        points.append(raw.encode().decode("unicode_escape"))  # \040 → space, etc.
    return points


def _unmount_under(path: Path) -> None:
    """Lazily unmount every mount at or below ``path``, deepest first."""
    prefix = str(path)
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(10):  # stacked mounts need more than one pass
        targets = [p for p in _mount_points() if p == prefix or p.startswith(prefix + "/")]
        if not targets:
            return
        for target in sorted(targets, key=lambda p: p.count("/"), reverse=True):
            libc.umount2(target.encode(), 2)  # MNT_DETACH


def _cgroup_roots() -> list[Path]:
    roots = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] in ("cgroup", "cgroup2"):
            roots.append(Path(left.split(" ")[4]))
    return roots


def _cgroup_dirs(name: str, exact: bool = False) -> list[Path]:
    """Top-level cgroups named ``name`` (or ``name*``) in every hierarchy."""
    return [
        child
        for root in _cgroup_roots()
        if root.is_dir()
        for child in root.iterdir()
        if child.is_dir() and (child.name == name or not exact and child.name.startswith(name))
    ]


def _cgroup_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(line) for line in procs.read_text().split())
    return pids


def _remove_cgroup(directory: Path) -> None:
    _kill_processes(_cgroup_pids(directory))
    children = sorted(
        (d for d in directory.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True
    )
    for child in [*children, directory]:
        with contextlib.suppress(OSError):
            child.rmdir()


# --- small things ------------------------------------------------------------------------


def _check_socket_path(path: Path) -> None:
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise ValueError(
            f"{path} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes): "
            "use a shorter root (make_root() gives /tmp/ffe-XXXXXXXX) or engine name"
        )


def _log_tail(log: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        return f"(no log at {log}: {error})"
    return f"--- last {min(lines, len(text))} lines of {log} ---\n" + "\n".join(text[-lines:])


def _is_static_elf(path: Path) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter (PT_INTERP)."""
    try:
        with path.open("rb") as binary:
            header = binary.read(64)
            if len(header) < 52 or header[:4] != b"\x7fELF":
                return False
            is64, order = header[4] == 2, "<" if header[5] == 1 else ">"
            if is64:
                phoff, phentsize, phnum = (
                    struct.unpack_from(order + "Q", header, 32)[0],
                    *struct.unpack_from(order + "HH", header, 54),
                )
            else:
                phoff, phentsize, phnum = (
                    struct.unpack_from(order + "I", header, 28)[0],
                    *struct.unpack_from(order + "HH", header, 42),
                )
            binary.seek(phoff)
            table = binary.read(phentsize * phnum)
    except OSError:
        return False
    types = [struct.unpack_from(order + "I", table, i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP
