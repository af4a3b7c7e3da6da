"""Job notifications, the pure part: which events a job asked for, what is allowed as an
address or a webhook URL, and what a notification says.

A job asks for mail with ``mail_type`` (SLURM's ``--mail-type``: ``BEGIN``, ``END``,
``FAIL``, ``ALL``) and ``mail_user``, and for a webhook with ``notify_url`` (every begin and
end). Events:

* ``BEGIN``: a run of the job started on a node (a requeued job begins again);
* ``END``: the job ended, whatever its state;
* ``FAIL``: the job ended in any state but ``completed`` (failed, cancelled, timeout,
  node_fail). ``ALL`` is all three.

Sending is the master's (``server/notify.py``); nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mgpu.core.errors import UsageError
from mgpu.core.models import JobSpec, JobState, SimpleJob

MAIL_TYPES = ("BEGIN", "END", "FAIL", "ALL")
MAX_URL = 2048
MAX_ADDRESS = 254  # RFC 5321's limit on a forward path
URL_SCHEMES = ("http", "https")


def parse_mail_types(text: str) -> list[str]:
    """``--mail-type``'s comma list, upper-cased and checked (``END,FAIL``, ``all``)."""
    kinds = [k.strip().upper() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in MAIL_TYPES]
    if bad or not kinds:
        raise UsageError(f"--mail-type takes a comma list of {', '.join(MAIL_TYPES)}; "
                         f"got {text!r}")
    return list(dict.fromkeys(kinds))


def check_address(address: str, where: str = "") -> None:
    """A mail address: one ``@`` with text on both sides, no spaces, commas or line breaks
    (a line break would let an address write mail headers)."""
    local, at, domain = address.rpartition("@")
    if (not at or not local or not domain or len(address) > MAX_ADDRESS
            or any(c.isspace() or c in ",;<>\0" for c in address)):
        raise UsageError(f"{where}--mail-user {address[:80]!r} is not a mail address "
                         "(user@host)")


def check_url(url: str, allowed_hosts: tuple[str, ...] = (), where: str = "") -> None:
    """A webhook URL: ``http://`` or ``https://`` with a host, and (when the master names
    ``notify_hosts``) a host it allows: a name, or ``*.domain`` for any host under it.
    Other schemes (``file:``, ``ftp:``, ``gopher:`` ...) are refused: the master posts only
    HTTP."""
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise UsageError(f"{where}--notify URL is longer than {MAX_URL} characters or holds "
                         "spaces or control characters")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as e:
        raise UsageError(f"{where}--notify {url[:200]!r} is not a URL: {e}") from None
    if parts.scheme.lower() not in URL_SCHEMES or not host:
        raise UsageError(f"{where}--notify takes an http:// or https:// URL with a host, "
                         f"got {url[:200]!r}")
    if allowed_hosts and not host_allowed(host, allowed_hosts):
        raise UsageError(f"{where}--notify: this master posts only to "
                         f"{', '.join(allowed_hosts)} (notify_hosts), not to {host}")


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` is one of ``allowed`` (``*.example.org`` allows its subdomains)."""
    for rule in allowed:
        rule = rule.lower()
        if host == rule or (rule.startswith("*.") and host.endswith(rule[1:])):
            return True
    return False


@dataclass(frozen=True)
class NotifyPolicy:
    """What this master can send: mail (it has an SMTP server), and webhooks to which
    hosts (empty: any)."""

    mail: bool = False
    allowed_hosts: tuple[str, ...] = ()


def check_job(spec: JobSpec, policy: NotifyPolicy, where: str = "") -> None:
    """Raise :class:`UsageError` if a job's notification fields cannot be used here."""
    if spec.mail_type is not None:
        parse_mail_types(",".join(spec.mail_type))
        if spec.mail_user is None:
            raise UsageError(f"{where}--mail-type needs --mail-user ADDRESS")
    if spec.mail_user is not None:
        check_address(spec.mail_user, where)
        if not policy.mail:
            raise UsageError(f"{where}this master sends no mail (no smtp_host / "
                             "MGPU_SMTP_HOST): ask its admin, or use --notify URL")
    if spec.notify_url is not None:
        check_url(spec.notify_url, policy.allowed_hosts, where)


def event_of(job: SimpleJob) -> str | None:
    """The event a job's new state is: ``BEGIN`` (running), ``END`` (ended), else None."""
    if job.state is JobState.RUNNING:
        return "BEGIN"
    return "END" if job.state.ended else None


def wants_mail(job: SimpleJob, event: str) -> bool:
    """Whether ``job`` asked for mail on ``event`` (``BEGIN`` or ``END``)."""
    if not job.mail_type or not job.mail_user:
        return False
    kinds = set(job.mail_type)
    if "ALL" in kinds:
        return True
    if event == "BEGIN":
        return "BEGIN" in kinds
    return "END" in kinds or ("FAIL" in kinds and job.state is not JobState.COMPLETED)


def payload(job: SimpleJob, event: str, link: str) -> dict[str, Any]:
    """The webhook's JSON body (README "Notifications")."""
    return {
        "event": event.lower(),
        "job_id": job.id,
        "name": job.name,
        "user": job.user,
        "state": job.state.value,
        "exit_code": job.exit_code,
        "end_cause": None if job.end_cause is None else job.end_cause.value,
        "reason": job.reason,
        "node": job.node,
        "gpus": job.gpus,
        "run": job.requeues,
        "submitted_at": _iso(job.submitted_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "link": link,
    }


def mail_text(job: SimpleJob, event: str, link: str) -> tuple[str, str]:
    """A notification mail's subject and body."""
    what = {"BEGIN": "began", "END": f"ended: {job.state.value}"}.get(event, event.lower())
    if job.state.ended and job.exit_code is not None:
        what += f", exit code {job.exit_code}"
    subject = f"mgpu job {job.id} ({job.name[:60]}) {what}"
    subject = "".join(c if c.isprintable() else " " for c in subject)  # no header breaks
    lines = [subject, ""]
    for key, value in payload(job, event, link).items():
        if value is not None and key not in ("event",):
            lines.append(f"{key}: {value}")
    return subject, "\n".join(lines) + "\n"


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())
