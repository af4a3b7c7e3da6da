"""The SLURM backend: a node agent that runs its jobs in SLURM (``mgpu node --backend slurm``).

Two tiers:

* **Unit**: what SLURM's answers mean (``node/slurm_cli.py``): the state table, exit
  statuses, ``sbatch``/``squeue``/``sinfo`` output as SLURM 22.05 (Debian 12) and newer
  print it.
* **End to end** against a **real** single-host SLURM (``test/slurm_cluster.py``: munged,
  slurmctld, slurmd, 8 GPUs as gres), started once per session: a real master, a real
  bridge, ``mgpu`` commands as a user runs them, and SLURM's own commands to check what
  SLURM did. They need root (slurmd runs jobs as their users) and are skipped, saying so,
  without it; missing SLURM programs fail them (``.ci/system-packages`` installs them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.core import messages as m
from mgpu.core.config import NodeConfig
from mgpu.core.frames import STREAM_STDERR, STREAM_STDOUT, frame
from mgpu.core.models import EndCause, GpuInfo, JobSpec, JobState
from mgpu.node import slurm_cli as sc
from mgpu.node.slurm import SlurmLink
from mgpu.node.slurm_runs import copied, run_comment
from mgpu.server.effects import Effects
from mgpu.server.state import ClusterState
from slurm_cluster import GPUS, NODE, PARTITION, SlurmCluster

# ---------------------------------------------------------------- unit: SLURM's answers


def job(state: str, status: int | None = 0, reason: str = "None") -> sc.SlurmJob:
    return sc.SlurmJob(7, state, reason, status, 0.0, "")


@pytest.mark.parametrize(("state", "status", "wanted", "expected"), [
    ("PENDING", None, None, None),
    ("RUNNING", 0, None, None),
    ("COMPLETING", 0, None, None),
    ("REQUEUED", 0, None, None),
    ("SUSPENDED", 0, None, None),
    ("COMPLETED", 0, None, ("completed", 0, EndCause.EXITED)),
    ("FAILED", 3 << 8, None, ("failed", 3, EndCause.EXITED)),
    ("FAILED", 9, None, ("failed", 137, EndCause.SIGNALED)),
    ("CANCELLED", 15, None, ("cancelled", 143, EndCause.CANCELLED)),
    ("CANCELLED", 15, ("cancelled", "cancelled by alice"),
     ("cancelled", 143, EndCause.CANCELLED)),
    ("CANCELLED", 15, ("timeout", "time limit of 3s reached"),
     ("timeout", 143, EndCause.TIME_LIMIT)),
    ("CANCELLED", 9, ("node_fail", "fenced"), ("node_fail", 137, EndCause.NODE_LOST)),
    ("TIMEOUT", 15, None, ("timeout", 143, EndCause.TIME_LIMIT)),
    ("NODE_FAIL", None, None, ("node_fail", None, EndCause.NODE_LOST)),
    ("PREEMPTED", 15, None, ("node_fail", 143, EndCause.NODE_LOST)),
    ("BOOT_FAIL", None, None, ("node_fail", None, EndCause.NODE_LOST)),
    ("OUT_OF_MEMORY", 9, None, ("failed", 137, EndCause.SIGNALED)),
    ("SOMETHING_NEW", 0, None, ("failed", 0, EndCause.EXITED)),
])
def test_slurm_states_map_to_mgpu_ends(
        state: str, status: int | None, wanted: tuple[str, str] | None,
        expected: tuple[str, int | None, EndCause] | None) -> None:
    end = sc.end_of(job(state, status), wanted)
    if expected is None:
        assert end is None
        return
    assert end is not None
    assert (end.state, end.exit_code, end.cause) == expected
    assert end.reason or end.state == "completed"  # every other end says why, in words
    if wanted is not None:
        assert end.reason == wanted[1]


def test_end_reasons_say_what_slurm_said() -> None:
    assert sc.end_of(job("FAILED", 3 << 8), None).reason == "exit code 3"  # type: ignore[union-attr]
    assert "scancel" in sc.end_of(job("CANCELLED", 15), None).reason  # type: ignore[operator,union-attr]
    assert "SOMETHING_NEW" in sc.end_of(job("SOMETHING_NEW"), None).reason  # type: ignore[operator,union-attr]


def test_sbatch_answer_and_command_line() -> None:
    assert sc.parse_sbatch("42\n") == 42
    assert sc.parse_sbatch("43;cluster2\n") == 43
    with pytest.raises(sc.SlurmError, match="not a job id"):
        sc.parse_sbatch("sbatch: error: Batch job submission failed\n")
    argv = sc.sbatch_argv(name="train", comment="mgpu job 5.0 train (node b)", gpus=2,
                          time_limit=61, cwd="/w", stdout="/o", stderr="/e", partition="gpu")
    assert {"--gres=gpu:2", "--time=2", "--partition=gpu", "--chdir=/w", "--output=/o",
            "--error=/e", "--comment=mgpu job 5.0 train (node b)", "--parsable"} <= set(argv)
    bare = sc.sbatch_argv(name="x", comment="c", gpus=0, time_limit=None, cwd="/",
                          stdout="/o", stderr="/e", partition=None)
    assert not any(a.startswith(("--gres", "--time", "--partition")) for a in bare)


def test_squeue_answer() -> None:
    out = ("3|FAILED|NonZeroExitCode|768|2026-12-03T08:04:32|n[1-2]|mgpu job 1.0 a|b (node n)"
           "\n4|PENDING|Resources|0|N/A||(null)\n"
           "5|CANCELLED by 0|None|15|Unknown|n3|\n")
    got = sc.parse_squeue(out)
    assert got[3] == sc.SlurmJob(3, "FAILED", "NonZeroExitCode", 768,
                                 datetime.fromisoformat("2026-12-03T08:04:32").timestamp(),
                                 "mgpu job 1.0 a|b (node n)", "n[1-2]")
    assert (got[4].state, got[4].start_time, got[4].comment, got[4].nodes) == (
        "PENDING", 0.0, "", "")
    assert (got[5].state, got[5].exit_status) == ("CANCELLED", 15)
    assert sc.parse_squeue("") == {}


def test_partition_gpus_from_sinfo() -> None:
    lines = "n1|gpu:8\nn1|gpu:8\nn2|gpu:a100:4(S:0-1),shard:8\nn3|(null)\n"
    assert sc.parse_gres(lines) == 12


def test_exit_status_reads_as_the_shell_does() -> None:
    assert [sc.exit_code_of(s) for s in (None, 0, 1 << 8, 255 << 8, 9, 15)] == [
        None, 0, 1, 255, 137, 143]


def test_copied_output_is_read_back_from_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "1.0.out"
    assert copied(spool) == (0, 0)
    whole = frame(STREAM_STDOUT, b"abc") + frame(STREAM_STDERR, b"de") + frame(
        STREAM_STDOUT, b"f")
    spool.write_bytes(whole + frame(STREAM_STDOUT, b"cut short")[:-3])
    assert copied(spool) == (4, 2)
    assert spool.read_bytes() == whole  # the frame cut short is cut off


# ---------------------------------------------------------------- the master's side


def placed_job(state: ClusterState, **spec: Any) -> tuple[int, m.StartJob]:
    """A job submitted and placed on node ``b``; its StartJob."""
    gpus = [GpuInfo(index=i, name="slurm:gpu", memory_total_mib=0) for i in range(2)]
    state.on_register(m.Register(node_id="b", gpus=gpus), 0.0)
    (job_id,), _ = state.on_submit([JobSpec(command="true", **spec)], 1.0, "alice")
    (start,) = [msg for _, msg in state.schedule(2.0).sends if isinstance(msg, m.StartJob)]
    return job_id, start


def test_the_slurm_job_id_is_kept_on_the_job_for_its_current_run() -> None:
    state = ClusterState()
    job_id, _ = placed_job(state)
    assert state.on_job_started("b", m.JobStarted(job_id, -1, run=1, backend_id="9")).batch \
        .updates == {}  # another run's: not this one's
    assert state.on_job_started("elsewhere", m.JobStarted(job_id, -1, backend_id="9")) \
        .batch.updates == {}
    saved = state.on_job_started("b", m.JobStarted(job_id, -1, backend_id="42"))
    assert saved.batch.updates[job_id].backend_id == "42"
    ended = m.JobEnded(job_id, 0, "node_fail", None, "SLURM: its node failed", 0,
                       EndCause.NODE_LOST)
    state.on_job_ended("b", ended, 3.0)
    job = state.jobs[job_id]
    assert (job.state, job.requeues, job.backend_id) == (JobState.PENDING, 1, None)
    assert job.reason == "requeued (1 of 3): SLURM: its node failed"


def test_the_slurm_job_id_of_a_retry_is_kept_for_that_run() -> None:
    state = ClusterState()
    job_id, _ = placed_job(state, retries=1)
    state.on_job_started("b", m.JobStarted(job_id, -1, backend_id="42"))
    state.on_job_ended("b", m.JobEnded(job_id, 0, "failed", 1, "exit code 1", 0,
                                       EndCause.EXITED), 3.0)
    job = state.jobs[job_id]
    assert (job.state, job.retries, job.run) == (JobState.PENDING, 1, 1)
    state.gate_pass(Effects(), 10_000.0)  # (the master's, before a pass: its back-off is over)
    (start,) = [msg for _, msg in state.schedule(10_000.0).sends
                if isinstance(msg, m.StartJob)]
    assert start.run == 1
    saved = state.on_job_started("b", m.JobStarted(job_id, -1, run=1, backend_id="43"))
    assert saved.batch.updates[job_id].backend_id == "43"


def test_a_node_lost_end_of_a_job_that_may_not_requeue_ends_it_as_node_fail() -> None:
    state = ClusterState()
    job_id, _ = placed_job(state, requeue=False)
    state.on_job_ended("b", m.JobEnded(job_id, 0, "node_fail", None, "SLURM: preempted", 0,
                                       EndCause.NODE_LOST), 3.0)
    job = state.jobs[job_id]
    assert (job.state, job.end_cause, job.reason) == (JobState.NODE_FAIL,
                                                      EndCause.NODE_LOST, "SLURM: preempted")


# ---------------------------------------------------------------- a real SLURM


# The SLURM of the session (``slurm_session``) and ``slurm`` are fixtures of conftest.py,
# shared with test_mixed.py (one SLURM per test session).


def squeue(slurm: SlurmCluster, *args: str) -> str:
    return subprocess.run(["squeue", *args], env=slurm.env, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def slurm_job(slurm: SlurmCluster, slurm_id: str) -> dict[str, object]:
    """What SLURM says of one job (it keeps ended jobs for MinJobAge), as ``squeue --json``
    says it (which lists every job: the one asked for is picked out)."""
    out = subprocess.run(["squeue", "--json", "-t", "all"], env=slurm.env,
                         capture_output=True, text=True, check=True, timeout=30).stdout
    (found,) = [j for j in json.loads(out)["jobs"] if str(j["job_id"]) == slurm_id]
    return dict(found)


BRIDGE = "slurm1"


def start_bridge(cluster: Cluster, slurm: SlurmCluster, data_dir: Path) -> None:
    """Start the SLURM bridge ``mgpu node --backend slurm`` of ``cluster``."""
    argv = ["node", "--node-id", BRIDGE, "--master-host", "127.0.0.1", "--master-port",
            str(cluster.port), "--port", "0", "--data-dir", str(data_dir),
            "--join-token-file", str(cluster.join_token_file), "--backend", "slurm",
            "--partition", PARTITION, "--slurm-poll", "0.3"]
    cluster.base_env["SLURM_CONF"] = str(slurm.conf)
    cluster._node_args[BRIDGE] = argv  # (restart_node starts it again the same way)
    cluster.nodes[BRIDGE] = cluster._spawn(BRIDGE, argv, None)
    cluster.wait_nodes_up([BRIDGE])


@pytest.fixture
def bridged(slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> Cluster:
    """A master and one SLURM bridge (``mgpu node --backend slurm``), no other node."""
    cluster = make_cluster(nodes=0)
    start_bridge(cluster, slurm, cluster.tmp / BRIDGE)
    return cluster


def show(cluster: Cluster, job_id: int) -> dict[str, str]:
    """``mgpu show JOB`` as field -> value."""
    out = cluster.mgpu("show", str(job_id)).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                  out.splitlines()) if k.strip()}


def wait_backend_id(cluster: Cluster, job_id: int) -> str:
    got: str = wait_until(lambda: cluster.job(job_id).get("backend_id"), 30,
                          message=lambda: f"a SLURM id on job {job_id}: {cluster.job(job_id)}")
    return got


def nodes(cluster: Cluster) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = cluster.api("/api/v1/nodes")["nodes"]
    return listed


def test_bridge_offers_the_partitions_gpus(bridged: Cluster) -> None:
    (node,) = nodes(bridged)
    assert node["node_id"] == BRIDGE
    assert len(node["gpus"]) == GPUS
    assert {g["name"] for g in node["gpus"]} == {f"slurm:{PARTITION}"}


def test_submit_runs_in_slurm_with_exit_codes_logs_and_id(
        bridged: Cluster, slurm: SlurmCluster) -> None:
    ok = bridged.submit("echo out-$MGPU_JOB_ID; echo gpus=$CUDA_VISIBLE_DEVICES; "
                        "echo err-line >&2", "-G", "2", "--job-name", "hello")
    bad = bridged.submit("echo before; exit 3")
    done = bridged.wait_job(ok)
    assert (done["state"], done["exit_code"], done["node"]) == ("completed", 0, BRIDGE)
    failed = bridged.wait_job(bad)
    assert (failed["state"], failed["exit_code"], failed["end_cause"]) == ("failed", 3,
                                                                           "exited")
    # `mgpu wait` exits with the job's code, as for a job on an mgpu node
    assert bridged.mgpu("wait", str(bad), check=3).returncode == 3
    out = bridged.mgpu("logs", str(ok)).stdout
    assert f"out-{ok}" in out
    if slurm.gpu_files:  # SLURM gave it 2 of its GPUs, and said which
        assert "gpus=0,1" in out
    assert "err-line" in bridged.mgpu("logs", str(ok)).stderr
    # SLURM's job id is on the job (mgpu show, --json) and SLURM's job names mgpu's
    detail = show(bridged, ok)
    sid = detail["backend_id"]
    assert sid.isdigit() and done["backend_id"] == sid
    seen = slurm_job(slurm, sid)
    assert seen["job_state"] in ("COMPLETED", ["COMPLETED"])
    assert re.fullmatch(rf"mgpu job {ok}\.0 hello \(node {BRIDGE}, [0-9a-f]{{8}}\)",
                        seen["comment"])
    assert seen["name"] == "hello"


def test_cancel_running_and_pending_in_slurm(bridged: Cluster, slurm: SlurmCluster) -> None:
    running = bridged.submit("echo started; sleep 300")
    wait_until(lambda: "started" in bridged.mgpu("logs", str(running)).stdout, 30)
    # SLURM's other GPUs taken outside mgpu: mgpu's next job waits in SLURM's queue.
    blocker = subprocess.run(["sbatch", "--parsable", f"--gres=gpu:{GPUS - 1}", "-o",
                              "/dev/null", "--wrap", "sleep 300"], env=slurm.env,
                             capture_output=True, text=True, check=True).stdout.strip()
    wait_until(lambda: slurm_job(slurm, blocker)["job_state"] in ("RUNNING", ["RUNNING"]),
               30, message=lambda: f"SLURM to run job {blocker}:\n{squeue(slurm)}")
    pending = bridged.submit("echo never")
    sid = wait_backend_id(bridged, pending)
    wait_until(lambda: slurm_job(slurm, sid)["job_state"] in ("PENDING", ["PENDING"]), 30)
    assert bridged.job(pending)["state"] == "running"  # (placed on the bridge, by mgpu)
    bridged.mgpu("cancel", str(pending))
    bridged.mgpu("cancel", str(running))
    for job_id in (running, pending):
        ended = bridged.wait_job(job_id)
        assert (ended["state"], ended["end_cause"]) == ("cancelled", "cancelled")
        state = slurm_job(slurm, ended["backend_id"])["job_state"]
        assert state in ("CANCELLED", ["CANCELLED"])
    assert "never" not in bridged.mgpu("logs", str(pending)).stdout


def test_scancel_outside_mgpu_ends_the_job_cancelled(
        bridged: Cluster, slurm: SlurmCluster) -> None:
    job_id = bridged.submit("sleep 300")
    sid = wait_backend_id(bridged, job_id)
    subprocess.run(["scancel", sid], env=slurm.env, check=True)
    ended = bridged.wait_job(job_id)
    assert ended["state"] == "cancelled"
    assert "scancel" in ended["reason"]


def test_time_limit_ends_the_job_as_timeout(bridged: Cluster, slurm: SlurmCluster) -> None:
    job_id = bridged.submit("echo working; sleep 300", "-t", "0:03")
    ended = bridged.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["end_cause"]) == ("timeout", "time_limit")
    assert "time limit" in ended["reason"]
    assert "working" in bridged.mgpu("logs", str(job_id)).stdout
    # SLURM got the limit too, in its whole minutes
    assert slurm_job(slurm, ended["backend_id"])["time_limit"] in (1, {"set": True,
                                                                       "number": 1})


def test_logs_follow_and_srun_stream_live(bridged: Cluster) -> None:
    job_id = bridged.submit("for i in 1 2 3; do echo line$i; sleep 0.5; done")
    follow = bridged.mgpu("logs", "-f", str(job_id), timeout=60)
    assert follow.stdout.split() == ["line1", "line2", "line3"]
    run = bridged.mgpu("srun", "-G", "1", "echo from-srun; exit 4", check=4)
    assert "from-srun" in run.stdout


def test_terminal_and_stdin_jobs_are_refused_with_the_fix(bridged: Cluster) -> None:
    done = bridged.mgpu("srun", "--pty", "cat", check=False)
    assert done.returncode != 0
    assert "SLURM backend" in done.stderr and "/dev/null" in done.stderr


def scontrol(slurm: SlurmCluster, *args: str, check: bool = True) -> None:
    subprocess.run(["scontrol", *args], env=slurm.env, check=check, timeout=30)


def test_slurm_node_failure_requeues_the_job_in_mgpu(
        bridged: Cluster, slurm: SlurmCluster) -> None:
    job_id = bridged.submit("echo run-$SLURM_JOB_ID; sleep 300")
    first = wait_backend_id(bridged, job_id)
    wait_until(lambda: f"run-{first}" in bridged.mgpu("logs", str(job_id)).stdout, 30)
    scontrol(slurm, "update", f"nodename={NODE}", "state=down", "reason=mgpu-test")
    try:
        wait_until(lambda: bridged.job(job_id)["requeues"] == 1, 30,
                   message=lambda: f"a requeue: {bridged.job(job_id)}")
        state = slurm_job(slurm, first)["job_state"]
        assert state in ("NODE_FAIL", ["NODE_FAIL"]), state
    finally:  # (slurmd's next registration may have brought it back already)
        scontrol(slurm, "update", f"nodename={NODE}", "state=resume", check=False)
    again = wait_until(lambda: bridged.job(job_id).get("backend_id") not in (None, first),
                       30, message=lambda: f"a new SLURM job: {bridged.job(job_id)}")
    assert again
    second = bridged.job(job_id)["backend_id"]
    wait_until(lambda: f"run-{second}" in bridged.mgpu("logs", str(job_id)).stdout, 30)
    bridged.mgpu("cancel", str(job_id))
    ended = bridged.wait_job(job_id)
    assert (ended["state"], ended["requeues"]) == ("cancelled", 1)


def test_while_slurm_does_not_answer_the_bridge_is_degraded_and_jobs_wait(
        bridged: Cluster, slurm: SlurmCluster) -> None:
    slurm.stop_controller()
    try:
        first = bridged.submit("echo first")  # placed: the bridge finds SLURM gone
        bridge = wait_until(lambda: next(
            (n for n in nodes(bridged) if n["state"] == "degraded"), None), 90,
            message=lambda: f"the bridge degraded: {nodes(bridged)}")
        assert "SLURM does not answer" in bridge["reason"]
        second = bridged.submit("echo second")
        assert bridged.job(second)["state"] == "pending"  # nothing new for a degraded node
        assert bridged.job(first)["state"] == "running"  # (kept, its sbatch retried)
    finally:
        slurm.start_controller()
    for job_id, word in ((first, "first"), (second, "second")):
        ended = bridged.wait_job(job_id, timeout=60)
        assert ended["state"] == "completed", ended
        assert bridged.mgpu("logs", str(job_id)).stdout.split() == [word]
    assert nodes(bridged)[0]["state"] == "up"
    assert len(squeue(slurm, "-h", "-t", "all").splitlines()) >= 2  # (no lost submission)


def test_a_lost_submission_is_looked_for_by_its_own_comment_alone(
        slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridge that stopped while submitting run 1.0 looks for it in SLURM by its comment
    when it starts again: an older job 1.0 (an earlier master's, still in SLURM's memory)
    is not taken for it."""
    older = run_comment(1, 0, "train", BRIDGE)
    subprocess.run(["sbatch", "--hold", f"--partition={PARTITION}", f"--comment={older}",
                    "-o", "/dev/null", "--wrap", "true"], env=slurm.env, check=True,
                   capture_output=True)
    data = tmp_path / BRIDGE
    (data / "slurm").mkdir(parents=True)
    mine = run_comment(1, 0, "train", BRIDGE)
    assert mine != older and mine.startswith(f"mgpu job 1.0 train (node {BRIDGE}, ")
    (data / "slurm" / "runs.json").write_text(json.dumps({"1.0": {
        "slurm_id": None, "wanted": None, "time_limit": None, "comment": mine,
        "ended": None}}))
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    cfg = NodeConfig(node_id=BRIDGE, data_dir=data, backend="slurm", partition=PARTITION)
    link = SlurmLink(cfg, lambda *_: None, lambda _: None, lambda _: None, lambda: True,
                     lambda _: None)

    async def reopen() -> None:
        await link.open()
        await link.close(kill_jobs=False)

    asyncio.run(reopen())
    run = link.jobs["1.0"]
    assert run.slurm_id is None and run.ended is not None, run
    assert (run.ended.state, run.ended.reason) == (
        "failed", "the SLURM bridge stopped while submitting the job, and SLURM does not "
        "have it")


