"""Who is asking: client tokens, the node join secret, and the files the master keeps them in.

* A **token** is ``secrets.token_urlsafe(32)`` (256 random bits) naming one user, admin or
  not. The master keeps only its SHA-256 digest (``tokens`` table) and checks a presented
  token by digest: the table is a dict keyed by digest, so a lookup's timing depends on the
  digest alone, which nobody can steer toward a stored one without the token; the final
  equality is ``hmac.compare_digest`` all the same.
* The **join secret** lets node agents in (``DATA_DIR/join.token``). It is not a user
  token: it opens only the node WebSocket, and a user token does not.
* **First start** (no admin token in the database): the master creates the join secret and
  an admin token for the Unix user it runs as, in its data dir (``join.token``,
  ``admin.token``; dir 0700, files 0600), and on every start writes the admin token to the
  CLI's default token file (``$XDG_CONFIG_HOME/mgpu/token``) unless that file already holds
  a token this master accepts: ``mgpu up`` then ``mgpu submit`` works with no set-up
  (:func:`load_secrets`).
* **TLS**: :func:`tls_context` loads the master's certificate and key.

Files holding secrets are written and read with :mod:`mgpu.utils.secretfile` (0600, and a
file others may read is refused, as ssh refuses such a key).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pwd
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgpu.core.config import MasterConfig
from mgpu.core.errors import ConfigError, MgpuError
from mgpu.core.models import SimpleJob
from mgpu.server.store import AuditRow, Batch, Store, TokenRow
from mgpu.utils.secretfile import read_secret, write_secret
from mgpu.utils.xdg import mgpu_config_path

log = logging.getLogger("mgpu.master")

TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 256 bits, 43 characters
MAX_TOKEN = 512  # longer Authorization values are not looked at
JOIN_FILE = "join.token"
ADMIN_FILE = "admin.token"

NO_TOKEN = (
    "no token: run on the master's machine as its user, or set MGPU_TOKEN / --token-file; "
    "an admin creates tokens with `mgpu token create`"
)
BAD_TOKEN = (
    "the token was not accepted (revoked, mistyped, or made by another master): set "
    "MGPU_TOKEN / --token-file to a token of this master; an admin creates tokens with "
    "`mgpu token create`"
)
JOIN_HINT = (
    "give the node the master's join secret (the master's DATA_DIR/join.token): "
    "--join-token-file FILE or MGPU_JOIN_TOKEN"
)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def local_user() -> str:
    """The name of the Unix user this process runs as."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (None when absent)."""
    if not header:
        return None
    if header.startswith("Bearer ") and " " not in header[7:]:
        return header[7:] or None  # the usual form, quickly
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


REVOKED = "its token was revoked"  # why a request still open with a token is cancelled

@dataclass(frozen=True)
class Identity:
    """Who made a request: a token's user, or (auth off) whoever the request says."""

    user: str
    admin: bool
    token_id: int | None = None

    def owns(self, job: SimpleJob) -> bool:
        """May act on ``job``: cancel it, read its output, write its input, signal it."""
        return self.admin or job.user == self.user

    def sees(self, job: SimpleJob, private: bool) -> bool:
        """May see ``job`` in listings (all jobs, unless ``private_jobs``)."""
        return not private or self.owns(job)


class Tokens:
    """The active tokens in memory, by digest; the database holds the same (and revoked ones)."""

    def __init__(self, rows: list[TokenRow], last_id: int) -> None:
        self._rows: dict[str, TokenRow] = {}
        self._by_digest: dict[bytes, tuple[bytes, Identity]] = {}
        for row in rows:
            self.add(row)
        self._next_id = last_id + 1

    def check(self, token: str | None) -> Identity | None:
        """The identity of ``token``, or None when it is not an active token."""
        if token is None or len(token) > MAX_TOKEN:
            return None
        want = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        hit = self._by_digest.get(want)
        if hit is None or not hmac.compare_digest(hit[0], want):
            return None
        return hit[1]

    def make(self, user: str, admin: bool, now: float) -> tuple[str, TokenRow]:
        """A new token and its row (not active until :meth:`add`, once saved)."""
        token = new_token()
        row = TokenRow(self._next_id, user, admin, digest(token), now)
        self._next_id += 1
        return token, row

    def add(self, row: TokenRow) -> None:
        raw = bytes.fromhex(row.digest)
        self._rows[row.digest] = row
        self._by_digest[raw] = (raw, Identity(row.user, row.admin, row.id))

    def revoke(self, ids: set[int]) -> None:
        for row in [r for r in self._rows.values() if r.id in ids]:
            del self._rows[row.digest]
            del self._by_digest[bytes.fromhex(row.digest)]

    def active(self) -> list[TokenRow]:
        return sorted(self._rows.values(), key=lambda r: r.id)

    def admins(self) -> int:
        return sum(1 for r in self._rows.values() if r.admin)


