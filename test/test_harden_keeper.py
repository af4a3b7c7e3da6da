"""Hardening of the node keeper and of what the master lets reach it (issue 9).

Two kinds of test: on a real cluster (master, agent, keeper), and against a real keeper
process alone, started as the agent starts it (``python -m mgpu.node.keeper DATA_DIR``) and
spoken to over its socket (:class:`KeeperLink`), for what an agent would never send.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import SRC, Cluster, wait_until
from mgpu.core import frames
from mgpu.node import keeper as kp

ROOT = os.geteuid() == 0


# ---------------------------------------------------------------- a keeper, alone


class KeeperLink:
    """A connection to a keeper, as its agent would hold it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        with kp.socket_address(str(data_dir)) as address:
            self.sock.connect(address)
        self.buf = bytearray()
        self.seen: list[tuple[bytes, Any]] = []

    def send(self, kind: bytes, body: dict[str, Any] | bytes) -> None:
        self.sock.sendall(kp.pack(kind, body))

    def receive(self) -> tuple[bytes, Any]:
        """The next message (kind, decoded body); OSError at EOF or after 10 s."""
        while not self.seen:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the keeper closed the connection")
            self.buf += data
            for kind, payload in kp.unpack_all(self.buf):
                self.seen.append((kind, json.loads(payload) if payload else None))
        return self.seen.pop(0)

    def wait_for(self, kind: bytes, key: str | None = None) -> Any:
        """Skip messages until one of ``kind`` (about ``key``); its body."""
        while True:
            got, body = self.receive()
            if got == kind and (key is None or body.get("key") == key):
                return body

    def spawn(self, key: str, command: str, **extra: Any) -> None:
        job_id = int(key.partition(".")[0])
        body = {
            "key": key, "job_id": job_id, "command": command, "cwd": "/",
            "env": {"PATH": os.environ["PATH"]},
            "spool": str(self.data_dir / f"{key}.out"),
            "exit_file": str(self.data_dir / f"{key}.exit"),
            "user": getpass.getuser(), "allow_root": True,
        }
        body.update(extra)
        self.send(kp.SPAWN, body)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A keeper process of its own (its data dir), stopped (with its jobs) at the end."""
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "mgpu.node.keeper", str(data_dir)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def listening() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        return os.path.exists(kp.socket_path(str(data_dir)))

    wait_until(listening, 30)
    try:
        yield proc, data_dir
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                link = KeeperLink(data_dir)
                link.send(kp.SHUTDOWN, {})
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                link.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def spool_frames(path: Path) -> list[tuple[int, bytes]]:
    data = path.read_bytes() if path.exists() else b""
    out = []
    while data:
        stream, n = data[0], int.from_bytes(data[1:5], "big")
        out.append((stream, data[5 : 5 + n]))
        data = data[5 + n :]
    return out


# ---------------------------------------------------------------- 1. bad strings


@pytest.mark.parametrize("field,value", [
    ("command", "echo a\0b"), ("name", "x\0y"), ("cwd", "/tmp\0x"), ("user", "ro\0ot"),
    ("argv", ["echo", "a\0b"]), ("env", {"A": "b\0c"}), ("env", {"A\0B": "c"}),
])
def test_a_nul_byte_anywhere_in_a_job_is_refused_with_the_field_named(
        cluster: Cluster, field: str, value: Any) -> None:
    """Before: a NUL in the command or the name was accepted and killed the node's keeper."""
    spec: dict[str, Any] = {"command": "echo hi", "gpus": 1, field: value}
    status, reply = cluster.status_of("/api/v1/jobs", {"jobs": [spec]}, cluster.token)
    assert status == 400, reply
    assert "NUL" in json.dumps(reply), reply
    # and the node still runs jobs
    assert cluster.wait_job(cluster.submit("true"))["state"] == "completed"


