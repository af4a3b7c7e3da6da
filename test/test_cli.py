"""The ``mgpu`` command without a master: argument errors, a dead master, rendering, --json.

``main(argv)`` runs in-process where the output is all that matters; a dead master and
``-v`` are also checked as subprocesses, the way a user meets them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from mgpu.cli import main
from mgpu.cli.shared import exit_status
from mgpu.client import output
from mgpu.core.messages import CancelResult
from mgpu.core.models import GpuInfo, JobState, NodeInfo, SimpleJob

SRC = Path(__file__).resolve().parent.parent / "src"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
GPUS_ERROR = "error: -G/--gpus must be a positive whole number of GPUs, got {!r}\n"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MGPU_* variables and no user config file."""
    for name in list(os.environ):
        if name.startswith("MGPU_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.fixture
def dead() -> Iterator[str]:
    """``127.0.0.1:PORT`` where nothing listens (bound, not listening: connect is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def unreachable(address: str) -> str:
    return (
        f"error: cannot reach the master at {address}: is `mgpu server` running? "
        "Set --master or MGPU_MASTER to point elsewhere.\n"
    )


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def mgpu(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m mgpu ARGS`` in a fresh interpreter."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
    full["PYTHONPATH"] = str(SRC)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mgpu", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
        check=False,
    )


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("value", ["x", "0", "-1", "1.5", "", "²"])
def test_bad_gpu_counts_are_one_line_errors(
    value: str, dead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["--master", dead, "submit", "-G", value, "python train.py"], capsys)
    assert (code, out, err) == (2, "", GPUS_ERROR.format(value))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit"], "error: a job needs a command: mgpu submit [options] 'COMMAND ...'\n"),
        (["submit", "--"], "error: a job needs a command: mgpu submit [options] 'COMMAND ...'\n"),
        (
            ["submit", "--gres=gpu:a100:2:x", "true"],
            "error: --gres takes gpu:N or gpu:TYPE:N, got 'gpu:a100:2:x'\n",
        ),
        (
            ["submit", "--gres=gpu:0", "true"],
            "error: --gres=gpu:N must be a positive whole number of GPUs, got '0'\n",
        ),
        (
            ["submit", "-G", "2", "--gres=gpu:3", "true"],
            "error: -G/--gpus 2 and --gres=gpu:3 disagree; give one\n",
        ),
        (
            ["submit", "--export=ALL,NONE", "true"],
            "error: --export: ALL and NONE cannot both be given\n",
        ),
        (["submit", "--env", "=1", "true"], "error: --export/--env takes KEY=VALUE, got '=1'\n"),
        (
            ["submit", "--export", "MGPU_TEST_UNSET", "true"],
            "error: --export/--env MGPU_TEST_UNSET: MGPU_TEST_UNSET is not set here; "
            "use MGPU_TEST_UNSET=VALUE\n",
        ),
        (
            ["queue", "-t", "PD,XX"],
            "error: -t/--states: unknown job state 'XX'; use any of PD=pending, R=running, "
            "CD=completed, F=failed, CA=cancelled, TO=timeout, NF=node_fail\n",
        ),
        (["--master", "host:port", "queue"], None),
    ],
)
def test_usage_errors_exit_2_before_reaching_the_master(
    argv: list[str], message: str | None, dead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    full = argv if argv[0] == "--master" else ["--master", dead, *argv]
    code, out, err = run(full, capsys)
    assert code == 2
    assert out == ""
    if message is None:
        assert err.startswith("error: --master: 'host:port' is not HOST:PORT")
    else:
        assert err == message


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "x"],
        ["show", "0"],
        ["cancel"],
        ["wait", "1", "--timeout", "soon"],
        ["bogus"],
        [],
        ["queue", "--log-format", "xml"],
        ["node", "--gpus", "0", "--fake-gpus", "2"],
        ["server", "--port", "http"],
    ],
)
def test_argparse_errors_exit_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("usage: mgpu")
    assert "Traceback" not in err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in ("submit", "queue", "show", "logs", "wait", "cancel", "nodes", "config"):
        assert f"    {name} " in out
    code, out, _ = run(["submit", "--help"], capsys)
    assert code == 0 and "--gres gpu:N" in out and "--master HOST:PORT" in out
    assert run(["--version"], capsys)[:2] == (0, "mgpu 0.1.0\n")


# ------------------------------------------------------------------ a dead master


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "-G", "2", "python train.py"],
        ["queue"],
        ["show", "1"],
        ["logs", "1", "-f"],
        ["wait", "1"],
        ["cancel", "1", "2"],
        ["nodes", "--json"],
    ],
)
def test_a_dead_master_is_exit_3_with_what_to_do(
    argv: list[str], dead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--master", dead, *argv], capsys) == (3, "", unreachable(dead))


def test_global_options_work_after_the_subcommand(
    dead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["queue", "--master", dead], capsys) == (3, "", unreachable(dead))


def test_the_master_comes_from_the_environment(dead: str) -> None:
    host, port = dead.split(":")
    done = mgpu("queue", env={"MGPU_MASTER": dead})
    assert (done.returncode, done.stdout, done.stderr) == (3, "", unreachable(dead))
    done = mgpu("queue", env={"MGPU_MASTER_HOST": host, "MGPU_MASTER_PORT": port})
    assert (done.returncode, done.stderr) == (3, unreachable(dead))
    # --master wins over the environment
    done = mgpu("--master", dead, "queue", env={"MGPU_MASTER": "127.0.0.1:1"})
    assert done.stderr == unreachable(dead)


def test_tracebacks_only_with_verbose(dead: str) -> None:
    quiet = mgpu("--master", dead, "show", "1")
    assert quiet.returncode == 3
    assert "Traceback" not in quiet.stderr
    loud = mgpu("--master", dead, "show", "1", "-v")
    assert loud.returncode == 3
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.endswith(unreachable(dead))


# ------------------------------------------------------------------ mgpu config


def test_config_shows_values_and_their_sources(
    dead: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "mgpu.toml"
    config.write_text("[master]\nport = 9000\n[node]\nfake_gpus = 2\n")
    monkeypatch.setenv("MGPU_CONFIG", str(config))
    monkeypatch.setenv("MGPU_NODE_ID", "gpu7")
    code, out, _ = run(["config", "--json", "--master", dead, "--log-level", "debug"], capsys)
    assert code == 0
    data = json.loads(out)
    host, port = dead.split(":")
    assert data["file"] == str(config)
    assert data["client"]["master_host"] == {"value": host, "source": "flag"}
    assert data["client"]["master_port"] == {"value": int(port), "source": "flag"}
    assert data["master"]["port"] == {"value": 9000, "source": f"file {config}"}
    assert data["master"]["host"] == {"value": "127.0.0.1", "source": "default"}
    assert data["node"]["node_id"] == {"value": "gpu7", "source": "env MGPU_NODE_ID"}
    assert data["node"]["fake_gpus"]["value"] == 2
    assert data["log"]["level"] == {"value": "debug", "source": "flag"}

    assert data["node"]["join_token"] == {"value": None, "source": "default"}

    # The node's effective data dir, and which token the client would send, and whence.
    assert data["node"]["data_dir"]["value"].endswith("/mgpu/node-gpu7")
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-of-mine\n")
    token_file.chmod(0o600)
    monkeypatch.setenv("MGPU_TOKEN", "t0ken-from-env")
    code, out, _ = run(["config", "--json"], capsys)
    assert json.loads(out)["client"]["token"] == {"value": "(set)", "source": "env MGPU_TOKEN"}
    code, out, _ = run(["config", "--token-file", str(token_file)], capsys)
    assert ["client", "token", "(set)", "--token-file", str(token_file)] in [
        line.split() for line in out.splitlines()]
    assert "t0ken" not in out
    monkeypatch.delenv("MGPU_TOKEN")

    monkeypatch.setenv("MGPU_JOIN_TOKEN", "s3cret-join")  # a secret is never shown
    code, out, _ = run(["config"], capsys)
    assert code == 0 and "s3cret-join" not in out
    assert ["node", "join_token", "(set)", "env", "MGPU_JOIN_TOKEN"] in [
        line.split() for line in out.splitlines()]
    code, out, _ = run(["config", "--json"], capsys)
    assert json.loads(out)["node"]["join_token"]["value"] == "(set)"
    code, out, _ = run(["config"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"config file: {config}"
    assert lines[1].split() == ["SECTION", "KEY", "VALUE", "SOURCE"]
    assert ["master", "port", "9000", "file", str(config)] in [line.split() for line in lines]


def test_config_without_a_file_says_where_it_would_look(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(["config"], capsys)
    assert code == 0
    expected = tmp_path / "config" / "mgpu" / "config.toml"
    assert out.splitlines()[0] == f"config file: none (would read {expected})"


# ------------------------------------------------------------------ rendering


def job(job_id: int = 1, state: JobState = JobState.PENDING, **kw: object) -> SimpleJob:
    fields: dict[str, object] = {
        "id": job_id,
        "name": "train",
        "user": "alice",
        "state": state,
        "gpus": 2,
        "command": "python train.py",
        "cwd": "/home/alice",
        "submitted_at": NOW - timedelta(hours=2),
    }
    fields.update(kw)
    return msgspec.convert(fields, SimpleJob, from_attributes=False)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0:00"),
        (5.9, "0:05"),
        (65, "1:05"),
        (3600, "1:00:00"),
        (3 * 86400 + 4 * 3600 + 5 * 60 + 6, "3-04:05:06"),
        (-3, "0:00"),
    ],
)
def test_duration_is_slurms_elapsed_form(seconds: float, text: str) -> None:
    assert output.duration(seconds) == text


def test_queue_table_columns_and_times() -> None:
    jobs = [
        job(
            1,
            JobState.RUNNING,
            node="node1",
            gpu_ids=[0, 1],
            started_at=NOW - timedelta(seconds=75),
        ),
        job(2, reason="Resources", name="a-much-longer-name"),
        job(
            10,
            JobState.FAILED,
            node="node2",
            started_at=NOW - timedelta(hours=1),
            ended_at=NOW - timedelta(minutes=30),
            exit_code=3,
            reason="exit code 3",
            gpus=1,
        ),
    ]
    text = output.queue_table(jobs, NOW)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert [" ".join(line.split()) for line in lines] == [
        "ID NAME USER STATE GPUS NODE TIME REASON",
        "1 train alice running 2 node1 1:15",
        "2 a-much-longer-name alice pending 2 - 0:00 Resources",
        "10 train alice failed 1 node2 30:00 exit code 3",
    ]
    assert all(line == line.rstrip() for line in lines)
    # aligned columns: every cell of a column starts (left) or ends (right) at one place
    name_at = lines[0].index("NAME")
    assert {line[name_at - 2 : name_at] for line in lines} == {"  "}
    assert {line.index("alice") for line in lines[1:]} == {lines[0].index("USER")}
    assert lines[3].startswith("10") and lines[1].startswith(" 1")


def test_queue_table_of_nothing_is_the_header() -> None:
    assert output.queue_table([], NOW) == "ID  NAME  USER  STATE  GPUS  NODE  TIME  REASON\n"


def test_control_characters_cannot_break_a_table() -> None:
    text = output.queue_table([job(name="two\nlines\x1b[31m")], NOW)
    assert len(text.splitlines()) == 2
    assert "\x1b" not in text and "two\\nlines\\x1b[31m" in text


def test_job_detail_names_every_field() -> None:
    shown = output.job_detail(
        job(7, JobState.RUNNING, node="n1", gpu_ids=[2, 3], started_at=NOW), NOW
    )
    fields = dict(line.split(":", 1) for line in shown.splitlines())
    assert set(fields) == {*SimpleJob.__struct_fields__, "time"}
    assert fields["gpu_ids"].strip() == "2,3"
    assert fields["exit_code"].strip() == "-"
    assert fields["command"].strip() == "python train.py"


def test_nodes_table_says_who_holds_which_gpu() -> None:
    gpus = [
        GpuInfo(index=i, name="Fake GPU", memory_total_mib=1024, job_id=j)
        for i, j in enumerate([7, 7, None, 9])
    ]
    nodes = [NodeInfo(node_id="node1", state="up", gpus=gpus), NodeInfo(node_id="n2", state="down"),
             NodeInfo(node_id="n3", state="degraded", users=["alice"],
                      reason="the node keeper died; restarting it")]
    lines = output.nodes_table(nodes).splitlines()
    assert lines[0].split() == ["NODE", "STATE", "GPUS", "USED", "FREE", "TYPE", "USERS",
                                "JOBS", "OUTSIDE", "REASON"]
    assert lines[1].split() == ["node1", "up", "4", "3", "1", "4xfake", "all", "7:0,1", "9:3",
                                "-"]
    assert lines[2].split() == ["n2", "down", "0", "0", "0", "-", "all", "-", "-"]
    assert lines[3].split() == ["n3", "degraded", "0", "0", "0", "-", "only", "alice", "-",
                                "-", "the", "node", "keeper", "died;", "restarting", "it"]


def test_json_follows_the_contract() -> None:
    ended = job(
        3, JobState.COMPLETED, started_at=NOW, ended_at=NOW + timedelta(seconds=1), exit_code=0
    )
    data = json.loads(output.to_json([ended]))
    assert set(data[0]) == {
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
    assert data[0]["state"] == "completed"
    assert data[0]["ended_at"] == "2024-05-01T12:00:01Z"
    assert data[0]["node"] is None
    node = NodeInfo(node_id="n", state="up", gpus=[GpuInfo(index=0, name="G", memory_total_mib=1)])
    shown = json.loads(output.to_json([node]))[0]
    assert {"node_id", "state", "gpus", "last_seen"} <= set(shown)
    assert {"index", "name", "memory_total_mib", "job_id"} <= set(shown["gpus"][0])


def test_cancel_and_wait_reports() -> None:
    out, err = output.cancel_report(
        [CancelResult(job_id=1, ok=True), CancelResult(job_id=2, ok=False, error="no job 2")]
    )
    assert (out, err) == ("Cancelled job 1\n", "error: no job 2\n")
    report = output.wait_report(
        [
            job(1, JobState.FAILED, exit_code=3, reason="exit code 3"),
            job(2, JobState.TIMEOUT, exit_code=143, reason="time limit 1:00"),
            job(3, JobState.CANCELLED, reason="cancelled"),
        ]
    )
    assert report.splitlines() == [
        "Job 1 failed (exit code 3)",
        "Job 2 timeout (exit code 143): time limit 1:00",
        "Job 3 cancelled",
    ]


@pytest.mark.parametrize(
    ("state", "code", "status"),
    [
        ("completed", 0, 0),
        ("completed", None, 0),
        ("failed", 3, 3),
        ("failed", 137, 137),
        ("failed", -9, 137),
        ("failed", 300, 1),
        ("cancelled", None, 1),
        ("cancelled", 0, 1),
        ("node_fail", None, 1),
        ("timeout", 143, 143),
    ],
)
def test_exit_status_of_a_job(state: str, code: int | None, status: int) -> None:
    assert exit_status(state, code) == status