class JoinSecret:
    """The node join secret, compared by digest in constant time."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._digest = hashlib.sha256(secret.encode()).digest()

    def check(self, given: str | None) -> bool:
        if given is None or len(given) > MAX_TOKEN:
            return False
        return hmac.compare_digest(
            hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest(), self._digest)


# ---------------------------------------------------------------------- files


def client_token_path() -> Path:
    """Where this user's ``mgpu`` command looks for its token (``mgpu.client.auth``)."""
    return Path(mgpu_config_path("token"))


def join_secret(data_dir: Path) -> JoinSecret:
    """The join secret in ``DATA_DIR/join.token``, made on first use."""
    path = data_dir / JOIN_FILE
    secret = read_secret(path, "join secret file")
    if not secret:
        secret = new_token()
        write_secret(path, secret)
    return JoinSecret(secret)


def load_secrets(store: Store, data_dir: Path) -> tuple[Tokens, JoinSecret]:
    """The master's tokens and join secret. On first start (no admin token yet) make the
    join secret and an admin token for this Unix user; then write that token where this
    user's ``mgpu`` command looks for it (:func:`write_client_token`)."""
    tokens = Tokens(store.load_tokens(), store.last_token_id())
    admin_path = data_dir / ADMIN_FILE
    try:
        join = join_secret(data_dir)
        token = read_secret(admin_path, "admin token file")
        if not tokens.admins():
            now = time.time()
            token, row = tokens.make(local_user(), True, now)
            store.write(Batch(tokens=[row], audit=[AuditRow(
                now, "master", "token.create",
                f"token {row.id} for {row.user} (admin), on first start")]))
            tokens.add(row)
            write_secret(admin_path, token)
            log.info("first start: made the join secret (%s) and an admin token for %s (%s)",
                     data_dir / JOIN_FILE, row.user, admin_path)
    except OSError as e:
        raise MgpuError(f"cannot write the master's secrets in {data_dir}: {e}") from e
    if token is not None and tokens.check(token) is not None:
        write_client_token(tokens, token, admin_path)
    return tokens, join


def write_client_token(tokens: Tokens, token: str, admin_path: Path) -> None:
    """Write the admin token where this user's ``mgpu`` finds it, unless a token of this
    master is there already (one the user put there, or an earlier start's)."""
    path = client_token_path()
    try:
        there = read_secret(path, "token file")
    except ConfigError as e:
        log.warning("%s; not writing the admin token there", e.message)
        return
    if there is not None and tokens.check(there) is not None:
        return
    try:
        write_secret(path, token)
    except OSError as e:
        log.warning("cannot write the admin token to %s (%s): give the mgpu command %s with "
                    "--token-file", path, e, admin_path)
        return
    log.info("wrote the admin token to %s, where the mgpu command of %s finds it",
             path, local_user())


def tls_context(cfg: MasterConfig) -> Any:
    """The server's SSL context from ``tls_cert``/``tls_key``, or None without them."""
    cert, key = cfg.tls_cert, cfg.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together: give both (or neither)")
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the TLS certificate {cert} and key {key}: {e}; "
                          "`mgpu certs` makes a pair") from e
    return ctx


def warn_if_exposed(cfg: MasterConfig, port: int, *, tls: bool) -> None:
    """Say loudly, at start, when the master runs without authentication or serves a
    network without TLS."""
    if not cfg.auth:
        log.warning(
            "AUTHENTICATION IS OFF (auth = false / MGPU_AUTH=0): anyone who can reach port "
            "%d can run commands on your nodes as any user; this switch is for "
            "benchmarks only", port,
        )
    if not tls and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without TLS: requests are authenticated, but tokens, the "
            "join secret, commands, environments and job output cross the network in "
            "clear text, readable (and tokens reusable) by anyone on the path; use "
            "--tls-cert/--tls-key (`mgpu certs` makes them) unless the network is trusted",
            cfg.host,
        )
