"""TLS end to end: `mgpu certs`, a master with --tls-cert/--tls-key, a node and clients
that verify it, and the errors of those that cannot (tier 3)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.client.client import SimpleClient
from mgpu.core.errors import ConnectionFailed


@pytest.fixture
def certs(tmp_path: Path, make_cluster: Any) -> Path:
    """A CA and a certificate for 127.0.0.1 and localhost, made by `mgpu certs`."""
    out = tmp_path / "certs"
    helper = make_cluster(nodes=0)  # only for its isolated environment and `mgpu`
    done = helper.mgpu("certs", "--dir", str(out), "--host", "127.0.0.1", "--host", "localhost")
    assert f"--tls-cert {out / 'server.pem'}" in done.stdout
    for name, mode in (("ca.pem", 0o644), ("ca.key", 0o600), ("server.pem", 0o644),
                       ("server.key", 0o600)):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    again = helper.mgpu("certs", "--dir", str(out), check=2)
    assert "ca.key exists" in again.stderr
    return out


def tls_cluster(make_cluster: Any, certs: Path) -> Cluster:
    cluster: Cluster = make_cluster(nodes=0, master_args=(
        "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")))
    cluster.ca = certs / "ca.pem"
    assert cluster.tls and cluster.url.startswith("https://")
    return cluster


def test_a_tls_master_with_a_node_and_clients_that_verify_it(make_cluster: Any,
                                                             certs: Path) -> None:
    cluster = tls_cluster(make_cluster, certs)
    ca = str(certs / "ca.pem")
    cluster.add_node("node1", 2, "--ca", ca)
    job = int(cluster.mgpu("--ca", ca, "submit", "--parsable", "echo over tls").stdout)
    wait = cluster.mgpu("wait", str(job), env={"MGPU_CA": ca})
    assert f"Job {job} completed" in wait.stdout
    assert cluster.mgpu("logs", str(job), env={"MGPU_CA": ca}).stdout == "over tls\n"
    with SimpleClient("127.0.0.1", cluster.port, token=cluster.token, ca=ca) as c:
        assert c.logs(job) == "over tls\n"
        assert [n.node_id for n in c.nodes()] == ["node1"]
    # srun streams over TLS too.
    srun = cluster.mgpu("srun", "-q", "echo", "live", env={"MGPU_CA": ca})
    assert srun.stdout == "live\n"


def test_clients_and_nodes_that_cannot_verify_the_master_say_what_to_do(
    make_cluster: Any, certs: Path, tmp_path: Path,
) -> None:
    cluster = tls_cluster(make_cluster, certs)
    plain = cluster.mgpu("queue", check=3)
    assert plain.stderr.startswith(f"error: the master at {cluster.master_addr}")
    assert "MGPU_CA" in plain.stderr and plain.stderr.count("\n") == 1
    unverified = cluster.mgpu("queue", env={"MGPU_TLS": "1"}, check=3)
    assert unverified.stderr.startswith("error: cannot verify the TLS certificate of the "
                                        f"master at {cluster.master_addr}")
    assert "pass --ca FILE or set MGPU_CA" in unverified.stderr
    other = tmp_path / "other"
    cluster.mgpu("certs", "--dir", str(other), "--host", "127.0.0.1")
    wrong = cluster.mgpu("--ca", str(other / "ca.pem"), "queue", check=3)
    assert f"it is not signed by the CA in {other / 'ca.pem'}" in wrong.stderr
    with SimpleClient("127.0.0.1", cluster.port, token=cluster.token, tls=True) as c, \
            pytest.raises(ConnectionFailed, match="cannot verify the TLS certificate"):
        c.list_jobs()
    node = cluster.add_node("blind", 1, wait=False, env={"MGPU_TLS": "1"})
    node.expected_exit = True
    assert node.proc.wait(30) == 1
    assert "cannot verify the TLS certificate of the master" in node.log_tail()
    assert "pass --ca FILE (or set MGPU_CA)" in node.log_tail()
    wait_until(lambda: cluster.api("/api/v1/nodes")["nodes"] == [], 5)
    # A node that dials it in clear is dropped without a word; it says what may be wrong.
    plain_node = cluster.add_node("plain", 1, wait=False)
    wait_until(lambda: "if it serves TLS, pass --ca FILE" in plain_node.log_tail(), 15)
    cluster.kill_node("plain")
    # The master warns about neither: it listens on 127.0.0.1, with TLS.
    log = cluster.master.log_path.read_text() if cluster.master else ""
    assert "listening on https://127.0.0.1" in log and "clear text" not in log


def test_a_master_without_its_key_says_so(make_cluster: Any, certs: Path) -> None:
    cluster = make_cluster(nodes=0)
    cluster.kill_master()
    comp = cluster._spawn("master2", ["server", "--port", "0", "--data-dir",
                                      str(cluster.tmp / "m2"), "--tls-cert",
                                      str(certs / "server.pem")], None)
    comp.expected_exit = True
    cluster.stopped.append(comp)
    assert comp.proc.wait(30) == 2
    assert "--tls-cert and --tls-key go together" in comp.log_tail()


def test_up_with_tls_needs_no_ca_for_its_own_node(make_cluster: Any, certs: Path) -> None:
    """`mgpu up --tls-cert --tls-key`: its node trusts the master's own certificate file."""
    cluster: Cluster = make_cluster(nodes=0)
    cluster.kill_master()
    data = Path(cluster.base_env["XDG_DATA_HOME"]) / "mgpu" / "master"  # the default
    up = cluster._spawn("up", ["up", "--port", "0", "--fake-gpus", "1", "--node-id", "here",
                               "--tls-cert", str(certs / "server.pem"),
                               "--tls-key", str(certs / "server.key")], None)
    cluster.stopped.append(up)
    info: dict[str, Any] = wait_until(
        lambda: up.running() and (data / "master.json").exists()
        and json.loads((data / "master.json").read_text()), 30)
    assert info["tls"] is True
    cluster.port, cluster.tls, cluster.ca = int(info["port"]), True, certs / "ca.pem"
    wait_until(lambda: [n["node_id"] for n in cluster.api("/api/v1/nodes")["nodes"]]
               == ["here"], 30, ignore=(OSError,))
    ca = str(certs / "ca.pem")
    job = int(cluster.mgpu("--ca", ca, "submit", "--parsable", "echo over tls").stdout)
    assert cluster.wait_job(job)["state"] == "completed"
