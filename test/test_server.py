"""Integration tests: a real master and real agents on loopback, real SQLite, real jobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inproc import cluster, run, until
from mgpu.core.errors import NotFound, Rejected
from mgpu.core.models import JobState


def test_job_sees_exactly_its_gpus_and_ids(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"n1": 4}) as c:
            client = c.client()
            cmd = ('echo "$CUDA_VISIBLE_DEVICES|$CUDA_DEVICE_ORDER|$MGPU_JOB_ID|$MGPU_NODE_ID"'
                   '; echo to-stderr >&2; pwd')
            job_id = await c.call(client.submit_job, gpus=2, cmd=cmd, cwd=str(tmp_path))
            [job] = await c.call(client.wait, job_id, timeout=10)
            assert job.state is JobState.COMPLETED and job.exit_code == 0
            assert job.node == "n1" and len(job.gpu_ids) == 2
            out = await c.call(client.logs, job_id)
            gpus = ",".join(map(str, job.gpu_ids))
            assert f"{gpus}|PCI_BUS_ID|{job_id}|n1" in out
            assert "to-stderr" in out and str(tmp_path) in out

    run(main())


def test_no_gpu_is_ever_held_by_two_running_jobs(tmp_path: Path) -> None:
    """Each job claims its GPUs with mkdir (atomic): a second holder would fail to claim."""
    locks = tmp_path / "locks"
    locks.mkdir()
    claim = (
        'for g in $(echo "$CUDA_VISIBLE_DEVICES" | tr , " "); do '
        f'mkdir "{locks}/$MGPU_NODE_ID-$g" || exit 99; done; '
        "sleep 0.02; "
        'for g in $(echo "$CUDA_VISIBLE_DEVICES" | tr , " "); do '
        f'rmdir "{locks}/$MGPU_NODE_ID-$g"; done'
    )

    async def main() -> None:
        async with cluster(tmp_path, {"a": 2, "b": 4, "c": 3}) as c:
            client = c.client()
            sizes = [1, 2, 3, 4, 1, 1, 2, 3, 1, 4, 2, 1] * 4
            ids = [await c.call(client.submit_job, gpus=g, cmd=claim) for g in sizes]
            jobs = await c.call(client.wait, *ids, timeout=60)
            bad = [(j.id, j.state, j.exit_code) for j in jobs if j.state is not JobState.COMPLETED]
            assert not bad, f"jobs that found a GPU already held: {bad}"
            for j, g in zip(jobs, sizes, strict=True):
                assert len(j.gpu_ids) == g

    run(main())


def test_scheduling_is_event_driven_large_job_not_starved(tmp_path: Path) -> None:
    """A 4-GPU job queued behind 1-GPU jobs runs before the 1-GPU jobs queued after it."""

    async def main() -> None:
        async with cluster(tmp_path, {"n1": 4}) as c:
            client = c.client()
            gate = tmp_path / "gate"
            first = [await c.call(client.submit_job, gpus=1, cmd=f"while [ ! -e {gate} ]; do "
                                  "sleep 0.01; done") for _ in range(4)]
            big = await c.call(client.submit_job, gpus=4, cmd="true")
            small = await c.call(client.submit_job, gpus=1, cmd="true")
            await until(lambda: c.master is not None
                        and c.master.state.jobs[first[-1]].state is JobState.RUNNING)
            assert c.master is not None
            assert c.master.state.jobs[small].state is JobState.PENDING
            gate.touch()
            jobs = await c.call(client.wait, big, small, timeout=20)
            assert all(j.state is JobState.COMPLETED for j in jobs)
            big_job, small_job = jobs
            assert big_job.started_at is not None and small_job.started_at is not None
            assert big_job.started_at <= small_job.started_at

    run(main())


def test_cancel_pending_and_running_and_unknown(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"n1": 1}) as c:
            client = c.client()
            running = await c.call(client.submit_job, gpus=1, cmd="echo started; sleep 60")
            pending = await c.call(client.submit_job, gpus=1, cmd="true")
            await until(lambda: "started" in client.logs(running), what="job to start",
                        blocking=True)
            results = await c.call(client.cancel, running, pending, 999)
            by_id = {r.job_id: r for r in results}
            assert by_id[running].ok and by_id[pending].ok and not by_id[999].ok
            assert "no job 999" in (by_id[999].error or "")
            jobs = await c.call(client.wait, running, pending, timeout=20)
            assert [j.state for j in jobs] == [JobState.CANCELLED, JobState.CANCELLED]
            assert jobs[0].exit_code == 128 + 15
            again = await c.call(client.cancel, running)
            assert not again[0].ok and "already ended" in (again[0].error or "")

    run(main())


def test_exit_codes_and_signals(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"n1": 4}) as c:
            client = c.client()
            ids = [
                await c.call(client.submit_job, gpus=1, cmd=cmd)
                for cmd in ("exit 3", "kill -9 $$", "true", "cd /nonexistent-dir-xyz")
            ]
            jobs = await c.call(client.wait, *ids, timeout=20)
            assert [(j.state, j.exit_code) for j in jobs] == [
                (JobState.FAILED, 3),
                (JobState.FAILED, 128 + 9),
                (JobState.COMPLETED, 0),
                (JobState.FAILED, 2),
            ]
            assert jobs[1].reason == "killed by SIGKILL"
            bad_cwd = await c.call(client.submit_job, gpus=1, cmd="true", cwd="/nonexistent-xyz")
            [job] = await c.call(client.wait, bad_cwd, timeout=20)
            assert job.state is JobState.FAILED and "could not start" in (job.reason or "")
            assert "/nonexistent-xyz" in (job.reason or "")

    run(main())


def test_too_many_gpus_rejected_or_pending_before_nodes(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as c:
            client = c.client()
            job_id = await c.call(client.submit_job, gpus=8, cmd="true")
            job = await c.call(client.get_job, job_id)
            assert job.state is JobState.PENDING
            assert job.reason == "waiting for a node to register"
            await c.add_node("small", 2)
            job = await c.call(client.get_job, job_id)
            assert job.reason == "no node has 8 GPUs (largest has 2)"
            with pytest.raises(Rejected, match=r"largest node \(small\) has 2"):
                await c.call(client.submit_job, gpus=3, cmd="true")
            with pytest.raises(NotFound):
                await c.call(client.get_job, 12345)

    run(main())


def test_master_restart_keeps_jobs_ids_and_output(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"n1": 1}) as c:
            client = c.client()
            done = await c.call(client.submit_job, gpus=1, cmd="echo kept-output")
            await c.call(client.wait, done, timeout=10)
            gate = tmp_path / "gate"
            running = await c.call(client.submit_job, gpus=1,
                                   cmd=f"echo before; while [ ! -e {gate} ]; do sleep 0.01; done;"
                                       " echo after; exit 4")
            pending = await c.call(client.submit_job, gpus=1, cmd="echo third")
            await until(lambda: "before" in client.logs(running), blocking=True)
            port = c.port
            await c.stop_master()
            await c.start_master(port)
            assert c.master is not None
            states = {i: c.master.state.jobs[i].state for i in (done, running, pending)}
            assert states == {done: JobState.COMPLETED, running: JobState.RUNNING,
                              pending: JobState.PENDING}
            agent = c.agents["n1"]
            await until(lambda: agent.connected, what="agent to reconnect")
            gate.touch()
            jobs = await c.call(client.wait, running, pending, timeout=20)
            assert [(j.state, j.exit_code) for j in jobs] == [
                (JobState.FAILED, 4), (JobState.COMPLETED, 0)]
            assert (await c.call(client.logs, running)).split() == ["before", "after"]
            assert "kept-output" in await c.call(client.logs, done)
            new = await c.call(client.submit_job, gpus=1, cmd="true")
            assert new == pending + 1

    run(main())


def test_output_written_while_master_down_is_not_lost(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"n1": 1}) as c:
            client = c.client()
            gate = tmp_path / "gate"
            gate2 = tmp_path / "gate2"
            job_id = await c.call(
                client.submit_job, gpus=1,
                cmd=f"echo one; while [ ! -e {gate} ]; do sleep 0.01; done; seq 1 2000; "
                    f"while [ ! -e {gate2} ]; do sleep 0.01; done; echo last",
            )
            await until(lambda: "one" in client.logs(job_id), blocking=True)
            port = c.port
            await c.stop_master()
            gate.touch()
            spool = tmp_path / "n1" / "spool" / f"{job_id}.0.out"
            await until(lambda: spool.stat().st_size > 8000, what="output while master down")
            await c.start_master(port)
            gate2.touch()
            [job] = await c.call(client.wait, job_id, timeout=20)
            assert job.state is JobState.COMPLETED
            expected = ["one", *map(str, range(1, 2001)), "last"]
            assert (await c.call(client.logs, job_id)).split() == expected

    run(main())


def test_lost_node_requeues_batch_jobs_and_fails_the_others(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"n1": 2}, node_timeout=0.5) as c:
            client = c.client()
            again = await c.call(client.submit_job, gpus=1, cmd="sleep 60")
            once = await c.call(client.submit_job, gpus=1, cmd="sleep 60", requeue=False)
            master = c.master
            assert master is not None
            await until(lambda: all(master.state.jobs[i].state is JobState.RUNNING
                                    for i in (again, once)))
            agent = c.agents.pop("n1")
            await agent.stop()
            [job] = await c.call(client.wait, once, timeout=10)
            assert job.state is JobState.NODE_FAIL
            assert job.reason == "node n1 stopped answering for over 0.5s"
            requeued = await c.call(client.get_job, again)
            assert requeued.state is JobState.PENDING and requeued.requeues == 1
            assert requeued.node is None and requeued.gpu_ids == []
            nodes = await c.call(client.nodes)
            assert nodes[0].state == "down" and nodes[0].down_since is not None
            await c.add_node("n2", 1)
            await until(lambda: master.state.jobs[again].state is JobState.RUNNING,
                        what="the requeued job to run on n2")
            assert master.state.jobs[again].node == "n2"

    run(main())


def test_many_clients_submit_concurrently(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"n1": 8}) as c:
            client_ids: list[list[int]] = []

            def burst() -> list[int]:
                cl = c.client()
                return [cl.submit_job(gpus=1, cmd="true") for _ in range(50)]

            client_ids = await asyncio.gather(*(asyncio.to_thread(burst) for _ in range(4)))
            flat = [i for ids in client_ids for i in ids]
            assert len(set(flat)) == 200 and sorted(flat) == list(range(1, 201))
            jobs = await c.call(c.client().wait, *flat, timeout=60)
            bad = [(j.id, j.state, j.reason) for j in jobs if j.state is not JobState.COMPLETED]
            assert not bad

    run(main())
