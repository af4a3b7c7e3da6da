"""Security end to end: tokens, who may act on which job, node join, the audit log.

A real master and node (``Cluster``) and real ``mgpu`` commands, as users run them. The
admin token is the one the master wrote for the Unix user running the tests (the cluster's
``XDG_CONFIG_HOME``); other users get theirs from ``mgpu token create``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.client.client import SimpleClient
from mgpu.core.errors import Forbidden, Unauthorized
from mgpu.server.auth import local_user

# A root agent runs each job as its owner's Unix account: a job that must run belongs to an
# account that exists (and may not read the test's files); elsewhere any name will do.
RUNNER = "nobody" if os.geteuid() == 0 else "alice"


def status_of(cluster: Cluster, path: str, body: Any = None, token: str | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(HTTP status, JSON body) of a request with exactly ``token`` (None: no header)."""
    return cluster.status_of(path, body, token, headers=headers, timeout=10)


def as_user(cluster: Cluster, token: str, *args: str, check: bool | int = True) -> Any:
    """``mgpu ARGS`` with ``token`` in MGPU_TOKEN (and no default token file)."""
    env = {"MGPU_TOKEN": token, "XDG_CONFIG_HOME": str(cluster.tmp / "nobody")}
    return cluster.mgpu(*args, env=env, check=check)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ secrets and tokens


def test_first_start_makes_secrets_readable_by_their_owner_only(cluster: Cluster) -> None:
    data = cluster.master_dir
    assert mode(data) == 0o700
    for name in ("join.token", "admin.token"):
        assert mode(data / name) == 0o600
    assert mode(cluster.token_file) == 0o600 and mode(cluster.token_file.parent) == 0o700
    token = cluster.token
    assert len(token) >= 43  # token_urlsafe(32): 256 bits
    assert (data / "admin.token").read_text().strip() == token
    # Only digests in the database, never a token or the join secret.
    db = (data / "mgpu.db").read_bytes() + (data / "mgpu.db-wal").read_bytes()
    assert token.encode() not in db
    assert (data / "join.token").read_text().strip().encode() not in db
    con = sqlite3.connect(data / "mgpu.db")
    try:
        rows = con.execute("SELECT user, admin, digest FROM tokens").fetchall()
    finally:
        con.close()
    assert rows == [(local_user(), 1, hashlib.sha256(token.encode()).hexdigest())]
    # A restart keeps the tokens and leaves the token file alone.
    before = cluster.token_file.stat().st_mtime_ns
    cluster.restart_master()
    assert cluster.token == token and cluster.token_file.stat().st_mtime_ns == before
    assert cluster.mgpu("queue").returncode == 0


def test_a_token_file_of_another_master_is_replaced(cluster: Cluster) -> None:
    cluster.token_file.write_text("not-a-token-of-this-master\n")
    cluster.restart_master()
    assert cluster.token == (cluster.master_dir / "admin.token").read_text().strip()
    assert mode(cluster.token_file) == 0o600


def test_requests_without_a_valid_token_get_401_saying_what_to_do(cluster: Cluster) -> None:
    code, reply = status_of(cluster, "/api/v1/jobs")
    assert code == 401 and reply["code"] == "unauthorized"
    assert "no token" in reply["error"] and "MGPU_TOKEN" in reply["error"]
    code, reply = status_of(cluster, "/api/v1/jobs", token="x" * 43)
    assert code == 401 and "not accepted" in reply["error"]
    join = cluster.join_token_file.read_text().strip()
    assert status_of(cluster, "/api/v1/jobs", token=join)[0] == 401  # not a user token
    code, _ = status_of(cluster, "/api/v1/jobs", {"jobs": [{"command": "true"}]})
    assert code == 401
    assert cluster.api("/api/v1/jobs?all=1")["jobs"] == []  # nothing was submitted
    assert status_of(cluster, "/api/v1/health")[0] == 200  # open
    # The command line: one line, exit 6, no traceback.
    done = cluster.mgpu("queue", env={"XDG_CONFIG_HOME": str(cluster.tmp / "none")}, check=6)
    assert done.stderr.startswith("error: no token: run on the master's machine")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    done = as_user(cluster, "wrong", "submit", "true", check=6)
    assert "not accepted" in done.stderr and done.stderr.count("\n") == 1


def test_a_token_file_others_may_read_is_refused(cluster: Cluster) -> None:
    cluster.token_file.chmod(0o644)
    done = cluster.mgpu("queue", check=2)
    assert done.stderr == (f"error: token file {cluster.token_file} is accessible by others "
                           f"(mode 0644): run `chmod 600 {cluster.token_file}`, and replace "
                           "the secret if others may have read it\n")
    mine = cluster.tmp / "mytoken"
    mine.write_text(cluster.token)
    mine.chmod(0o600)
    assert cluster.mgpu("--token-file", str(mine), "queue").returncode == 0
    missing = cluster.mgpu("queue", "--token-file", str(cluster.tmp / "nope"), check=2)
    assert "does not exist" in missing.stderr


