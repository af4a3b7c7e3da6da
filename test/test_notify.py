"""Notifications (issue 13): ``--mail-type``/``--mail-user`` mail through SMTP and
``--notify URL`` JSON webhooks, sent in the background with retries and back-off.

Tier 1: the rules (which URLs and addresses are taken, which events mail). Tier 3: a real
master and node; a local aiohttp receiver that fails its first tries, one that never
answers (the master goes on regardless), and a local SMTP server (aiosmtpd), each started
in the test on 127.0.0.1, port 0, on a loop thread of its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from email import message_from_bytes
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from conftest import Cluster, wait_until
from mgpu.core.errors import UsageError
from mgpu.core.models import JobSpec, JobState, SimpleJob
from mgpu.core.notify import (
    NotifyPolicy,
    check_address,
    check_job,
    check_url,
    parse_mail_types,
    wants_mail,
)

T = TypeVar("T")

# ------------------------------------------------------------------ the rules


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.org/x", "gopher://example.org", "javascript:alert(1)",
    "http://", "https:///path", "example.org/hook", "http://exa mple.org/", "http://a.org:99999/",
    "http://a.org/\r\nX-Injected: 1", "data:text/plain,hi",
])
def test_only_http_and_https_urls_with_a_host_are_taken(url: str) -> None:
    with pytest.raises(UsageError, match="--notify"):
        check_url(url)


def test_notify_hosts_limits_where_webhooks_go() -> None:
    check_url("https://hooks.example.org/x?key=1")
    allowed = ("hooks.example.org", "*.lab.internal")
    check_url("https://hooks.example.org/x", allowed)
    check_url("http://ci.lab.internal:8080/hook", allowed)
    for url in ("http://127.0.0.1:8080/", "http://evil.org/", "http://lab.internal.evil.org/"):
        with pytest.raises(UsageError, match=r"posts only to hooks\.example\.org"):
            check_url(url, allowed)


def test_mail_flags_are_checked() -> None:
    assert parse_mail_types("end, fail,END") == ["END", "FAIL"]
    with pytest.raises(UsageError, match="BEGIN, END, FAIL, ALL"):
        parse_mail_types("END,REQUEUE")
    check_address("alice@example.org")
    for bad in ("alice", "@example.org", "alice@", "a@b.org\r\nBcc: x@y.org", "a b@c.org",
                "a@b.org,c@d.org"):
        with pytest.raises(UsageError, match="not a mail address"):
            check_address(bad)
    spec = JobSpec(command="x", mail_type=["END"])
    with pytest.raises(UsageError, match="needs --mail-user"):
        check_job(spec, NotifyPolicy(mail=True))
    spec = JobSpec(command="x", mail_type=["END"], mail_user="a@b.org")
    with pytest.raises(UsageError, match=r"sends no mail .*MGPU_SMTP_HOST"):
        check_job(spec, NotifyPolicy(mail=False))
    check_job(spec, NotifyPolicy(mail=True))


@pytest.mark.parametrize(("types", "event", "state", "mailed"), [
    (["END"], "END", JobState.COMPLETED, True),
    (["END"], "BEGIN", JobState.RUNNING, False),
    (["BEGIN"], "BEGIN", JobState.RUNNING, True),
    (["FAIL"], "END", JobState.COMPLETED, False),
    (["FAIL"], "END", JobState.FAILED, True),
    (["FAIL"], "END", JobState.TIMEOUT, True),
    (["ALL"], "BEGIN", JobState.RUNNING, True),
    (["ALL"], "END", JobState.CANCELLED, True),
])
def test_which_events_mail(types: list[str], event: str, state: JobState,
                           mailed: bool) -> None:
    job = SimpleJob(id=1, name="t", user="u", state=state, gpus=1, command="t", cwd="/",
                    mail_type=types, mail_user="u@example.org")
    assert wants_mail(job, event) is mailed


# ------------------------------------------------------------------ local servers


class LoopThread:
    """An asyncio loop on a thread of its own, for servers the test talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


class Receiver:
    """A webhook receiver: answers 503 to its first ``fail`` requests, then 200; keeps
    every body it was sent (and, in ``tries``, every request)."""

    def __init__(self, lt: LoopThread, fail: int = 0) -> None:
        self.fail = fail
        self.tries: list[dict[str, Any]] = []
        self.got: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app)
        lt.run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        lt.run(site.start())
        self.port = self.runner.addresses[0][1]
        self.lt = lt

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?key=secret"

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tries.append(body)
        if len(self.tries) <= self.fail:
            return web.Response(status=503)
        self.got.append(body)
        self.headers.append(dict(request.headers))
        return web.Response(status=200)

    def close(self) -> None:
        self.lt.run(self.runner.cleanup())


