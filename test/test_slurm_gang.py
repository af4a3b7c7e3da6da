"""Multi-node jobs through the SLURM bridge (``sbatch -N``; README "Multi-node jobs through
SLURM").

* **Unit**: the gang's ``sbatch`` line and batch script, srun's labelled output as task
  frames and its words of a failed task, the spool read back after a restart; the master's
  side (a bridge's SLURM nodes, a gang placed on it as one run, the refusals).
* **End to end** against a **real two-node** SLURM on this host (``test/slurm_cluster.py``
  with ``nodes=2``: two slurmd daemons, 4 GPUs each), started once for this file: a real
  master, a real bridge, ``mgpu`` commands as a user runs them. Root only (slurmd starts jobs
  as their users), skipped with the reason otherwise, like ``test_slurm.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import SLURM2_GPUS_PER_NODE, Cluster, wait_until
from mgpu.core import messages as m
from mgpu.core.errors import Rejected, UsageError
from mgpu.core.frames import STREAM_STDERR, STREAM_STDOUT, frame
from mgpu.core.gang import STREAM_TASK_STDERR, task_frame
from mgpu.core.models import GpuInfo, JobSpec, JobState
from mgpu.node import slurm_gang as sg
from mgpu.node.gangnode import refusal
from mgpu.node.slurm_runs import SlurmRun, copied
from mgpu.node.slurm_submit import submission_of
from mgpu.server.state import ClusterState
from slurm_cluster import PARTITION, SlurmCluster
from test_slurm import squeue

# ---------------------------------------------------------------- unit: the bridge's side


def gang_order(**fields: Any) -> m.StartJob:
    base: dict[str, Any] = dict(job_id=7, run=1, command="python train.py", cwd="/w",
                                env={"PATH": "/bin", "SLURM_JOB_ID": "1", "MASTER_PORT": "1"},
                                gpu_ids=[0, 1, 2, 3], user="alice", name="train", nodes=2,
                                tasks=1)
    return m.StartJob(**(base | fields))


def test_a_gang_is_sbatched_with_its_nodes_tasks_and_gpus_a_node() -> None:
    sub = submission_of(gang_order(tasks=3), comment="c", node_id="b", partition="gpu",
                        outputs=("/o", "/e"), bridge_env={}, account=None)
    argv = sub.sbatch_argv()
    assert {"--nodes=2", "--ntasks-per-node=3", "--gres=gpu:2", "--partition=gpu"} <= set(argv)
    env = sub.env
    assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["MGPU_NUM_NODES"],
            env["MGPU_NTASKS_PER_NODE"]) == ("6", "3", "2", "3")
    assert env["MASTER_PORT"] == str(sg.master_port(7, 1)) != "1"  # (not the submitter's)
    assert "SLURM_JOB_ID" not in env  # (the submitter's own would steer sbatch)
    assert "srun --label --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=3 --gres=gpu:2" \
        in sub.script
    assert sub.script.rstrip().endswith("/bin/sh -c 'python train.py'")
    plain = submission_of(gang_order(nodes=0, gpu_ids=[0]), comment="c", node_id="b",
                          partition=None, outputs=("/o", "/e"), bridge_env={}, account=None)
    assert not any(a.startswith(("--nodes", "--ntasks")) for a in plain.sbatch_argv())
    assert "srun" not in plain.script and "WORLD_SIZE" not in plain.env


def test_the_task_script_gives_each_task_mgpus_gang_variables(tmp_path: Path) -> None:
    """The script's task part, run by the shell as srun would run it (SLURM's variables
    given): each gang variable comes from SLURM's, and the command gets its arguments."""
    env = {"PATH": os.environ["PATH"], "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "1", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.5"}
    out = subprocess.run(
        ["/bin/sh", "-c", sg.TASK, "mgpu-task", "/bin/sh", "-c",
         'echo "$RANK $LOCAL_RANK $NODE_RANK $GROUP_RANK $MASTER_ADDR $0"', "arg0"],
        env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["3", "1", "1", "1", "10.0.0.5", "arg0"]


def test_labelled_lines_become_task_frames_and_srun_words_stay_plain() -> None:
    split = sg.LabelSplitter(STREAM_STDOUT)
    assert split.feed(b" 0: hello\n10: wor") == [task_frame(STREAM_STDOUT, 0, b"hello\n")]
    assert split.feed(b"ld\nsrun: note\n 3: no end") == [
        task_frame(STREAM_STDOUT, 10, b"world\n"), (STREAM_STDOUT, b"srun: note\n")]
    assert split.feed(b"", final=True) == [task_frame(STREAM_STDOUT, 3, b"no end")]
    err = sg.LabelSplitter(STREAM_STDERR)
    assert err.feed(b"1: oops\n") == [(STREAM_TASK_STDERR, b"\x00\x01oops\n")]
    long = sg.LabelSplitter(STREAM_STDOUT).feed(b"0: " + b"x" * sg.MAX_LINE)
    assert long == [task_frame(STREAM_STDOUT, 0, b"x" * (sg.MAX_LINE - 3))]


def test_srun_words_of_a_failed_task_give_its_exit_code() -> None:
    assert sg.first_failure(b"srun: error: n2: task 1: Exited with exit code 3\n") == (
        3, "task 1 on n2: Exited with exit code 3")
    assert sg.first_failure(b"srun: error: n1: tasks 0-2,4: Killed\n") == (
        137, "tasks 0-2,4 on n1: Killed")
    assert sg.first_failure(b"srun: error: n1: task 0: Terminated") == (
        143, "task 0 on n1: Terminated")
    assert sg.first_failure(b"srun: Force Terminated StepId=1.0\n") is None
    assert sg.first_failure(b"0: srun: error: n1: task 0: Killed\n") is None


def test_a_gangs_spool_says_how_far_slurms_files_were_copied(tmp_path: Path) -> None:
    """A restarted bridge reads back how many bytes of SLURM's files its spool holds: the
    labels its task frames lost are counted back (12 tasks: labels 2 digits wide)."""
    spool = tmp_path / "7.1.out"
    failed = b"srun: error: n2: task 11: Exited with exit code 4\n"
    spool.write_bytes(
        frame(*task_frame(STREAM_STDOUT, 0, b"a\n")) + frame(STREAM_STDERR, failed)
        + frame(*task_frame(STREAM_STDERR, 11, b"bc\n")) + frame(STREAM_STDOUT, b"x"))
    run = SlurmRun(7, 1, tasks=12)
    assert copied(spool, run) == (len(b" 0: a\n") + 1, len(failed) + len(b"11: bc\n"))
    assert run.failure == (4, "task 11 on n2: Exited with exit code 4")


def test_a_node_part_still_never_runs_on_a_bridge_and_a_whole_gang_only_there() -> None:
    part = gang_order(nodes=0, env={"NODE_RANK": "1"})
    assert refusal(part, "slurm") is not None
    assert refusal(gang_order(nodes=0, tasks=2), "slurm") is not None  # (a part's launcher)
    assert refusal(gang_order(), "slurm") is None
    assert refusal(gang_order(), "local") is not None


# ---------------------------------------------------------------- unit: the master's side


def bridge_state(slurm_nodes: tuple[int, ...] = (4, 4), others: int = 0) -> ClusterState:
    """A master with a bridge ``b`` (partition slurm) over SLURM nodes of these GPUs, and
    ``others`` mgpu nodes of 4 GPUs in the default partition."""
    state = ClusterState()
    total = sum(slurm_nodes)
    gpus = [GpuInfo(index=i, name="slurm:gpu", memory_total_mib=0) for i in range(total)]
    shape = [m.BackendNode(name=f"n{i + 1}", gpus=g) for i, g in enumerate(slurm_nodes)]
    state.on_register(m.Register(node_id="b", gpus=gpus, partition="slurm",
                                 backend_nodes=shape), 0.0)
    for k in range(others):
        state.on_register(m.Register(node_id=f"local{k}", gpus=[
            GpuInfo(index=i, name="fake", memory_total_mib=0) for i in range(4)]), 0.0)
    return state


def test_a_gang_on_a_bridge_is_placed_as_one_run_of_all_its_gpus() -> None:
    state = bridge_state(others=2)
    assert state.nodes["b"].info().backend_nodes == [m.BackendNode(name="n1", gpus=4),
                                                     m.BackendNode(name="n2", gpus=4)]
    (job_id,), _ = state.on_submit([JobSpec(command="x", gpus=4, nodes=2, ntasks_per_node=3,
                                            partition="slurm")], 1.0, "alice")
    (start,) = [msg for node, msg in state.schedule(2.0).sends if node == "b"]
    assert isinstance(start, m.StartJob)
    assert (start.nodes, start.tasks, len(start.gpu_ids), start.rendezvous) == (2, 3, 4, False)
    assert "NODE_RANK" not in start.env
    job = state.jobs[job_id]
    assert (job.state, job.node, job.parts, job.nodes) == (JobState.RUNNING, "b", None, 2)
    # it ends as any one-run job does: with its node's report
    state.on_job_ended("b", m.JobEnded(job_id, 0, "failed", 3, "task 1 on n2: exit", 0), 3.0)
    assert (job.state, job.exit_code) == (JobState.FAILED, 3)
    assert all(g.job_id is None for g in state.nodes["b"].gpus)


def test_gangs_elsewhere_keep_their_parts() -> None:
    state = bridge_state(others=2)
    (job_id,), _ = state.on_submit([JobSpec(command="x", gpus=4, nodes=2)], 1.0, "alice")
    sends = state.schedule(2.0).sends
    assert [node for node, _ in sends] == ["local0"]  # rank 0 first, on mgpu's own nodes
    assert state.jobs[job_id].parts is not None


def test_a_partition_mixing_a_bridge_and_mgpu_nodes_keeps_mgpus_gangs_in_parts() -> None:
    """The bridge cannot run one node's part: such a gang is mgpu's to split (the bridge
    refuses a part the policy puts there); a several-task job on the bridge alone is whole."""
    state = bridge_state((4, 4))
    state.on_register(m.Register(node_id="local", partition="slurm", gpus=[
        GpuInfo(index=i, name="fake", memory_total_mib=0) for i in range(4)]), 0.0)
    (tasks,), _ = state.on_submit([JobSpec(command="x", gpus=6, ntasks_per_node=2,
                                           partition="slurm")], 1.0, "a")  # (the bridge's)
    (gang,), _ = state.on_submit([JobSpec(command="x", gpus=2, nodes=2, partition="slurm")],
                                 1.0, "a")
    sends = state.schedule(2.0).sends
    starts = {msg.job_id: (node, msg) for node, msg in sends if isinstance(msg, m.StartJob)}
    node, order = starts[tasks]
    assert (node, order.nodes, order.tasks, state.jobs[tasks].parts) == ("b", 1, 2, None)
    assert state.jobs[gang].parts is not None  # (rank 0 first, the other part later)
    assert {p.node for p in state.jobs[gang].parts} == {"b", "local"}
    assert starts[gang][1].nodes == 0 and starts[gang][1].rendezvous


def test_a_gang_larger_than_the_slurm_partition_is_refused_with_the_fix() -> None:
    state = bridge_state((4, 4, 1))
    with pytest.raises(Rejected, match=r"only 2 SLURM nodes of partition slurm .*have 2 "
                                       r"GPUs \(n1, n2\): ask for at most 2 \(-N\)"):
        state.on_submit([JobSpec(command="x", gpus=6, nodes=3, partition="slurm")], 1.0, "a")
    with pytest.raises(UsageError, match="/dev/null"):
        state.on_submit([JobSpec(command="x", gpus=2, nodes=2, partition="slurm",
                                 stdin=True)], 1.0, "a")
    with pytest.raises(UsageError, match="--pty"):
        state.on_submit([JobSpec(command="x", gpus=2, nodes=2, partition="slurm",
                                 pty=True)], 1.0, "a")
    (ok,), _ = state.on_submit([JobSpec(command="x", gpus=3, nodes=3, partition="slurm")],
                               1.0, "a")
    assert state.jobs[ok].state is JobState.PENDING


# ---------------------------------------------------------------- a real two-node SLURM

BRIDGE = "slurm-gang"


@pytest.fixture
def bridged(slurm2: SlurmCluster, make_cluster: Callable[..., Cluster]) -> Cluster:
    """A master and one SLURM bridge over the two-node partition, no other node."""
    cluster = make_cluster(nodes=0)
    argv = ["node", "--node-id", BRIDGE, "--master-host", "127.0.0.1", "--master-port",
            str(cluster.port), "--port", "0", "--data-dir", str(cluster.tmp / BRIDGE),
            "--join-token-file", str(cluster.join_token_file), "--backend", "slurm",
            "--partition", PARTITION, "--slurm-poll", "0.3"]
    cluster.base_env["SLURM_CONF"] = str(slurm2.conf)
    cluster._node_args[BRIDGE] = argv
    cluster.nodes[BRIDGE] = cluster._spawn(BRIDGE, argv, None)
    cluster.wait_nodes_up([BRIDGE])
    return cluster


VARS = ('echo "host=$SLURMD_NODENAME rank=$RANK local=$LOCAL_RANK node=$NODE_RANK '
        'group=$GROUP_RANK world=$WORLD_SIZE lws=$LOCAL_WORLD_SIZE addr=$MASTER_ADDR '
        'port=$MASTER_PORT list=$MGPU_NODELIST n=$MGPU_NUM_NODES k=$MGPU_NTASKS_PER_NODE '
        'gpus=$CUDA_VISIBLE_DEVICES"')


def fields(line: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in line.split())


def test_the_bridge_registers_its_slurm_nodes(bridged: Cluster, slurm2: SlurmCluster) -> None:
    (node,) = bridged.api("/api/v1/nodes")["nodes"]
    assert node["backend_nodes"] == [{"name": n, "gpus": SLURM2_GPUS_PER_NODE}
                                     for n in slurm2.nodes]
    shown = bridged.mgpu("nodes", "--json").stdout
    assert slurm2.nodes[1] in shown


def test_a_gang_runs_one_task_on_each_slurm_node(
        bridged: Cluster, slurm2: SlurmCluster) -> None:
    job_id = bridged.submit(VARS, "-p", "slurm", "-N", "2", "--gpus-per-node", "2")
    ended = bridged.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["exit_code"], ended["node"], ended["nodes"]) == (
        "completed", 0, BRIDGE, 2)
    assert len(ended["gpu_ids"]) == 4 and ended["parts"] is None and ended["backend_id"]
    # shown with its nodes: SLURM's, as SLURM writes them
    assert ended["backend_nodes"] == "mgpu-slurm-n[1-2]"
    shown = bridged.mgpu("show", str(job_id)).stdout
    assert "backend_nodes:" in shown and "mgpu-slurm-n[1-2]" in shown, shown
    labelled = bridged.mgpu("logs", "--label", str(job_id)).stdout.splitlines()
    by_rank = {int(line.split(":", 1)[0]): fields(line.split(":", 1)[1]) for line in labelled}
    assert sorted(by_rank) == [0, 1], labelled
    zero, one = by_rank[0], by_rank[1]
    assert {zero["host"], one["host"]} == set(slurm2.nodes)  # each on its own SLURM node
    for rank, seen in by_rank.items():
        assert (seen["rank"], seen["node"], seen["group"], seen["local"]) == (
            str(rank), str(rank), str(rank), "0")
        assert (seen["world"], seen["lws"], seen["n"], seen["k"]) == ("2", "1", "2", "1")
        assert seen["list"] == ",".join(slurm2.nodes)
        if slurm2.gpu_files:
            assert seen["gpus"] == "0,1"  # SLURM's 2 GPUs of that node
    assert zero["addr"] == one["addr"] == "127.0.0.1"  # rank 0's node (NodeAddr here)
    assert zero["port"] == one["port"] and zero["port"].isdigit()
    assert zero["host"] == slurm2.nodes[0]  # rank 0 runs where the batch script does
    bare = bridged.mgpu("logs", str(job_id)).stdout.splitlines()
    assert sorted(bare) == sorted(line.split(": ", 1)[1] for line in labelled)
    task1 = bridged.mgpu("logs", "--task", "1", str(job_id)).stdout.splitlines()
    assert [fields(line)["rank"] for line in task1] == ["1"]


