"""The SLURM bridge through slurmrestd (``mgpu node --backend slurm --slurm-rest URL``).

Two tiers:

* **Unit**: what the bridge sends slurmrestd (a :class:`Submission` as a ``job/submit``
  request) and how it reads slurmrestd's answers (jobs, nodes, errors), against answers
  recorded from the real slurmrestd 22.05.8 (openapi/v0.0.38) of these tests.
* **End to end** against the session's real SLURM (``slurm_session``) with a real
  slurmrestd in front of it (``test/slurm_rest.py``: a unix socket, ``rest_auth/local``),
  and, for jobs that run as their owners, a second SLURM whose slurmctld takes JWTs
  (``JwtSlurmCluster``) with a slurmrestd on TCP (``rest_auth/jwt``). The bridges run
  without ``SLURM_CONF`` (and this machine has no ``/etc/slurm/slurm.conf``): SLURM's
  commands would fail there, so everything they do goes through slurmrestd. Root only,
  like test_slurm.py (skipped, saying so, without it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, running_slurm, wait_until
from mgpu.core.config import NodeConfig
from mgpu.core.errors import ConfigError
from mgpu.node import slurm_cli as sc
from mgpu.node import slurm_rest as sr
from mgpu.node.slurm_submit import SlurmCommands, Submission
from slurm_cluster import GPUS, PARTITION, SlurmCluster
from slurm_rest import JwtSlurmCluster, SlurmRestd, running_restd
from test_mixed import SERVER_ARGS, wait_own_bridge
from test_slurm import BRIDGE, nodes, show, slurm_job, squeue, wait_backend_id

# ---------------------------------------------------------------- unit: the requests


def submission(**kw: Any) -> Submission:
    fields: dict[str, Any] = dict(
        name="train", comment="mgpu job 5.0 train (node b)", gpus=2, time_limit=61.0,
        cwd="/w", stdout="/o/5.0.stdout", stderr="/o/5.0.stderr", partition="gpu",
        script="#!/bin/sh\nexec python train.py\n", env={"PATH": "/bin", "MGPU_JOB_ID": "5"})
    fields.update(kw)
    return Submission(**fields)


def test_a_submission_is_asked_of_slurmrestd_as_sbatch_is_asked() -> None:
    body = sr.submit_body(submission())
    assert body["script"] == "#!/bin/sh\nexec python train.py\n"
    assert body["job"] == {
        "name": "train", "comment": "mgpu job 5.0 train (node b)",
        "current_working_directory": "/w", "standard_output": "/o/5.0.stdout",
        "standard_error": "/o/5.0.stderr", "open_mode": "append", "no_requeue": True,
        "environment": {"PATH": "/bin", "MGPU_JOB_ID": "5"}, "gres": "gpu:2",
        "time_limit": 2, "partition": "gpu"}
    # the same rule as sbatch's --time, and nothing asked that was not given
    sub = submission(gpus=0, time_limit=None, partition=None)
    assert not {"gres", "time_limit", "partition"} & set(sr.submit_body(sub)["job"])
    assert f"--time={sr.submit_body(submission(time_limit=5))['job']['time_limit']}" in \
        submission(time_limit=5).sbatch_argv()


# A job of `GET /slurm/v0.0.38/job/1` from slurmrestd 22.05.8, less fields not read here.
ANSWER_JOB = {
    "job_id": 1, "job_state": "FAILED", "state_reason": "NonZeroExitCode", "exit_code": 768,
    "start_time": 1796305592, "comment": "mgpu job 1.0 a|b (node n)", "user_name": "root",
    "tres_per_node": "gres:gpu:2", "time_limit": 2, "derived_exit_code": 0, "requeue": False,
    "name": "t1", "partition": "gpu", "nodes": "mgpu-slurm1", "batch_flag": True}


def test_slurmrestds_jobs_read_as_squeues() -> None:
    got = sr.job_of(ANSWER_JOB)
    assert got == sc.SlurmJob(1, "FAILED", "NonZeroExitCode", 768, 1796305592.0,
                              "mgpu job 1.0 a|b (node n)", "mgpu-slurm1")
    end = sc.end_of(got, None)  # (slurm_cli's table, unchanged)
    assert end is not None and (end.state, end.exit_code) == ("failed", 3)
    pending = sr.job_of({"job_id": 4, "job_state": "PENDING", "state_reason": "Resources",
                         "exit_code": 0, "start_time": 0, "comment": None})
    assert (pending.state, pending.start_time, pending.comment) == ("PENDING", 0.0, "")
    cancelled = sr.job_of({**ANSWER_JOB, "job_state": "CANCELLED", "exit_code": 15})
    end = sc.end_of(cancelled, ("timeout", "time limit of 3s reached"))
    assert end is not None and (end.state, end.exit_code) == ("timeout", 143)


def test_partition_gpus_from_slurmrestds_nodes() -> None:
    answer = {"nodes": [
        {"name": "n1", "gres": "gpu:8", "partitions": ["gpu", "all"]},
        {"name": "n2", "gres": "gpu:a100:4(S:0-1),shard:8", "partitions": ["big", "all"]},
        {"name": "n3", "gres": "", "partitions": ["cpu"]}]}
    assert sr.nodes_gpus(answer, "gpu") == 8
    assert sr.nodes_gpus(answer, "all") == 12
    assert sr.nodes_gpus(answer, None) == 12
    assert sr.nodes_gpus(answer, "nosuch") == 0
    assert sr.nodes_of(answer, "all") == {"n1": 8, "n2": 4}  # (a gang's SLURM nodes)


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_transport_and_jwt_settings(tmp_path: Path) -> None:
    assert isinstance(sr.transport_of(NodeConfig(backend="slurm"), {}), SlurmCommands)
    rest = sr.transport_of(NodeConfig(backend="slurm", slurm_rest="unix:/run/r.sock",
                                      slurm_jwt="x"), {})
    assert isinstance(rest, sr.SlurmRest) and rest.socket == "/run/r.sock"
    assert sr.address_of("http://h:6820/") == ("http://h:6820", None)
    for bad in ("foo", "unix:relative.sock", "http://", "h:6820"):
        with pytest.raises(ConfigError, match="slurm_rest"):
            NodeConfig(slurm_rest=bad)
    token = jwt({"sun": "slurm", "exp": 4102444800, "iat": 1})
    assert sr.claims_of(token)["sun"] == "slurm" and sr.claims_of("garbage") == {}
    path = tmp_path / "jwt"
    path.write_text(f"SLURM_JWT={token}\n")  # (scontrol token's line, as it prints it)
    rest = sr.SlurmRest("http://h:1", jwt="ignored", jwt_file=path)
    assert rest._token() == token  # the file wins, read at each request
    assert rest._own_user(token) == "slurm"
    path.write_text(jwt({"sun": "root", "exp": 1000}))
    with pytest.raises(sc.SlurmError, match=r"expired .* new one") as info:
        rest._token()
    assert info.value.unreachable  # (the node waits, degraded, for a new token)
    path.write_text("\n")
    with pytest.raises(sc.SlurmError, match="is empty"):
        rest._token()
    path.unlink()
    with pytest.raises(sc.SlurmError, match="cannot read the SLURM JWT file"):
        rest._token()
    assert sr.SlurmRest("http://h:1")._token() is None  # (no JWT: rest_auth/local)


def local_account() -> pwd.struct_passwd:
    return pwd.getpwuid(os.getuid())


def test_without_a_jwt_a_job_of_another_user_is_refused_with_the_fix() -> None:
    rest = sr.SlurmRest("unix:/nonexistent/slurmrestd.sock")
    with pytest.raises(sc.SlurmError, match=r"rest_auth/local.*--slurm-jwt-file") as info:
        asyncio.run(rest.submit(submission(account=local_account())))
    assert not info.value.unreachable  # (this job fails; the bridge is fine)


def test_slurmrestd_not_answering_is_unreachable(tmp_path: Path) -> None:
    rest = sr.SlurmRest(f"unix:{tmp_path / 'none.sock'}")
    calls: list[Callable[[], Coroutine[Any, Any, object]]] = [
        lambda: rest.query([3]), lambda: rest.submit(submission()),
        lambda: rest.partition_gpus(None), lambda: rest.cancel([3], 10)]
    for call in calls:
        with pytest.raises(sc.SlurmError, match=r"no answer.*--slurm-rest") as info:
            asyncio.run(call())
        assert info.value.unreachable


@pytest.mark.parametrize(("error", "unreachable"), [
    # recorded: slurmctld stopped, slurmrestd up
    ({"error_code": 1800, "error": "Unable to contact slurm controller (connect failure)"},
     True),
    ({"description": "Unable to find JobId=3", "error_number": -1,
      "error": "Unspecified error", "source": "slurm_load_job"}, True),
    # recorded: refusals of a bad request
    ({"error_code": 2000, "error": "Invalid partition name specified"}, False),
    ({"error_code": 2014, "error": "Requested node configuration is not available"}, False),
    ({"description": "Unknown key \"bogus\"", "source": "hsearch_r"}, False),
])
def test_slurmrestds_errors(error: dict[str, Any], unreachable: bool) -> None:
    assert (sr._code(error) is not None and sr._unreachable(sr._code(error) or 0)) \
        == unreachable
    words = sr._words(error)
    assert str(error.get("error") or error["description"]) in words


def test_a_submission_answered_with_a_job_id_and_an_error_was_taken() -> None:
    # recorded: a submission right after slurmctld restarted, before slurmd registered
    answer = {"errors": [{"error_code": 2068, "error": "Required node not available (down, "
                          "drained or reserved)"}], "job_id": 12, "step_id": "BATCH"}
    assert sr._taken(answer)
    assert not sr._taken({"errors": answer["errors"]})
    assert not sr._taken({"job_id": 0})


# ---------------------------------------------------------------- a real slurmrestd


@pytest.fixture(scope="module")
def restd(slurm_session: SlurmCluster) -> Iterator[SlurmRestd]:
    """slurmrestd on a unix socket (``rest_auth/local``) for the session's SLURM."""
    yield from running_restd(slurm_session)


