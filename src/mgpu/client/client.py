"""``SimpleClient``: the master's HTTP API as typed Python calls. It never prints.

Every method is one request (``wait`` repeats a long poll) on one persistent connection;
replies are decoded into the structs of :mod:`mgpu.core.models` and
:mod:`mgpu.core.messages`. Errors are raised from the :mod:`mgpu.core.errors` tree:
:class:`~mgpu.core.errors.ConnectionFailed` when the master cannot be reached, else the class
its error status stands for (:func:`~mgpu.core.errors.error_for_status`: 404
:class:`~mgpu.core.errors.NotFound`, 422 :class:`~mgpu.core.errors.Rejected`, 401
:class:`~mgpu.core.errors.Unauthorized`, 403 :class:`~mgpu.core.errors.Forbidden`, any other
an :class:`~mgpu.core.errors.ApiError` with the master's text).

Every request carries the client's token (:mod:`mgpu.client.auth` says where it comes from).

Start-up cost matters here (``mgpu submit`` runs this module in a fresh interpreter), so
msgspec and the models are imported by the calls that decode into them, not at import;
:meth:`SimpleClient.submit_job` needs neither, nor even the ``json`` module
(:mod:`mgpu.utils.plainjson` does its JSON).
"""

from __future__ import annotations

import os

from mgpu.client.auth import find_token, login_name
from mgpu.client.paths import API, jobs_path, quote
from mgpu.client.replies import decode as _decode
from mgpu.client.replies import error_from_reply, unreadable
from mgpu.client.transport import Connection
from mgpu.core.errors import ApiError, UsageError
from mgpu.utils import plainjson
from mgpu.utils.secretenv import without_secrets

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from mgpu.client.output_stream import OutputStream
    from mgpu.core.config import ClientConfig
    from mgpu.core.messages import (
        AuditEvent,
        CancelResult,
        HealthReply,
        TokenCreated,
        TokenInfo,
        WhoAmIReply,
    )
    from mgpu.core.models import JobSpec, JobState, NodeInfo, SimpleJob

WAIT_POLL = 30.0  # seconds one long poll of ``wait`` may last on the master


def _encode(obj: Any) -> bytes:
    import msgspec

    return msgspec.json.encode(obj)