def test_a_keeper_survives_any_bad_spawn_and_fails_only_that_job(
        keeper: tuple[subprocess.Popen[bytes], Path]) -> None:
    """Spawns an agent would never send (the master refuses them): each fails its own job
    with a reason; the keeper stays up and runs the next job."""
    proc, data_dir = keeper
    link = KeeperLink(data_dir)
    link.wait_for(kp.HELLO)
    bad: list[tuple[str, dict[str, Any]]] = [
        ("1.0", {"command": "echo a\0b"}),
        ("2.0", {"command": "echo 'a\0b' | cat"}),
        ("3.0", {"command": "true", "cwd": "/tm\0p"}),
        ("4.0", {"command": "true", "env": {"PATH": "/bin", "A": "b\0"}}),
        ("5.0", {"command": "true", "argv": ["tr\0ue"]}),
        ("6.0", {"command": "true", "rows": "many", "pty": True}),
    ]
    if ROOT:  # (a keeper that is not root runs every job as its own user: no look-up)
        bad.append(("9.0", {"command": "true", "user": "ro\0ot"}))
    for key, extra in bad:
        link.spawn(key, **{"command": "true", **extra})
        ended = link.wait_for(kp.EXITED, key)
        assert ended["state"] == "failed", ended
        assert "could not start" in ended["reason"], ended
    link.send(kp.SPAWN, {"key": "7.0", "job_id": 7, "no_such_field": 1})  # not a Spawn
    ended = link.wait_for(kp.EXITED, "7.0")
    assert ended["state"] == "failed" and "bad request" in ended["reason"], ended
    link.spawn("8.0", "echo still here")
    ended = link.wait_for(kp.EXITED, "8.0")
    assert ended["state"] == "completed", ended
    assert spool_frames(data_dir / "8.0.out") == [(frames.STREAM_STDOUT, b"still here\n")]
    assert proc.poll() is None
    link.close()


# ---------------------------------------------------------------- 6. disk full, output cap


def test_a_full_disk_loses_output_not_the_keeper(
        keeper: tuple[subprocess.Popen[bytes], Path]) -> None:
    """Before: ENOSPC on the spool killed the keeper. Now the end is still reported, its
    reason says what was lost, and the keeper goes on."""
    proc, data_dir = keeper
    link = KeeperLink(data_dir)
    link.wait_for(kp.HELLO)
    link.spawn("1.0", "echo one; echo two >&2; exit 3", spool="/dev/full")
    ended = link.wait_for(kp.EXITED, "1.0")
    assert ended["state"] == "failed" and ended["exit_code"] == 3, ended
    assert "output lost after 0 bytes: No space left on device" in ended["reason"], ended
    assert ended["size"] == 0
    link.spawn("2.0", "echo fine")
    assert link.wait_for(kp.EXITED, "2.0")["state"] == "completed"
    assert proc.poll() is None
    link.close()