def start_rest_bridge(cluster: Cluster, url: str, data_dir: Path, *args: str) -> None:
    """Start the bridge ``mgpu node --backend slurm --slurm-rest URL`` of ``cluster``,
    without SLURM_CONF: SLURM's commands cannot reach SLURM from it."""
    argv = ["node", "--node-id", BRIDGE, "--master-host", "127.0.0.1", "--master-port",
            str(cluster.port), "--port", "0", "--data-dir", str(data_dir),
            "--join-token-file", str(cluster.join_token_file), "--backend", "slurm",
            "--partition", PARTITION, "--slurm-poll", "0.3", "--slurm-rest", url, *args]
    cluster.base_env.pop("SLURM_CONF", None)
    cluster._node_args[BRIDGE] = argv
    cluster.nodes[BRIDGE] = cluster._spawn(BRIDGE, argv, None)
    cluster.wait_nodes_up([BRIDGE])


@pytest.fixture
def rest_bridged(slurm: SlurmCluster, restd: SlurmRestd,
                 make_cluster: Callable[..., Cluster]) -> Cluster:
    """A master and one SLURM bridge that asks slurmrestd, no other node."""
    cluster = make_cluster(nodes=0)
    start_rest_bridge(cluster, restd.url, cluster.tmp / BRIDGE)
    return cluster