class SimpleClient:
    """A client of one master: ``SimpleClient('localhost', 8080).submit_job(gpus=2, cmd=...)``.

    ``timeout`` bounds each request in seconds (a followed output stream has none). The
    token is ``token``, else the one in ``token_file``, else ``$MGPU_TOKEN``, else the one
    the master wrote to ``$XDG_CONFIG_HOME/mgpu/token``. With ``ca`` (a CA file) or ``tls``
    it speaks HTTPS and verifies the master's certificate. Not thread-safe: use one client
    per thread.
    """

    def __init__(self, host: str = "localhost", port: int = 8080, timeout: float = 30.0, *,
                 token: str | None = None, token_file: str | None = None,
                 ca: str | None = None, tls: bool = False) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.token = token if token is not None else find_token(token_file)
        self.ca = ca
        self.tls = tls or ca is not None
        self._conn = self.connection(timeout)

    @classmethod
    def from_config(cls, cfg: ClientConfig, token_file: str | None = None) -> SimpleClient:
        return cls(cfg.master_host, cfg.master_port, cfg.timeout, token_file=token_file,
                   ca=cfg.ca, tls=cfg.tls)

    def connection(self, timeout: float | None) -> Connection:
        """A new connection to the master, with this client's token and TLS settings."""
        return Connection(self.host, self.port, timeout, token=self.token, tls=self.tls,
                          ca=self.ca)

    def copy(self, timeout: float | None = None) -> SimpleClient:
        """Another client of the same master as the same user (for another thread)."""
        return SimpleClient(self.host, self.port, self.timeout if timeout is None else timeout,
                            token=self.token or "", ca=self.ca, tls=self.tls)

    @property
    def address(self) -> str:
        """``host:port`` of the master, as error messages show it."""
        return self._conn.address

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SimpleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- jobs

    def submit_job(
        self,
        gpus: int = 1,
        cmd: str = "",
        name: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        time_limit: int | None = None,
        requeue: bool = True,
        max_requeue: int | None = None,
        interactive: bool = False,
        stdin: bool = False,
        pty: bool = False,
        argv: list[str] | None = None,
        priority: int | None = None, nice: int = 0,
        gpu_type: str | None = None, gpu_mem_mib: int | None = None,
        notify: dict[str, Any] | None = None,
        **controls: Any,
    ) -> int:
        """Queue ``cmd`` (a shell command line) to run with ``gpus`` GPUs; return its id.

        ``cwd`` defaults to the current directory and ``env`` to this process's whole
        environment; ``user`` is the submitting Unix user. ``time_limit`` is in seconds
        (None: the master's default; 0: unlimited). ``interactive`` marks an srun (never
        requeued, cancelled when its clients go), ``stdin`` keeps the job's input open for
        ``mgpu attach``, ``pty`` runs it on a pseudo-terminal. With ``argv`` the job runs
        that program and arguments without a shell (``cmd`` is then what listings show).
        ``controls``: more :class:`~mgpu.core.models.JobSpec` fields (``dependency``, ...).
        ``gpu_type`` / ``gpu_mem_mib``: GPU constraints (README "GPUs as they are").
        ``notify``: notification fields (``mail_type``, ``mail_user``, ``notify_url``).
        Built as plain JSON (the fields of :class:`~mgpu.core.models.JobSpec`, which the
        master validates) so that a submit does not pay for importing msgspec.
        """
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise UsageError(f"gpus must be a positive whole number of GPUs, got {gpus!r}")
        if not cmd.strip():
            raise UsageError("a job needs a command to run")
        spec = {
            "command": cmd,
            "gpus": gpus,
            "name": name,
            "cwd": cwd or os.getcwd(),
            "env": without_secrets(os.environ) if env is None else env,
            "user": login_name(),
            "time_limit": time_limit, "requeue": requeue, "max_requeue": max_requeue,
            "interactive": interactive, "stdin": stdin, "pty": pty, "argv": argv,
            "priority": priority, "nice": nice,  # points up (admins) and down (see README)
            **controls,
            **(notify or {}),
        }
        spec.update((k, v) for k, v in (("gpu_type", gpu_type), ("gpu_mem_mib", gpu_mem_mib))
                    if v is not None)  # (only when given: an older master knows neither)
        body = plainjson.dumps({"jobs": [spec]}).encode()
        reply = plainjson.loads(self._call("POST", f"{API}/jobs", body))
        return int(reply["job_ids"][0])

    def submit_jobs(self, specs: list[JobSpec]) -> list[int]:
        """Queue several jobs in one request (saved together); their ids in order."""
        from mgpu.core.messages import SubmitReply, SubmitRequest

        body = _encode(SubmitRequest(jobs=specs))
        return _decode(self._call("POST", f"{API}/jobs", body), SubmitReply).job_ids

    def list_jobs(
        self,
        states: Iterable[JobState | str] | None = None,
        user: str | None = None,
        all: bool = False,
    ) -> list[SimpleJob]:
        """Jobs in queue order: pending and running ones, ended ones too with ``all``.

        ``states`` picks the states to show instead; ``user`` keeps one user's jobs.
        """
        from mgpu.core.messages import JobListReply

        return _decode(self._call("GET", jobs_path(states, user, all)), JobListReply).jobs

    def list_jobs_plain(
        self,
        states: Iterable[JobState | str] | None = None,
        user: str | None = None,
        all: bool = False,
    ) -> list[dict[str, Any]]:
        """:meth:`list_jobs` as the master's JSON has them (dicts, times in RFC 3339),
        read without msgspec: what ``mgpu queue`` needs to start fast."""
        data = self._call("GET", jobs_path(states, user, all))
        try:
            jobs: list[dict[str, Any]] = plainjson.loads(data)["jobs"]
        except (ValueError, TypeError, KeyError) as e:
            raise unreadable(e) from None
        return jobs

    def get_job(self, job_id: int) -> SimpleJob:
        """One job in full; :class:`~mgpu.core.errors.NotFound` for an unknown id."""
        from mgpu.core.models import SimpleJob

        return _decode(self._call("GET", f"{API}/jobs/{int(job_id)}"), SimpleJob)

    def cancel(self, *job_ids: int) -> list[CancelResult]:
        """Cancel jobs; one result per id, in order (some may fail while others succeed)."""
        from mgpu.core.messages import CancelReply, CancelRequest

        body = _encode(CancelRequest(job_ids=[int(j) for j in job_ids]))
        return _decode(self._call("POST", f"{API}/jobs/cancel", body), CancelReply).results

    def wait(self, *job_ids: int, timeout: float | None = None) -> list[SimpleJob]:
        """Block until every job has ended, or ``timeout`` seconds have passed.

        Returns the jobs as last seen, in the order asked; after a timeout some of them
        may still be pending or running.
        """
        import time

        from mgpu.core.messages import JobListReply, WaitRequest

        ids = [int(j) for j in job_ids]
        if not ids:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            poll = WAIT_POLL
            if deadline is not None:
                poll = max(0.0, min(poll, deadline - time.monotonic()))
            body = _encode(WaitRequest(job_ids=ids, timeout=poll))
            data = self._call("POST", f"{API}/jobs/wait", body, timeout=poll + self.timeout)
            jobs = _decode(data, JobListReply).jobs
            if all(j.state.ended for j in jobs):
                return jobs
            if deadline is not None and time.monotonic() >= deadline:
                return jobs

    # --------------------------------------------------------------------------- output

    def stream_output(
        self,
        job_id: int,
        offset: int = 0,
        follow: bool = True,
        *,
        status: bool = False,
        attach: bool = False,
        task: int | None = None, label: bool = False,
    ) -> OutputStream:
        """A job's output frames from byte ``offset`` of its framed output.

        With ``follow`` the stream stays open while the job runs and ends with the job;
        without it, it ends with the output there is now. ``status`` adds placement frames
        (stream 3); ``attach`` counts this stream as a client of an interactive job (which
        is cancelled once it has none for the master's grace period). A multi-node job's
        output is its tasks' lines merged (``label``: as ``0: line``), or ``task``'s alone.
        """
        path = (f"{API}/jobs/{int(job_id)}/output?offset={int(offset)}&follow={int(follow)}"
                f"&status={int(status)}&attach={int(attach)}"
                + ("" if task is None else f"&task={int(task)}"))
        from mgpu.client.output_stream import OutputStream

        # A connection of its own, so the client can make other calls while it streams.
        conn = self.connection(self.timeout)
        resp = conn.request("GET", path, endless=follow)
        if resp.status >= 300:
            data = resp.read()
            conn.close()
            raise error_from_reply(resp.status, data)
        return OutputStream(conn, resp, offset, label)

    def signal(self, job_id: int, signum: int) -> None:
        """Send signal ``signum`` to a running job's process group."""
        body = plainjson.dumps({"signum": int(signum)}).encode()
        self._call("POST", f"{API}/jobs/{int(job_id)}/signal", body)

    def resize(self, job_id: int, rows: int, cols: int) -> None:
        """Tell a job running on a pseudo-terminal its new window size."""
        body = plainjson.dumps({"rows": int(rows), "cols": int(cols)}).encode()
        self._call("POST", f"{API}/jobs/{int(job_id)}/resize", body)

    def run_interactive(
        self,
        cmd: str,
        gpus: int = 1,
        stdin: bytes | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        quiet: bool = True,
        **options: Any,
    ) -> int:
        """Run ``cmd`` as an interactive job (``mgpu srun``) and wait for it: its stdout and
        stderr go to the callbacks as they come (default: this process's own), ``stdin``
        (bytes) is its input. Returns its exit code (128+N for signal N), or 125 when it
        never ran to one. ``options`` are :meth:`submit_job`'s."""
        from mgpu.client.srun import Interactive

        job_id = self.submit_job(gpus=gpus, cmd=cmd, interactive=True,
                                 stdin=stdin is not None, **options)
        session = Interactive(self, job_id, quiet=quiet, on_stdout=on_stdout,
                              on_stderr=on_stderr, stdin_data=stdin)
        return session.run()

    def logs(self, job_id: int, offset: int = 0) -> str:
        """All output so far, stdout and stderr in the order written, decoded as UTF-8."""
        out = b"".join(data for _, data in self.stream_output(job_id, offset, follow=False))
        return out.decode("utf-8", errors="replace")

    # ---------------------------------------------------------------------------- nodes

    def nodes(self) -> list[NodeInfo]:
        """Every node the master knows, up or down, with who holds each GPU."""
        import msgspec

        from mgpu.core.models import NodeInfo

        reply = _decode(self._call("GET", f"{API}/nodes"), dict[str, msgspec.Raw])
        if "nodes" not in reply:
            raise ApiError("the master's node list has no 'nodes'", 502)
        return _decode(reply["nodes"], list[NodeInfo])

    def health(self) -> HealthReply:
        from mgpu.core.messages import HealthReply

        return _decode(self._call("GET", f"{API}/health"), HealthReply)

    def whoami(self) -> WhoAmIReply:
        """The user (and whether an admin) this client's token stands for."""
        from mgpu.core.messages import WhoAmIReply

        return _decode(self._call("GET", f"{API}/whoami"), WhoAmIReply)

    # ------------------------------------------------------------------- admin: tokens

    def create_token(self, user: str, admin: bool = False) -> TokenCreated:
        """A new token for ``user`` (admins only); the token itself is shown only here."""
        from mgpu.core.messages import TokenCreated, TokenCreateRequest

        body = _encode(TokenCreateRequest(user=user, admin=admin))
        return _decode(self._call("POST", f"{API}/tokens", body), TokenCreated)

    def list_tokens(self) -> list[TokenInfo]:
        """Every active token, without the tokens themselves (admins only)."""
        from mgpu.core.messages import TokenListReply

        return _decode(self._call("GET", f"{API}/tokens"), TokenListReply).tokens

    def revoke_tokens(self, *, user: str | None = None, token_id: int | None = None
                      ) -> list[int]:
        """Revoke one token by id, or every token of ``user`` (admins only); their ids."""
        from mgpu.core.messages import TokenRevokeReply, TokenRevokeRequest

        body = _encode(TokenRevokeRequest(id=token_id, user=user))
        return _decode(self._call("POST", f"{API}/tokens/revoke", body),
                       TokenRevokeReply).revoked

    def events(self, limit: int = 50, node: str | None = None) -> list[AuditEvent]:
        """The last ``limit`` entries of the audit log, oldest first (admins only); with
        ``node``, that node's own entries: its joins and the warnings and errors it logged."""
        from mgpu.core.messages import EventListReply

        where = "" if node is None else f"&node={quote(node)}"
        data = self._call("GET", f"{API}/events?limit={int(limit)}{where}")
        return _decode(data, EventListReply).events

    def reset_node_credential(self, node_id: str) -> str:
        """Forget ``node_id``'s credential (admins only): its next join, with the join
        secret, gets a new one (for a node that lost its data dir). The node id."""
        from mgpu.core.messages import NodeCredentialReset

        data = self._call("DELETE", f"{API}/nodes/{quote(node_id)}/credential")
        return _decode(data, NodeCredentialReset).node_id

    # ------------------------------------------------------------------------ internals

    def _call(
        self, method: str, path: str, body: bytes | None = None, *, timeout: float | None = None
    ) -> bytes:
        """One request; the reply body, or the error it stands for raised."""
        resp = self._conn.request(method, path, body, timeout=timeout)
        data = resp.read()
        if resp.status >= 300:
            raise error_from_reply(resp.status, data)
        return data


def __getattr__(name: str) -> object:
    # OutputStream is published here too, but loaded on first use: submit and queue never are.
    if name == "OutputStream":
        from mgpu.client.output_stream import OutputStream

        return OutputStream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OutputStream", "SimpleClient"]
