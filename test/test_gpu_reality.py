"""GPUs as they are (issue 12): usage reports, GPUs busy outside mgpu, GPU constraints,
per-job GPU figures, and fake GPUs with a type, memory and outside processes.

Unit tests of the parsing and of the master's and agent's parts first; then real clusters
(a master and agents as processes, fake GPUs whose usage a JSON file sets:
``MGPU_FAKE_GPU_STATE``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import psutil
import pytest

from conftest import Cluster, wait_until
from mgpu.cli.jobargs import gpu_constraints, gpu_count
from mgpu.core import messages as m
from mgpu.core.config import MasterConfig, NodeConfig
from mgpu.core.config_sources import coerce
from mgpu.core.errors import ConfigError, Rejected, UsageError
from mgpu.core.gputypes import common_type, format_mib, gpu_type, parse_constraint, parse_mib
from mgpu.core.models import (
    MAX_GPU_PROCESSES,
    GpuInfo,
    GpuProcess,
    GpuUsage,
    JobSpec,
    JobState,
    NodeState,
    SimpleJob,
)
from mgpu.node.gpuwatch import GpuWatch
from mgpu.server.gpu_fit import busy_outside_words, check_gpu_constraints, node_free_mib
from mgpu.server.node_events import Node
from mgpu.utils.gpu import detect_gpus, parse_fake_spec
from mgpu.utils.gpustate import FakeSampler, NvmlSampler, bounded, parse_fake_state

ME = getpass.getuser()

# ---------------------------------------------------------------- types and sizes


@pytest.mark.parametrize(("name", "kind"), [
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100 80GB PCIe", "a100"),
    ("A100", "a100"),
    ("a100", "a100"),
    ("NVIDIA H200", "h200"),
    ("h200", "h200"),
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("Tesla V100-SXM2-16GB", "v100"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"),
    ("RTX-4090", "rtx4090"),
    ("nvidia-a100", "a100"),
    ("4090", "rtx4090"),
    ("NVIDIA RTX A6000", "rtxa6000"),
    ("A6000", "rtxa6000"),
    ("Fake GPU", "fake"),
    ("NVIDIA", ""),
    ("", ""),
])  # fmt: skip
def test_gpu_type_of_nvml_names_and_what_users_type(name: str, kind: str) -> None:
    assert gpu_type(name) == kind


def test_a_node_of_mixed_gpus_has_the_most_common_type() -> None:
    assert common_type(["NVIDIA A100", "Tesla V100", "NVIDIA A100-SXM4-80GB"]) == "a100"
    assert common_type(["NVIDIA H200", "NVIDIA A100"]) == "h200"  # a tie: the first
    assert common_type([]) == ""


@pytest.mark.parametrize(("text", "mib"), [
    ("20G", 20480), ("20GB", 20480), ("20GiB", 20480), ("20g", 20480), ("1.5G", 1536),
    ("512M", 512), ("20480", 20480), ("1T", 1048576), (" 8 G ", 8192),
])  # fmt: skip
def test_memory_sizes(text: str, mib: int) -> None:
    assert parse_mib(text, "--gpu-mem") == mib


@pytest.mark.parametrize("text", ["", "G", "20X", "-1G", "0", "0G", "1e3", "20 G B"])
def test_bad_memory_sizes_name_the_flag(text: str) -> None:
    with pytest.raises(UsageError, match="--gpu-mem"):
        parse_mib(text, "--gpu-mem")


def test_memory_is_shown_short() -> None:
    assert [format_mib(x) for x in (500, 1024, 1536, 3000, 81920)] == [
        "500M", "1G", "1.5G", "2.9G", "80G"]


def test_constraint_knows_gpu_only() -> None:
    assert parse_constraint("gpu=h200") == "h200"
    assert parse_constraint("GPU=A100") == "A100"
    for bad in ("h200", "mem=20G", "gpu=", "gpu"):
        with pytest.raises(UsageError, match="gpu=TYPE"):
            parse_constraint(bad)


def _ns(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"gpu_mem": None, "gpu_type": None, "constraint": None,
                                 "gres": None, "gpus": None, **kw})


def test_job_flags_give_the_constraints_given() -> None:
    assert gpu_constraints(_ns()) == {}
    assert gpu_constraints(_ns(gpu_mem="20G", gpu_type="A100")) == {
        "gpu_mem_mib": 20480, "gpu_type": "A100"}
    assert gpu_constraints(_ns(constraint="gpu=h200")) == {"gpu_type": "h200"}
    assert gpu_constraints(_ns(gpu_type="H200", constraint="gpu=h200")) == {"gpu_type": "H200"}
    assert gpu_constraints(_ns(gres="gpu:a100:2")) == {"gpu_type": "a100"}
    assert gpu_count(_ns(gres="gpu:a100:2")) == 2
    assert gpu_constraints(_ns(gres="gpu:2")) == {}
    with pytest.raises(UsageError, match="different GPU types"):
        gpu_constraints(_ns(gpu_type="a100", constraint="gpu=h200"))
    with pytest.raises(UsageError, match="different GPU types"):
        gpu_constraints(_ns(gres="gpu:v100:1", constraint="gpu=h200"))
    with pytest.raises(UsageError, match="gpu:TYPE:N"):
        gpu_count(_ns(gres="gpu::2"))
    with pytest.raises(UsageError, match="names no GPU type"):
        gpu_constraints(_ns(gpu_type="nvidia"))


# ---------------------------------------------------------------- fake GPUs


def test_fake_gpus_from_a_count_or_a_spec() -> None:
    plain = parse_fake_spec(2)
    assert [(g.index, g.name, g.memory_total_mib, g.uuid) for g in plain] == [
        (0, "Fake GPU", 81920, "GPU-fake-0"), (1, "Fake GPU", 81920, "GPU-fake-1")]
    typed = parse_fake_spec("2:H200,1:V100:16G,1:NVIDIA A100-SXM4-80GB:80G")
    assert [(g.index, g.name, g.memory_total_mib) for g in typed] == [
        (0, "NVIDIA H200", 81920), (1, "NVIDIA H200", 81920), (2, "NVIDIA V100", 16384),
        (3, "NVIDIA A100-SXM4-80GB", 81920)]
    assert [gpu_type(g.name) for g in typed] == ["h200", "h200", "v100", "a100"]
    assert detect_gpus(None, "4:A100:40G")[1] == "fake"
    assert detect_gpus([1], "4:A100:40G")[0][0].index == 1


@pytest.mark.parametrize("spec", ["x", "4:", "4::80G", "4:A100:80G:1", "4:A100:lots", "-1"])
def test_bad_fake_gpu_specs_say_the_form(spec: str) -> None:
    with pytest.raises(UsageError, match="--fake-gpus"):
        parse_fake_spec(spec)


def test_fake_gpus_setting_takes_a_count_or_a_spec() -> None:
    kind = "int | str | None"
    assert coerce(kind, "4") == 4 and coerce(kind, 4) == 4
    assert coerce(kind, "4:A100:80G") == "4:A100:80G"


def test_the_busy_outside_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"avoid.*ignore"):
        NodeConfig(foreign_gpu_policy="sometimes")
    with pytest.raises(ConfigError, match="min_free_mib"):
        MasterConfig(data_dir=Path("/x"), min_free_mib=-1)
    assert MasterConfig(data_dir=Path("/x")).foreign_gpu_policy == "avoid"


def test_fake_state_document() -> None:
    doc = {
        "0": {"memory_used_mib": 5000, "utilization": 40,
              "processes": [{"pid": 11, "memory_used_mib": 1000, "user": "bob"},
                            {"pid": 12}]},
        "1": {"processes": [{"pid": 13, "memory_used_mib": 700}]},
        "n2/1": {"utilization": 99},
    }
    users = {13: "carol"}
    got = parse_fake_state(doc, "n1", [0, 1, 2], users.get)
    assert got[0].memory_used_mib == 5000 and got[0].utilization == 40
    assert [(p.pid, p.memory_used_mib, p.user) for p in got[0].processes] == [
        (11, 1000, "bob"), (12, 0, None)]
    assert (got[1].memory_used_mib, got[1].utilization) == (700, 0)  # the processes' sum
    assert got[1].processes[0].user == "carol"  # found by pid here
    assert got[2] == GpuUsage(index=2, memory_used_mib=0, utilization=0)
    assert parse_fake_state(doc, "n2", [1], users.get)[1].utilization == 99  # its own wins
    for bad in ([], {"0": []}, {"0": {"processes": [{"pid": "x"}]}},
                {"0": {"utilization": 101}}, {"0": {"memory_used_mib": -1}}):
        with pytest.raises(ValueError):
            parse_fake_state(bad, "n1", [0])


def test_a_report_lists_the_biggest_processes_and_counts_the_rest() -> None:
    procs = [GpuProcess(pid=p, memory_used_mib=p) for p in range(1, MAX_GPU_PROCESSES + 6)]
    u = bounded(0, 10, 0, procs)
    assert len(u.processes) == MAX_GPU_PROCESSES and u.more_processes == 5
    assert u.processes[0].pid == MAX_GPU_PROCESSES + 5


def test_fake_sampler_reads_the_file_each_time(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    sampler = FakeSampler(path, "n1", [0])
    assert sampler.sample()[0].memory_used_mib == 0  # no file: idle
    path.write_text('{"0": {"utilization": 30}}')
    assert sampler.sample()[0].utilization == 30
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, "mgpu"):
        assert sampler.sample()[0].utilization == 0
        sampler.sample()
    assert sum("fake GPU state" in r.message for r in caplog.records) == 1  # said once


class FakeNvml:
    """What NvmlSampler uses of pynvml, answering from a table (``NVMLError`` where a GPU
    does not support a query)."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.closed = False

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> Any:
        return SimpleNamespace(used=h["used"] * 2**20 + 5, total=h["total"] * 2**20)

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> Any:
        if h.get("util") is None:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: dict[str, Any]) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in h["procs"]]

    def nvmlShutdown(self) -> None:
        self.closed = True


