"""Real PyTorch through mgpu: a DDP job (gloo, on CPU) on fake GPUs.

``./run-tests`` installs the CPU build of PyTorch (the ``torch`` extra, pinned in
``.ci/constraints.txt``); CI runs this tier, it is never skipped for a missing torch. The
job is ``examples/ddp_train.py`` under ``torchrun``: each rank checks an all-reduce, trains,
and checks that every replica ends with the same weights; the test reads what each rank
wrote and the environment it saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, Cluster

EXAMPLE = REPO / "examples" / "ddp_train.py"


def test_torch_is_installed_for_the_tests() -> None:
    """The torch tier must not pass by skipping: ./run-tests installs torch."""
    import torch

    assert torch.__version__
    assert torch.distributed.is_available() and torch.distributed.is_gloo_available()


def ranks(result_dir: Path, world: int) -> list[dict[str, Any]]:
    out = [json.loads((result_dir / f"rank{r}.json").read_text()) for r in range(world)]
    return out


@pytest.mark.cluster(nodes=1, gpus=4)
def test_a_two_gpu_job_runs_torchrun_ddp_with_exactly_its_gpus(
    cluster: Cluster, tmp_path: Path
) -> None:
    results = tmp_path / "ddp"
    cmd = (f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node 2 "
           f"{EXAMPLE} --steps 5 --result-dir {results}")
    blocker = cluster.submit("sleep 600", "-G", "1")  # GPU 0 is taken: the job gets 1,2
    cluster.wait_job(blocker, ("running",))
    job_id = cluster.submit(cmd, "-G", "2", "-J", "ddp")
    job = cluster.wait_job(job_id, timeout=180)
    log = cluster.mgpu("logs", str(job_id)).stdout
    assert job["state"] == "completed", log
    got = ranks(results, 2)
    for r, info in enumerate(got):
        assert info["rank"] == r and info["world_size"] == 2
        assert info["allreduce"] == 3.0  # (0 + 1) + (1 + 1)
        assert info["replicas_equal"]
        assert info["env"]["LOCAL_RANK"] == str(r)
        assert info["env"]["CUDA_VISIBLE_DEVICES"] == "1,2"  # exactly the job's GPUs
        assert info["env"]["MGPU_JOB_ID"] == str(job_id)
    assert got[0]["weight"] == got[1]["weight"]
    assert "replicas equal: True" in log
    cluster.mgpu("cancel", str(blocker))


@pytest.mark.cluster(nodes=1, gpus=2)
def test_srun_streams_a_ddp_job_and_exits_with_its_code(cluster: Cluster) -> None:
    done = cluster.mgpu("srun", "-q", "-G", "2", sys.executable, "-m", "torch.distributed.run",
                        "--standalone", "--nproc-per-node", "2", str(EXAMPLE), "--steps", "2",
                        timeout=180)
    lines = [line for line in done.stdout.splitlines() if line.startswith("rank ")]
    assert sorted(line.split(" on ")[0] for line in lines) == ["rank 0/2", "rank 1/2"]
    assert all("all-reduce 3" in line and "replicas equal: True" in line for line in lines)


def check_two_nodes(results: Path, job_id: int) -> None:
    got = ranks(results, 2)
    nodes = set()
    for r, info in enumerate(got):
        assert info["rank"] == r and info["world_size"] == 2
        assert info["allreduce"] == 3.0 and info["replicas_equal"]
        env = info["env"]
        assert env["MGPU_JOB_ID"] == str(job_id) and env["NODE_RANK"] == str(r)
        assert env["MGPU_NODELIST"] == "node1,node2" or env["MGPU_NODELIST"] == "node2,node1"
        assert env["CUDA_VISIBLE_DEVICES"] == "0"  # one GPU on each node
        nodes.add(env["MGPU_NODE_ID"])
    assert nodes == {"node1", "node2"}  # each rank on its own node
    assert got[0]["env"]["MASTER_PORT"] == got[1]["env"]["MASTER_PORT"]
    assert got[0]["weight"] == got[1]["weight"]


@pytest.mark.cluster(nodes=2, gpus=1)
def test_a_two_node_job_runs_ddp_from_mgpus_variables(cluster: Cluster, tmp_path: Path) -> None:
    results = tmp_path / "ddp2"
    job_id = cluster.submit(f"{sys.executable} {EXAMPLE} --steps 5 --result-dir {results}",
                            "-N", "2", "--gpus-per-node", "1")
    job = cluster.wait_job(job_id, timeout=180)
    log = cluster.mgpu("logs", "--label", str(job_id)).stdout
    assert job["state"] == "completed", log
    check_two_nodes(results, job_id)
    assert sorted(line[:10] for line in log.splitlines()) == ["0: rank 0/", "1: rank 1/"]


@pytest.mark.cluster(nodes=2, gpus=1)
def test_a_two_node_job_runs_torchrun_with_one_process_a_node(
        cluster: Cluster, tmp_path: Path) -> None:
    results = tmp_path / "ddp2"
    cmd = (f"{sys.executable} -m torch.distributed.run --nnodes 2 --nproc-per-node 1 "
           "--node-rank $NODE_RANK --master-addr $MASTER_ADDR --master-port $MASTER_PORT "
           f"{EXAMPLE} --steps 5 --result-dir {results}")
    job_id = cluster.submit(cmd, "-N", "2")
    job = cluster.wait_job(job_id, timeout=180)
    assert job["state"] == "completed", cluster.mgpu("logs", "-l", str(job_id)).stdout
    check_two_nodes(results, job_id)


@pytest.mark.cluster(nodes=2, gpus=1)
def test_srun_runs_a_two_node_ddp_job_live(cluster: Cluster) -> None:
    done = cluster.mgpu("srun", "-q", "-l", "-N", "2", sys.executable, str(EXAMPLE), "--steps",
                        "2", timeout=180)
    lines = sorted(done.stdout.splitlines())
    assert [line[:10] for line in lines] == ["0: rank 0/", "1: rank 1/"], done.stdout
    assert all("all-reduce 3" in line and "replicas equal: True" in line for line in lines)