def test_tokens_create_list_revoke(cluster: Cluster) -> None:
    alice = cluster.user_token("alice")
    assert len(alice) >= 43 and alice != cluster.token
    listed = json.loads(cluster.mgpu("token", "list", "--json").stdout)
    assert [(t["user"], t["admin"]) for t in listed] == [(local_user(), True), ("alice", False)]
    assert "token" not in listed[1]  # only ever shown once
    assert as_user(cluster, alice, "queue").returncode == 0
    # Tokens are for admins to make.
    done = as_user(cluster, alice, "token", "create", "mallory", "--admin", check=6)
    assert "for admins" in done.stderr
    as_user(cluster, alice, "token", "list", check=6)
    as_user(cluster, alice, "events", check=6)
    bad = cluster.mgpu("token", "create", "no spaces allowed", check=1)
    assert "invalid request" in bad.stderr and "user" in bad.stderr
    # Revoke by user: the token stops working at once.
    assert cluster.mgpu("token", "revoke", "alice").stdout == f"Revoked token {listed[1]['id']}\n"
    assert "not accepted" in as_user(cluster, alice, "queue", check=6).stderr
    assert cluster.mgpu("token", "revoke", "alice", check=4).stderr.startswith("error: no active")
    # The last admin token stays.
    last = cluster.mgpu("token", "revoke", str(listed[0]["id"]), check=5)
    assert "no admin token" in last.stderr
    second = cluster.user_token("root2", admin=True)
    assert cluster.mgpu("token", "revoke", str(listed[0]["id"])).returncode == 0
    assert as_user(cluster, second, "token", "list").returncode == 0
    cluster.mgpu("queue", check=6)  # the revoked admin token in the default file


