"""``SimpleClient`` and the ``mgpu`` command against a real master and node (tiers 2 and 3).

The ``cluster`` fixture (conftest.py) runs ``mgpu server`` and ``mgpu node --fake-gpus 4``
as processes; the client is used in-process, the command as a user runs it. Jobs that must
still be running when the test looks wait for a flag file the test creates.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import SRC, Cluster, wait_until
from mgpu.client.client import SimpleClient
from mgpu.core.errors import ConnectionFailed, NotFound, Rejected, UsageError
from mgpu.core.messages import PROTOCOL_VERSION, OutputEnd
from mgpu.core.models import JobSpec, JobState

JOB_KEYS = {
    "id", "name", "user", "state", "gpus", "node", "gpu_ids", "command", "cwd",
    "exit_code", "reason", "submitted_at", "started_at", "ended_at", "end_cause",
    "time_limit", "requeues", "max_requeue", "interactive", "stdin", "pty", "argv",
    "pending_reason", "expected_start", "priority", "nice",  # scheduling
    "dependency", "kill_on_invalid_dep", "array_job_id", "array_task_id",  # job controls
    "array_throttle", "held", "begin_at", "retries", "max_retries",
    "gpu_type", "gpu_mem_mib", "gpu_mem_peak_mib", "gpu_util_mean",  # GPUs
    "mail_type", "mail_user", "notify_url",  # notifications (issue 13)
    "backend_id",
    "nodes", "ntasks_per_node", "slurm_env", "parts", "rendezvous",  # multi-node jobs
    "partition",  # mixed mode (issue 14)
    "backend_nodes",  # a SLURM bridge's job: SLURM's nodes (issue 14)
}  # fmt: skip


def hold(flag: Path, before: str = "", after: str = "") -> str:
    """A shell command: ``before``, wait until ``flag`` exists, then ``after``."""
    return f"{before} while [ ! -e {flag} ]; do sleep 0.02; done; {after}".strip()


def client(cluster: Cluster) -> SimpleClient:
    return SimpleClient("127.0.0.1", cluster.port, timeout=10, token=cluster.token)


def mgpu_bytes(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``mgpu ARGS`` with its output as bytes (``cluster.mgpu`` decodes it as text)."""
    return subprocess.run(
        [sys.executable, "-m", "mgpu", "--master", cluster.master_addr, *args],
        capture_output=True,
        env=cluster.env,
        timeout=60,
        check=False,
    )


# ------------------------------------------------------------------ SimpleClient


def test_submit_wait_logs_and_listings(cluster: Cluster) -> None:
    with client(cluster) as c:
        health = c.health()
        assert (health.status, health.protocol) == ("ok", PROTOCOL_VERSION)
        job_id = c.submit_job(gpus=2, cmd="echo out; echo err >&2; exit 4", name="four")
        job = c.get_job(job_id)
        assert (job.id, job.name, job.gpus, job.user) == (job_id, "four", 2, getpass.getuser())
        assert job.cwd == os.getcwd()
        [done] = c.wait(job_id, timeout=30)
        assert (done.state, done.exit_code, done.node) == (JobState.FAILED, 4, "node1")
        assert len(done.gpu_ids) == 2

        stream = c.stream_output(job_id, follow=False)
        frames = list(stream)
        assert b"".join(d for s, d in frames if s == 1) == b"out\n"
        assert b"".join(d for s, d in frames if s == 2) == b"err\n"
        assert stream.end == OutputEnd(state="failed", exit_code=4, reason="exit code 4")
        assert sorted(c.logs(job_id).splitlines()) == ["err", "out"]
        rest = c.stream_output(job_id, offset=stream.offset, follow=False)
        assert list(rest) == [] and rest.end == stream.end

        assert job_id not in [j.id for j in c.list_jobs()]
        assert job_id in [j.id for j in c.list_jobs(all=True)]
        assert job_id in [j.id for j in c.list_jobs(states=[JobState.FAILED])]
        assert c.list_jobs(states=["completed"], all=True) == []
        assert c.list_jobs(user="somebody-else", all=True) == []

        [node] = c.nodes()
        assert (node.node_id, node.state, len(node.gpus)) == ("node1", "up", 4)
        assert node.free_gpus == [0, 1, 2, 3]


