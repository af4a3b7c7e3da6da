"""Mixed mode: mgpu's own nodes and a SLURM partition under one master (README "Mixed
mode"), and ``mgpu server --backend slurm``.

Three tiers:

* **Policy** (pure): the partition rules and spill-over of ``core/partitions.py`` through
  ``node_fits`` and the ``multifactor`` policy, as tables.
* **Master** (no sockets): ``ClusterState`` refusing unknown partitions, placing by
  partition, and what ``mgpu explain`` says.
* **End to end** against the **real** single-host SLURM of ``test/slurm_cluster.py`` (the
  session's ``slurm`` fixture of conftest.py; root only, as in test_slurm.py): a master, a
  local agent with fake GPUs and a SLURM bridge, driven by ``mgpu`` commands.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.core import messages as m
from mgpu.core.backfill import multifactor
from mgpu.core.errors import Rejected, UnknownPartition
from mgpu.core.models import GpuInfo, JobSpec, JobState
from mgpu.core.partitions import SpillPass, SpillRule
from mgpu.core.scheduler import JobSnapshot, NodeSnapshot, Snapshot, node_fits
from mgpu.server.explain import explain
from mgpu.server.state import ClusterState
from slurm_cluster import PARTITION, SlurmCluster

SLURM = SpillRule(frozenset({"slurm"}))
NO_SPILL = SpillRule()


def local(free: tuple[int, ...] = (0, 1), total: int = 2) -> NodeSnapshot:
    return NodeSnapshot("local", total, free)


def bridge(free: tuple[int, ...] = tuple(range(8))) -> NodeSnapshot:
    return NodeSnapshot("bridge", 8, free, partition="slurm")


def plain(job_id: int = 1, gpus: int = 1, submitted: float = 0.0) -> JobSnapshot:
    return JobSnapshot(job_id, gpus, "alice", submitted_at=submitted)


# ---------------------------------------------------------------- policy: node_fits


@pytest.mark.parametrize(("job", "node", "fits"), [
    (plain(), local(), True),
    (plain(), bridge(), False),  # the default partition's job: not on a partition's node
    (JobSnapshot(1, 1, partition="slurm"), bridge(), True),
    (JobSnapshot(1, 1, partition="slurm"), local(), False),
    (JobSnapshot(1, 1, partition="other"), bridge(), False),
    (JobSnapshot(1, 1, spill=frozenset({"slurm"})), bridge(), True),  # spilled this pass
    (JobSnapshot(1, 1, spill=frozenset({"slurm"})), local(), True),  # its own still
    (JobSnapshot(1, 1, spill=frozenset({"cloud"})), bridge(), False),
    (JobSnapshot(1, 1, spill=None), bridge(), True),  # any partition
    (JobSnapshot(1, 1, partition="slurm", spill=frozenset()), local(), False),
])
def test_node_fits_honours_partitions_and_spill(job: JobSnapshot, node: NodeSnapshot,
                                                fits: bool) -> None:
    assert node_fits(job, node) is fits


# ---------------------------------------------------------------- policy: the spill rule


@pytest.mark.parametrize(("rule", "nodes", "has_default", "job", "spill"), [
    # local GPUs free: no spill, whatever the rule
    (SLURM, [local(), bridge()], True, plain(), frozenset()),
    # local GPUs full: spill to slurm, only with the rule
    (SLURM, [local(()), bridge()], True, plain(), frozenset({"slurm"})),
    (SpillRule(), [local(()), bridge()], True, plain(), frozenset()),
    # too few free here for this job: it spills
    (SLURM, [local((0,)), bridge()], True, plain(gpus=2), frozenset({"slurm"})),
    # the local node is down (not in the pass): nothing of the default partition can
    # start it now
    (SLURM, [bridge()], True, plain(), frozenset({"slurm"})),
    # spill_after: not yet waited 60 s (now is 100), then waited
    (SpillRule(frozenset({"slurm"}), 60), [local(()), bridge()], True,
     plain(submitted=50.0), frozenset()),
    (SpillRule(frozenset({"slurm"}), 60), [local(()), bridge()], True,
     plain(submitted=40.0), frozenset({"slurm"})),
    # no node of the spill partition takes jobs: nothing to spill to
    (SLURM, [local(())], True, plain(), frozenset()),
    # no node of the default partition registered: any node, rule or not
    (SpillRule(), [bridge()], False, plain(), None),
    # a job with a partition keeps to it
    (SLURM, [local(()), bridge()], True, JobSnapshot(1, 1, partition="slurm"), frozenset()),
])
def test_spill_rule(rule: SpillRule, nodes: list[NodeSnapshot], has_default: bool,
                    job: JobSnapshot, spill: frozenset[str] | None) -> None:
    assert SpillPass(rule, nodes, has_default, 100.0).job(job).spill == spill


def placements(rule: SpillRule, nodes: list[NodeSnapshot],
               jobs: list[JobSnapshot]) -> dict[int, str]:
    """``multifactor``'s placements, job -> node, with the spill rule applied."""
    rules = SpillPass(rule, nodes, True, 100.0)
    result = multifactor(Snapshot(100.0, [rules.job(j) for j in jobs], nodes))
    return {p.job_id: p.node_id for p in result.placements}