def test_revoking_a_token_ends_what_is_open_with_it(cluster: Cluster) -> None:
    """A follow, an srun and a wait made with a token stop when it is revoked, and say
    why; the admin's own requests go on."""
    runner = cluster.user_token(RUNNER)
    env = {**cluster.env, "MGPU_TOKEN": runner, "XDG_CONFIG_HOME": str(cluster.tmp / "nobody")}

    def start(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "mgpu", "--master", cluster.master_addr, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/", text=True)

    code, reply = status_of(cluster, "/api/v1/jobs", {"jobs": [{
        "command": "echo started; exec sleep 300", "cwd": "/",
        "env": {"PATH": os.environ["PATH"]}}]}, token=runner)
    assert code == 201
    [job_id] = reply["job_ids"]
    follow = start("logs", "-f", str(job_id))
    srun = start("srun", "-q", "sh", "-c", "echo interactive; exec sleep 300")
    wait = start("wait", str(job_id))
    admin = subprocess.Popen(
        [sys.executable, "-m", "mgpu", "--master", cluster.master_addr, "logs", "-f",
         str(job_id)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env,
        text=True)
    procs = (follow, srun, wait, admin)
    try:
        assert follow.stdout is not None and srun.stdout is not None
        assert follow.stdout.readline() == "started\n"
        assert srun.stdout.readline() == "interactive\n"
        assert admin.stdout is not None and admin.stdout.readline() == "started\n"
        cluster.mgpu("token", "revoke", RUNNER)
        for proc, code in ((follow, 6), (srun, 125), (wait, 6)):
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == code, (proc.args, proc.returncode, err)
            assert "not accepted" in err and "Traceback" not in err, err
        assert admin.poll() is None  # another token's follow goes on
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert cluster.job(job_id)["state"] == "running"  # the token went, not the job
    cluster.mgpu("cancel", str(job_id))


# ------------------------------------------------------------------ whose jobs


@pytest.mark.cluster(nodes=1, gpus=2)
def test_users_act_only_on_their_own_jobs(cluster: Cluster) -> None:
    alice, bob = cluster.user_token(RUNNER), cluster.user_token("bob")
    # The owner is the token's user, whatever the request says.
    code, reply = status_of(cluster, "/api/v1/jobs", {"jobs": [{
        "command": "echo secret-output; exec sleep 60", "cwd": "/", "user": "root",
        "env": {"PATH": os.environ["PATH"]}, "stdin": True}]}, token=alice)
    assert code == 201
    [job_id] = reply["job_ids"]
    wait_until(lambda: "secret-output" in cluster.mgpu("logs", str(job_id)).stdout, 10)
    job = cluster.job(job_id)
    assert (job["state"], job["user"]) == ("running", RUNNER)
    # Everyone sees the metadata...
    listed = json.loads(as_user(cluster, bob, "queue", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert json.loads(as_user(cluster, bob, "show", str(job_id), "--json").stdout)["user"] \
        == RUNNER
    # ...but only the owner and admins may act on the job.
    tries = {
        "read the output of": status_of(cluster, f"/api/v1/jobs/{job_id}/output", token=bob),
        "signal": status_of(cluster, f"/api/v1/jobs/{job_id}/signal", {"signum": 10},
                            token=bob),
        "resize the terminal of": status_of(cluster, f"/api/v1/jobs/{job_id}/resize",
                                            {"rows": 5, "cols": 5}, token=bob),
        "write the input of": _stdin(cluster, job_id, bob),
    }
    for verb, (code, reply) in tries.items():
        assert code == 403, (verb, code, reply)
        assert reply == {"error": f"job {job_id} belongs to {RUNNER}: only its owner or an "
                                  f"admin may {verb} it", "code": "forbidden"}
    logs = as_user(cluster, bob, "logs", str(job_id), check=6)
    assert f"belongs to {RUNNER}" in logs.stderr and "secret-output" not in logs.stdout
    cancel = as_user(cluster, bob, "cancel", str(job_id), check=6)
    assert cancel.stderr == f"error: job {job_id} belongs to {RUNNER}: only its owner or an " \
        "admin may cancel it\n"
    assert cluster.job(job_id)["state"] == "running"
    with SimpleClient("127.0.0.1", cluster.port, token=bob) as c, pytest.raises(Forbidden):
        c.signal(job_id, 10)
    assert "secret-output" in as_user(cluster, alice, "logs", str(job_id)).stdout
    assert "secret-output" in cluster.mgpu("logs", str(job_id)).stdout  # an admin
    assert as_user(cluster, alice, "cancel", str(job_id)).returncode == 0
    assert cluster.wait_job(job_id)["state"] == "cancelled"


def _stdin(cluster: Cluster, job_id: int, token: str) -> tuple[int, Any]:
    return cluster.status_of(f"/api/v1/jobs/{job_id}/stdin", token=token, data=b"x")


def test_private_jobs_hide_other_users_jobs(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0, env={"MGPU_PRIVATE_JOBS": "1"})
    alice, bob = cluster.user_token("alice"), cluster.user_token("bob")
    mine = int(as_user(cluster, alice, "submit", "--parsable", "true").stdout)
    theirs = int(as_user(cluster, bob, "submit", "--parsable", "true").stdout)
    assert [j["id"] for j in json.loads(as_user(cluster, alice, "queue", "--json").stdout)] \
        == [mine]
    assert "no job" in as_user(cluster, alice, "show", str(theirs), check=4).stderr
    assert "no job" in as_user(cluster, alice, "wait", str(theirs), "--timeout", "0",
                               check=4).stderr
    everyone = json.loads(cluster.mgpu("queue", "--json").stdout)  # an admin sees all
    assert [j["id"] for j in everyone] == [mine, theirs]


def test_the_client_raises_unauthorized(cluster: Cluster) -> None:
    with SimpleClient("127.0.0.1", cluster.port, token="nope") as c:
        with pytest.raises(Unauthorized, match="not accepted"):
            c.list_jobs()
        assert c.health().status == "ok"
    with SimpleClient("127.0.0.1", cluster.port, token=cluster.token) as c:
        assert c.whoami().admin and c.whoami().user == local_user()


# ------------------------------------------------------------------ nodes


def test_nodes_without_the_join_secret_are_refused_and_say_why(cluster: Cluster) -> None:
    wrong = cluster.tmp / "wrong.token"
    wrong.write_text("wrong\n")
    wrong.chmod(0o600)
    for name, file, why, status in (
        ("nosecret", cluster.tmp / "missing", "join secret file", 2),
        ("wrong", wrong, "does not accept this node's join secret", 1),
    ):
        node = cluster.add_node(name, 1, "--join-token-file", str(file), wait=False,
                                join=False)
        node.expected_exit = True
        assert node.proc.wait(30) == status
        assert why in node.log_tail()
        assert "Traceback" not in node.log_tail()
    # No secret at all: the default (a local master's data dir) has none here.
    node = cluster.add_node("bare", 1, wait=False, join=False,
                            env={"XDG_DATA_HOME": str(cluster.tmp / "empty")})
    node.expected_exit = True
    assert node.proc.wait(30) == 1
    assert "error: the master at 127.0.0.1" in node.log_tail()
    assert "this node has no join secret; give the node the master's join secret" in \
        node.log_tail()
    assert set(n["node_id"] for n in cluster.api("/api/v1/nodes")["nodes"]) == {"node1"}
    master_log = cluster.master.log_path.read_text() if cluster.master else ""
    assert "refused a node from 127.0.0.1: a wrong join secret" in master_log
    assert "refused a node from 127.0.0.1: no join secret" in master_log
    # The secret from the environment works.
    secret = cluster.join_token_file.read_text().strip()
    cluster.add_node("envnode", 1, join=False, env={"MGPU_JOIN_TOKEN": secret})


def test_a_node_on_the_masters_machine_needs_no_setup(tmp_path: Path,
                                                      make_cluster: Any) -> None:
    """With the master in its default data dir, a node of the same user finds the secret."""
    cluster = make_cluster(nodes=0)
    default = Path(cluster.base_env["XDG_DATA_HOME"]) / "mgpu" / "master"
    default.mkdir(parents=True, mode=0o700)
    (default / "join.token").write_bytes(cluster.join_token_file.read_bytes())
    (default / "join.token").chmod(0o600)
    cluster.add_node("local", 1, join=False)


# ------------------------------------------------------------------ audit


def test_events_show_who_did_what(cluster: Cluster, tmp_path: Path) -> None:
    alice = cluster.user_token(RUNNER)
    job = int(as_user(cluster, alice, "submit", "--parsable", "-D", "/", "sleep 30").stdout)
    cluster.wait_job(job, ("running",))
    cluster.api(f"/api/v1/jobs/{job}/signal", {"signum": 18}, token=alice)  # SIGCONT
    as_user(cluster, alice, "cancel", str(job))
    cluster.mgpu("token", "revoke", RUNNER)
    wrong = tmp_path / "w"
    wrong.write_text("w")
    wrong.chmod(0o600)
    bad = cluster.add_node("bad", 1, "--join-token-file", str(wrong), wait=False)
    bad.expected_exit = True
    bad.proc.wait(30)
    events = json.loads(cluster.mgpu("events", "--json").stdout)
    seen = [(e["user"], e["action"]) for e in events]
    me = local_user()
    for want in [("master", "token.create"), ("node:node1", "node.join"),
                 (me, "token.create"), (RUNNER, "submit"), (RUNNER, "signal"),
                 (RUNNER, "cancel"), (me, "token.revoke"),
                 ("node@127.0.0.1", "node.refused")]:
        assert want in seen, (want, seen)
    assert seen.index((RUNNER, "submit")) < seen.index((RUNNER, "cancel"))
    submit = next(e for e in events if e["action"] == "submit")
    assert submit["detail"] == f"job {job} (1 GPU): sleep 30" and submit["time"].endswith("Z")
    table = cluster.mgpu("events", "-n", "2").stdout.splitlines()
    assert table[0].split() == ["TIME", "USER", "ACTION", "DETAIL"] and len(table) == 3
    assert cluster.mgpu("events", "-n", "0", check=2).stderr.startswith("usage:")


# ------------------------------------------------------------------ the switch


def test_auth_off_is_loud_and_lets_anyone_in(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0, env={"MGPU_AUTH": "0"})
    code, reply = status_of(cluster, "/api/v1/jobs", {"jobs": [{"command": "true",
                                                                  "user": "someone"}]})
    assert code == 201
    assert cluster.job(reply["job_ids"][0])["user"] == "someone"
    log = cluster.master.log_path.read_text() if cluster.master else ""
    assert "AUTHENTICATION IS OFF" in log


def test_binding_beyond_loopback_warns_what_travels_in_clear(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0, master_args=("--host", "0.0.0.0"))
    wait_until(lambda: cluster.master is not None
               and "clear text" in cluster.master.log_path.read_text(), 10)
    log = cluster.master.log_path.read_text() if cluster.master else ""
    assert "requests are authenticated, but tokens" in log and "--tls-cert" in log


def test_up_then_submit_needs_no_setup(make_cluster: Any) -> None:
    """`mgpu up` (a master and a node in one process), then `mgpu submit` as the same user:
    the token and the join secret are found where the master put them."""
    cluster = make_cluster(nodes=0)
    cluster.kill_master()
    data = Path(cluster.base_env["XDG_DATA_HOME"]) / "mgpu" / "master"  # the default
    up = cluster._spawn("up", ["up", "--port", "0", "--fake-gpus", "2", "--node-id", "here"],
                        None)
    cluster.stopped.append(up)
    info: dict[str, Any] = wait_until(
        lambda: up.running() and (data / "master.json").exists()
        and json.loads((data / "master.json").read_text()), 30)
    cluster.port = int(info["port"])
    wait_until(lambda: [n["node_id"] for n in cluster.api("/api/v1/nodes")["nodes"]]
               == ["here"], 30, ignore=(OSError,))
    job = cluster.submit("echo zero-config")
    assert cluster.wait_job(job)["state"] == "completed"
    assert cluster.mgpu("logs", str(job)).stdout == "zero-config\n"
