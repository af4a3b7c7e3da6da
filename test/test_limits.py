"""Limits against hostile or broken clients, each with an error that names it (tier 3).

Request body size (413), command length, environment size and content (400), jobs per
batch and pending jobs per user (422, the setting named), a body that trickles in for
longer than the read timeout (408, connection closed), and connections that send nothing
or never end their headers (closed after the read timeout).
"""

from __future__ import annotations

import socket
from typing import Any

from conftest import Cluster
from mgpu.server.validate import MAX_COMMAND, MAX_ENV


def post(cluster: Cluster, path: str, body: Any, token: str | None = None
         ) -> tuple[int, Any]:
    return cluster.status_of(path, body, token or cluster.token)


def submit(cluster: Cluster, *specs: dict[str, Any], token: str | None = None
           ) -> tuple[int, dict[str, Any]]:
    return post(cluster, "/api/v1/jobs", {"jobs": [{"command": "true", **s} for s in specs]},
                token)


def test_job_content_limits(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"command": "x" * (MAX_COMMAND + 1)}, f"longer than {MAX_COMMAND} bytes"),
        ({"argv": ["echo", "y" * MAX_COMMAND]}, f"longer than {MAX_COMMAND} bytes"),
        ({"env": {"BIG": "z" * MAX_ENV}}, f"over the limit of {MAX_ENV}"),
        ({"env": {"A=B": "1"}}, "names must be non-empty without '='"),
        ({"env": {"A": "nul\u0000"}}, "values without NUL"),
        ({"gpus": 10**6}, "gpus must be from 1 to 1024"),
        ({"gpus": 2**70}, "gpus must be from 1 to 1024"),
        ({"time_limit": 10**12}, "time limit must be from 0"),
        ({"max_requeue": 10**9}, "max_requeue must be from 0 to 1000"),
        ({"cwd": "/" * 5000}, "working directory"),
    ]
    for spec, words in cases:
        code, reply = submit(cluster, spec)
        assert (code, reply["code"]) == (400, "bad_request"), (spec.keys(), reply)
        assert words in reply["error"], reply
    assert cluster.api("/api/v1/jobs?all=1")["jobs"] == []
    big = {f"BIG{i}": "v" * 120_000 for i in range(MAX_ENV // 120_000 + 1)}  # execve: 128K each
    done = cluster.mgpu("submit", "true", env=big, check=1)
    assert done.stderr.startswith("error: the environment is") and "--export=NONE" in done.stderr


def test_batch_and_pending_limits_are_per_setting(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0, env={"MGPU_MAX_BATCH": "5", "MGPU_MAX_PENDING": "3"})
    code, reply = submit(cluster, *[{}] * 6)
    assert code == 422 and reply["error"] == (
        "6 jobs in one submit is over this master's limit of 5 (max_batch_jobs / "
        "MGPU_MAX_BATCH): submit in batches")
    assert submit(cluster, {}, {})[0] == 201
    code, reply = submit(cluster, {}, {})
    assert code == 422 and "limit of 3 pending jobs per user" in reply["error"]
    assert "MGPU_MAX_PENDING" in reply["error"]
    assert cluster.mgpu("submit", "true").returncode == 0  # the third
    done = cluster.mgpu("submit", "true", check=5)
    assert done.stderr.startswith("error: ") and "has 3 pending jobs" in done.stderr
    other = cluster.user_token("other")
    assert submit(cluster, {}, token=other)[0] == 201  # the limit is per user
    assert len(cluster.api("/api/v1/jobs")["jobs"]) == 4


def test_request_body_size_and_slow_bodies(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0, env={"MGPU_MAX_REQUEST": "2000",
                                         "MGPU_READ_TIMEOUT": "0.5"})
    code, reply = submit(cluster, {"command": "x" * 3000})
    assert code == 413 and reply["error"].startswith(
        "the request body is larger than this master's limit of 2000 bytes")
    # A body that trickles: the master answers 408 once the read timeout has passed, and
    # closes the connection.
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=20) as s:
        s.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                  b"Authorization: Bearer " + cluster.token.encode() + b"\r\n\r\n{\"jobs\"")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"took longer than 0.5 s to arrive" in body
    assert cluster.api("/api/v1/jobs?all=1")["jobs"] == []
    # Headers that never end, and a connection that says nothing, are closed as well.
    for start in (b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\n", b""):
        with socket.create_connection(("127.0.0.1", cluster.port), timeout=20) as s:
            s.sendall(start)
            assert s.recv(65536) == b""  # closed by the master, not by our timeout
    # A long poll outlasts it: the timeout is for what the client sends.
    waited = post(cluster, "/api/v1/jobs/wait", {"job_ids": [999], "timeout": 1})
    assert waited[0] == 404


def test_malformed_http_is_a_400_and_one_log_line(cluster: Cluster) -> None:
    """What aiohttp's parser turns away (bad URL bytes, bad headers, not HTTP at all) gets a
    4xx; the master logs one line for it, not a traceback (teardown checks for those)."""
    for raw in (b"GET /api/v1/jobs/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /api/v1/jobs HTTP/1.1\r\nBad Header\r\n\r\n",
                b"GET /api/v1/jobs HTTP/9.9\r\nHost: x\r\n\r\n",
                b"POST /api/v1/jobs HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", cluster.port), timeout=20) as s:
            s.sendall(raw)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.") and b" 4" in answer.split(b"\r\n")[0], answer
    assert cluster.api("/api/v1/health")["status"] == "ok"