def test_the_policy_spills_only_what_the_default_partition_cannot_start() -> None:
    nodes = [local((0,)), bridge()]
    jobs = [plain(1), plain(2, gpus=2), JobSnapshot(3, 1, partition="slurm")]
    # Job 1 fits locally (one GPU free) and stays; job 2 needs two: it spills; job 3 asked.
    assert placements(SLURM, nodes, jobs) == {1: "local", 2: "bridge", 3: "bridge"}
    assert placements(SpillRule(), nodes, jobs) == {1: "local", 3: "bridge"}


def test_a_job_that_cannot_spill_waits_for_the_default_partition() -> None:
    nodes = [local(()), bridge()]
    result = multifactor(Snapshot(100.0, [SpillPass(SpillRule(), nodes, True, 100.0).job(
        plain())], nodes))
    assert not result.placements
    # It waits for the local node (no node of its partition takes jobs with a free GPU),
    # not for SLURM's free GPUs.
    assert all(r.node_id == "local" for r in result.reservations)


# ---------------------------------------------------------------- master: ClusterState


def register(state: ClusterState, node_id: str, gpus: int,
             partition: str | None = None) -> None:
    infos = [GpuInfo(index=i, name="fake", memory_total_mib=0) for i in range(gpus)]
    reply, _ = state.on_register(m.Register(node_id=node_id, gpus=infos,
                                            partition=partition), 0.0)
    assert reply.accepted, reply.error


def submit(state: ClusterState, now: float = 1.0, **spec: Any) -> int:
    (job_id,), _ = state.on_submit([JobSpec(command="true", **spec)], now, "alice")
    return job_id


def mixed_state(rule: SpillRule = NO_SPILL) -> ClusterState:
    state = ClusterState(multifactor)
    state.spill = rule
    register(state, "local", 2)
    register(state, "bridge", 8, "slurm")
    return state


def test_an_unknown_partition_is_refused_naming_those_there_are() -> None:
    state = ClusterState(multifactor)
    submit(state, partition="anything")  # no node yet: any name goes
    register(state, "local", 2)
    with pytest.raises(UnknownPartition, match="every node is in the default partition"):
        submit(state, partition="slurm")
    register(state, "bridge", 8, "slurm")
    with pytest.raises(UnknownPartition, match=r"'nosuch'.*partitions here are slurm"):
        submit(state, partition="nosuch")
    with pytest.raises(Rejected, match="largest node of partition slurm has 8"):
        submit(state, partition="slurm", gpus=9)
    job_id = submit(state, partition="slurm")
    assert state.jobs[job_id].partition == "slurm"


def test_jobs_are_placed_by_partition() -> None:
    state = mixed_state()
    to_slurm = submit(state, partition="slurm")
    here = submit(state)
    big = submit(state, gpus=2)  # the local node is left one GPU: waits, does not spill
    state.schedule(2.0)
    assert (state.jobs[to_slurm].node, state.jobs[here].node) == ("bridge", "local")
    assert state.jobs[big].state is JobState.PENDING
    words = "\n".join(explain(state, state.jobs[big], 2.0).lines)
    assert "spill-over to slurm is off" in words