def test_several_tasks_a_slurm_node_get_their_ranks_and_their_own_output(
        bridged: Cluster, slurm2: SlurmCluster) -> None:
    job_id = bridged.submit(VARS, "-p", "slurm", "-N", "2", "--ntasks-per-node", "2",
                            "--gpus-per-node", "1")
    ended = bridged.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["ntasks_per_node"]) == ("completed", 2)
    for task in range(4):
        (line,) = bridged.mgpu("logs", "--task", str(task), str(job_id)).stdout.splitlines()
        seen = fields(line)
        assert (seen["rank"], seen["node"], seen["local"]) == (
            str(task), str(task // 2), str(task % 2))
        assert (seen["world"], seen["lws"], seen["k"]) == ("4", "2", "2")
        assert seen["host"] == slurm2.nodes[task // 2]


def test_a_failing_task_ends_the_gang_with_its_code_and_stops_the_other(
        bridged: Cluster, slurm2: SlurmCluster) -> None:
    job_id = bridged.submit(
        'if [ "$RANK" = 1 ]; then echo failing; exit 3; fi; echo waiting; sleep 300',
        "-p", "slurm", "-N", "2", "--gpus-per-node", "1")
    ended = bridged.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["exit_code"]) == ("failed", 3)
    assert "task 1" in ended["reason"], ended["reason"]
    out = bridged.mgpu("logs", "--label", str(job_id)).stdout
    assert "1: failing" in out
    assert not squeue(slurm2, "-h", "-t", "R,CG", "-j", ended["backend_id"]).strip()


def test_cancel_reaches_every_node_of_a_running_gang(
        bridged: Cluster, slurm2: SlurmCluster) -> None:
    job_id = bridged.submit('echo "started $RANK"; sleep 300', "-p", "slurm", "-N", "2",
                            "--gpus-per-node", "1")
    wait_until(lambda: bridged.mgpu("logs", str(job_id)).stdout.count("started") == 2, 60,
               message=lambda: f"both tasks to start: {bridged.job(job_id)}")
    bridged.mgpu("cancel", str(job_id))
    ended = bridged.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["end_cause"]) == ("cancelled", "cancelled")
    assert not squeue(slurm2, "-h", "-t", "R,CG", "-j", ended["backend_id"]).strip()


def test_a_gang_larger_than_the_partition_is_refused_at_submit(bridged: Cluster) -> None:
    done = bridged.mgpu("submit", "-p", "slurm", "-N", "3", "--gpus-per-node", "1", "true",
                        check=False)
    assert done.returncode != 0
    assert "ask for at most 2 (-N)" in done.stderr, done.stderr
    assert "SLURM nodes of partition slurm" in done.stderr


def test_srun_of_a_gang_streams_its_tasks_labelled(bridged: Cluster) -> None:
    run = bridged.mgpu("srun", "-p", "slurm", "-N", "2", "-l", 'echo "hi from $RANK"')
    assert sorted(run.stdout.splitlines()) == ["0: hi from 0", "1: hi from 1"]


def test_the_time_limit_and_signals_reach_every_node(bridged: Cluster) -> None:
    loop = ('trap \'echo "usr1 $RANK"\' USR1; trap \'echo "term $RANK"; exit 1\' TERM; '
            'echo "started $RANK"; while :; do sleep 0.1; done')
    job_id = bridged.submit(loop, "-p", "slurm", "-N", "2", "--gpus-per-node", "1",
                            "-t", "0:15")

    def logs() -> str:
        return bridged.mgpu("logs", "--label", str(job_id)).stdout

    wait_until(lambda: logs().count("started") == 2, 60, message=logs)
    bridged.api(f"/api/v1/jobs/{job_id}/signal", {"signum": 10})  # SIGUSR1
    wait_until(lambda: "0: usr1 0" in logs() and "1: usr1 1" in logs(), 30, message=logs)
    ended = bridged.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["end_cause"]) == ("timeout", "time_limit")
    out = logs()
    assert "0: term 0" in out and "1: term 1" in out, out  # (SIGTERM to both, then the end)