class Mailbox:
    """aiosmtpd's handler: keeps each mail it is given."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], Any]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.mails.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                           message_from_bytes(content)))
        return "250 OK"


# ------------------------------------------------------------------ webhooks


def _wait_for(what: Callable[[], bool], message: str) -> None:
    wait_until(what, 30, message=message)


def test_a_webhook_is_retried_with_back_off_until_the_receiver_takes_it(
        make_cluster: Any, loop_thread: LoopThread) -> None:
    receiver = Receiver(loop_thread, fail=2)
    try:
        cluster: Cluster = make_cluster(nodes=1, gpus=2, env={
            "MGPU_NOTIFY_BACKOFF": "0.05", "MGPU_NOTIFY_RETRIES": "4"})
        job_id = cluster.submit("echo hi; exit 3", "--notify", receiver.url, "-J", "hooked")
        _wait_for(lambda: any(b["event"] == "end" for b in receiver.got), "the end webhook")
        _wait_for(lambda: any(b["event"] == "begin" for b in receiver.got), "the begin one")
        # Two 503s, each tried again until taken: four requests, each event taken once.
        assert len(receiver.tries) == 4 and len(receiver.got) == 2
        assert all(body in receiver.got for body in receiver.tries[:2])
        end = next(b for b in receiver.got if b["event"] == "end")
        job = cluster.job(job_id)
        assert {k: end[k] for k in ("job_id", "name", "user", "state", "exit_code",
                                    "end_cause", "node", "gpus", "run")} == {
            "job_id": job_id, "name": "hooked", "user": job["user"], "state": "failed",
            "exit_code": 3, "end_cause": "exited", "node": "node1", "gpus": 1, "run": 0}
        assert end["link"] == f"{cluster.url}/api/v1/jobs/{job_id}"
        for key in ("submitted_at", "started_at", "ended_at"):
            assert end[key] == job[key].replace("Z", "+00:00")
        assert receiver.headers[0]["Content-Type"] == "application/json"
        assert receiver.headers[0]["User-Agent"].startswith("mgpu/")
        # What the master refuses: a URL that is not http(s), mail it cannot send.
        bad = cluster.mgpu("submit", "--notify", "file:///etc/passwd", "true", check=False)
        assert bad.returncode != 0 and "http:// or https://" in bad.stderr
        status, reply = cluster.status_of("/api/v1/jobs", {"jobs": [
            {"command": "true", "notify_url": "gopher://example.org/"}]}, token=cluster.token)
        assert status == 400 and "http:// or https://" in reply["error"]
        nomail = cluster.mgpu("submit", "--mail-user", "a@example.org", "true", check=False)
        assert nomail.returncode != 0 and "MGPU_SMTP_HOST" in nomail.stderr
    finally:
        receiver.close()


def test_a_dead_receiver_does_not_hold_up_the_master(make_cluster: Any) -> None:
    """A receiver that accepts connections and never answers: every job still runs and
    ends, and the master answers at once, while its notifications hang; past the queue's
    room, new ones are dropped with a warning."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(64)  # (never accepted: connections wait in the backlog, unanswered)
    try:
        port = dead.getsockname()[1]
        cluster: Cluster = make_cluster(nodes=1, gpus=4, env={
            "MGPU_NOTIFY_TIMEOUT": "3600", "MGPU_NOTIFY_QUEUE": "4"})
        url = f"http://127.0.0.1:{port}/hook"
        ids = [cluster.submit("true", "--notify", url) for _ in range(8)]
        done = json.loads(cluster.mgpu("wait", *map(str, ids), "--json", "--timeout",
                                       "60").stdout)
        assert [j["state"] for j in done] == ["completed"] * 8
        # The notifications are stuck: the master's workers hold connections to the
        # receiver (none answered), and the rest of the 16 overflowed the queue.
        _wait_for(lambda: "notifications: the queue is full" in cluster.master.log_path
                  .read_text(), "the full queue's warning in the master's log")
        assert cluster.mgpu("queue", "--all", "--json").stdout.count('"completed"') == 8
        quick = cluster.submit("true")
        assert cluster.wait_job(quick, ("completed",))["state"] == "completed"
    finally:
        dead.close()


# ------------------------------------------------------------------ mail


def test_mail_is_sent_through_smtp_for_the_events_asked_for(
        make_cluster: Any, loop_thread: LoopThread) -> None:
    box = Mailbox()
    server = loop_thread.run(_smtp_server(loop_thread, box))
    try:
        port = server.sockets[0].getsockname()[1]
        cluster: Cluster = make_cluster(nodes=1, gpus=2, env={
            "MGPU_SMTP_HOST": "127.0.0.1", "MGPU_SMTP_PORT": str(port),
            "MGPU_SMTP_FROM": "mgpu@lab.example.org"})
        # FAIL only, and the job completes: no mail.
        quiet = cluster.submit("true", "--mail-type=FAIL", "--mail-user=bob@example.org")
        cluster.wait_job(quiet, ("completed",))
        loud = cluster.submit("exit 7", "--mail-type", "BEGIN,END",
                              "--mail-user", "alice@example.org", "-J", "train")
        _wait_for(lambda: len(box.mails) == 2, "two mails")
        froms = {f for f, _, _ in box.mails}
        assert froms == {"mgpu@lab.example.org"}
        assert all(to == ["alice@example.org"] for _, to, _ in box.mails)
        subjects = sorted(str(msg["Subject"]) for _, _, msg in box.mails)
        assert subjects == [f"mgpu job {loud} (train) began",
                            f"mgpu job {loud} (train) ended: failed, exit code 7"]
        ended = next(msg for _, _, msg in box.mails if "ended" in str(msg["Subject"]))
        text = ended.get_payload(decode=True).decode()
        assert f"link: {cluster.url}/api/v1/jobs/{loud}" in text and "exit_code: 7" in text
        # --mail-user alone mails at the end.
        plain = cluster.submit("true", "--mail-user", "carol@example.org")
        _wait_for(lambda: len(box.mails) == 3, "the third mail")
        _, to, msg = box.mails[2]
        assert to == ["carol@example.org"] and "ended: completed" in str(msg["Subject"])
        assert str(plain) in str(msg["Subject"])
        bad = cluster.mgpu("submit", "--mail-type=END", "true", check=False)
        assert bad.returncode != 0 and "--mail-user" in bad.stderr
    finally:
        server.close()
        loop_thread.run(server.wait_closed())


async def _smtp_server(lt: LoopThread, box: Mailbox) -> asyncio.Server:
    return await lt.loop.create_server(lambda: SMTP(box, hostname="localhost"), "127.0.0.1", 0)
