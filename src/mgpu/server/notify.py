"""Sending job notifications: mail (SMTP) and JSON webhooks, in the background.

The master calls :meth:`Notifier.saved` once a batch of changes is saved: a run that was
placed is a ``BEGIN``, a job that ended an ``END`` (``core/notify.py`` says which a job
asked for and what each says). The notice is built then, from the job as it is, and put
on a bounded queue; that is all the master's loop does, so a slow or dead receiver never
holds it up. :data:`WORKERS` tasks take notices off the queue: a webhook is an HTTP
``POST`` (aiohttp, ``notify_timeout``, redirects not followed), a mail goes through
``smtplib`` on a thread of its own. A failure (no connection, a timeout, an HTTP 5xx,
408 or 429, an SMTP error) is tried again after ``notify_backoff`` seconds, doubling each
time (at most :data:`MAX_BACKOFF`), up to ``notify_retries`` times, without holding a
worker meanwhile; any other 4xx is final. Everything given up is logged.

Notifications are best effort: a full queue (``notify_queue``) drops new notices with a
warning, and a master that stops drops those not yet sent (the jobs themselves, and their
accounting, are saved as always).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage

import aiohttp
import msgspec

from mgpu.core import messages as m
from mgpu.core.config import MasterConfig
from mgpu.core.models import JobState, SimpleJob
from mgpu.core.notify import NotifyPolicy, mail_text, payload, wants_mail
from mgpu.core.version import __version__ as VERSION
from mgpu.server.effects import Effects

log = logging.getLogger("mgpu.master")

WORKERS = 4  # notices sent at once
MAX_BACKOFF = 300.0  # seconds: the longest wait between tries
RETRY_STATUSES = frozenset({408, 429})  # besides 5xx


def policy(cfg: MasterConfig) -> NotifyPolicy:
    """What ``cfg`` lets jobs ask for: mail with an SMTP host; webhooks to ``notify_hosts``."""
    hosts = tuple(h.strip() for h in (cfg.notify_hosts or "").split(",") if h.strip())
    return NotifyPolicy(mail=bool(cfg.smtp_host), allowed_hosts=hosts)


class Retry(Exception):
    """A failure worth another try."""


@dataclass
class Notice:
    """One message to send: a webhook's JSON ``body`` to a URL, or a mail to an address."""

    job_id: int
    event: str
    url: str | None = None
    body: bytes = b""
    address: str | None = None
    subject: str = ""
    text: str = ""
    tries: int = 0