def test_nvml_usage_with_what_a_gpu_cannot_say_left_out() -> None:
    nvml = FakeNvml()
    handles = {
        0: {"used": 1024, "total": 81920, "util": 55, "procs": [(os.getpid(), 1000 * 2**20)]},
        2: {"used": 0, "total": 81920, "util": None, "procs": [(os.getpid(), None)]},
    }
    sampler = NvmlSampler(nvml, handles)
    got = sampler.sample()
    assert (got[0].memory_used_mib, got[0].utilization) == (1024, 55)
    assert got[0].processes == [GpuProcess(pid=os.getpid(), memory_used_mib=1000, user=ME)]
    assert (got[2].utilization, got[2].processes[0].memory_used_mib) == (None, None)
    sampler.close()
    assert nvml.closed


# ---------------------------------------------------------------- the master's side


def _node(n: int = 2, name: str = "NVIDIA A100", total: int = 40960, **kw: Any) -> Node:
    gpus = [GpuInfo(index=i, name=name, memory_total_mib=total) for i in range(n)]
    node = Node("n1", gpus, **kw)
    node.gpu_type = common_type([g.name for g in gpus])
    return node


def _usage(index: int, used: int = 0, *procs: GpuProcess) -> GpuUsage:
    return GpuUsage(index=index, memory_used_mib=used, utilization=0, processes=list(procs))