def test_a_master_whose_only_node_is_a_bridge_runs_every_job_there() -> None:
    state = ClusterState(multifactor)
    register(state, "bridge", 8, "slurm")
    job_id = submit(state)
    state.schedule(2.0)
    assert state.jobs[job_id].node == "bridge"


def test_spill_and_what_explain_says_of_it() -> None:
    state = mixed_state(SpillRule(frozenset({"slurm"}), 30))
    first = submit(state, gpus=2)
    state.schedule(2.0)
    waits = submit(state, now=3.0)
    state.schedule(4.0)
    assert state.jobs[first].node == "local"
    assert state.jobs[waits].state is JobState.PENDING  # not 30 s yet
    words = "\n".join(explain(state, state.jobs[waits], 4.0).lines)
    assert re.search(r"spill to slurm once it has waited 30s.*29s to go", words), words
    state.schedule(33.0)
    job = state.jobs[waits]
    assert job.node == "bridge"
    words = "\n".join(explain(state, job, 34.0).lines)
    assert "spilled to partition slurm" in words, words


def test_pending_reasons_name_the_partition() -> None:
    state = mixed_state()
    jobs = [submit(state, partition="slurm", gpus=8) for _ in range(2)]
    state.schedule(2.0)
    state.refresh_pending_reasons()
    waiting = state.jobs[jobs[1]]
    assert waiting.state is JobState.PENDING
    assert waiting.reason is not None and "partition slurm" in waiting.reason, waiting.reason


# ---------------------------------------------------------------- end to end: real SLURM

BRIDGE = "slurm1"


def start_bridge(cluster: Cluster, slurm: SlurmCluster, *flags: str) -> None:
    """Start ``mgpu node --backend slurm`` (partition ``slurm`` in mgpu, by default)."""
    argv = ["node", "--node-id", BRIDGE, "--master-host", "127.0.0.1", "--master-port",
            str(cluster.port), "--port", "0", "--data-dir", str(cluster.tmp / BRIDGE),
            "--join-token-file", str(cluster.join_token_file), "--backend", "slurm",
            "--partition", PARTITION, "--slurm-poll", "0.3", *flags]
    cluster.base_env["SLURM_CONF"] = str(slurm.conf)
    cluster.nodes[BRIDGE] = cluster._spawn(BRIDGE, argv, None)
    cluster.wait_nodes_up([BRIDGE])


def mixed(make_cluster: Callable[..., Cluster], slurm: SlurmCluster,
          *master_args: str) -> Cluster:
    """A master, one local node with 2 fake GPUs (the default partition), one bridge."""
    cluster = make_cluster(nodes=1, gpus=2, master_args=master_args)
    start_bridge(cluster, slurm)
    return cluster


def wait_slurm_id(cluster: Cluster, job_id: int) -> str:
    sid: str = wait_until(lambda: cluster.job(job_id).get("backend_id"), 30,
                          message=lambda: f"a SLURM id on job {job_id}: {cluster.job(job_id)}")
    assert sid.isdigit(), sid
    return sid


