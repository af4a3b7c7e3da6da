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