def test_a_gpu_busy_outside_is_not_offered_unless_ignored() -> None:
    node = _node()
    foreign = GpuProcess(pid=4242, memory_used_mib=1000, user="bob", outside=True)
    assert node.apply_usage([_usage(0, 1000, foreign), _usage(1)]) is True
    assert node.gpus[0].busy_outside and node.free_gpu_ids() == (1,)
    assert node.apply_usage([_usage(0, 1000, foreign), _usage(1)]) is False  # no change
    node.avoid_outside = False
    assert node.free_gpu_ids() == (0, 1)
    node.avoid_outside = True
    ours = GpuProcess(pid=4243, memory_used_mib=1000, job_id=7)
    assert node.apply_usage([_usage(0, 1000, ours)]) is True  # a job's process: not outside
    assert node.free_gpu_ids() == (0, 1)
    assert node.info().free_gpu_ids == [0, 1]


def test_min_free_mib_keeps_full_gpus_back() -> None:
    node = _node(min_free_mib=8192)
    assert node.free_gpu_ids() == (0, 1)  # no report yet: offered
    node.apply_usage([_usage(0, 40960 - 8000), _usage(1, 40960 - 8192)])
    assert node.free_gpu_ids() == (1,)
    assert node_free_mib(node, (1,)) == (8192,)
    assert node_free_mib(_node(), (0, 1)) == (40960, 40960)  # no report: all of it