def test_a_slurm_node_failure_requeues_the_whole_gang(
        bridged: Cluster, slurm2: SlurmCluster) -> None:
    job_id = bridged.submit('echo "run $SLURM_JOB_ID"; sleep 300', "-p", "slurm", "-N", "2",
                            "--gpus-per-node", "1")
    first = wait_until(lambda: bridged.job(job_id).get("backend_id"), 30)
    wait_until(lambda: bridged.mgpu("logs", str(job_id)).stdout.count(f"run {first}") == 2,
               60)
    down = slurm2.nodes[1]
    scontrol = ["scontrol", "update", f"nodename={down}"]
    subprocess.run([*scontrol, "state=down", "reason=mgpu-test"], env=slurm2.env,
                   check=True, timeout=30)
    try:
        wait_until(lambda: bridged.job(job_id)["requeues"] == 1, 30,
                   message=lambda: f"a requeue: {bridged.job(job_id)}")
    finally:
        subprocess.run([*scontrol, "state=resume"], env=slurm2.env, check=False, timeout=30)
    second = wait_until(lambda: bridged.job(job_id).get("backend_id") not in (None, first)
                        and bridged.job(job_id)["backend_id"], 60,
                        message=lambda: f"a new SLURM job: {bridged.job(job_id)}")
    wait_until(lambda: bridged.mgpu("logs", str(job_id)).stdout.count(f"run {second}") == 2,
               60, message=lambda: f"both tasks again: {squeue(slurm2)}")
    bridged.mgpu("cancel", str(job_id))
    ended = bridged.wait_job(job_id)
    assert (ended["state"], ended["requeues"], ended["nodes"]) == ("cancelled", 1, 2)