def in_slurm(slurm: SlurmCluster, sid: str) -> bool:
    """Whether SLURM knows job ``sid`` (running or recently ended)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], env=slurm.env,
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return sid in out.split()


def test_partitions_route_jobs_between_local_gpus_and_slurm(
        slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> None:
    cluster = mixed(make_cluster, slurm)
    listed = cluster.mgpu("nodes").stdout
    assert "PARTITION" in listed and re.search(rf"{BRIDGE}\s+up\s+slurm\b", listed), listed
    assert re.search(r"node1\s+up\s+\(default\)", listed), listed

    to_slurm = cluster.submit("echo in-slurm; exit 3", "-p", "slurm")
    sid = wait_slurm_id(cluster, to_slurm)
    assert in_slurm(slurm, sid)
    ended = cluster.wait_job(to_slurm)
    assert (ended["state"], ended["exit_code"], ended["node"]) == ("failed", 3, BRIDGE)
    assert ended["partition"] == "slurm"
    assert "in-slurm" in cluster.mgpu("logs", str(to_slurm)).stdout

    run = cluster.mgpu("srun", "-p", "slurm", "echo srun-in-slurm; exit 5", check=5)
    assert "srun-in-slurm" in run.stdout
    (srun_job,) = [j for j in json.loads(cluster.mgpu("queue", "-a", "--json").stdout)
                   if j["command"].startswith("echo srun-in-slurm")]
    assert (srun_job["node"], srun_job["partition"]) == (BRIDGE, "slurm")
    assert srun_job["backend_id"].isdigit()

    here = cluster.submit("echo here")
    ended = cluster.wait_job(here)
    assert (ended["state"], ended["node"], ended["backend_id"]) == ("completed", "node1", None)

    refused = cluster.mgpu("submit", "-p", "nosuch", "true", check=2)
    assert "nosuch" in refused.stderr and "slurm" in refused.stderr, refused.stderr
    # A gang of SLURM's partition runs in SLURM whole (sbatch -N): here SLURM has one node.
    gang = cluster.mgpu("submit", "-N", "2", "-p", "slurm", "true", check=5)
    assert "only 1 SLURM node of partition slurm" in gang.stderr, gang.stderr
    assert "ask for at most 1 (-N)" in gang.stderr

    # The local GPUs full, a plain job waits for them (no spill-over configured): a job
    # submitted after it to SLURM starts, so passes have run past it.
    hog = cluster.submit("sleep 300", "-G", "2")
    cluster.wait_job(hog, ("running",))
    waits = cluster.submit("echo waits")
    later = cluster.submit("echo later", "-p", "slurm")
    assert cluster.wait_job(later)["state"] == "completed"
    job = cluster.job(waits)
    assert (job["state"], job["backend_id"]) == ("pending", None), job
    why = cluster.mgpu("explain", str(waits)).stdout
    assert "spill-over to slurm is off" in why, why
    queued = cluster.mgpu("queue", "--json").stdout
    assert '"partition"' in queued


def test_with_spill_over_a_plain_job_goes_to_slurm_when_local_gpus_are_full(
        slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> None:
    cluster = mixed(make_cluster, slurm, "--spill-to", "slurm")
    hog = cluster.submit("sleep 300", "-G", "2")
    assert cluster.wait_job(hog, ("running",))["node"] == "node1"
    spilled = cluster.submit("echo spilled")
    sid = wait_slurm_id(cluster, spilled)
    assert in_slurm(slurm, sid)
    ended = cluster.wait_job(spilled)
    assert (ended["state"], ended["node"], ended["partition"]) == ("completed", BRIDGE, None)
    assert "spilled" in cluster.mgpu("logs", str(spilled)).stdout
    cluster.mgpu("cancel", str(hog))
    assert cluster.wait_job(hog)["state"] == "cancelled"
    # With local GPUs free again, plain jobs stay here.
    here = cluster.submit("echo here")
    ended = cluster.wait_job(here)
    assert (ended["node"], ended["backend_id"]) == ("node1", None)


SERVER_ARGS = ("--backend", "slurm", "--partition", PARTITION, "--slurm-poll", "0.3")


def wait_own_bridge(cluster: Cluster) -> None:
    """Wait until the master's own bridge (node ``slurm``, partition ``slurm``) is up."""
    def up() -> bool:
        master = cluster.master
        assert master is not None and master.running(), master.log_tail() if master else ""
        return any(n["node_id"] == "slurm" and n["state"] == "up" and n["partition"] == "slurm"
                   for n in cluster.api("/api/v1/nodes")["nodes"])

    wait_until(up, 30, ignore=(OSError,),
               message=lambda: cluster.master.log_tail() if cluster.master else "")