def _job(gpus: int = 2, **kw: Any) -> SimpleJob:
    return SimpleJob(id=5, name="j", user=ME, state=JobState.PENDING, gpus=gpus,
                     command="true", cwd="/", **kw)


def test_a_job_waiting_only_for_gpus_busy_outside_says_so() -> None:
    node = _node()
    foreign = GpuProcess(pid=4242, memory_used_mib=1024, user="bob", outside=True)
    node.apply_usage([_usage(0, 1024, foreign)])
    words = busy_outside_words(_job(2), [node])
    assert words is not None and "n1 GPU 0 (pid 4242 of bob, 1G)" in words
    assert busy_outside_words(_job(1), [node]) is None  # it fits on GPU 1
    assert busy_outside_words(_job(2, gpu_type="h200"), [node]) is None  # not this node
    node.gpus[1].job_id = 3  # held by a job: waiting for it too, not only outside
    assert busy_outside_words(_job(2), [node]) is None
    node.gpus[1].job_id = None
    node.state = NodeState.DEGRADED
    assert busy_outside_words(_job(2), [node]) is None


def test_constraints_no_node_meets_are_refused_at_submit() -> None:
    nodes = [_node(2, "NVIDIA A100-SXM4-80GB", 81920), _node(4, "NVIDIA H200", 143360)]
    check_gpu_constraints(JobSpec(command="x", gpu_type="A100", gpus=2), nodes)
    check_gpu_constraints(JobSpec(command="x", gpu_mem_mib=100_000, gpus=4), nodes)
    check_gpu_constraints(JobSpec(command="x", gpu_type="v100"), [])  # no node known yet
    with pytest.raises(Rejected, match=r"type 'v100'.*a100, h200"):
        check_gpu_constraints(JobSpec(command="x", gpu_type="v100"), nodes)
    with pytest.raises(Rejected, match="3 a100 GPUs but no node has more than 2"):
        check_gpu_constraints(JobSpec(command="x", gpu_type="a100", gpus=3), nodes)
    with pytest.raises(Rejected, match="with 200G of memory"):
        check_gpu_constraints(JobSpec(command="x", gpu_mem_mib=204800), nodes)
    with pytest.raises(UsageError, match="names no GPU type"):
        check_gpu_constraints(JobSpec(command="x", gpu_type="NVIDIA"), nodes)


# ---------------------------------------------------------------- the agent's side


def test_heartbeats_with_usage_and_without_read_both_ways() -> None:
    class OldHeartbeat(msgspec.Struct, tag="heartbeat"):
        pass

    beat = m.Heartbeat(gpus=[_usage(0, 10, GpuProcess(pid=1, outside=True))])
    assert msgspec.msgpack.decode(m.node_encoder.encode(beat), type=OldHeartbeat) == (
        OldHeartbeat())  # an older master reads it
    assert m.decode_node_frame(m.node_encoder.encode(OldHeartbeat())) == [m.Heartbeat()]
    assert m.decode_node_frame(m.node_encoder.encode(beat)) == [beat]
    too_many = m.Heartbeat(gpus=[GpuUsage(index=0, processes=[
        GpuProcess(pid=i) for i in range(MAX_GPU_PROCESSES + 1)])])
    with pytest.raises(msgspec.ValidationError):
        m.decode_node_frame(m.node_encoder.encode(too_many))


class _Samples:
    def __init__(self) -> None:
        self.now: dict[int, GpuUsage] = {}

    def sample(self) -> dict[int, GpuUsage]:
        return self.now

    def close(self) -> None:
        pass


def _watch(samples: _Samples | None = None) -> GpuWatch:
    return GpuWatch(samples or _Samples(), "n1", 0.01, lambda: 0, logging.getLogger("t"))