def test_pytorch_ddp_runs_across_the_two_slurm_nodes(
        bridged: Cluster, slurm2: SlurmCluster, tmp_path: Path) -> None:
    """``examples/ddp_train.py`` (gloo, on CPU) from mgpu's variables alone, one rank on each
    SLURM node, through ``mgpu srun -l`` (see test_torch.py)."""
    from test_torch import EXAMPLE, ranks

    results = tmp_path / "ddp"
    done = bridged.mgpu("srun", "-q", "-l", "-p", "slurm", "-N", "2", sys.executable,
                        str(EXAMPLE), "--steps", "2", "--result-dir", str(results),
                        timeout=180)
    lines = sorted(line for line in done.stdout.splitlines() if ": rank " in line)
    assert [line[:10] for line in lines] == ["0: rank 0/", "1: rank 1/"], done.stdout
    assert all("all-reduce 3" in line and "replicas equal: True" in line for line in lines)
    got = ranks(results, 2)
    for rank, info in enumerate(got):
        env = info["env"]
        assert (env["NODE_RANK"], env["WORLD_SIZE"]) == (str(rank), "2")
        assert env["MGPU_NODELIST"] == ",".join(slurm2.nodes)
        assert env["MASTER_PORT"] == got[0]["env"]["MASTER_PORT"]
    assert got[0]["weight"] == got[1]["weight"]


