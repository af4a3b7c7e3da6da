"""Jobs run as their owner: a root agent starts each job under its owner's Unix account."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from conftest import Cluster

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="running jobs as another user needs a root agent and useradd",
)



def submit_as(cluster: Cluster, user: str, command: str) -> int:
    """Submit ``command`` with ``user``'s token (the job's owner is the token's user)."""
    reply = cluster.api("/api/v1/jobs", {"jobs": [{
        "command": command, "gpus": 1, "cwd": "/",
        "env": {"PATH": os.environ["PATH"], "HOME": "/root", "USER": "root"},
    }]}, token=cluster.user_token(user))
    return int(reply["job_ids"][0])


def test_a_job_runs_under_its_owners_account(cluster: Cluster, account: str) -> None:
    job_id = submit_as(cluster, account, 'echo "$(id -un) $(id -u) $HOME $USER"')
    job = cluster.wait_job(job_id, ("completed", "failed"))
    out = cluster.mgpu("logs", str(job_id)).stdout
    assert job["state"] == "completed", out
    name, uid, home, user = out.split()
    assert name == user == account and uid != "0"
    assert home == os.path.expanduser(f"~{account}")


def test_an_owner_without_an_account_fails_with_the_reason(cluster: Cluster) -> None:
    job_id = submit_as(cluster, "no-such-user-here", "true")
    job = cluster.wait_job(job_id, ("failed",))
    assert "has no account on this node" in job["reason"]


def test_root_jobs_need_explicit_permission(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=1, env={"MGPU_ALLOW_ROOT_JOBS": "0"})
    job_id = submit_as(cluster, "root", "true")
    job = cluster.wait_job(job_id, ("failed",))
    assert "jobs do not run as root" in job["reason"]
