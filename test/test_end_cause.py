"""Why a job ended, as a field of its own (``end_cause``) beside its state and the words of
its ``reason``: seen by the keeper that ran it, kept by the master, shown by ``mgpu show``
and in ``--json``."""

from __future__ import annotations

from conftest import Cluster


def test_each_way_a_job_ends_has_its_cause(cluster: Cluster) -> None:
    cases = {
        "exited": cluster.submit("exit 3"),
        "signaled": cluster.submit("kill -9 $$"),
        "time_limit": cluster.submit("sleep 600", "-t", "0:01"),
        "failed_to_start": cluster.submit("true", "-D", str(cluster.tmp / "no-such-dir")),
    }
    cancelled = cluster.submit("sleep 600")
    cluster.wait_job(cancelled, ("running",))
    cluster.mgpu("cancel", str(cancelled))
    cases["cancelled"] = cancelled
    for cause, job_id in cases.items():
        job = cluster.wait_job(job_id, timeout=60)
        assert job["end_cause"] == cause, job
    shown = cluster.mgpu("show", str(cases["time_limit"])).stdout
    assert "time_limit" in shown