def test_a_gang_with_input_is_refused_at_submit_with_the_fix(bridged: Cluster) -> None:
    done = bridged.mgpu("srun", "-p", "slurm", "-N", "2", "cat", input="data", check=False)
    assert done.returncode != 0
    assert "< /dev/null" in done.stderr, done.stderr
    assert bridged.api("/api/v1/jobs")["jobs"] == []  # (nothing was queued)


def test_a_restarted_bridge_readopts_a_gang_and_its_labelled_output(
        bridged: Cluster) -> None:
    """The bridge killed mid-run: the one restarted goes on from where its spool stops
    (its task frames lost their labels: counted back), neither losing nor repeating a line,
    and still ends the gang with its first failed task's code."""
    marker = bridged.tmp / "go"
    job_id = bridged.submit(
        f'echo "first $RANK"; while [ ! -e {marker} ]; do sleep 0.1; done; '
        f'echo "second $RANK"; touch {marker}.$RANK; '  # (rank 0 fails once both said it)
        f'[ "$RANK" = 0 ] && while [ ! -e {marker}.1 ]; do sleep 0.1; done && exit 6; '
        'sleep 300',
        "-p", "slurm", "-N", "2", "--gpus-per-node", "1")

    def labelled() -> list[str]:
        return sorted(bridged.mgpu("logs", "--label", str(job_id)).stdout.splitlines())

    wait_until(lambda: labelled() == ["0: first 0", "1: first 1"], 60, message=labelled)
    bridged.kill_node(BRIDGE)
    bridged.restart_node(BRIDGE)
    marker.touch()
    ended = bridged.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["exit_code"]) == ("failed", 6), ended
    assert "task 0" in ended["reason"]
    assert labelled() == ["0: first 0", "0: second 0", "1: first 1", "1: second 1"]
