"""A private network made of Linux network namespaces, standing in for an Azure VNET.

``network=vnet`` on the local target must reproduce what Azure gives a VNET
deployment: the scoring service has a private address (by default 10.0.1.4 in
10.0.1.0/24, as in Azure's docs) that only clients inside the network can reach.

Topology (one ``PrivateNetwork``)::

    aid-<run>-<tag>-switch      bridge aid<tag>br
       |  aid<tag>s0   aid<tag>s1   aid<tag>s2      (switch ends of veth pairs)
       |        |            |            |
    aid-<run>-<tag>-service  -client      -store    (one namespace per role)
       aid<tag>h0 10.0.1.4   h1 10.0.1.10 h2 10.0.1.5

Why this layout:

* Every link lives inside a namespace we created; nothing is attached to the
  host namespace, so the host has no interface, address or route into the
  network and cannot reach the service.  Deleting our namespaces deletes every
  link we made, so there are no host links to track or leak.
* The bridge sits in its own "switch" namespace, so no role namespace is
  special (the service does not also host the switch) and every role is
  an ordinary host with exactly one interface, as a VM in a subnet would be.
* Role namespaces have only the connected route of the subnet: no default
  route, no NAT, no forwarding, so nothing in the network reaches the outside.
* Namespace names carry the sanitized run id plus a short hash of it; the
  15-character interface names carry the hash only.  Two runs (even with the
  same CIDR) therefore never collide.

Creating namespaces needs CAP_SYS_ADMIN (unshare/setns of a network namespace,
bind mounts in /run/netns) and configuring links needs CAP_NET_ADMIN: in
practice, root.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

__all__ = [
    "NS_PREFIX",
    "Host",
    "NamespaceExecutor",
    "NetworkPermissionError",
    "NetworkToolMissingError",
    "PrivateNetwork",
    "find_ip",
    "list_leftovers",
    "missing_capabilities",
    "parse_cap_eff",
    "preflight",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Every namespace this module creates starts with this prefix.
NS_PREFIX = "aid-"
NETNS_DIR = "/run/netns"  # iproute2's NETNS_RUN_DIR; /var/run is a symlink to /run

CLONE_NEWNET = 0x40000000  # <sched.h>
CAP_NET_ADMIN = 12  # <linux/capability.h>
CAP_SYS_ADMIN = 21
_NEEDED_CAPS = {"CAP_NET_ADMIN": CAP_NET_ADMIN, "CAP_SYS_ADMIN": CAP_SYS_ADMIN}

# Azure's own addressing: the first four addresses of a subnet and the last one
# are reserved (network, gateway, two DNS), the minimum subnet is a /29.
_AZURE_RESERVED_LOW = 4
_MAX_PREFIXLEN = 29
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))

_ROLE_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_SWITCH = "switch"


class NetworkPermissionError(RuntimeError):
    """The process may not create network namespaces (no CAP_NET_ADMIN / CAP_SYS_ADMIN)."""


class NetworkToolMissingError(RuntimeError):
    """The ``ip`` command (iproute2) is not installed."""


_HOW_TO_RUN = (
    "Run aideploy as root (e.g. with sudo, or in a container started with "
    "--cap-add NET_ADMIN --cap-add SYS_ADMIN), or deploy with network=public, "
    "which needs no private network."
)


# --------------------------------------------------------------------------- preflight


def find_ip(path: str | None = None) -> str:
    """Return the path of the ``ip`` binary, or raise :class:`NetworkToolMissingError`.

    ``path`` is a PATH-like search list; by default $PATH plus the sbin
    directories, which non-login root shells often leave out.
    """
    if path is None:
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("ip", path=path)
    if not found:
        raise NetworkToolMissingError(
            "network=vnet needs the 'ip' command to build the private network, "
            "but it was not found. Install iproute2 (e.g. apt-get install iproute2), "
            "or deploy with network=public."
        )
    return found


def parse_cap_eff(status_text: str) -> int:
    """Return the effective capability mask from the text of ``/proc/<pid>/status``."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return int(value.strip(), 16)
    raise ValueError("no CapEff line in process status")


def missing_capabilities(cap_eff: int | None = None) -> list[str]:
    """Names of the capabilities that creating namespaces needs and ``cap_eff`` lacks.

    ``cap_eff`` defaults to this process's effective set.
    """
    if cap_eff is None:
        with open("/proc/self/status", encoding="ascii") as f:
            cap_eff = parse_cap_eff(f.read())
    return [name for name, bit in _NEEDED_CAPS.items() if not cap_eff >> bit & 1]