def test_rest_bridge_offers_the_partitions_gpus(rest_bridged: Cluster) -> None:
    (node,) = nodes(rest_bridged)
    assert (node["node_id"], len(node["gpus"])) == (BRIDGE, GPUS)
    assert {g["name"] for g in node["gpus"]} == {f"slurm:{PARTITION}"}


def test_submit_through_slurmrestd_with_exit_codes_logs_and_id(
        rest_bridged: Cluster, slurm: SlurmCluster) -> None:
    ok = rest_bridged.submit("echo out-$MGPU_JOB_ID; echo gpus=$CUDA_VISIBLE_DEVICES; "
                             "echo err-line >&2", "-G", "2", "--job-name", "hello")
    bad = rest_bridged.submit("echo before; exit 3")
    done = rest_bridged.wait_job(ok)
    assert (done["state"], done["exit_code"], done["node"]) == ("completed", 0, BRIDGE)
    failed = rest_bridged.wait_job(bad)
    assert (failed["state"], failed["exit_code"], failed["end_cause"]) == (
        "failed", 3, "exited")
    assert "before" in rest_bridged.mgpu("logs", str(bad)).stdout
    out = rest_bridged.mgpu("logs", str(ok))
    assert f"out-{ok}" in out.stdout and "err-line" in out.stderr
    if slurm.gpu_files:  # SLURM gave it 2 of its GPUs, and said which
        assert "gpus=0,1" in out.stdout
    sid = show(rest_bridged, ok)["backend_id"]
    assert sid.isdigit() and done["backend_id"] == sid
    seen = slurm_job(slurm, sid)
    assert seen["job_state"] in ("COMPLETED", ["COMPLETED"])
    assert re.fullmatch(rf"mgpu job {ok}\.0 hello \(node {BRIDGE}, [0-9a-f]{{8}}\)",
                        seen["comment"])
    assert (seen["name"], seen["tres_per_node"]) == ("hello", "gres:gpu:2")
    assert seen["requeue"] is False  # (mgpu requeues, SLURM never does)


