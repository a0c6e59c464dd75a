"""network=vnet on the local target: a private network of namespaces, end to end."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil
import pytest

from conftest import results_of, wait_for
from aideploy.netns import list_leftovers


@pytest.fixture(autouse=True)
def no_namespace_left():
    before = set(list_leftovers())
    yield
    assert set(list_leftovers()) <= before, "a run left network namespaces behind"


def test_vnet_round_trip(cli):
    proc = cli("network=vnet", "data.limit=60")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["status"] == "ok" and results["agreement"] == 1.0
    assert results["endpoint"]["scoring_uri"].startswith("http://10.0.1.4:")


@pytest.mark.parametrize("encryption,limit", [("seal", 2), ("fast", 60)])
def test_encrypted_vnet_round_trip(cli, encryption, limit):
    """The key store lives in the private network too; the service fetches keys from there."""
    proc = cli("network=vnet", f"encryption={encryption}", f"data.limit={limit}")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["agreement"] == 1.0 and results["max_score_error"] <= 1e-3
    assert "store=azurite 10.0.1.5:" in proc.stderr


def in_namespace(ns: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_endpoint_is_private(cli):
    proc, out = cli.start("mode=serve", "network=vnet", "deployment_name=private")
    try:
        wait_for(out / "endpoint.json", proc)
        uri = json.loads((out / "endpoint.json").read_text())["scoring_uri"]
        port = int(uri.split(":")[2].split("/")[0])
        ours = list_leftovers()
        client = next(ns for ns in ours if ns.endswith("-client"))
        service = next(ns for ns in ours if ns.endswith("-service"))
        # Inside the network the service answers (401: it wants its key, so it was reached).
        probe = ("import urllib.request, urllib.error\n"
                 f"try: urllib.request.urlopen(urllib.request.Request({uri!r}, data=b'{{}}'), timeout=10)\n"
                 "except urllib.error.HTTPError as e: print(e.code)\n")
        assert in_namespace(client, probe).stdout.strip() == "401"
        # From the host namespace it cannot be reached. We do not send a packet to find out (the host's
        # routes lead off this machine); we show there is no path: nothing listens on the port here,
        # no host link belongs to the network, and the route the kernel would pick is not ours.
        listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert port not in listening
        host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert " aid" not in host_links
        route = subprocess.run(["ip", "route", "get", "10.0.1.4"], capture_output=True, text=True)
        assert " aid" not in route.stdout
        host_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert "10.0.1." not in host_addrs
        # ...while inside the service namespace the port does listen.
        listening_inside = subprocess.run(["ip", "netns", "exec", service, "ss", "-ltnH"], capture_output=True,
                                          text=True).stdout
        assert f":{port}" in listening_inside
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_without_net_admin_the_error_says_what_to_do(cli):
    argv, out = cli.argv("network=vnet")
    drop = ["setpriv", "--inh-caps=-net_admin,-sys_admin", "--bounding-set=-net_admin,-sys_admin", "--"]
    proc = subprocess.run(drop + argv, capture_output=True, text=True, env=cli.env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "network=public" in proc.stderr and "root" in proc.stderr
    assert results_of(out)["status"] == "failed"