class Notifier:
    """The master's notification sender. :meth:`start` in the loop, :meth:`stop` at the end."""

    def __init__(self, cfg: MasterConfig) -> None:
        self.cfg = cfg
        self.base_url = ""
        self.queue: asyncio.Queue[Notice] = asyncio.Queue(max(1, cfg.notify_queue))
        self.sent = self.failed = self.dropped = 0
        self._workers: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.TimerHandle] = set()
        self._session: aiohttp.ClientSession | None = None
        self._mail: ThreadPoolExecutor | None = None

    def start(self, base_url: str) -> None:
        """Start the workers; links point under ``base_url`` (``public_url``, or where the
        master listens)."""
        self.base_url = (self.cfg.public_url or base_url).rstrip("/")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.notify_timeout),
            headers={"User-Agent": f"mgpu/{VERSION}"})
        self._workers = [asyncio.create_task(self._work()) for _ in range(WORKERS)]

    async def stop(self) -> None:
        """Stop sending; what is still queued or waiting for a retry is dropped."""
        for handle in self._retries:
            handle.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._mail is not None:
            self._mail.shutdown(wait=False, cancel_futures=True)
        if self.queue.qsize():
            log.warning("notifications: %d not sent (the master stopped)", self.queue.qsize())

    # ---------------------------------------------------------------- what to send

    def saved(self, effects: Effects, jobs: dict[int, SimpleJob]) -> None:
        """Queue the notices of saved ``effects``: runs placed (still running on that node,
        so sent to it) begin, jobs ended end. Never blocks."""
        if not self._workers:
            return
        for node_id, msg in effects.sends:
            if isinstance(msg, m.StartJob):
                job = jobs.get(msg.job_id)
                if (job is not None and job.state is JobState.RUNNING and job.node == node_id
                        and job.requeues == msg.run):
                    self.job_event(job, "BEGIN")
        for job_id in effects.ended:
            job = jobs.get(job_id)
            if job is not None and job.state.ended:
                self.job_event(job, "END")

    def job_event(self, job: SimpleJob, event: str) -> None:
        """Queue what ``job`` asked to be told of ``event`` (``BEGIN`` or ``END``)."""
        if not job.notify_url and not job.mail_user:
            return
        link = f"{self.base_url}/api/v1/jobs/{job.id}"
        if job.notify_url:
            body = msgspec.json.encode(payload(job, event, link))
            self._put(Notice(job.id, event, url=job.notify_url, body=body))
        if job.mail_user and self.cfg.smtp_host and wants_mail(job, event):
            subject, text = mail_text(job, event, link)
            self._put(Notice(job.id, event, address=job.mail_user, subject=subject, text=text))

    def _put(self, notice: Notice) -> None:
        try:
            self.queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("notifications: the queue is full (notify_queue = %d): %d dropped "
                            "so far; is a receiver down?", self.cfg.notify_queue, self.dropped)

    # ---------------------------------------------------------------- sending

    async def _work(self) -> None:
        while True:
            notice = await self.queue.get()
            try:
                if notice.url is not None:
                    await self._post(notice)
                else:
                    await self._send_mail(notice)
                self.sent += 1
            except asyncio.CancelledError:
                raise
            except Retry as e:
                self._retry(notice, str(e))
            except Exception as e:  # a receiver's failure must not end the worker
                self._give_up(notice, f"{type(e).__name__}: {e}")
            finally:
                self.queue.task_done()

    async def _post(self, notice: Notice) -> None:
        assert self._session is not None and notice.url is not None
        try:
            async with self._session.post(
                    notice.url, data=notice.body, allow_redirects=False,
                    headers={"Content-Type": "application/json"}) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise Retry(f"{type(e).__name__}: {e}") from None
        if status >= 500 or status in RETRY_STATUSES:
            raise Retry(f"HTTP {status}")
        if status >= 300:
            raise ValueError(f"HTTP {status} (not retried)")

    async def _send_mail(self, notice: Notice) -> None:
        if self._mail is None:
            self._mail = ThreadPoolExecutor(1, thread_name_prefix="mgpu-mail")
        try:
            await asyncio.get_running_loop().run_in_executor(self._mail, self._smtp, notice)
        except (smtplib.SMTPException, OSError) as e:
            raise Retry(f"{type(e).__name__}: {e}") from None

    def _smtp(self, notice: Notice) -> None:
        """Send one mail (on the mail thread)."""
        cfg = self.cfg
        assert cfg.smtp_host is not None and notice.address is not None
        msg = EmailMessage()
        msg["From"] = cfg.smtp_from
        msg["To"] = notice.address
        msg["Subject"] = notice.subject
        msg.set_content(notice.text)
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.notify_timeout) as smtp:
            if cfg.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.smtp_user:
                smtp.login(cfg.smtp_user, cfg.smtp_password or "")
            smtp.send_message(msg)

    def _retry(self, notice: Notice, why: str) -> None:
        if notice.tries >= self.cfg.notify_retries:
            self._give_up(notice, why)
            return
        delay = min(MAX_BACKOFF, self.cfg.notify_backoff * 2 ** notice.tries)
        notice.tries += 1
        log.info("notification of job %d (%s) to %s failed (%s): try %d of %d in %gs",
                 notice.job_id, notice.event.lower(), _target(notice), why, notice.tries + 1,
                 self.cfg.notify_retries + 1, delay)

        def again() -> None:
            self._retries.discard(handle)
            self._put(notice)

        handle = asyncio.get_running_loop().call_later(delay, again)
        self._retries.add(handle)

    def _give_up(self, notice: Notice, why: str) -> None:
        self.failed += 1
        log.warning("notification of job %d (%s) to %s not sent after %d tries: %s",
                    notice.job_id, notice.event.lower(), _target(notice), notice.tries + 1, why)


def _target(notice: Notice) -> str:
    """Where a notice goes, for the log (a URL without its query, which may hold a key)."""
    if notice.url is None:
        return str(notice.address)
    return notice.url.split("?", 1)[0][:200]