def test_usage_is_reported_when_it_changes() -> None:
    watch = _watch()
    assert watch.report() is None  # nothing sampled yet
    watch.latest = {0: _usage(0, 1000)}
    assert watch.report() == [_usage(0, 1000)]
    assert watch.report() is None
    watch.latest = {0: _usage(0, 1010)}  # under 64 MiB: not news
    assert watch.report() is None
    watch.latest = {0: _usage(0, 2000)}
    assert watch.report() == [_usage(0, 2000)]
    watch.resend()
    assert watch.report() == [_usage(0, 2000)]


def test_a_jobs_figures_go_with_its_end() -> None:
    watch = _watch()
    watch.started(9, [0, 1])
    for used, util in ((1000, 50), (3000, 90)):
        for fig in watch._jobs.values():
            fig.add({0: GpuUsage(index=0, memory_used_mib=used, utilization=util),
                     1: GpuUsage(index=1, memory_used_mib=used, utilization=util - 40),
                     2: GpuUsage(index=2, memory_used_mib=99999, utilization=100)})
    ended = m.JobEnded(9, 0, "completed", 0, None, 0)
    got = watch.annotate(ended)
    assert got.gpu_stats == m.JobGpuStats(memory_peak_mib=6000, utilization_mean=50.0,
                                          samples=2)
    assert watch.annotate(got) is got  # sent again: as it was
    assert watch.annotate(m.JobEnded(10, 0, "completed", 0, None, 0)).gpu_stats is None