def test_server_with_the_slurm_backend_runs_jobs_in_slurm(
        slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> None:
    """``mgpu server --backend slurm``: the master runs its SLURM bridge itself."""
    cluster = make_cluster(nodes=0, env={"SLURM_CONF": str(slurm.conf)},
                           master_args=SERVER_ARGS)
    wait_own_bridge(cluster)
    job_id = cluster.submit("echo via-server; exit 4")  # no -p: its only node is the bridge
    sid = wait_slurm_id(cluster, job_id)
    ended = cluster.wait_job(job_id)
    assert (ended["state"], ended["exit_code"], ended["backend_id"]) == ("failed", 4, sid)
    assert "via-server" in cluster.mgpu("logs", str(job_id)).stdout
    shown = cluster.mgpu("show", str(job_id)).stdout
    assert re.search(rf"backend_id:\s+{sid}", shown), shown


def test_server_with_the_slurm_backend_readopts_its_slurm_jobs_after_a_restart(
        slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0, env={"SLURM_CONF": str(slurm.conf)},
                           master_args=SERVER_ARGS)
    wait_own_bridge(cluster)
    go = cluster.tmp / "go"  # the job waits for it: it outlives the restart, no sleep here
    job_id = cluster.submit(
        f"echo before; while [ ! -e {go} ]; do sleep 0.1; done; echo after; exit 6")
    sid = wait_slurm_id(cluster, job_id)
    wait_until(lambda: "before" in cluster.mgpu("logs", str(job_id)).stdout, 30)
    cluster.restart_master(*SERVER_ARGS, wait_nodes=False)  # SIGTERM: SLURM keeps the job
    wait_own_bridge(cluster)
    assert in_slurm(slurm, sid)
    job = cluster.job(job_id)
    assert (job["state"], job["backend_id"]) == ("running", sid), job
    go.touch()
    ended = cluster.wait_job(job_id)
    assert (ended["state"], ended["exit_code"], ended["backend_id"]) == ("failed", 6, sid)
    assert cluster.mgpu("logs", str(job_id)).stdout.split() == ["before", "after"]


# ---------------------------------------------------------------- settings


def test_spill_settings_from_the_config_file_flags_and_errors() -> None:
    from mgpu.core.config import BackendConfig, MasterConfig
    from mgpu.core.errors import ConfigError, error_for_status
    from mgpu.server.partitions import spill_rule
    from mgpu.utils.settings import load

    file = {"master": {"spill_partitions": ["slurm", "cloud"], "spill_after": 300}}
    cfg, _ = load(MasterConfig, {"data_dir": "/tmp/x"}, file_data=file, environ={})
    assert spill_rule(cfg) == SpillRule(frozenset({"slurm", "cloud"}), 300.0)
    cfg, _ = load(MasterConfig, {"data_dir": "/tmp/x", "spill_partitions": "slurm"},
                  file_data=file, environ={})  # the flag wins
    assert spill_rule(cfg).partitions == {"slurm"}
    cfg, _ = load(MasterConfig, {"data_dir": "/tmp/x"}, file_data={},
                  environ={"MGPU_SPILL_PARTITIONS": "a b"})
    with pytest.raises(ConfigError, match="'a b' is not a partition name"):
        spill_rule(cfg)
    backend, _ = load(BackendConfig, {}, file_data={"backend": {"kind": "slurm"}}, environ={})
    assert (backend.kind, backend.node_id, backend.mgpu_partition) == ("slurm", "slurm", "slurm")
    with pytest.raises(ConfigError, match="use slurm"):
        load(BackendConfig, {}, file_data={"backend": {"kind": "k8s"}}, environ={})
    # The master's refusal of -p comes back to the client as a usage error (exit 2).
    back = error_for_status(400, "no node is in partition 'x'", "unknown_partition")
    assert (type(back), back.exit_code) == (UnknownPartition, 2)


@pytest.mark.parametrize("argv", [
    ["submit", "-p", "slurm", "true"],
    ["submit", "--partition=slurm", "-G", "2", "true"],
    ["srun", "--partition", "slurm", "true"],
])
def test_the_partition_flag_reaches_the_job(argv: list[str]) -> None:
    from mgpu.cli.grammar import build_parser, plain_args
    from mgpu.cli.jobargs import job_fields

    for ns in (plain_args(argv), build_parser(argv[0]).parse_args(argv)):
        assert ns is not None
        assert job_fields(ns)["partition"] == "slurm"
    plain = plain_args(["submit", "true"])
    assert plain is not None and "partition" not in job_fields(plain)
