"""Who may scrape ``/metrics``: one rule for the master's and every agent's.

* With a **metrics token** configured (``metrics_token_file``, else ``metrics_token``), a
  scrape must present it: ``Authorization: Bearer TOKEN`` (Prometheus: ``authorization:
  {credentials_file: ...}``); else 401. The token opens ``/metrics`` and nothing else: it
  is not a client token (the master's API refuses it), so handing it to a monitoring
  system gives away no jobs, outputs or commands.
* **Without one**, only the machine itself may scrape (a peer address in 127.0.0.0/8 or
  ``::1``); a scrape from elsewhere gets 403 saying how to set a token. A Prometheus on the
  same machine needs no set-up; one elsewhere needs the token (a reverse proxy on the
  machine counts as the machine: it must do its own checks).

With authentication off (``auth = false``, benchmarks only) the master's ``/metrics`` is
open like the rest of its API.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from mgpu.core.errors import Forbidden, Unauthorized
from mgpu.utils.secretfile import read_secret

SET_TOKEN = ("set metrics_token_file (MGPU_METRICS_TOKEN_FILE) or metrics_token "
             "(MGPU_METRICS_TOKEN) on the master and the nodes, and give it to Prometheus "
             "(authorization: credentials_file)")


def metrics_token(token: str | None, token_file: Path | None) -> str | None:
    """The configured metrics token: ``token_file``'s (which must exist, owner-only), else
    ``token``; None when neither is set (loopback-only scraping)."""
    if token_file is not None:
        return read_secret(token_file, "metrics token file", must_exist=True)
    if token is None:
        return None
    return token.strip() or None


def check_scrape(remote: str | None, authorization: str | None, token: str | None) -> None:
    """Raise :class:`Unauthorized` or :class:`Forbidden` (with what to do) unless a scrape
    from peer address ``remote`` with header ``authorization`` may read the metrics."""
    if token is not None:
        given = _bearer(authorization)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized(
                "scraping /metrics needs the metrics token: send `Authorization: Bearer "
                "TOKEN` with the token of metrics_token_file / metrics_token (Prometheus: "
                "authorization: {credentials_file: FILE})"
                if given is None else "wrong metrics token: use the token of "
                "metrics_token_file / metrics_token of this master or node")
        return
    if not is_loopback(remote):
        raise Forbidden(
            f"/metrics answers only this machine when no metrics token is set (this scrape "
            f"came from {remote or 'an unknown address'}): {SET_TOKEN}")


def is_loopback(remote: str | None) -> bool:
    """Whether peer address ``remote`` is this machine (IPv4 mapped in IPv6 included)."""
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