def preflight() -> str:
    """Check that a private network can be built here; return the ``ip`` path.

    Raises :class:`NetworkToolMissingError` or :class:`NetworkPermissionError`
    with a message that says how to run instead.
    """
    ip = find_ip()
    missing = missing_capabilities()
    if missing:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        raise NetworkPermissionError(
            f"network=vnet creates Linux network namespaces, which needs CAP_NET_ADMIN and "
            f"CAP_SYS_ADMIN; this process ({who}) lacks {', '.join(missing)}. {_HOW_TO_RUN}"
        )
    return ip


def _run_ip(ip: str, *args: str) -> str:
    """Run ``ip args...``; map its failures onto clear exceptions."""
    proc = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "Operation not permitted" in err or "Permission denied" in err:
            raise NetworkPermissionError(f"`ip {' '.join(args)}` was refused: {err}. {_HOW_TO_RUN}")
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {err}")
    return proc.stdout


def list_leftovers(prefix: str = NS_PREFIX) -> list[str]:
    """Names of existing network namespaces starting with ``prefix`` (ours start with ``aid-``)."""
    out = _run_ip(find_ip(), "netns", "list")
    # Lines look like "name" or "name (id: 3)".
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(prefix))


# --------------------------------------------------------------------------- entering a namespace

_libc = ctypes.CDLL(None, use_errno=True)


