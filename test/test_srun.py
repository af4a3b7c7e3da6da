"""Interactive runs end to end: `mgpu srun` and `mgpu attach` as a user runs them."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest

from conftest import Cluster, wait_until

PY = sys.executable


def srun(cluster: Cluster, *args: str, input: bytes | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [PY, "-m", "mgpu", "srun", *args], input=input, capture_output=True,
        env=cluster.env, timeout=timeout, cwd=cluster.tmp,
    )


def start_srun(cluster: Cluster, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY, "-m", "mgpu", "srun", *args], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env, cwd=cluster.tmp,
        start_new_session=True,
    )


def test_stdout_and_stderr_stay_apart_and_exit_codes_pass_through(cluster: Cluster) -> None:
    done = srun(cluster, "-q", "-G", "1", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.stdout, done.stderr, done.returncode) == (b"out\n", b"err\n", 3)
    assert srun(cluster, "-q", "sh", "-c", "kill -9 $$").returncode == 128 + 9
    assert srun(cluster, "-q", "sh", "-c", "kill -15 $$").returncode == 128 + 15
    assert srun(cluster, "-q", "true").returncode == 0


def test_status_lines_say_where_it_runs(cluster: Cluster) -> None:
    done = srun(cluster, "-G", "2", "true")
    assert done.returncode == 0
    lines = done.stderr.decode().splitlines()
    # "running on", or "ran on ...: completed" when it was over by the time srun looked
    assert any(line.startswith("mgpu: job ") and " on node1 (GPUs " in line
               for line in lines), lines
    job_id = cluster.submit("echo hi")
    cluster.wait_job(job_id)
    attached = subprocess.run([PY, "-m", "mgpu", "attach", str(job_id)], capture_output=True,
                              env=cluster.env, timeout=60)
    assert attached.returncode == 0 and attached.stdout == b"hi\n"
    assert attached.stderr.decode().startswith(f"mgpu: job {job_id} ran on node1 (GPUs 0): "
                                               "completed"), attached.stderr


def test_waiting_job_says_it_is_queued(cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    blocker = cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.02; done", "-G", "4")
    cluster.wait_job(blocker, ("running",))
    proc = start_srun(cluster, "-G", "2", "echo", "ran")
    assert proc.stderr is not None
    first = proc.stderr.readline().decode()
    assert "queued, waiting for 2 GPUs (0 jobs ahead)" in first
    gate.touch()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == b"ran\n"


def test_stdin_is_forwarded_and_eof_reaches_the_job(cluster: Cluster) -> None:
    done = srun(cluster, "-q", "cat", input=b"hello\n")
    assert (done.stdout, done.returncode) == (b"hello\n", 0)
    counted = srun(cluster, "-q", "wc", "-l", input=b"a\nb\nc\n")
    assert counted.stdout.strip() == b"3"


def test_binary_output_of_100_mb_arrives_byte_for_byte(cluster: Cluster) -> None:
    size = 100 * 1024 * 1024
    gen = (
        "import random, sys; r = random.Random(7); w = sys.stdout.buffer.write\n"
        f"for _ in range({size // (1 << 20)}): w(r.randbytes(1 << 20))"
    )
    done = srun(cluster, "-q", PY, "-c", gen, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    r = random.Random(7)
    expected = hashlib.sha256()
    for _ in range(size // (1 << 20)):
        expected.update(r.randbytes(1 << 20))
    assert len(done.stdout) == size
    assert hashlib.sha256(done.stdout).hexdigest() == expected.hexdigest()


def test_ctrl_c_is_forwarded_and_twice_cancels(cluster: Cluster) -> None:
    proc = start_srun(cluster, "-q", "sh", "-c",
                      "trap 'echo got INT; exit 7' INT; echo ready; "
                      "while true; do sleep 0.02; done")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out == b"got INT\n" and proc.returncode == 7

    proc = start_srun(cluster, "sh", "-c",
                      "trap '' INT; echo ready; while true; do sleep 0.02; done")
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"ready\n"
    assert b"running on node1" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    assert b"once more within 1 s to cancel" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + 15, err
    assert b"cancelled" in err


def test_a_ctrl_c_inside_the_handling_of_another_is_done_after_it() -> None:
    """The second Ctrl-C of a double one can land while the first one's handler is still
    importing ``threading`` (its first use): it must not run then, half-way through, but
    once the first is done (this once failed the test above with a circular import)."""
    from mgpu.client.srun import Interactive

    session = Interactive(Any, 1, quiet=True)  # type: ignore[arg-type]  # no call is made
    done: list[str] = []

    def first() -> None:
        session._want(lambda: done.append("second"))  # a handler that interrupts this one
        done.append("first")

    session._want(first)
    session._want(lambda: done.append("third"))
    assert done == ["first", "second", "third"]


def test_killed_client_cancels_its_job_and_frees_the_gpus(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=1, env={"MGPU_SRUN_GRACE": "0.5"})
    proc = start_srun(cluster, "-q", "-G", "4", "sh", "-c", "echo ready; sleep 300")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    [job] = cluster.api("/api/v1/jobs")["jobs"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    ended = cluster.wait_job(job["id"], ("cancelled",), timeout=30)
    assert "srun client went away" in ended["reason"]
    wait_until(lambda: all(g["job_id"] is None
                           for g in cluster.api("/api/v1/nodes")["nodes"][0]["gpus"]), 10)


def test_a_master_restart_shorter_than_the_grace_loses_nothing(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=1, env={"MGPU_SRUN_GRACE": "30"})
    gate = tmp_path / "gate"
    proc = start_srun(cluster, "-q", "sh", "-c",
                      f"echo before; while [ ! -e {gate} ]; do sleep 0.02; done; "
                      "seq 1 1000; exit 4")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"before\n"
    cluster.kill_master(signal.SIGKILL)
    cluster.start_master()
    gate.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err
    assert out.decode().split() == [str(i) for i in range(1, 1001)]


def test_job_cancelled_while_pending_exits_with_the_not_run_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    blocker = cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.02; done", "-G", "4")
    cluster.wait_job(blocker, ("running",))
    proc = start_srun(cluster, "-G", "1", "true")
    wait_until(lambda: len(cluster.api("/api/v1/jobs?state=pending")["jobs"]) == 1, 20)
    [job] = cluster.api("/api/v1/jobs?state=pending")["jobs"]
    cluster.mgpu("cancel", str(job["id"]))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 125
    assert b"never started" in err
    gate.touch()


def test_srun_that_cannot_start_its_job_exits_with_the_not_run_code(cluster: Cluster) -> None:
    done = srun(cluster, "-G", "64", "true")  # refused: more GPUs than any node has
    assert done.returncode == 125
    assert b"largest node" in done.stderr and b"Traceback" not in done.stderr
    with socket.socket() as s:  # a port where no master listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = srun(cluster, "--master", f"127.0.0.1:{port}", "true")
    assert done.returncode == 125
    assert b"cannot reach the master" in done.stderr
    done = srun(cluster, "-G", "0", "true")  # a mistake on the command line stays 2
    assert done.returncode == 2
    done = subprocess.run([PY, "-m", "mgpu", "attach", "999"], capture_output=True,
                          env=cluster.env, timeout=60)
    assert done.returncode == 125 and b"999" in done.stderr


def test_pty_gives_a_real_terminal(cluster: Cluster) -> None:
    child = pexpect.spawn(PY, ["-m", "mgpu", "srun", "-q", "--pty", "bash", "--norc",
                               "--noprofile"], env={**cluster.env, "PS1": "prompt$ "},
                          cwd=str(cluster.tmp), timeout=30, dimensions=(30, 100))
    try:
        child.expect_exact("prompt$ ")
        child.sendline("test -t 0 && echo is-a-tty; echo $((6*7))")
        child.expect_exact("is-a-tty")
        child.expect_exact("42")
        child.expect_exact("prompt$ ")
        child.setwinsize(40, 120)
        wait_until(lambda: _stty_size(child) == "40 120", 10)
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 7


def _stty_size(child: pexpect.spawn) -> str:  # type: ignore[type-arg]
    child.sendline("stty size")
    child.expect(r"(\d+ \d+)\r\n")
    size: bytes = child.match.group(1)
    child.expect_exact("prompt$ ")
    return size.decode()


def test_attach_follows_a_batch_job_and_feeds_its_stdin(cluster: Cluster) -> None:
    job_id = cluster.submit("read line; echo got $line; exit 9", "--stdin")
    cluster.wait_job(job_id, ("running",))
    done = subprocess.run([PY, "-m", "mgpu", "attach", str(job_id)], input=b"hi\n",
                          capture_output=True, env=cluster.env, timeout=30)
    assert done.stdout == b"got hi\n" and done.returncode == 9


@pytest.mark.parametrize("script", ["src/mgpu_srun.py"])
def test_founding_srun_script(cluster: Cluster, script: str) -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([PY, str(root / script), "--gpus", "2", "echo $CUDA_VISIBLE_DEVICES"],
                          capture_output=True, env=cluster.env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.decode().strip().split(",")) == 2
