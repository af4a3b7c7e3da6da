"""Job controls on a real cluster (tier 3): holds, begin times, dependencies, retries with
back-off and per-user limits (README "Job controls"), plus their pure rules (tier 1).

Jobs that must stay running hold their GPUs with ``sleep``; every wait is on a condition.
"""

from __future__ import annotations

import getpass
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.core import controls as c
from mgpu.core.errors import UsageError

# ---------------------------------------------------------------------- pure rules


def test_dependency_rules() -> None:
    assert c.parse_dependency("afterok:12:13,afterany:14") == (
        False, [("afterok", 12), ("afterok", 13), ("afterany", 14)])
    assert c.parse_dependency("afterok:1?afternotok:2") == (
        True, [("afterok", 1), ("afternotok", 2)])
    for bad in ("afterok", "before:1", "afterok:x", "afterok:1,afterok:2?after:3", ""):
        with pytest.raises(UsageError, match="--dependency"):
            c.parse_dependency(bad)
    assert c.term_status("afterok", "completed", True) is True
    assert c.term_status("afterok", "failed", True) is False
    assert c.term_status("afternotok", "running", True) is None
    assert c.term_status("after", "running", True) is True
    assert c.term_status("after", "cancelled", False) is True
    assert c.term_status("afterany", None, False) is True  # pruned long ago
    assert c.combine(False, [True, None]) is None
    assert c.combine(False, [True, False]) is False
    assert c.combine(True, [False, None]) is None
    assert c.combine(True, [False, True]) is True
    assert c.combine(True, [False, False]) is False


def test_array_and_reference_rules() -> None:
    assert c.parse_array("0-3%2") == ([0, 1, 2, 3], 2)
    assert c.parse_array("1,3,5-7") == ([1, 3, 5, 6, 7], None)
    assert c.parse_array("0-9:4") == ([0, 4, 8], None)
    for bad in ("5-1", "a", "1-", "0-3%0", "0-3%x"):
        with pytest.raises(UsageError, match="--array"):
            c.parse_array(bad)
    with pytest.raises(UsageError, match="over 100 tasks"):
        c.parse_array("0-100", top=100)
    assert c.parse_job_ref("12") == (12, None)
    assert c.parse_job_ref("12_4") == (12, [4])
    assert c.parse_job_ref("12_[3-5,9]") == (12, [3, 4, 5, 9])
    for bad in ("x", "12_", "12_[3-5%2]", "0"):
        with pytest.raises(UsageError, match="not a job id"):
            c.parse_job_ref(bad)
    assert c.fold_tasks([5, 6, 7, 9, 11, 12]) == "5-7,9,11-12"


def test_begin_and_backoff_rules() -> None:
    now = 1_000_000.0
    assert c.parse_begin("now", now) == now
    assert c.parse_begin("now+90", now) == now + 90
    assert c.parse_begin("now+1h", now) == now + 3600
    assert c.parse_begin("now+2days", now) == now + 2 * 86400
    assert c.parse_begin("2026-12-24T18:00:00+00:00", now) == datetime.fromisoformat(
        "2026-12-24T18:00:00+00:00").timestamp()
    assert c.parse_begin("2026-12-24T18:00", now, 3600) == datetime.fromisoformat(
        "2026-12-24T17:00:00+00:00").timestamp()
    for bad in ("later", "now-1h", "now+1y", "now+"):
        with pytest.raises(UsageError, match="--begin"):
            c.parse_begin(bad, now)
    assert [c.backoff(10, n, 600) for n in (1, 2, 3, 4, 7, 100)] == [
        10, 20, 40, 80, 600, 600]


# ---------------------------------------------------------------------- on a cluster


def job(cluster: Cluster, job_id: int) -> dict[str, Any]:
    return cluster.job(job_id)


def wait_reason(cluster: Cluster, job_id: int, code: str | None) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(cluster.job(job_id))
        return bool(seen["state"] == "pending" and seen["pending_reason"] == code)

    wait_until(reached, 30, message=lambda: f"job {job_id} pending with {code} ({seen})")
    return seen


