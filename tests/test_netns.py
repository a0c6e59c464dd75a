"""Tests of aideploy.netns against real network namespaces (root needed; no mocks).

Traffic stays inside namespaces these tests create. The host is never made to
send a packet to the private range: on a host with a default route that packet
would leave the machine, so host isolation is checked on the host's own
interfaces, addresses and routes, and by a real connect only when the host has
no route at all (the kernel then refuses it locally).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

from aideploy import netns
from aideploy.netns import (
    NetworkToolMissingError,
    PrivateNetwork,
    list_leftovers,
    missing_capabilities,
    parse_cap_eff,
)

# Every run_id made here starts with this, so leftovers of this test session are easy to find.
RUN = f"pt{os.getpid()}"
OUR_PREFIX = f"{netns.NS_PREFIX}{RUN}-"
PORT = 8000  # the namespaces are private, so no clash with anything on the host

privileged = pytest.mark.skipif(
    shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None or bool(missing_capabilities()),
    reason="needs iproute2 and CAP_NET_ADMIN + CAP_SYS_ADMIN (run as root)",
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([netns.find_ip(), *args], capture_output=True, text=True, check=check)


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _thread_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module", autouse=True)
def _no_leftovers():
    """After this module, none of its namespaces may remain (and none are left behind if one does)."""
    yield
    if shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        return
    left = list_leftovers(OUR_PREFIX)
    for name in left:
        _ip("netns", "del", name, check=False)
    assert left == [], f"namespaces left behind: {left}"


@pytest.fixture
def make_net():
    """Factory of PrivateNetwork objects (not yet created) that are always destroyed afterwards."""
    made: list[PrivateNetwork] = []

    def make(name: str, **kwargs) -> PrivateNetwork:
        net = PrivateNetwork(f"{RUN}-{name}", **kwargs)
        made.append(net)
        return net

    yield make
    for net in made:
        net.destroy()


def _serve(net: PrivateNetwork, directory, text: str) -> subprocess.Popen:
    """Start a tiny HTTP server on the service address serving ``text`` at /who.txt."""
    (directory / "who.txt").write_text(text)
    proc = net.popen(
        "service",
        [sys.executable, "-m", "http.server", "--bind", net.service_ip, "--directory", str(directory), str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    net.wait_for_port("client", PORT)
    return proc


@pytest.fixture
def served(make_net, tmp_path):
    net = make_net("srv", hosts={"client": "10.0.1.10"}).create()
    _serve(net, tmp_path, "service-here")
    return net


# --------------------------------------------------------------------------- reachability


@privileged
def test_service_reachable_from_client_thread(served):
    url = f"http://{served.service_ip}:{PORT}/who.txt"
    assert served.run_in("client", _get, url) == "service-here"


@privileged
def test_service_reachable_from_client_process(served):
    url = f"http://{served.service_ip}:{PORT}/who.txt"
    code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    proc = served.popen("client", [sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.strip() == "service-here"


@privileged
def test_executor_runs_many_calls_inside_namespace(served):
    url = f"http://{served.service_ip}:{PORT}/who.txt"
    ex = served.executor("client")
    assert served.executor("client") is ex  # one per role
    results = [f.result(timeout=30) for f in [ex.submit(_get, url) for _ in range(20)]]
    assert results == ["service-here"] * 20
    client_ino = os.stat(served.host("client").netns_path).st_ino
    assert ex.submit(_thread_netns_inode).result() == client_ino
    assert _thread_netns_inode() != client_ino  # the test's own thread never moved

    served.destroy()
    with pytest.raises(RuntimeError):
        ex.submit(_get, url)
    assert ex._worker is not None and not ex._worker.is_alive()


@privileged
def test_host_namespace_cannot_reach_service(served):
    ours = {served._bridge} | {n for h in served.hosts.values() for n in (h.ifname, h.switch_ifname)}

    host_links = {line.split(":")[1].strip().split("@")[0] for line in _ip("-o", "link", "show").stdout.splitlines()}
    assert not ours & host_links, "a link of the private network is in the host namespace"
    detail = _ip("-o", "-d", "link", "show").stdout
    assert not any(ns in detail for ns in served.namespaces), "a host link is peered into our namespaces"

    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        addr = ipaddress.ip_interface(line.split()[3])
        assert addr.ip not in served.network, f"host has an address in the private range: {line}"

    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        dst = line.split()[0]
        if dst in ("default", "local", "broadcast", "unreachable", "blackhole", "prohibit"):
            continue
        assert not ipaddress.ip_network(dst, strict=False).overlaps(served.network), f"host route into range: {line}"

    route = _ip("route", "get", served.service_ip, check=False)
    if route.returncode != 0:
        # No route at all: the kernel refuses locally (ENETUNREACH), nothing is sent.
        with pytest.raises(OSError):
            socket.create_connection((served.service_ip, PORT), timeout=1).close()
    else:
        # The host would send it out of its own uplink, never into our namespaces.
        # Sending it would put a packet on a network we don't own, so we stop here.
        dev = route.stdout.split(" dev ")[1].split()[0]
        assert dev not in ours


@privileged
def test_network_has_no_way_out(served):
    client = served.host("client").netns
    routes = _ip("-n", client, "-4", "route", "show").stdout.splitlines()
    assert len(routes) == 1 and routes[0].startswith(f"{served.network} dev {served.host('client').ifname} ")
    # `ip route get` asks the routing table only; no packet is sent.
    out = _ip("-n", client, "route", "get", "198.51.100.1", check=False)  # TEST-NET-2
    assert out.returncode != 0 and "unreachable" in out.stderr.lower()
    for ns in served.namespaces:
        fwd = subprocess.run([netns.find_ip(), "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"],
                             capture_output=True, text=True, check=True)
        assert fwd.stdout.strip() == "0"


@privileged
def test_two_networks_with_same_cidr_coexist(make_net, tmp_path):
    a = make_net("a", hosts={"client": None}).create()
    b = make_net("b", hosts={"client": None}).create()
    assert a.service_ip == b.service_ip == "10.0.1.4"
    assert not set(a.namespaces) & set(b.namespaces)
    assert all(n.startswith(OUR_PREFIX) for n in a.namespaces + b.namespaces)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _serve(a, tmp_path / "a", "A")
    _serve(b, tmp_path / "b", "B")
    url = f"http://10.0.1.4:{PORT}/who.txt"
    assert a.run_in("client", _get, url) == "A"
    assert b.run_in("client", _get, url) == "B"
    a.destroy()
    assert b.run_in("client", _get, url) == "B"  # tearing one down leaves the other alone


# --------------------------------------------------------------------------- teardown


@privileged
def test_destroy_after_exception_removes_namespaces_and_processes(make_net, tmp_path):
    pidfile = tmp_path / "escapee.pid"
    # A process that leaves its process group (new session) and so escapes killpg:
    # destroy() must still find it inside the namespace.
    escape = (
        "import subprocess, sys, time; p = subprocess.Popen(['sleep', '300'], start_new_session=True);"
        "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(300)"
    )
    net = make_net("boom", hosts={"client": None})
    with pytest.raises(ZeroDivisionError):
        with net:
            leader = net.popen("service", [sys.executable, "-c", escape, str(pidfile)])
            child = net.popen("client", ["sh", "-c", "sleep 300 & sleep 300 & wait"])
            deadline = time.monotonic() + 10
            while not pidfile.exists() or not pidfile.read_text():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            escapee = int(pidfile.read_text())
            made = net.namespaces
            assert len(made) == 3 and set(made) <= set(list_leftovers(OUR_PREFIX))
            1 / 0

    assert leader.poll() is not None and child.poll() is not None
    assert not _alive(leader.pid) and not _alive(child.pid)
    assert _wait_dead(escapee)
    assert net.namespaces == []
    assert not set(made) & set(list_leftovers(netns.NS_PREFIX))
    net.destroy()  # idempotent
    net.destroy()
    with pytest.raises(RuntimeError):
        net.popen("client", ["true"])


@privileged
def test_destroy_after_create_failed_halfway_keeps_foreign_namespace(make_net):
    net = make_net("half", hosts={"client": None, "store": None})
    # Someone else's namespace with the name create() wants for "client": create()
    # fails after making the switch and the service namespaces.
    foreign = net.host("client").netns
    _ip("netns", "add", foreign)
    try:
        with pytest.raises(RuntimeError, match="already exists"):
            net.create()
        left = list_leftovers(OUR_PREFIX)
        assert left == [foreign]  # ours are gone, the foreign one is untouched
        assert net.namespaces == []
        net.destroy()
        assert list_leftovers(OUR_PREFIX) == [foreign]
    finally:
        _ip("netns", "del", foreign, check=False)


@privileged
def test_add_host_after_create(make_net):
    net = make_net("late").create()
    store = net.add_host("store")
    assert store.ip == "10.0.1.5"  # lowest free address Azure would hand out
    code = "import socket; s = socket.socket(); s.bind(('10.0.1.5', 9000)); s.listen(); s.accept()"
    net.popen("store", [sys.executable, "-c", code])
    net.wait_for_port("service", 9000, ip=store.ip)


# --------------------------------------------------------------------------- run_in


class _Boom(Exception):
    pass


@privileged
def test_run_in_returns_value_and_raises_exception(make_net):
    net = make_net("runin", hosts={"client": None}).create()
    host_ino = _thread_netns_inode()
    caller = threading.get_ident()

    ino, ident = net.run_in("client", lambda: (_thread_netns_inode(), threading.get_ident()))
    assert ino == os.stat(net.host("client").netns_path).st_ino != host_ino
    assert ident != caller
    assert net.run_in("service", lambda a, b=0: a + b, 2, b=3) == 5

    err = _Boom("inside")

    def fail():
        raise err

    with pytest.raises(_Boom) as info:
        net.run_in("client", fail)
    assert info.value is err
    assert _thread_netns_inode() == host_ino  # the caller's thread never moved

    with pytest.raises(KeyError, match="nosuch"):
        net.run_in("nosuch", int)


def test_run_in_requires_create():
    net = PrivateNetwork(f"{RUN}-notup")
    with pytest.raises(RuntimeError, match="not up"):
        net.run_in("service", int)
    net.destroy()  # nothing made, nothing to do


# --------------------------------------------------------------------------- preflight


def _cap_dropper() -> list[str] | None:
    """A command prefix that runs its argv without CAP_NET_ADMIN (dropped from the bounding set)."""
    if shutil.which("setpriv"):  # util-linux
        return ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--"]
    if shutil.which("capsh"):  # libcap2-bin; runs `bash -c CMD "$0" "$@"` after `--`
        return ["capsh", "--drop=cap_net_admin", "--", "-c", 'exec "$0" "$@"']
    return None


@privileged
def test_permission_error_without_cap_net_admin():
    dropper = _cap_dropper()
    if dropper is None:
        pytest.skip("neither setpriv (util-linux) nor capsh (libcap2-bin) is installed")
    run_id = f"{RUN}-noperm"
    script = textwrap.dedent(
        """
        import sys
        from aideploy import netns
        print("missing:", netns.missing_capabilities())
        try:
            netns.preflight()
        except netns.NetworkPermissionError as e:
            print("PREFLIGHT:", e)
        net = netns.PrivateNetwork(sys.argv[1])
        try:
            net.create()
        except netns.NetworkPermissionError as e:
            print("CREATE:", e)
        # Skip the check so the kernel itself refuses: `ip netns add` still works
        # (CAP_SYS_ADMIN) but configuring links does not, so create() fails
        # halfway and must clean up.
        netns.preflight = netns.find_ip
        net = netns.PrivateNetwork(sys.argv[1])
        try:
            net.create()
        except netns.NetworkPermissionError as e:
            print("KERNEL:", e)
        print("namespaces:", net.namespaces)
        """
    )
    proc = subprocess.run([*dropper, sys.executable, "-c", script, run_id], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    assert lines["missing"].strip() == "['CAP_NET_ADMIN']"
    for key in ("PREFLIGHT", "CREATE"):
        assert "CAP_NET_ADMIN" in lines[key] and "root" in lines[key] and "network=public" in lines[key]
    assert "Operation not permitted" in lines["KERNEL"] and "network=public" in lines["KERNEL"]
    assert lines["namespaces"].strip() == "[]"
    assert not [n for n in list_leftovers(OUR_PREFIX) if "noperm" in n]


def test_parse_cap_eff_real_and_synthetic():
    with open("/proc/self/status") as f:
        status = f.read()
    line = next(l for l in status.splitlines() if l.startswith("CapEff:"))
    assert parse_cap_eff(status) == int(line.split()[1], 16)

    assert parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n") == 0x1FFFFFFFFFF
    assert missing_capabilities(0x1FFFFFFFFFF) == []
    assert missing_capabilities(1 << 12) == ["CAP_SYS_ADMIN"]  # only CAP_NET_ADMIN
    assert missing_capabilities(0x1FFFFFFFFFF & ~(1 << 12)) == ["CAP_NET_ADMIN"]
    assert missing_capabilities(0) == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    with pytest.raises(ValueError):
        parse_cap_eff("Name:\tx\n")


def test_missing_ip_says_install_iproute2():
    with pytest.raises(NetworkToolMissingError, match="iproute2"):
        netns.find_ip(path="/nonexistent")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cidr": "8.8.8.0/24", "service_ip": "8.8.8.4"}, "RFC 1918"),
        ({"cidr": "192.0.2.0/24", "service_ip": "192.0.2.4"}, "RFC 1918"),  # "private" to Python, not RFC 1918
        ({"cidr": "100.64.0.0/24", "service_ip": "100.64.0.4"}, "RFC 1918"),
        ({"cidr": "10.0.1.0/24", "service_ip": "10.0.2.4"}, "not inside"),
        ({"cidr": "10.0.1.0/24", "service_ip": "10.0.1.1"}, "reserved"),
        ({"cidr": "10.0.1.0/24", "service_ip": "10.0.1.255"}, "reserved"),
        ({"cidr": "10.0.1.1/24"}, "invalid cidr"),
        ({"cidr": "10.0.1.0/30", "service_ip": "10.0.1.1"}, "too small"),
        ({"cidr": "fd00::/64"}, "RFC 1918"),
        ({"service_ip": "nonsense"}, "invalid address"),
        ({"hosts": {"client": "10.0.1.4"}}, "already used"),
        ({"hosts": {"Bad Role": None}}, "role"),
        ({"hosts": {"switch": None}}, "role"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrivateNetwork(f"{RUN}-v", **kwargs)


def test_names_fit_linux_limits_and_carry_run_id():
    a = PrivateNetwork("Run/With Weird_chars " + "x" * 200, hosts={"client": None, "store": None})
    b = PrivateNetwork("Run/With Weird_chars " + "x" * 201)
    assert a.tag != b.tag
    for h in a.hosts.values():
        assert len(h.ifname) <= 15 and len(h.switch_ifname) <= 15 and a.tag in h.ifname
        assert h.netns.startswith("aid-run-with-weird-chars-") and a.tag in h.netns
    assert len(a._bridge) <= 15
    assert PrivateNetwork("r", hosts={"client": None}).host("client").ip == "10.0.1.5"
    with pytest.raises(ValueError, match="run_id"):
        PrivateNetwork("///")