def test_errors_are_typed(cluster: Cluster) -> None:
    with client(cluster) as c:
        with pytest.raises(NotFound) as e:
            c.get_job(99999)
        assert e.value.exit_code == 4 and "99999" in e.value.message
        with pytest.raises(Rejected) as r:
            c.submit_job(gpus=99, cmd="true")
        assert r.value.exit_code == 5 and "4" in r.value.message
        with pytest.raises(UsageError):
            c.submit_job(gpus=0, cmd="true")
        with pytest.raises(UsageError):
            c.submit_job(gpus=1, cmd="  ")
        with pytest.raises(NotFound):
            c.stream_output(99999)
        assert c.health().status == "ok"  # errors leave the connection usable
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ConnectionFailed, match=f"cannot reach the master at 127.0.0.1:{port}"):
            SimpleClient("127.0.0.1", port).health()


def test_submit_jobs_cancel_with_partial_failure(cluster: Cluster, tmp_path: Path) -> None:
    with client(cluster) as c:
        specs = [
            JobSpec(command=hold(tmp_path / "never"), gpus=g, cwd=str(tmp_path), user="u")
            for g in (4, 4, 1)
        ]
        ids = c.submit_jobs(specs)
        assert ids == list(range(ids[0], ids[0] + 3))
        cluster.wait_job(ids[0], ("running",))
        results = c.cancel(*ids, 99999)
        assert [(r.job_id, r.ok) for r in results] == [*((i, True) for i in ids), (99999, False)]
        assert results[-1].error
        jobs = c.wait(*ids, timeout=30)
        assert [j.id for j in jobs] == ids
        assert {j.state for j in jobs} == {JobState.CANCELLED}