def test_cancel_running_and_pending_through_slurmrestd(
        rest_bridged: Cluster, slurm: SlurmCluster) -> None:
    running = rest_bridged.submit("echo started; sleep 300")
    wait_until(lambda: "started" in rest_bridged.mgpu("logs", str(running)).stdout, 30)
    blocker = subprocess.run(["sbatch", "--parsable", f"--gres=gpu:{GPUS - 1}", "-o",
                              "/dev/null", "--wrap", "sleep 300"], env=slurm.env,
                             capture_output=True, text=True, check=True).stdout.strip()
    wait_until(lambda: slurm_job(slurm, blocker)["job_state"] in ("RUNNING", ["RUNNING"]),
               30, message=lambda: f"SLURM to run job {blocker}:\n{squeue(slurm)}")
    pending = rest_bridged.submit("echo never")
    sid = wait_backend_id(rest_bridged, pending)
    wait_until(lambda: slurm_job(slurm, sid)["job_state"] in ("PENDING", ["PENDING"]), 30)
    rest_bridged.mgpu("cancel", str(pending))
    rest_bridged.mgpu("cancel", str(running))
    for job_id in (running, pending):
        ended = rest_bridged.wait_job(job_id)
        assert (ended["state"], ended["end_cause"]) == ("cancelled", "cancelled")
        state = slurm_job(slurm, ended["backend_id"])["job_state"]
        assert state in ("CANCELLED", ["CANCELLED"])
    assert "never" not in rest_bridged.mgpu("logs", str(pending)).stdout


def test_a_signal_reaches_the_job_through_slurmrestd(rest_bridged: Cluster) -> None:
    job_id = rest_bridged.submit(
        "trap 'echo got-usr1' USR1; echo ready; while true; do sleep 0.1; done")
    wait_until(lambda: "ready" in rest_bridged.mgpu("logs", str(job_id)).stdout, 30)
    rest_bridged.api(f"/api/v1/jobs/{job_id}/signal", {"signum": int(signal.SIGUSR1)})
    wait_until(lambda: "got-usr1" in rest_bridged.mgpu("logs", str(job_id)).stdout, 30)
    assert rest_bridged.job(job_id)["state"] == "running"  # (a signal, not a cancel)
    rest_bridged.mgpu("cancel", str(job_id))
    assert rest_bridged.wait_job(job_id)["state"] == "cancelled"


def test_time_limit_through_slurmrestd_ends_the_job_as_timeout(
        rest_bridged: Cluster, slurm: SlurmCluster) -> None:
    job_id = rest_bridged.submit("echo working; sleep 300", "-t", "0:03")
    ended = rest_bridged.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["end_cause"]) == ("timeout", "time_limit")
    assert "working" in rest_bridged.mgpu("logs", str(job_id)).stdout
    assert slurm_job(slurm, ended["backend_id"])["time_limit"] in (1, {"set": True,
                                                                       "number": 1})


def test_a_request_slurm_refuses_fails_the_job_with_slurms_words(
        slurm: SlurmCluster, restd: SlurmRestd, make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)  # (the bridge offers more GPUs than SLURM has)
    start_rest_bridge(cluster, restd.url, cluster.tmp / BRIDGE, "--fake-gpus", "16")
    job_id = cluster.submit("echo never", "-G", str(GPUS + 1))
    ended = cluster.wait_job(job_id)
    assert ended["state"] == "failed"
    assert "SLURM did not take the job" in ended["reason"]
    assert "Requested node configuration is not available" in ended["reason"], ended
    assert nodes(cluster)[0]["state"] == "up"  # (one refused job; SLURM itself is fine)