def test_output_past_max_output_is_cut_with_a_last_line_and_the_job_goes_on(
        keeper: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, data_dir = keeper
    link = KeeperLink(data_dir)
    link.wait_for(kp.HELLO)
    done = data_dir / "went-on"
    link.spawn("1.0", f"head -c 300000 /dev/zero; echo after-the-cut; touch {done}",
               max_output=65536)
    ended = link.wait_for(kp.EXITED, "1.0")
    assert ended["state"] == "completed", ended
    assert done.exists()  # the job ran to its end
    got = spool_frames(data_dir / "1.0.out")
    kept = sum(len(d) for s, d in got[:-1])
    assert 65536 - 5 * len(got) <= kept <= 65536
    assert got[-1] == (frames.STREAM_STDERR, b"[mgpu: output cut at 0.0625 MiB "
                       b"(max_output_mib); the job went on running]\n")
    assert ended["size"] == (data_dir / "1.0.out").stat().st_size
    link.close()


def test_a_node_cuts_a_jobs_output_at_max_output_mib(make_cluster: Any) -> None:
    """The node setting (``max_output_mib``, MGPU_MAX_OUTPUT_MIB) reaches the keeper."""
    cluster = make_cluster(nodes=1, env={"MGPU_MAX_OUTPUT_MIB": "1"})
    job = cluster.submit("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end-of-job")
    assert cluster.wait_job(job)["state"] == "completed"
    logs = cluster.mgpu("logs", str(job))
    assert logs.stderr == ("[mgpu: output cut at 1 MiB (max_output_mib); "
                           "the job went on running]\n"), logs.stderr[-200:]
    assert "end-of-job" not in logs.stdout and len(logs.stdout) < (1 << 20)


# ---------------------------------------------------------------- 5. stdin credits


def test_stdin_is_credited_as_the_job_takes_it(
        keeper: tuple[subprocess.Popen[bytes], Path]) -> None:
    """The keeper tells the agent how much of a job's stdin it took (STDIN_CREDIT): an
    agent that keeps at most STDIN_WINDOW bytes in flight never grows the keeper; a job
    that does not read gets no more credit than its pipe took."""
    _, data_dir = keeper
    link = KeeperLink(data_dir)
    link.wait_for(kp.HELLO)
    chunk = b"y" * 65536
    # A job that does not read: credit stops at what its pipe holds.
    link.spawn("1.0", "sleep 600", stdin=True)
    for _ in range(kp.STDIN_WINDOW // len(chunk)):
        link.send(kp.STDIN, b"1.0\n" + chunk)
    credit = link.wait_for(kp.STDIN_CREDIT, "1.0")
    assert 0 < credit["written"] < kp.STDIN_WINDOW
    # A job that reads: all of 4 windows goes through, sent as credits allow.
    total = 4 * kp.STDIN_WINDOW
    link.spawn("2.0", "wc -c", stdin=True)
    sent = written = 0
    while written < total:
        while sent < total and sent + len(chunk) - written <= kp.STDIN_WINDOW:
            link.send(kp.STDIN, b"2.0\n" + chunk)
            sent += len(chunk)
        written = link.wait_for(kp.STDIN_CREDIT, "2.0")["written"]
        assert written <= sent
    link.send(kp.STDIN_EOF, {"key": "2.0"})
    assert link.wait_for(kp.EXITED, "2.0")["state"] == "completed"
    assert spool_frames(data_dir / "2.0.out") == [(frames.STREAM_STDOUT, f"{total}\n".encode())]
    link.send(kp.CANCEL, {"key": "1.0", "state": "cancelled", "reason": "test", "grace": 0})
    assert link.wait_for(kp.EXITED, "1.0")["state"] == "cancelled"
    link.close()


# ---------------------------------------------------------------- 11. the keeper's socket


def test_the_keeper_socket_is_private_whatever_was_there(make_cluster: Any) -> None:
    """0600 in a 0700 directory, even with a loose umask and a loose directory left there."""
    cluster = make_cluster(nodes=0)
    data = cluster.tmp / "node1"
    (data / "run").mkdir(parents=True)
    os.chmod(data / "run", 0o777)
    old = os.umask(0)
    try:
        cluster.add_node("node1", 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((data / "run").stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "run" / "keeper.sock").stat().st_mode) == 0o600
    assert cluster.wait_job(cluster.submit("true"))["state"] == "completed"


def test_a_second_client_is_refused_and_the_agent_keeps_its_keeper(cluster: Cluster) -> None:
    """Before: a second connection displaced the agent, whose jobs were then failed."""
    job = cluster.submit("sleep 600")
    cluster.wait_job(job, ("running",))
    second = KeeperLink(cluster.tmp / "node1")
    kind, body = second.receive()
    assert kind == kp.REFUSED and "another node agent is connected" in body["reason"]
    with pytest.raises(ConnectionError):
        second.receive()
    second.close()
    assert cluster.job(job)["state"] == "running"
    assert cluster.wait_job(cluster.submit("true"))["state"] == "completed"
    cluster.mgpu("cancel", str(job))
    assert cluster.wait_job(job)["state"] == "cancelled"
    cluster.restart_node("node1")  # the old agent's link is gone: a new one gets in
    assert cluster.wait_job(cluster.submit("true"))["state"] == "completed"


@pytest.mark.skipif(not ROOT, reason="needs root to connect as another uid")
def test_a_peer_of_another_uid_is_refused_even_through_open_modes(
        keeper: tuple[subprocess.Popen[bytes], Path]) -> None:
    """SO_PEERCRED: modes are loosened by hand here; the uid check still holds."""
    _, data_dir = keeper
    sock = kp.socket_path(str(data_dir))
    os.chmod(sock, 0o777)
    # The socket file itself, reached through an O_PATH descriptor: no directory to search
    # on the way, so only the keeper's own check stands between that uid and the keeper.
    fd = os.open(sock, os.O_PATH)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, connect, pass on what the keeper says
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(f"/proc/self/fd/{fd}")
            os.write(w, s.recv(4096))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(fd)
    with os.fdopen(r, "rb") as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert said[4:5] == kp.REFUSED, said
    assert b"uid 65534 may not talk to the keeper" in said


# ---------------------------------------------------------------- 7. processes left behind


def _cgroup2_writable() -> bool:
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.partition(" - ")[0].split()[4] for ln in f
                  if ln.partition(" - ")[2].startswith("cgroup2 ")]
    return bool(mounts) and os.access(mounts[0], os.W_OK)


@pytest.mark.parametrize("cgroups", [
    pytest.param(True, marks=pytest.mark.skipif(not _cgroup2_writable(),
                                                reason="no writable cgroup2 here")),
    False,
])
def test_a_process_that_sheds_its_markers_and_session_dies_with_its_job(
        make_cluster: Any, cgroups: bool) -> None:
    cluster = make_cluster(nodes=1, env={"MGPU_KEEPER_CGROUPS": "1" if cgroups else "0"})
    job = cluster.submit("setsid env -u MGPU_JOB_ID -u MGPU_JOB_RUN sleep 600 & "
                         "echo $!; cat /proc/self/cgroup; sleep 1")
    assert cluster.wait_job(job)["state"] == "completed"
    out = cluster.mgpu("logs", str(job)).stdout
    pid = int(out.split()[0])
    assert ("mgpu-keeper." in out) is cgroups, out
    try:
        proc = psutil.Process(pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE and proc.cmdline() == ["sleep", "600"]
    except psutil.NoSuchProcess:
        alive = False
    assert not alive, f"the escaped sleep 600 (pid {pid}) outlived its job"


def test_without_cgroups_an_orphan_of_a_running_job_is_not_killed_by_anothers_end(
        make_cluster: Any) -> None:
    """The fallback only kills orphans no running job claims: one that keeps its markers
    belongs to its own job, whatever ends first."""
    cluster = make_cluster(nodes=1, env={"MGPU_KEEPER_CGROUPS": "0"})
    # The inner shell exits: its sleep is re-parented to the keeper, with its markers.
    long = cluster.submit("sh -c 'setsid sleep 600 & echo $!'; sleep 600")
    pid = int(wait_until(lambda: cluster.mgpu("logs", str(long)).stdout.split(), 30)[0])
    short = cluster.submit("true")
    assert cluster.wait_job(short)["state"] == "completed"
    orphan = psutil.Process(pid)
    assert orphan.cmdline() == ["sleep", "600"] and orphan.ppid() != 1
    cluster.mgpu("cancel", str(long))
    cluster.wait_job(long)
    wait_until(lambda: not psutil.pid_exists(pid)
               or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10)


# ---------------------------------------------------------------- 3. -D and permissions



def _submit_in(cluster: Cluster, user: str, cwd: str, command: str, pty: bool = False) -> int:
    reply = cluster.api("/api/v1/jobs", {"jobs": [{
        "command": command, "gpus": 1, "cwd": cwd, "env": {"PATH": os.environ["PATH"]},
        "pty": pty, "stdin": pty,
    }]}, token=cluster.user_token(user))
    return int(reply["job_ids"][0])


def test_a_job_cannot_start_in_a_directory_its_owner_may_not_enter(
        cluster: Cluster, account: str, tmp_path: Path) -> None:
    """Before: the root agent entered the directory before dropping to the owner."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # root's
    job = _submit_in(cluster, account, str(private), "pwd")
    ended = cluster.wait_job(job)
    assert ended["state"] == "failed", (ended, cluster.mgpu("logs", str(job)).stdout)
    assert ended["reason"].startswith(
        f"cannot enter working directory {private} as user {account}: permission denied")
    home = os.path.expanduser(f"~{account}")
    ok = _submit_in(cluster, account, home, "pwd")
    assert cluster.wait_job(ok)["state"] == "completed"
    assert cluster.mgpu("logs", str(ok)).stdout == f"{home}\n"
    on_pty = _submit_in(cluster, account, str(private), "pwd", pty=True)
    ended = cluster.wait_job(on_pty)
    assert ended["state"] == "failed" and ended["reason"].startswith(
        f"cannot enter working directory {private} as user {account}"), ended
    on_pty = _submit_in(cluster, account, home, "pwd; tty", pty=True)
    assert cluster.wait_job(on_pty)["state"] == "completed"
    assert cluster.mgpu("logs", str(on_pty)).stdout.startswith(f"{home}\n/dev/pts/")