def test_bridge_and_master_restarts_readopt_slurm_jobs(
        bridged: Cluster, slurm: SlurmCluster) -> None:
    marker = bridged.tmp / "go"
    job_id = bridged.submit(f"echo first; while [ ! -e {marker} ]; do sleep 0.1; done; "
                            "echo second; exit 5")
    wait_until(lambda: "first" in bridged.mgpu("logs", str(job_id)).stdout, 30)
    sid = wait_backend_id(bridged, job_id)
    bridged.kill_node(BRIDGE, signal.SIGKILL)
    bridged.restart_master(wait_nodes=False)
    bridged.restart_node(BRIDGE)
    assert bridged.job(job_id)["state"] == "running"
    marker.touch()
    ended = bridged.wait_job(job_id)
    assert (ended["state"], ended["exit_code"], ended["backend_id"]) == ("failed", 5, sid)
    assert bridged.mgpu("logs", str(job_id)).stdout.split() == ["first", "second"]
    runs = json.loads(Path(bridged.tmp / BRIDGE / "slurm" / "runs.json").read_text())
    wait_until(lambda: not json.loads(
        Path(bridged.tmp / BRIDGE / "slurm" / "runs.json").read_text()), 10,
        message=lambda: f"the bridge to forget the run once the master saved it: {runs}")


