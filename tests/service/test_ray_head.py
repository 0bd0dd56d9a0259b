"""The embedded Ray head is the service's alone: every port it opens is on 127.0.0.1, it lives
in its own temp directory, and stopping it ends its own processes and no other Ray cluster on
the machine. Ray's own words reach the user when it cannot start."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from service.jobs.launcher import LocalRayHead, RayHeadError
from tests.service.conftest import free_port

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or (addr.version == 6 and addr.ipv4_mapped is not None and addr.ipv4_mapped.is_loopback)


def listening(procs: list[psutil.Process]) -> set[tuple[str, int]]:
    pids = {p.pid for p in procs}
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


@pytest.fixture
def bystander():
    """Somebody else's Ray cluster on the same machine, started the plain way."""
    temp = Path(tempfile.mkdtemp(prefix="bystander-ray-"))
    subprocess.run([RAY, "start", "--head", "--port", "0", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp),
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True)
    head = LocalRayHead(0, temp_dir=temp)  # only to find (and at the end stop) its processes
    yield head
    head.stop(grace_s=2)  # the test is over: no need to let it shut down gracefully


def test_the_head_listens_on_loopback_only_and_its_stop_spares_a_bystander(bystander):
    theirs = {p.pid for p in bystander.processes()}
    assert theirs, "the bystander cluster did not start"
    ours = LocalRayHead(free_port())
    ours.start()
    try:
        procs = ours.processes()
        assert procs and not {p.pid for p in procs} & theirs
        ports = listening(procs)
        assert len(ports) >= 5 and all(loopback(ip) for ip, _ in ports), sorted(ports)
    finally:
        ours.stop()
    assert not ours.processes()
    assert all(psutil.pid_exists(pid) for pid in theirs), "stopping the service's head killed another cluster"
    address = (bystander.temp_dir / "ray_current_cluster").read_text().strip()
    alive = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True)
    assert alive.returncode == 0, alive.stderr


def test_rays_own_error_reaches_the_user():
    # A dashboard port inside Ray's worker-port range (10002-19999 by default): Ray refuses it.
    head = LocalRayHead(10_005)
    with pytest.raises(RayHeadError) as err:
        head.start()
    assert "ray start exited" in str(err.value) and len(str(err.value).splitlines()) > 1, str(err.value)
    head.stop()
