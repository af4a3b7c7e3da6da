"""A scheduling policy installed as a plugin (entry-point group ``mgpu.schedulers``) and
chosen by the ``scheduler`` setting places a real master's jobs; an unknown name stops the
master at start-up with an error that names the fix.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SRC, Cluster

PLUGIN = '''
from mgpu.core.scheduler import Placement, PendingReason, Reason, ScheduleResult


def newest_first(snap):
    """Newest job first, on the first node with room (a policy no one would choose)."""
    free = {n.node_id: sorted(n.free_gpu_ids) for n in snap.nodes}
    out = ScheduleResult()
    for job in sorted(snap.pending, key=lambda j: -j.job_id):
        for node_id, ids in free.items():
            if len(ids) >= job.gpus:
                out.placements.append(Placement(job.job_id, node_id, tuple(ids[:job.gpus])))
                del ids[:job.gpus]
                break
        else:
            out.reasons[job.job_id] = Reason(PendingReason.RESOURCES, "newest first")
    return out
'''


def install_plugin(where: Path) -> Path:
    """A distribution ``newest-first`` in ``where`` (a directory for PYTHONPATH), whose
    entry point ``mgpu.schedulers: newest-first`` is :data:`PLUGIN`'s policy."""
    where.mkdir(parents=True)
    (where / "newest_first_policy.py").write_text(PLUGIN)
    info = where / "newest_first_policy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: newest-first-policy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[mgpu.schedulers]\nnewest-first = newest_first_policy:newest_first\n")
    return where


def test_load_policy_finds_the_builtin_and_installed_policies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mgpu.core.errors import ConfigError
    from mgpu.core.scheduler import fifo_reserve, load_policy

    assert load_policy("fifo-reserve") is fifo_reserve
    monkeypatch.syspath_prepend(str(install_plugin(tmp_path / "site")))
    assert load_policy("newest-first").__name__ == "newest_first"
    with pytest.raises(ConfigError, match="unknown scheduler 'nope'"):
        load_policy("nope")


def test_a_plugin_chosen_by_the_setting_places_the_jobs(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    site = install_plugin(tmp_path / "site")
    cluster = make_cluster(nodes=0, env={"MGPU_SCHEDULER": "newest-first",
                                         "PYTHONPATH": f"{site}:{SRC}"})
    cluster.add_node(gpus=1)  # one GPU: the jobs run one at a time, in the policy's order
    gate = tmp_path / "gate"
    first = cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.05; done")
    cluster.wait_job(first, ("running",))
    queued = [cluster.submit("true") for _ in range(3)]
    shown = [cluster.api(f"/api/v1/jobs/{j}") for j in queued]
    assert [(j["pending_reason"], j["reason"]) for j in shown] == [
        ("Resources", "newest first")] * 3  # the plugin's reasons reach the user
    gate.touch()
    ended = [cluster.wait_job(j, ("completed",)) for j in queued]
    order = [j["id"] for j in sorted(ended, key=lambda j: j["started_at"])]
    assert order == sorted(queued, reverse=True)  # the plugin's order, not the queue's


def test_an_unknown_scheduler_stops_the_master_with_the_fix(tmp_path: Path) -> None:
    env = Cluster(tmp_path).base_env
    proc = subprocess.run(
        [sys.executable, "-m", "mgpu", "server", "--port", "0", "--data-dir",
         str(tmp_path / "master")], env={**env, "MGPU_SCHEDULER": "nope"},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown scheduler 'nope'" in proc.stderr and "install a plugin" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mgpu_config_shows_the_scheduler(cluster: Cluster) -> None:
    out = cluster.mgpu("config").stdout
    assert any("scheduler" in line and "multifactor" in line for line in out.splitlines())


def test_the_master_reports_its_scheduling_passes(cluster: Cluster) -> None:
    before = cluster.api("/api/v1/stats")
    jobs = [cluster.submit("true") for _ in range(3)]
    for job_id in jobs:
        cluster.wait_job(job_id)
    after = cluster.api("/api/v1/stats")
    assert after["scheduling"]["passes"] >= before["scheduling"]["passes"] + 1
    assert after["scheduling"]["max_ms"] >= after["scheduling"]["last_ms"] >= 0
    assert after["scheduling"]["max_pending"] >= 1
    assert after["jobs"]["completed"] >= 3 and after["nodes"] == {"up": 1}
