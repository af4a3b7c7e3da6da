"""slurmrestd, SLURM's REST daemon, for the tests of the SLURM bridge's REST transport.

* :class:`SlurmRestd` starts ``slurmrestd`` against a running :class:`SlurmCluster` (its
  ``slurm.conf``), listening on a unix socket and, when asked, on a TCP port of 127.0.0.1,
  with the authentication plugins asked for (``rest_auth/local``: the caller's uid on the
  unix socket; ``rest_auth/jwt``: the ``X-SLURM-USER-TOKEN`` header). It runs in the
  foreground in its own process group, which :meth:`SlurmRestd.stop` signals. slurmrestd
  refuses to run as root (or as SlurmUser) unless ``SLURMRESTD_SECURITY=disable_user_check``
  is in its environment: these tests run as root, so it is. With ``rest_auth/jwt`` it also
  gets ``SLURM_JWT=daemon``, so that its requests to slurmctld carry the callers' tokens
  (without it, slurmctld sees munge credentials of slurmrestd's own user).
* :class:`JwtSlurmCluster` is a :class:`SlurmCluster` whose slurmctld also takes JSON Web
  Tokens (``AuthAltTypes=auth/jwt``, an HS256 key of its own), which slurmrestd's
  ``rest_auth/jwt`` needs: its ``slurm.conf`` is the usual one plus those two lines, in its
  own directory, so the session's SLURM (``slurm_session``) is left as it is.
  :meth:`JwtSlurmCluster.token` asks ``scontrol token`` for a user's token.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slurm_cluster import SlurmCluster, SlurmError, _free_port, wait_started

API = "/slurm/v0.0.38"
START_TIMEOUT = 30.0  # seconds until slurmrestd answers


class _UnixHTTP(http.client.HTTPConnection):
    """HTTP over a unix socket (the standard library speaks only TCP)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class SlurmRestd:
    """slurmrestd for ``cluster``, its files in ``root``: :meth:`start`, use :attr:`url`
    (the unix socket) or :attr:`http_url` (TCP, when ``tcp``), :meth:`stop`."""

    def __init__(self, cluster: SlurmCluster, root: Path,
                 auth: tuple[str, ...] = ("rest_auth/local",), tcp: bool = False) -> None:
        self.cluster = cluster
        self.root = root.absolute()
        self.socket = self.root / "slurmrestd.sock"
        self.auth = auth
        self.port = _free_port() if tcp else 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The bridge's ``--slurm-rest`` for the unix socket."""
        return f"unix:{self.socket}"

    @property
    def http_url(self) -> str:
        """The bridge's ``--slurm-rest`` for the TCP port."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start slurmrestd; return once it answers on its socket, or raise
        :class:`SlurmError` (after stopping it) with its log."""
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # (a stopped slurmrestd leaves it behind)
        listen = [f"unix:{self.socket}"] + ([f"127.0.0.1:{self.port}"] if self.port else [])
        env = dict(self.cluster.env)
        if os.geteuid() == 0:  # (slurmrestd refuses root otherwise)
            env["SLURMRESTD_SECURITY"] = "disable_user_check"
        if "rest_auth/jwt" in self.auth:  # its requests to slurmctld carry the callers' JWTs
            env["SLURM_JWT"] = "daemon"
        with open(self.root / "slurmrestd.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["slurmrestd", "-f", str(self.cluster.conf), "-a", ",".join(self.auth),
                 "-s", "openapi/v0.0.38", *listen],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.root,
                close_fds=True, process_group=0)
        why = wait_started(self.answers, [self.proc], timeout, "answer")
        if why is not None:
            self.stop()
            raise SlurmError(f"slurmrestd did not start: {why}\n{self.log()}")

    def answers(self) -> bool:
        """Whether slurmrestd answers HTTP on its unix socket (with ``rest_auth/jwt``
        alone, a request without a token is answered 401: an answer all the same)."""
        if not self.socket.exists():
            return False
        conn = _UnixHTTP(str(self.socket), 10)
        try:
            conn.request("GET", "/openapi/v3")
            return conn.getresponse().status in (200, 401)
        except OSError:
            return False
        finally:
            conn.close()

    def log(self, lines: int = 30) -> str:
        """The tail of slurmrestd's log."""
        try:
            text = (self.root / "slurmrestd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """Stop slurmrestd's process group: SIGTERM, then SIGKILL after ``grace``."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def running_restd(cluster: SlurmCluster, root: Path | None = None,
                  **options: Any) -> Iterator[SlurmRestd]:
    """slurmrestd for ``cluster`` (``options``: :class:`SlurmRestd`'s), its files in
    ``root`` (default: a fresh temporary directory, removed after): started, yielded,
    stopped."""
    made = root is None
    where = Path(tempfile.mkdtemp(prefix="mgpu-restd-")) if root is None else root
    rest = SlurmRestd(cluster, where, **options)
    try:
        rest.start()
        yield rest
    finally:
        rest.stop()
        if made:
            shutil.rmtree(where, ignore_errors=True)


class JwtSlurmCluster(SlurmCluster):
    """A single-host SLURM whose slurmctld takes JWTs too (``AuthAltTypes=auth/jwt``)."""

    def write_config(self) -> None:
        super().write_config()
        key = self.root / "state" / "jwt_hs256.key"
        key.write_bytes(secrets.token_bytes(32))
        key.chmod(0o600)
        with self.conf.open("a") as f:
            f.write(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={key}\n")

    def token(self, user: str = "root", lifespan: int = 3600) -> str:
        """A JWT for ``user`` from ``scontrol token`` (signed with the cluster's key)."""
        out = subprocess.run(["scontrol", "token", f"username={user}",
                              f"lifespan={lifespan}"], env=self.env, capture_output=True,
                             text=True, check=True, timeout=30).stdout
        return out.strip().partition("SLURM_JWT=")[2]