@pytest.mark.cluster(nodes=1, gpus=2)
def test_hold_release_and_begin(cluster: Cluster) -> None:
    held = cluster.submit("true", "--hold")
    shown = wait_reason(cluster, held, "Held")
    assert shown["held"] is True and shown["reason"].startswith("Held: ")
    queue = cluster.mgpu("queue").stdout
    assert f"Held: `mgpu release {held}`" in queue
    assert re.search(r"^pending_reason: +Held$", cluster.mgpu("show", str(held)).stdout, re.M)
    assert cluster.mgpu("release", str(held)).stdout == f"Released job {held}\n"
    assert cluster.wait_job(held)["state"] == "completed"

    # A job already in the queue is held, stays pending when GPUs free up, then released.
    blocker = cluster.submit("sleep 60", "-G", "2")
    cluster.wait_job(blocker, ("running",))
    waiting = cluster.submit("true")
    assert job(cluster, waiting)["state"] == "pending"
    assert cluster.mgpu("hold", str(waiting)).stdout == f"Held job {waiting}\n"
    cluster.mgpu("cancel", str(blocker))
    cluster.wait_job(blocker)
    other = cluster.submit("true")  # the freed GPUs go to the next job, not the held one
    assert cluster.wait_job(other)["state"] == "completed"
    assert wait_reason(cluster, waiting, "Held")["held"] is True
    cluster.mgpu("release", str(waiting))
    assert cluster.wait_job(waiting)["state"] == "completed"

    # Only pending jobs can be held; a running one says so.
    runner = cluster.submit("sleep 60")
    cluster.wait_job(runner, ("running",))
    done = cluster.mgpu("hold", str(runner), check=1)
    assert f"job {runner} is running: only pending jobs can be held" in done.stderr
    cluster.mgpu("cancel", str(runner))

    # --begin: pending with BeginTime until then, then it runs.
    later = cluster.submit("true", "--begin", "now+2")
    shown = wait_reason(cluster, later, "BeginTime")
    begin = datetime.fromisoformat(shown["begin_at"])
    ended = cluster.wait_job(later)
    assert ended["state"] == "completed"
    assert datetime.fromisoformat(ended["started_at"]) >= begin
    bad = cluster.mgpu("submit", "--begin", "tomorrow", "true", check=2)
    assert "--begin 'tomorrow'" in bad.stderr
    # Bad input over the API: a 400 naming it, never a 500.
    for spec, words in (({"begin": 1e300}, "begin must be a POSIX time"),
                        ({"array": "1," * 6000}, "--array is longer than 10000 characters"),
                        ({"dependency": "afterok:" + "1:" * 6000}, "--dependency is longer"),
                        ({"retries": -1}, "--retries must be from 0 to 100")):
        code, reply = cluster.status_of("/api/v1/jobs", {"jobs": [{"command": "true", **spec}]},
                                        cluster.token)
        assert code == 400 and words in reply["error"], (spec.keys(), reply)


@pytest.mark.cluster(nodes=1, gpus=2)
def test_dependencies(cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    first = cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.05; done")
    after_ok = cluster.submit("true", f"--dependency=afterok:{first}")
    shown = wait_reason(cluster, after_ok, "Dependency")
    assert shown["reason"] == f"Dependency: waits for afterok:{first}"
    after_start = cluster.submit("true", f"--dependency=after:{first}")
    assert cluster.wait_job(after_start)["state"] == "completed"  # it began: enough
    assert job(cluster, after_ok)["state"] == "pending"
    gate.touch()
    a = cluster.wait_job(first)
    b = cluster.wait_job(after_ok)
    assert b["state"] == "completed" and b["started_at"] >= a["ended_at"]

    failing = cluster.submit("exit 3")
    never = cluster.submit("true", f"--dependency=afterok:{failing}")
    on_fail = cluster.submit("true", f"--dependency=afternotok:{failing}")
    kept = cluster.submit("true", f"--dependency=afterok:{failing}", "--kill-on-invalid-dep=no")
    either = cluster.submit("true", f"--dependency=afterok:{failing}?afterany:{first}")
    chain = [cluster.submit("true", f"--dependency=afterok:{on_fail},afterany:{failing}")]
    chain.append(cluster.submit("true", f"--dependency=afterok:{chain[0]}"))
    ended = cluster.wait_job(never)
    assert ended["state"] == "cancelled" and ended["pending_reason"] == "DependencyNeverSatisfied"
    assert ended["reason"].startswith("DependencyNeverSatisfied: ")
    assert cluster.wait_job(on_fail)["state"] == "completed"
    assert cluster.wait_job(either)["state"] == "completed"
    assert [cluster.wait_job(j)["state"] for j in chain] == ["completed", "completed"]
    assert wait_reason(cluster, kept, "DependencyNeverSatisfied")["state"] == "pending"
    assert "DependencyNeverSatisfied" in cluster.mgpu("queue").stdout
    said = cluster.mgpu("explain", str(kept)).stdout
    assert "is pending: DependencyNeverSatisfied, its dependency can no longer be met" in said

    refused = cluster.mgpu("submit", "--dependency=afterok:99999", "true", check=4)
    assert "--dependency names job 99999, which does not exist" in refused.stderr
    bad = cluster.mgpu("submit", "--dependency=before:1", "true", check=2)
    assert "'before:1' is not a term" in bad.stderr


@pytest.mark.cluster(nodes=1, gpus=1)
def test_retries_with_backoff(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=1, gpus=1, env={"MGPU_RETRY_BACKOFF": "0.5"})
    runs = tmp_path / "runs"
    # Fails on its first run, succeeds on its second.
    flaky = cluster.submit(f"echo run >> {runs}; [ $(wc -l < {runs}) -ge 2 ]", "--retries", "3")
    done = cluster.wait_job(flaky)
    assert (done["state"], done["retries"], done["max_retries"], done["requeues"]) == (
        "completed", 1, 3, 0)
    assert runs.read_text() == "run\nrun\n"
    show = cluster.mgpu("show", str(flaky)).stdout
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in show.splitlines())}
    assert (fields["retries"], fields["max_retries"], fields["requeues"]) == ("1", "3", "0")

    # Always fails: runs 1 + 2 times, then ends failed with its exit code; each retry waits
    # its back-off (0.5 s, then 1 s) pending with BeginTime.
    count = tmp_path / "count"
    hopeless = cluster.submit(f"echo x >> {count}; exit 5", "--retries", "2")
    wait_reason(cluster, hopeless, "BeginTime")
    done = cluster.wait_job(hopeless)
    assert (done["state"], done["exit_code"], done["retries"]) == ("failed", 5, 2)
    assert count.read_text() == "x\nx\nx\n"
    logs = cluster.mgpu("logs", str(flaky))
    assert logs.returncode == 0
    # A cancelled run is not retried.
    stopped = cluster.submit("sleep 60", "--retries", "2")
    cluster.wait_job(stopped, ("running",))
    cluster.mgpu("cancel", str(stopped))
    assert cluster.wait_job(stopped)["retries"] == 0
    refused = cluster.mgpu("submit", "--retries", "1000", "true", check=2)
    assert "--retries must be from 0 to 100, got '1000'" in refused.stderr