def test_bridge_without_gpus_in_its_partition_stops_with_the_fix(
        slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    cluster.base_env["SLURM_CONF"] = str(slurm.conf)
    done = subprocess.run(
        [sys.executable, "-m", "mgpu", "node", "--node-id", "b", "--master-port",
         str(cluster.port), "--port", "0", "--data-dir", str(cluster.tmp / "b"),
         "--join-token-file", str(cluster.join_token_file), "--backend", "slurm",
         "--partition", "nosuch"], env=cluster.base_env, capture_output=True, text=True,
        timeout=60, check=False)
    assert done.returncode != 0
    assert "nosuch" in done.stderr and "--partition" in done.stderr, done.stderr


def test_up_with_the_slurm_backend(slurm: SlurmCluster, tmp_path: Path) -> None:
    """``mgpu up --backend slurm``: a master and a SLURM bridge in one process."""
    cluster = Cluster(tmp_path / "up", {"SLURM_CONF": str(slurm.conf)})
    try:
        up = cluster.master = cluster._spawn("up", [
            "up", "--port", "0", "--data-dir", str(cluster.master_dir), "--backend", "slurm",
            "--partition", PARTITION, "--slurm-poll", "0.3"], None)
        info = wait_until(lambda: json.loads((cluster.master_dir / "master.json").read_text()),
                          30, ignore=(OSError, ValueError), message=lambda: up.log_tail())
        cluster.port = int(info["port"])
        cluster.wait_nodes_up()
        job_id = cluster.submit("echo via-up; exit 2")
        ended = cluster.wait_job(job_id)
        assert (ended["state"], ended["exit_code"]) == ("failed", 2)
        assert ended["backend_id"]
        assert "via-up" in cluster.mgpu("logs", str(job_id)).stdout
    finally:
        problems = cluster.close()
    assert not problems, problems


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (a temporary directory's parents are root's alone),
    removed after the clusters that use it are stopped (ask for it before ``make_cluster``)."""
    path = Path(tempfile.mkdtemp(prefix="mgpu-bridge-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_root_bridge_submits_as_the_jobs_owner(
        slurm: SlurmCluster, open_dir: Path, make_cluster: Callable[..., Cluster],
        account: str) -> None:
    cluster = make_cluster(nodes=0)
    # The owner's slurmd step writes the output files: the bridge's data dir must be on a
    # path they can enter.
    start_bridge(cluster, slurm, open_dir / BRIDGE)
    env = {"PATH": os.environ["PATH"], "HOME": "/root", "USER": "root"}
    job_id = cluster.api("/api/v1/jobs", {"jobs": [{
        "command": 'echo "$(id -un) $HOME $USER $SLURM_JOB_USER"', "gpus": 1, "cwd": "/",
        "env": env}]}, token=cluster.user_token(account))["job_ids"][0]
    nobody = cluster.api("/api/v1/jobs", {"jobs": [{
        "command": "true", "gpus": 1, "cwd": "/", "env": env}]},
        token=cluster.user_token("no-such-user-here"))["job_ids"][0]
    ended = cluster.wait_job(job_id)
    out = cluster.mgpu("logs", str(job_id)).stdout
    assert ended["state"] == "completed", (ended, out)
    home = os.path.expanduser(f"~{account}")
    assert out.split() == [account, home, account, account]
    refused = cluster.wait_job(nobody)
    assert refused["state"] == "failed"
    assert "has no account" in refused["reason"]