@pytest.fixture
def sleeper() -> Iterator[Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    """Start ``sleep`` processes (own session, given environment); killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "120"], env=env, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_processes_are_attributed_by_their_jobs_environment(
        sleeper: Callable[[dict[str, str]], subprocess.Popen[bytes]]) -> None:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    job = sleeper({**base, "MGPU_NODE_ID": "n1", "MGPU_JOB_ID": "17"})
    other_node = sleeper({**base, "MGPU_NODE_ID": "n2", "MGPU_JOB_ID": "18"})
    stranger = sleeper(base)
    samples = _Samples()
    samples.now = {0: bounded(0, 3, 0, [GpuProcess(pid=p.pid, memory_used_mib=1)
                                       for p in (job, other_node, stranger)]
                              + [GpuProcess(pid=2**22 + 7)])}  # (no such process)
    watch = _watch(samples)

    async def sample_once() -> None:
        watch.start()
        try:
            while not watch.latest:
                await asyncio.sleep(0.01)
        finally:
            await watch.close()

    asyncio.run(asyncio.wait_for(sample_once(), 10))
    owners = {p.pid: (p.job_id, p.outside) for p in watch.latest[0].processes}
    assert owners == {job.pid: (17, False), other_node.pid: (None, True),
                      stranger.pid: (None, True), 2**22 + 7: (None, True)}


# ---------------------------------------------------------------- real clusters


def write_state(path: Path, doc: dict[str, Any]) -> None:
    """Replace the fake GPU state at once (an agent never reads half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "gpu-state.json"


def quick(state: Path) -> dict[str, str]:
    """The environment of a cluster whose fake GPUs' usage ``state`` sets, sampled and
    reported often."""
    return {"MGPU_FAKE_GPU_STATE": str(state), "MGPU_GPU_SAMPLE_INTERVAL": "0.1",
            "MGPU_HEARTBEAT_INTERVAL": "0.3"}


def nodes_json(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {n["node_id"]: n for n in json.loads(cluster.mgpu("nodes", "--json").stdout)}


def gpu(cluster: Cluster, node: str, index: int) -> dict[str, Any]:
    [g] = [g for g in nodes_json(cluster)[node]["gpus"] if g["index"] == index]
    return g


def test_a_gpu_busy_outside_mgpu_is_shown_and_not_allocated(
        make_cluster: Callable[..., Cluster], state: Path,
        sleeper: Callable[[dict[str, str]], subprocess.Popen[bytes]]) -> None:
    outsider = sleeper({"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    write_state(state, {"0": {"processes": [{"pid": outsider.pid, "memory_used_mib": 1536}]}})
    cluster = make_cluster(nodes=1, gpus=2, env=quick(state))
    wait_until(lambda: gpu(cluster, "node1", 0)["busy_outside"], 20)
    node = nodes_json(cluster)["node1"]
    assert node["free_gpu_ids"] == [1]
    [proc] = node["gpus"][0]["processes"]
    assert proc == {"pid": outsider.pid, "memory_used_mib": 1536, "user": ME, "job_id": None,
                    "outside": True}
    assert node["gpus"][0]["memory_used_mib"] == 1536
    row = cluster.mgpu("nodes").stdout.splitlines()[1].split()
    assert row[:6] == ["node1", "up", "2", "0", "1", "2xfake"]
    assert f"0:{outsider.pid}({ME},1.5G)" in row

    job = cluster.submit("echo ran", "-G", "2")
    shown = wait_until(lambda: (j := cluster.job(job))["pending_reason"] == "GpusBusyOutside"
                       and j, 20, message=lambda: str(cluster.job(job)))
    assert f"node1 GPU 0 (pid {outsider.pid} of {ME}, 1.5G)" in shown["reason"]
    small = cluster.submit("echo ran", "-G", "1")
    assert cluster.wait_job(small, ("completed",))["gpu_ids"] == [1]

    write_state(state, {})  # the outsider let go of GPU 0: the job starts
    assert cluster.wait_job(job, ("completed",), timeout=30)["gpu_ids"] == [0, 1]
    assert not gpu(cluster, "node1", 0)["busy_outside"]


def test_a_restarted_master_knows_busy_gpus_as_nodes_join(
        make_cluster: Callable[..., Cluster], state: Path) -> None:
    """Nodes register with their last usage: a master that restarts with pending jobs does
    not place them on GPUs busy outside mgpu before the first heartbeat says so."""
    write_state(state, {"0": {"processes": [{"pid": 999_999, "user": "bob"}]}})
    cluster = make_cluster(nodes=1, gpus=2, env=quick(state))
    wait_until(lambda: gpu(cluster, "node1", 0)["busy_outside"], 20)
    job = cluster.submit("echo ran", "-G", "2")
    wait_until(lambda: cluster.job(job)["pending_reason"] == "GpusBusyOutside", 20)
    cluster.restart_master()  # (the node joins, and a scheduling pass runs, before its
    assert cluster.job(job)["state"] == "pending"  # first heartbeat to this master)
    assert gpu(cluster, "node1", 0)["busy_outside"]


def test_foreign_gpu_policy_ignore_allocates_it_anyway(
        make_cluster: Callable[..., Cluster], state: Path) -> None:
    write_state(state, {"0": {"processes": [{"pid": 999_999, "user": "bob",
                                             "memory_used_mib": 100}]}})
    cluster = make_cluster(nodes=0, env=quick(state))
    cluster.add_node("strict", 2, wait=False)
    cluster.add_node("lenient", 2, env={"MGPU_FOREIGN_GPU_POLICY": "ignore"}, wait=False)
    cluster.wait_nodes_up()
    wait_until(lambda: all(gpu(cluster, n, 0)["busy_outside"] for n in ("strict", "lenient")),
               20)
    nodes = nodes_json(cluster)
    assert (nodes["strict"]["free_gpu_ids"], nodes["lenient"]["free_gpu_ids"]) == ([1], [0, 1])
    job = cluster.submit("echo ran", "-G", "2")
    assert cluster.wait_job(job, ("completed",))["node"] == "lenient"


def test_min_free_mib_keeps_back_a_gpu_short_of_memory(
        make_cluster: Callable[..., Cluster], state: Path) -> None:
    write_state(state, {"0": {"memory_used_mib": 81920 - 1000}})  # no process: a driver
    cluster = make_cluster(nodes=1, gpus=2, env={**quick(state), "MGPU_MIN_FREE_MIB": "2048"})
    wait_until(lambda: nodes_json(cluster)["node1"]["free_gpu_ids"] == [1], 20)
    job = cluster.submit("echo ran", "-G", "1")
    assert cluster.wait_job(job, ("completed",))["gpu_ids"] == [1]


def test_a_jobs_own_gpu_process_is_its_and_its_figures_are_kept(
        make_cluster: Callable[..., Cluster], state: Path) -> None:
    busy = {"memory_used_mib": 3000, "utilization": 70}
    write_state(state, {"0": busy})
    cluster = make_cluster(nodes=1, gpus=1, env=quick(state))
    wait_until(lambda: gpu(cluster, "node1", 0)["memory_used_mib"] == 3000, 20)
    flag = cluster.tmp / "go"
    # The job puts its own shell on the GPU (as CUDA would), then waits for the flag.
    doc = json.dumps({"0": {**busy, "processes": [{"pid": 12345, "memory_used_mib": 3000}]}})
    script = (f"printf '%s' '{doc}' | sed \"s/12345/$$/\" > {state}.job && "
              f"mv {state}.job {state} && while [ ! -e {flag} ]; do sleep 0.02; done")
    job = cluster.submit(script, "-G", "1")
    cluster.wait_job(job, ("running",))

    def attributed() -> dict[str, Any] | None:
        procs = gpu(cluster, "node1", 0)["processes"]
        return procs[0] if procs and procs[0]["job_id"] == job else None

    proc = wait_until(attributed, 20, message=lambda: str(gpu(cluster, "node1", 0)))
    assert proc["outside"] is False and proc["user"] == psutil.Process(proc["pid"]).username()
    assert not gpu(cluster, "node1", 0)["busy_outside"]
    flag.touch()
    done = cluster.wait_job(job, ("completed",))
    assert (done["gpu_mem_peak_mib"], done["gpu_util_mean"]) == (3000, 70.0)
    shown = " ".join(cluster.mgpu("show", str(job)).stdout.split())
    assert "gpu_mem_peak_mib: 2.9G" in shown and "gpu_util_mean: 70%" in shown


def test_gpu_types_memory_and_constraints(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    cluster.add_node("amp", 2, "--fake-gpus", "2:A100:40G", wait=False)
    cluster.add_node("hop", 2, "--fake-gpus", "2:H200:141G", wait=False)
    cluster.wait_nodes_up()
    nodes = nodes_json(cluster)
    assert [(g["name"], g["memory_total_mib"]) for g in nodes["amp"]["gpus"]] == [
        ("NVIDIA A100", 40960)] * 2
    table = {line.split()[0]: line.split() for line in cluster.mgpu("nodes").stdout.splitlines()}
    assert (table["amp"][5], table["hop"][5]) == ("2xa100", "2xh200")

    placed = {
        "--gpu-type=H200": "hop", "--constraint=gpu=a100": "amp", "--gpu-mem=100G": "hop",
        "--gpu-type=NVIDIA-A100": "amp",
    }
    jobs = {flag: cluster.submit("echo ran", flag) for flag in placed}
    for flag, where in placed.items():
        assert cluster.wait_job(jobs[flag], ("completed",))["node"] == where, flag
    assert cluster.job(jobs["--gpu-mem=100G"])["gpu_mem_mib"] == 102400
    assert cluster.job(jobs["--gpu-type=H200"])["gpu_type"] == "H200"

    refused = cluster.mgpu("submit", "--gpu-type", "v100", "echo no", check=False)
    assert refused.returncode != 0
    assert "no node has GPUs of type 'v100': the types here are a100, h200" in refused.stderr
    too_big = cluster.mgpu("submit", "-G", "2", "--gpu-mem", "200G", "echo no", check=False)
    assert too_big.returncode != 0 and "with 200G of memory" in too_big.stderr
    bad = cluster.mgpu("submit", "--gpu-mem", "lots", "echo no", check=2)
    assert "--gpu-mem: 'lots' is not a memory size" in bad.stderr
    assert "Traceback" not in refused.stderr + too_big.stderr + bad.stderr


def test_bad_fake_gpus_flag_is_a_usage_error(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    done = subprocess.run([sys.executable, "-m", "mgpu", "node", "--fake-gpus", "4:A100:lots"],
                          capture_output=True, text=True, env=cluster.env, timeout=60,
                          check=False)
    assert done.returncode == 2 and "4:A100:lots" in done.stderr
    assert "Traceback" not in done.stderr