def test_follow_streams_output_as_it_is_written(cluster: Cluster, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    with client(cluster) as c:
        job_id = c.submit_job(cmd=hold(flag, "echo first;", "echo second >&2; exit 2"))
        stream = c.stream_output(job_id)
        frames = iter(stream)
        assert next(frames) == (1, b"first\n")  # arrives while the job still runs
        assert c.get_job(job_id).state is JobState.RUNNING
        flag.touch()
        assert list(frames) == [(2, b"second\n")]
        assert stream.end == OutputEnd(state="failed", exit_code=2, reason="exit code 2")


def test_wait_with_a_timeout_returns_jobs_still_running(cluster: Cluster, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    with client(cluster) as c:
        job_id = c.submit_job(cmd=hold(flag))
        cluster.wait_job(job_id, ("running",))
        [job] = c.wait(job_id, timeout=0.2)
        assert job.state is JobState.RUNNING
        flag.touch()
        [job] = c.wait(job_id, timeout=30)
        assert (job.state, job.exit_code) == (JobState.COMPLETED, 0)


def test_the_client_reconnects_after_the_master_restarts(cluster: Cluster) -> None:
    with client(cluster) as c:
        job_id = c.submit_job(cmd="echo kept")
        c.wait(job_id, timeout=30)
        cluster.restart_master()
        assert c.get_job(job_id).state is JobState.COMPLETED  # same client, new connection
        assert c.logs(job_id) == "kept\n"


# ------------------------------------------------------------------ the mgpu command


def test_cli_submit_queue_show(cluster: Cluster, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    first = cluster.mgpu("submit", "-G", "2", "-J", "train", hold(flag)).stdout
    assert first.startswith("Submitted job ") and first.endswith("\n")
    train = int(first.split()[-1])
    done = json.loads(cluster.mgpu("submit", "--json", "echo", "done").stdout)["job_id"]
    cluster.wait_job(done)
    big = int(cluster.mgpu("submit", "--parsable", "--gres=gpu:4", hold(flag)).stdout)
    assert train < done < big
    cluster.wait_job(train, ("running",))

    table = cluster.mgpu("queue").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "USER", "STATE", "GPUS", "NODE", "TIME", "REASON"]
    rows = {int(line.split()[0]): line.split() for line in table[1:]}
    assert set(rows) == {train, big}
    assert rows[train][1:6] == ["train", getpass.getuser(), "running", "2", "node1"]
    assert rows[big][3:7] == ["pending", "4", "-", "0:00"]
    assert len(rows[big]) > 7  # why it waits

    listed = json.loads(cluster.mgpu("queue", "--json").stdout)
    assert [j["id"] for j in listed] == [train, big]
    assert all(set(j) == JOB_KEYS for j in listed)
    running = json.loads(cluster.mgpu("queue", "-t", "R", "--json").stdout)
    assert [j["id"] for j in running] == [train]
    every = json.loads(cluster.mgpu("queue", "--all", "--json").stdout)
    assert [j["id"] for j in every] == [train, done, big]
    ended = json.loads(cluster.mgpu("queue", "-t", "completed,F", "--json").stdout)
    assert [j["id"] for j in ended] == [done]
    assert json.loads(cluster.mgpu("queue", "-u", "nobody", "--json").stdout) == []

    shown = json.loads(cluster.mgpu("show", str(done), "--json").stdout)
    assert set(shown) == JOB_KEYS
    assert (shown["command"], shown["state"], shown["exit_code"]) == ("echo done", "completed", 0)
    assert shown["submitted_at"].endswith("Z") and shown["ended_at"].endswith("Z")
    human = cluster.mgpu("show", str(train)).stdout
    assert re.search(r"^state: +running$", human, re.M) and "gpu_ids:" in human

    flag.touch()
    assert cluster.mgpu("wait", str(train), str(big)).stdout.splitlines() == [
        f"Job {train} completed (exit code 0)",
        f"Job {big} completed (exit code 0)",
    ]


def test_cli_logs_are_binary_safe_and_follow_exits_with_the_jobs_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 4
    (tmp_path / "payload").write_bytes(payload)
    job = cluster.submit(f"cat {tmp_path / 'payload'}; echo oops >&2; exit 3")
    follow = mgpu_bytes(cluster, "logs", "-f", str(job))
    assert (follow.returncode, follow.stdout, follow.stderr) == (3, payload, b"oops\n")
    again = mgpu_bytes(cluster, "logs", str(job))
    assert (again.returncode, again.stdout, again.stderr) == (0, payload, b"oops\n")

    ok = cluster.submit("true")
    killed = cluster.submit("kill -9 $$")
    cluster.mgpu("wait", str(ok), str(job), str(killed), check=3)
    cluster.mgpu("wait", str(ok), str(killed), check=137)
    cluster.mgpu("wait", str(ok))


def test_cli_wait_timeout_and_cancel(cluster: Cluster, tmp_path: Path) -> None:
    job = cluster.submit(hold(tmp_path / "never"))
    cluster.wait_job(job, ("running",))
    waited = cluster.mgpu("wait", str(job), "--timeout", "0.2", check=124)
    assert waited.stderr == f"error: timed out after 0.2 s; not ended yet: {job} (running)\n"
    cancelled = cluster.mgpu("cancel", str(job), "99999", check=4)  # 4: an unknown job
    assert cancelled.stdout == f"Cancelled job {job}\n"
    assert cancelled.stderr == "error: no job 99999\n"
    assert cluster.wait_job(job)["state"] == "cancelled"
    cluster.mgpu("wait", str(job), check=143)  # SIGTERM
    again = cluster.mgpu("cancel", str(job), "--json", check=1)
    [result] = json.loads(again.stdout)
    assert (result["job_id"], result["ok"], result["code"]) == (job, False, "ended")
    both = cluster.mgpu("cancel", str(job), "99999", check=1)  # two kinds of failure: 1
    assert both.stderr == (f"error: job {job} has already ended (cancelled)\n"
                           "error: no job 99999\n")


def test_cli_reports_the_masters_refusals(cluster: Cluster) -> None:
    unknown = cluster.mgpu("show", "99999", check=4)
    assert unknown.stdout == "" and unknown.stderr.startswith("error: ")
    assert len(unknown.stderr.splitlines()) == 1
    cluster.mgpu("logs", "99999", check=4)
    cluster.mgpu("wait", "99999", check=4)
    refused = cluster.mgpu("submit", "-G", "99", "true", check=5)
    assert refused.stderr.startswith("error: ") and "4" in refused.stderr
    assert "Traceback" not in unknown.stderr + refused.stderr


def test_cli_nodes(cluster: Cluster, tmp_path: Path) -> None:
    job = cluster.submit(hold(tmp_path / "never"), "-G", "3")
    cluster.wait_job(job, ("running",))
    lines = cluster.mgpu("nodes").stdout.splitlines()
    assert lines[0].split() == ["NODE", "STATE", "GPUS", "USED", "FREE", "TYPE", "USERS",
                                "JOBS", "OUTSIDE", "REASON"]
    gpu_ids = cluster.job(job)["gpu_ids"]
    holds = f"{job}:{','.join(map(str, gpu_ids))}"
    assert lines[1].split() == ["node1", "up", "4", "3", "1", "4xfake", "all", holds, "-"]
    [node] = json.loads(cluster.mgpu("nodes", "--json").stdout)
    assert (node["node_id"], node["state"]) == ("node1", "up")
    assert node["last_seen"].endswith("Z")
    assert sorted(g["index"] for g in node["gpus"] if g["job_id"] == job) == gpu_ids
    assert {"index", "name", "memory_total_mib", "job_id"} <= set(node["gpus"][0])
    cluster.mgpu("cancel", str(job))


def test_cli_submit_environment_directory_and_words(cluster: Cluster, tmp_path: Path) -> None:
    env = {"MGPU_TEST_FROM_SUBMITTER": "yes"}
    everything = cluster.submit("/usr/bin/env", "--env", "EXTRA=a,b")
    only = cluster.submit("/usr/bin/env", "--export=NONE,ONLY=1", "--env", "MGPU_TEST_X=2")
    cluster.mgpu("wait", str(everything), str(only), env=env)
    full = cluster.mgpu("logs", str(everything)).stdout.splitlines()
    assert "EXTRA=a,b" in full and f"PATH={os.environ['PATH']}" in full
    bare = cluster.mgpu("logs", str(only)).stdout.splitlines()
    assert "ONLY=1" in bare and "MGPU_TEST_X=2" in bare
    assert not [line for line in bare if line.startswith(("PATH=", "HOME="))]
    # Nothing at all from the submitter: still nothing of the agent's (its join secret).
    none = cluster.submit("/usr/bin/env", "--export=NONE")
    cluster.mgpu("wait", str(none))
    shown = cluster.mgpu("logs", str(none)).stdout.splitlines()
    assert shown and all(line.startswith(("MGPU_", "CUDA_")) for line in shown), shown

    inherited = int(cluster.mgpu("submit", "--parsable", "/usr/bin/env", env=env).stdout.strip())
    cluster.mgpu("wait", str(inherited))
    assert "MGPU_TEST_FROM_SUBMITTER=yes" in cluster.mgpu("logs", str(inherited)).stdout

    work = tmp_path / "work dir"
    work.mkdir()
    here = cluster.submit("pwd", "-D", str(work))
    relative = int(cluster.mgpu("submit", "--parsable", "-D", ".", "pwd", cwd=work).stdout)
    words = int(cluster.mgpu("submit", "--parsable", "--", "printf", "%s|", "a b", "c'd").stdout)
    cluster.mgpu("wait", str(here), str(relative), str(words))
    assert cluster.mgpu("logs", str(here)).stdout == f"{work}\n"
    assert cluster.mgpu("logs", str(relative)).stdout == f"{work}\n"
    assert cluster.mgpu("logs", str(words)).stdout == "a b|c'd|"
    assert cluster.job(words)["command"] == "printf '%s|' 'a b' 'c'\"'\"'d'"


def test_programs_are_found_on_the_jobs_path_and_failures_say_what_a_shell_would(
    cluster: Cluster, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin dir"
    bin_dir.mkdir()
    tool = bin_dir / "mgpu-test-tool"
    tool.write_text("#!/bin/sh\necho tool in \"$PWD\" with \"$1\"\n")
    tool.chmod(0o755)
    (bin_dir / "mgpu-test-noexec").write_text("echo never\n")
    (bin_dir / "mgpu-test-noexec").chmod(0o644)
    work = tmp_path / "work"
    work.mkdir()
    path = {"PATH": f"{tmp_path / 'missing'}::{bin_dir}:{os.environ['PATH']}"}

    def run(*argv: str, cwd: Path = work) -> dict[str, Any]:
        job_id = int(cluster.mgpu("submit", "--parsable", "--", *argv, env=path,
                                  cwd=cwd).stdout)
        return cast(dict[str, Any], cluster.wait_job(job_id))

    found = run("mgpu-test-tool", "x")  # on the submitter's PATH only, not the node's
    assert (found["state"], found["exit_code"]) == ("completed", 0)
    assert cluster.mgpu("logs", str(found["id"])).stdout == f"tool in {work} with x\n"
    local = run("./mgpu-test-tool", "y", cwd=bin_dir)  # relative to the job's directory
    assert cluster.mgpu("logs", str(local["id"])).stdout == f"tool in {bin_dir} with y\n"
    empty_entry = run("mgpu-test-tool", cwd=bin_dir)  # an empty PATH entry is the cwd
    assert empty_entry["state"] == "completed"

    missing = run("mgpu-test-nosuch")
    assert (missing["state"], missing["exit_code"]) == ("failed", 127)
    assert missing["reason"] == "mgpu-test-nosuch: command not found"
    assert "mgpu-test-nosuch: command not found" in cluster.mgpu(
        "logs", str(missing["id"])).stderr
    denied = run("mgpu-test-noexec")
    assert (denied["state"], denied["exit_code"]) == ("failed", 126)
    assert denied["reason"] == "mgpu-test-noexec: Permission denied"
    (bin_dir / "mgpu-test-dir").mkdir()  # a directory of the name: as execvp, 126
    assert run("mgpu-test-dir")["exit_code"] == 126
    gone = run("./nothing-here")
    assert (gone["state"], gone["exit_code"]) == ("failed", 127)

    nowhere = tmp_path / "nowhere"  # a directory the node does not have
    job_id = int(cluster.mgpu("submit", "--parsable", "-D", str(nowhere), "pwd").stdout)
    ended = cluster.wait_job(job_id)
    assert (ended["state"], ended["exit_code"]) == ("failed", None)
    assert ended["reason"] == f"could not start in {nowhere}: No such file or directory"
    # The keeper stepped back out of each job's directory: a new job still runs.
    assert run("true")["state"] == "completed"


@given(st.text(st.characters(blacklist_categories=("Cs",))))  # (no lone surrogates)
def test_query_values_are_quoted_as_urllib_quotes_them(text: str) -> None:
    from urllib.parse import quote

    from mgpu.client.paths import quote as our_quote

    assert our_quote(text) == quote(text, safe="")


def test_output_stream_is_published_by_the_client_module_and_loaded_on_first_use() -> None:
    code = (
        "import sys\n"
        "import mgpu.client.client as c\n"
        "loaded = 'mgpu.client.output_stream' in sys.modules\n"
        "from mgpu.client.client import OutputStream, SimpleClient\n"
        "print(loaded, OutputStream.__module__, SimpleClient.__module__, sorted(c.__all__))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout.strip().split(maxsplit=3)
    assert out == ["False", "mgpu.client.output_stream", "mgpu.client.client",
                   "['OutputStream', 'SimpleClient']"]


def test_the_queue_table_is_read_without_msgspec_and_shows_what_the_models_show(
    cluster: Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    ended = cluster.submit("echo done; exit 3", "-J", "with\tcontrol")
    cluster.wait_job(ended)
    running = cluster.submit(hold(gate), "-G", "4")
    cluster.wait_job(running, ("running",))
    cluster.submit("true", "-J", "waits")
    code = (
        "import sys, time\n"
        "from mgpu.cli import main\n"
        f"status = main(['--master', {cluster.master_addr!r}, 'queue', '--all'])\n"
        "sys.stderr.write(' '.join([str(status), *sorted(sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cluster.env, timeout=60)
    status, *loaded = done.stderr.split()
    assert status == "0", done.stderr
    for name in ("msgspec", "mgpu.core.models", "enum", "json", "re"):
        assert name not in loaded, f"`mgpu queue` imported {name}"
    from datetime import UTC, datetime

    from mgpu.client import output

    with client(cluster) as c:
        models = output.queue_table(c.list_jobs(all=True), datetime.now(UTC))
    strip = [line.rsplit(None, 0)[0] for line in done.stdout.splitlines()]
    lines = models.splitlines()
    assert len(strip) == len(lines) == 4
    for mine, theirs in zip(strip, lines, strict=True):  # TIME of the running job may tick
        assert mine.split()[:5] == theirs.split()[:5]
    assert "with\\tcontrol" in done.stdout and "exit code 3" in done.stdout
    gate.touch()


def test_founding_scripts(cluster: Cluster) -> None:
    def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SRC / name), *args],
            capture_output=True,
            text=True,
            env=cluster.env,
            timeout=60,
            check=False,
        )

    submitted = script("mgpu_client.py", "--gpus", "2", "echo founding")
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout.split()[-1])
    assert cluster.wait_job(job)["state"] == "completed"
    listed = script("mgpu_queue.py", "--all")
    assert listed.returncode == 0 and str(job) in listed.stdout
    cancel = script("mgpu_cancel.py", str(job))
    assert cancel.returncode == 1
    assert cancel.stderr == f"error: job {job} has already ended (completed)\n"
    usage = script("mgpu_server.py", "--port", "x")
    assert usage.returncode == 2 and "mgpu server" in usage.stderr


def test_ctrl_c_stops_a_follow_quietly_with_130(cluster: Cluster, tmp_path: Path) -> None:
    job = cluster.submit(hold(tmp_path / "never", "echo started;"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgpu", "--master", cluster.master_addr, "logs", "-f", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cluster.env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out, err) == (130, "", "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert cluster.job(job)["state"] == "running"  # stopping the reader leaves the job be


def test_master_restart_mid_follow_is_reported_not_hung(cluster: Cluster, tmp_path: Path) -> None:
    job = cluster.submit(hold(tmp_path / "never", "echo started;"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgpu", "--master", cluster.master_addr, "logs", "-f", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cluster.env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        cluster.kill_master()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 3
        assert err.startswith("error: ") and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cluster.start_master()
    wait_until(lambda: cluster.api("/api/v1/health"), ignore=(OSError,))