def _setns_net(netns_file: str) -> None:
    """Move the *calling thread* into the network namespace bound at ``netns_file``.

    Network namespaces are per thread (setns(2)); Python 3.11 has no os.setns.
    """
    fd = os.open(netns_file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            if e == errno.EPERM:
                raise NetworkPermissionError(f"setns({netns_file}) refused (needs CAP_SYS_ADMIN). {_HOW_TO_RUN}")
            raise OSError(e, f"setns({netns_file}): {os.strerror(e)}")
    finally:
        # The thread now holds the namespace itself; the fd is no longer needed.
        os.close(fd)


class NamespaceExecutor(ThreadPoolExecutor):
    """A one-thread executor whose thread lives in one network namespace for its whole life.

    Every socket (and thus every HTTP call) opened by work submitted here uses
    the namespace.  The thread belongs to this executor only and never serves
    anyone else; it ends at :meth:`close` (called by ``PrivateNetwork.destroy``).
    Create HTTP sessions/connection pools *inside* submitted work: a pool
    made on the host and shared here would reuse host-namespace sockets.
    """

    def __init__(self, netns: str):
        self.netns = netns
        self._worker: threading.Thread | None = None
        self._enter_error: BaseException | None = None
        super().__init__(max_workers=1, thread_name_prefix=f"netns-{netns}", initializer=self._enter)
        # Start the thread now so a setns failure surfaces here, not on first use.
        try:
            self.submit(lambda: None).result()
        except BrokenThreadPool:
            self.shutdown(wait=False)
            raise self._enter_error or RuntimeError(f"could not enter namespace {netns}") from None

    def _enter(self) -> None:
        try:
            _setns_net(os.path.join(NETNS_DIR, self.netns))
        except BaseException as exc:
            # Raising breaks the pool, so no work ever runs in the host namespace.
            self._enter_error = exc
            raise
        self._worker = threading.current_thread()

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking work, drop queued work, and wait up to ``timeout`` s for the thread."""
        self.shutdown(wait=False, cancel_futures=True)
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)


# --------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class Host:
    """One machine of the private network: a namespace with one interface and one address."""

    role: str
    ip: str
    netns: str  #: namespace name (see ``ip netns list``)
    ifname: str  #: its interface, inside ``netns``
    switch_ifname: str  #: the peer end, plugged into the bridge in the switch namespace

    @property
    def netns_path(self) -> str:
        """Path of the namespace's bind mount (what setns(2) and ``nsenter --net=`` take)."""
        return os.path.join(NETNS_DIR, self.netns)


def _sanitize_run_id(run_id: str) -> str:
    safe = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")[:20].strip("-")
    if not safe:
        raise ValueError(f"run_id {run_id!r} has no usable characters (need letters or digits)")
    return safe


class PrivateNetwork:
    """A private IPv4 network of network namespaces, like an Azure VNET subnet.

    Use as a context manager, or call :meth:`create` and :meth:`destroy`::

        with PrivateNetwork("run42") as net:          # service at 10.0.1.4
            net.add_host("client", "10.0.1.10")
            net.popen("service", ["python", "-m", "http.server", "--bind", "10.0.1.4", "80"])
            net.wait_for_port("client", 80)
            body = net.run_in("client", lambda: urllib.request.urlopen("http://10.0.1.4/").read())

    Hosts may be added before or after :meth:`create`.
    """

    def __init__(
        self,
        run_id: str,
        cidr: str = "10.0.1.0/24",
        service_ip: str = "10.0.1.4",
        hosts: Mapping[str, str | None] | None = None,
    ):
        """
        ``run_id`` names this network (sanitized; a hash of it keeps names unique).
        ``cidr`` must be an RFC 1918 IPv4 range no smaller than a /29;
        ``service_ip`` (role "service") and any ``hosts`` ({role: ip or None
        for the next free address}) must be addresses Azure would hand out
        in it: not the first four, not the last.
        """
        self.run_id = run_id
        safe = _sanitize_run_id(run_id)
        self.tag = hashlib.sha256(run_id.encode()).hexdigest()[:6]
        self._ns_base = f"{NS_PREFIX}{safe}-{self.tag}"
        self.switch_netns = f"{self._ns_base}-{_SWITCH}"
        self._bridge = f"aid{self.tag}br"

        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            raise ValueError(f"invalid cidr {cidr!r}: {e}") from None
        if net.version != 4 or not any(net.subnet_of(r) for r in _RFC1918):
            raise ValueError(
                f"cidr {cidr} is not a private (RFC 1918) IPv4 range: use part of "
                "10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"
            )
        if net.prefixlen > _MAX_PREFIXLEN:
            raise ValueError(f"cidr {cidr} is too small: Azure subnets are /{_MAX_PREFIXLEN} or larger")
        self.network = net

        self._lock = threading.RLock()  # re-entrant: destroy() may run from a signal handler mid-call
        self._hosts: dict[str, Host] = {}
        self._next_index = 0
        self._made_ns: list[str] = []  # namespaces we created, in creation order
        self._procs: list[subprocess.Popen] = []
        self._executors: dict[str, NamespaceExecutor] = {}
        self._ip: str | None = None
        self._created = False
        self._closed = False

        self.add_host("service", service_ip)
        for role, ip in (hosts or {}).items():
            self.add_host(role, ip)

    # ------------------------------------------------------------------ hosts

    def add_host(self, role: str, ip: str | None = None) -> Host:
        """Add a host (its own namespace) with ``ip``, or the next free address if None.

        If the network already exists, the host is wired in at once.
        """
        if not _ROLE_RE.match(role) or role == _SWITCH:
            raise ValueError(f"role {role!r} must be 1-16 lowercase letters/digits, start with a letter, not 'switch'")
        with self._lock:
            if self._closed:
                raise RuntimeError("this PrivateNetwork was destroyed; make a new one")
            if role in self._hosts:
                raise ValueError(f"role {role!r} already has a host ({self._hosts[role].ip})")
            taken = {h.ip for h in self._hosts.values()}
            usable = list(self.network)[_AZURE_RESERVED_LOW:-1]
            if ip is None:
                free = [str(a) for a in usable if str(a) not in taken]
                if not free:
                    raise ValueError(f"no free address left in {self.network}")
                ip = free[0]
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError as e:
                raise ValueError(f"invalid address for {role!r}: {e}") from None
            if addr not in self.network:
                raise ValueError(f"{role} address {ip} is not inside {self.network}")
            if addr not in usable:
                raise ValueError(
                    f"{role} address {ip} is reserved in {self.network} (Azure keeps the first four "
                    f"and the last address); use {usable[0]} .. {usable[-1]}"
                )
            if str(addr) in taken:
                raise ValueError(f"address {ip} is already used by another host")
            idx = self._next_index  # never reused, even if wiring a host failed
            self._next_index += 1
            host = Host(
                role=role,
                ip=str(addr),
                netns=f"{self._ns_base}-{role}",
                ifname=f"aid{self.tag}h{idx}",
                switch_ifname=f"aid{self.tag}s{idx}",
            )
            self._hosts[role] = host
            if self._created:
                try:
                    self._wire(host)
                except BaseException:
                    # Leave no half-wired host behind; its namespace (if made) goes at destroy().
                    del self._hosts[role]
                    raise
            return host

    def host(self, role: str) -> Host:
        """The host of ``role``; KeyError with the known roles otherwise."""
        try:
            return self._hosts[role]
        except KeyError:
            raise KeyError(f"no host with role {role!r} (have: {', '.join(self._hosts)})") from None

    @property
    def hosts(self) -> dict[str, Host]:
        """All hosts by role (a copy)."""
        return dict(self._hosts)

    @property
    def service_ip(self) -> str:
        """The service's private address."""
        return self._hosts["service"].ip

    @property
    def namespaces(self) -> list[str]:
        """Names of the namespaces this instance created and has not yet deleted."""
        return list(self._made_ns)

    # ------------------------------------------------------------------ lifecycle

    def create(self) -> "PrivateNetwork":
        """Build the namespaces, bridge and links. On any failure, undo everything and re-raise."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this PrivateNetwork was destroyed; make a new one")
            if self._created:
                return self
            self._ip = preflight()
            atexit.register(self.destroy)  # last resort if the caller never tears down
            try:
                self._add_ns(self.switch_netns)
                sw = self.switch_netns
                self._ipc("-n", sw, "link", "add", self._bridge, "type", "bridge")
                self._ipc("-n", sw, "link", "set", self._bridge, "up")
                for host in list(self._hosts.values()):
                    self._wire(host)
                self._created = True
            except BaseException:
                try:
                    self.destroy()
                except Exception:  # keep the original error; destroy() already logged
                    log.exception("cleanup after failed create() of %s was incomplete", self._ns_base)
                raise
        log.info("private network %s up: %s", self.network,
                 ", ".join(f"{h.role}={h.ip}" for h in self._hosts.values()))
        return self

    def destroy(self, grace: float = 3.0) -> None:
        """Kill every process started here, stop executors, delete every namespace made here.

        Works after a half-finished create(), is idempotent, and may be called
        from a signal handler or atexit: the lock is re-entrant and each step
        is repeatable, so an interrupted destroy() is finished by the next one.
        Namespaces that existed before (not made here) are never touched.
        Raises RuntimeError only if some namespace could not be deleted.
        """
        with self._lock:
            self._closed = True  # also stops a create() that a signal handler interrupted
            self._created = False
            _terminate(list(self._procs), grace)
            self._procs.clear()
            for role, executor in list(self._executors.items()):
                executor.close()
                self._executors.pop(role, None)
            for ns in reversed(list(self._made_ns)):
                if self._delete_ns(ns, grace) and ns in self._made_ns:
                    self._made_ns.remove(ns)
            atexit.unregister(self.destroy)
            if self._made_ns:
                raise RuntimeError(
                    f"could not delete network namespaces {self._made_ns}; remove them with `ip netns del NAME`"
                )

    def __enter__(self) -> "PrivateNetwork":
        return self.create()

    def __exit__(self, *exc_info: Any) -> None:
        self.destroy()

    # ------------------------------------------------------------------ running things inside

    def popen(self, role: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``role``'s namespace (via ``ip netns exec``).

        It runs in a new session, so destroy() can kill it with all its children.
        ``popen_kwargs`` go to :class:`subprocess.Popen` (``start_new_session`` is forced).
        """
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a string")
        if popen_kwargs.pop("start_new_session", True) is not True:
            raise ValueError("popen() always starts a new session (needed to kill the process group)")
        host = self.host(role)
        with self._lock:  # so a concurrent destroy() cannot miss this process
            self._require_up()
            proc = subprocess.Popen(
                [self._ip, "netns", "exec", host.netns, *argv], start_new_session=True, **popen_kwargs
            )
            self._procs.append(proc)
        return proc

    def run_in(self, role: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` inside ``role``'s namespace; return its result or raise its exception.

        It runs on a fresh thread that joins the namespace and ends with the
        call, so this process's other threads stay in the host namespace.
        """
        netns_file = self.host(role).netns_path
        self._require_up()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                _setns_net(netns_file)
                box["result"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc

        t = threading.Thread(target=target, name=f"netns-{role}", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def executor(self, role: str) -> NamespaceExecutor:
        """The single-thread executor living in ``role``'s namespace (made on first use, closed at destroy())."""
        host = self.host(role)
        with self._lock:
            self._require_up()
            if role not in self._executors:
                self._executors[role] = NamespaceExecutor(host.netns)
            return self._executors[role]

    def wait_for_port(self, role: str, port: int, ip: str | None = None, timeout: float = 15.0) -> None:
        """Wait until a TCP connect from ``role`` to ``ip`` (default: the service) on ``port`` succeeds."""
        ip = ip or self.service_ip

        def probe() -> None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with socket.create_connection((ip, port), timeout=0.5):
                        return
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{ip}:{port} not reachable from {role} after {timeout}s: {exc}") from exc
                    time.sleep(0.05)

        self.run_in(role, probe)

    # ------------------------------------------------------------------ internals

    def _require_up(self) -> None:
        if not self._created:
            raise RuntimeError("the private network is not up: call create() (or use `with`) first")

    def _ipc(self, *args: str) -> str:
        """Run ``ip`` during create(); abort if destroy() ran meanwhile (e.g. from a signal handler)."""
        if self._closed:
            raise RuntimeError("the private network was destroyed while being created")
        return _run_ip(self._ip, *args)

    def _add_ns(self, name: str) -> None:
        # Track before running: if we are interrupted after `ip` made it, destroy() still finds it.
        self._made_ns.append(name)
        try:
            self._ipc("netns", "add", name)
        except RuntimeError as exc:
            # `ip` reported failure, so it did not make the namespace: never delete it
            # (if it exists it belongs to someone else, e.g. a run with the same run_id).
            self._made_ns.remove(name)
            if "File exists" in str(exc):
                raise RuntimeError(
                    f"network namespace {name} already exists: another run uses run_id {self.run_id!r}, "
                    f"or a crashed run left it (remove it with `ip netns del {name}`)"
                ) from None
            raise

    def _wire(self, host: Host) -> None:
        ns, sw = host.netns, self.switch_netns
        self._add_ns(ns)
        self._ipc("-n", ns, "link", "set", "lo", "up")
        # Run `ip` inside the role namespace and put the peer straight into the switch
        # namespace: neither end ever exists in the host namespace.
        self._ipc("-n", ns, "link", "add", host.ifname, "type", "veth", "peer", "name", host.switch_ifname, "netns", sw)
        self._ipc("-n", sw, "link", "set", host.switch_ifname, "master", self._bridge, "up")
        self._ipc("-n", ns, "addr", "add", f"{host.ip}/{self.network.prefixlen}", "dev", host.ifname)
        self._ipc("-n", ns, "link", "set", host.ifname, "up")

    def _delete_ns(self, name: str, grace: float) -> bool:
        return delete_namespace(name, grace, self._ip)

    @property
    def name_prefix(self) -> str:
        """What the names of this network's namespaces (and no other's) start with."""
        return f"{self._ns_base}-"


def delete_namespace(name: str, grace: float = 3.0, ip: str | None = None) -> bool:
    """Kill what still runs in namespace ``name``, delete it; True once it is gone."""
    ip = ip or find_ip()
    if not os.path.exists(os.path.join(NETNS_DIR, name)):
        return True
    # Processes that left our process groups (setsid, daemons) would keep the
    # namespace alive after its name is gone: kill everything inside it.
    deadline = time.monotonic() + grace
    while True:
        pids = _netns_pids(ip, name)
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    proc = subprocess.run([ip, "netns", "del", name], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 and os.path.exists(os.path.join(NETNS_DIR, name)):
        log.error("could not delete network namespace %s: %s", name, proc.stderr.strip())
        return False
    return True


def _netns_pids(ip: str, name: str) -> list[int]:
    proc = subprocess.run([ip, "netns", "pids", name], capture_output=True, text=True, timeout=30)
    me = os.getpid()
    return [int(p) for p in proc.stdout.split() if p.isdigit() and int(p) != me]


def _kill(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM each process group, wait up to ``grace`` s, then SIGKILL; reap the leaders."""
    # Only signal groups whose leader is not reaped yet: a reaped pid may be reused.
    live = [p for p in procs if p.poll() is None]
    for p in live:
        _kill(p.pid, signal.SIGTERM, group=True)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(p.pid, signal.SIGKILL, group=True)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                log.error("process %s did not die after SIGKILL", p.pid)
    # Group members that outlived their leader are still inside our namespaces:
    # _delete_ns() kills whatever is left there.