@pytest.mark.cluster(nodes=1, gpus=4)
def test_user_limits(cluster: Cluster) -> None:
    me = getpass.getuser()
    out = cluster.mgpu("limits", "set", me, "--max-gpus", "2", "--max-pending", "2",
                       "--max-time", "1:00:00").stdout
    assert out == f"{me}: max_gpus=2 max_pending=2 max_time=1:00:00\n"
    listed = cluster.mgpu("limits", "list").stdout
    assert listed.splitlines()[1].split() == [me, "2", "2", "1:00:00"]
    config = json.loads(cluster.mgpu("config", "--json").stdout)
    assert config["master"][f"limits.{me}"]["value"] == "max_gpus=2 max_pending=2 max_time=1:00:00"

    running = [cluster.submit("sleep 60") for _ in range(2)]
    for j in running:
        cluster.wait_job(j, ("running",))
    capped = cluster.submit("sleep 60")
    shown = wait_reason(cluster, capped, "QOSMaxGPUs")
    assert f"{me} may use at most 2 GPUs at once" in shown["reason"]
    assert shown["time_limit"] == 3600  # no -t: the user's cap
    cluster.submit("true")
    refused = cluster.mgpu("submit", "true", check=5)
    assert f"{me} has 2 pending jobs; 1 more would pass {me}'s limit of 2" in refused.stderr
    too_long = cluster.mgpu("submit", "-t", "2:00:00", "true", check=5)
    assert f"over {me}'s maximum of 1:00:00" in too_long.stderr
    too_big = cluster.mgpu("submit", "-G", "3", "true", check=5)
    assert f"but {me} may use at most 2 at once" in too_big.stderr

    # Kept across a restart of the master, and still in force.
    cluster.restart_master()
    assert cluster.mgpu("limits", "list").stdout == listed
    assert wait_reason(cluster, capped, "QOSMaxGPUs")
    # A running job ends: the capped one takes its place.
    cluster.mgpu("cancel", str(running[0]))
    assert cluster.wait_job(capped, ("running",))["state"] == "running"
    # Raised at run time: more may run at once.
    fourth = cluster.submit("sleep 60")
    wait_reason(cluster, fourth, "QOSMaxGPUs")
    cluster.mgpu("limits", "set", me, "--max-gpus", "none")
    assert cluster.wait_job(fourth, ("running",))["state"] == "running"

    # Only admins set limits; a user sees only their own.
    bob = cluster.user_token("bob")
    done = cluster.mgpu("limits", "set", "bob", "--max-gpus", "9",
                        env={"MGPU_TOKEN": bob}, check=False)
    assert done.returncode != 0 and "setting users' limits is for admins" in done.stderr
    assert cluster.api("/api/v1/limits", token=bob) == {"limits": {}}
    cluster.mgpu("limits", "clear", me)
    assert cluster.api("/api/v1/limits") == {"limits": {}}