def test_while_slurmrestd_does_not_answer_the_bridge_is_degraded_and_jobs_wait(
        rest_bridged: Cluster, restd: SlurmRestd, slurm: SlurmCluster) -> None:
    # (A bridge that retries a submission first looks for it in SLURM by its comment,
    # "mgpu job 1.0 NAME (node slurm1, TAG)": the random TAG keeps an earlier test's job
    # 1.0, still in SLURM's memory, from being taken for it; names of their own as well.)
    names = [f"{word}-{rest_bridged.tmp.name}" for word in ("first", "second")]
    restd.stop()
    try:
        first = rest_bridged.submit("echo first", "--job-name", names[0])
        bridge = wait_until(lambda: next(
            (n for n in nodes(rest_bridged) if n["state"] == "degraded"), None), 60,
            message=lambda: f"the bridge degraded: {nodes(rest_bridged)}")
        assert "SLURM does not answer" in bridge["reason"]
        assert "slurmrestd" in bridge["reason"] and restd.url in bridge["reason"]
        second = rest_bridged.submit("echo second", "--job-name", names[1])
        assert rest_bridged.job(second)["state"] == "pending"
        assert rest_bridged.job(first)["state"] == "running"  # (its submission retried)
    finally:
        restd.start()
    for job_id, word in ((first, "first"), (second, "second")):
        ended = rest_bridged.wait_job(job_id, timeout=60)
        assert ended["state"] == "completed", (ended, slurm_job(slurm, ended["backend_id"]))
        assert rest_bridged.mgpu("logs", str(job_id)).stdout.split() == [word]
    assert nodes(rest_bridged)[0]["state"] == "up"


def test_a_restarted_rest_bridge_readopts_its_slurm_jobs(
        rest_bridged: Cluster, slurm: SlurmCluster) -> None:
    marker = rest_bridged.tmp / "go"
    job_id = rest_bridged.submit(f"echo first; while [ ! -e {marker} ]; do sleep 0.1; "
                                 "done; echo second; exit 5")
    wait_until(lambda: "first" in rest_bridged.mgpu("logs", str(job_id)).stdout, 30)
    sid = wait_backend_id(rest_bridged, job_id)
    rest_bridged.kill_node(BRIDGE, signal.SIGKILL)
    rest_bridged.restart_node(BRIDGE)
    assert rest_bridged.job(job_id)["state"] == "running"
    marker.touch()
    ended = rest_bridged.wait_job(job_id)
    assert (ended["state"], ended["exit_code"], ended["backend_id"]) == ("failed", 5, sid)
    assert rest_bridged.mgpu("logs", str(job_id)).stdout.split() == ["first", "second"]


def test_server_with_the_slurm_backend_asks_slurmrestd(
        slurm: SlurmCluster, restd: SlurmRestd, make_cluster: Callable[..., Cluster]) -> None:
    """``mgpu server --backend slurm`` with ``MGPU_SLURM_REST`` (``[backend] slurm_rest``):
    the master's own bridge asks slurmrestd (its environment has no SLURM_CONF)."""
    cluster = make_cluster(nodes=0, env={"MGPU_SLURM_REST": restd.url},
                           master_args=SERVER_ARGS)
    wait_own_bridge(cluster)
    job_id = cluster.submit("echo via-rest; exit 4")
    ended = cluster.wait_job(job_id)
    assert (ended["state"], ended["exit_code"]) == ("failed", 4)
    assert slurm_job(slurm, ended["backend_id"])["comment"].startswith(f"mgpu job {job_id}.0")
    assert "via-rest" in cluster.mgpu("logs", str(job_id)).stdout


def test_when_slurmrestd_says_slurmctld_does_not_answer_the_bridge_is_degraded(
        rest_bridged: Cluster, slurm: SlurmCluster) -> None:
    name = f"ctld-{rest_bridged.tmp.name}"  # (its own comment: see the test above)
    slurm.stop_controller()  # slurmrestd answers, after its own wait, that it cannot ask
    try:
        job_id = rest_bridged.submit("echo after-ctld", "--job-name", name)
        bridge = wait_until(lambda: next(
            (n for n in nodes(rest_bridged) if n["state"] == "degraded"), None), 90,
            message=lambda: f"the bridge degraded: {nodes(rest_bridged)}")
        assert "Unable to contact slurm controller" in bridge["reason"], bridge
    finally:
        slurm.start_controller()
    ended = rest_bridged.wait_job(job_id, timeout=90)
    assert ended["state"] == "completed", ended
    assert rest_bridged.mgpu("logs", str(job_id)).stdout.split() == ["after-ctld"]
    wait_until(lambda: nodes(rest_bridged)[0]["state"] == "up", 30)


def test_without_a_jwt_a_root_bridge_refuses_another_users_job_with_the_fix(
        rest_bridged: Cluster, account: str) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": "/root", "USER": "root"}
    job_id = rest_bridged.api("/api/v1/jobs", {"jobs": [{
        "command": "id", "gpus": 1, "cwd": "/", "env": env}]},
        token=rest_bridged.user_token(account))["job_ids"][0]
    ended = rest_bridged.wait_job(job_id)
    assert ended["state"] == "failed"
    assert "rest_auth/local" in ended["reason"] and "--slurm-jwt-file" in ended["reason"]
    assert not ended["backend_id"]  # never submitted: it would have run as root


# ---------------------------------------------------------------- JWT: jobs as their owners


@pytest.fixture(scope="module")
def jwt_slurm() -> Iterator[JwtSlurmCluster]:
    """A second real SLURM, whose slurmctld takes JWTs (AuthAltTypes=auth/jwt)."""
    yield from running_slurm("mgpu-slurm-jwt-", JwtSlurmCluster, ("slurmrestd",))


@pytest.fixture(scope="module")
def jwt_restd(jwt_slurm: JwtSlurmCluster) -> Iterator[SlurmRestd]:
    """slurmrestd on TCP with ``rest_auth/jwt`` for the JWT SLURM."""
    yield from running_restd(jwt_slurm, jwt_slurm.root / "restd", auth=("rest_auth/jwt",),
                             tcp=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter, for a bridge whose jobs run as their owners."""
    path = Path(tempfile.mkdtemp(prefix="mgpu-bridge-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_root_bridge_with_a_jwt_submits_as_the_jobs_owner_and_takes_a_new_token(
        jwt_slurm: JwtSlurmCluster, jwt_restd: SlurmRestd, open_dir: Path,
        make_cluster: Callable[..., Cluster], account: str) -> None:
    cluster = make_cluster(nodes=0)
    token_file = open_dir / "slurm.jwt"
    token_file.write_text(jwt_slurm.token("root"))
    token_file.chmod(0o600)
    start_rest_bridge(cluster, jwt_restd.http_url, open_dir / BRIDGE,
                      "--slurm-jwt-file", str(token_file))
    env = {"PATH": os.environ["PATH"], "HOME": "/root", "USER": "root"}

    def submit(command: str, user: str) -> int:
        job_id: int = cluster.api("/api/v1/jobs", {"jobs": [{
            "command": command, "gpus": 1, "cwd": "/", "env": env}]},
            token=cluster.user_token(user))["job_ids"][0]
        return job_id

    mine = submit('echo "$(id -un) $HOME $SLURM_JOB_USER"', account)
    nobody = submit("true", "no-such-user-here")
    ended = cluster.wait_job(mine)
    out = cluster.mgpu("logs", str(mine)).stdout
    assert ended["state"] == "completed", (ended, out)
    assert out.split() == [account, os.path.expanduser(f"~{account}"), account]
    assert slurm_job(jwt_slurm, ended["backend_id"])["user_name"] == account
    refused = cluster.wait_job(nobody)
    assert refused["state"] == "failed" and "has no account" in refused["reason"]
    # An expired token: the bridge waits, degraded, saying so; a new one in the file (read
    # at each request) and the waiting job runs.
    token_file.write_text(jwt({"sun": "root", "exp": 1000, "iat": 1}))
    late = submit("echo late", account)
    bridge = wait_until(lambda: next(
        (n for n in nodes(cluster) if n["state"] == "degraded"), None), 60,
        message=lambda: f"the bridge degraded: {nodes(cluster)}")
    assert "expired" in bridge["reason"] and str(token_file) in bridge["reason"]
    token_file.write_text(jwt_slurm.token("root"))
    ended = cluster.wait_job(late, timeout=60)
    assert ended["state"] == "completed", ended
    assert cluster.mgpu("logs", str(late)).stdout.split() == ["late"]
    wait_until(lambda: nodes(cluster)[0]["state"] == "up", 30)
    # A token of an ordinary user acts only for that user: another owner's job is refused
    # by slurmctld, and the reason says which token would do.
    token_file.write_text(jwt_slurm.token(account))
    own = submit("echo own", account)
    other = submit("echo other", "nobody")
    assert cluster.wait_job(own)["state"] == "completed"
    refused = cluster.wait_job(other)
    assert refused["state"] == "failed" and not refused["backend_id"]
    assert "SLURM did not take the job" in refused["reason"]
    assert "only from root or SlurmUser" in refused["reason"], refused
