"""How an agent joins its master: the address it dials, the join secret it presents, the
TLS it verifies the master with, and the errors that stop it when the master says no.

The join secret (``Authorization: Bearer`` on the WebSocket handshake) is ``join_token``
(``MGPU_JOIN_TOKEN``), else ``join_token_file``'s, else the secret of a master on this
machine (its default data dir), when readable. A refused secret or a certificate that does
not verify is not retried: each error here says what to fix.
"""

from __future__ import annotations

import logging
from typing import Any

from mgpu.core.api_paths import NODE_WS
from mgpu.core.config import NodeConfig
from mgpu.core.errors import ConfigError, MgpuError
from mgpu.utils.secretfile import read_secret
from mgpu.utils.settings import default_master_data_dir


def uses_tls(cfg: NodeConfig) -> bool:
    """Whether the agent dials ``https`` (``tls``, or a ``ca`` to verify against)."""
    return cfg.tls or cfg.ca is not None


def master_url(cfg: NodeConfig) -> str:
    """The master's node WebSocket URL."""
    host = cfg.master_host
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if uses_tls(cfg) else "http"
    return f"{scheme}://{host}:{cfg.master_port}{NODE_WS}"


def join_secret(cfg: NodeConfig, log: logging.Logger) -> str | None:
    """The join secret to present: ``join_token``, else ``join_token_file``'s, else a
    local master's (its default data dir), when readable; None when there is none."""
    if cfg.join_token:
        return cfg.join_token.strip()
    if cfg.join_token_file is not None:
        return read_secret(cfg.join_token_file, "join secret file", must_exist=True)
    local = default_master_data_dir() / "join.token"
    try:
        return read_secret(local, "join secret file")
    except ConfigError as e:  # not ours to read, or too open: as if absent, but say so
        log.warning("not using %s: %s", local, e.message)
        return None


def client_ssl(cfg: NodeConfig) -> Any:
    """The client SSL context that verifies the master (``ca``, else the system's); None
    without TLS. A CA file that cannot be loaded raises :class:`ConfigError`."""
    if not uses_tls(cfg):
        return None
    import ssl

    try:
        ctx = ssl.create_default_context(cafile=str(cfg.ca) if cfg.ca is not None else None)
        if cfg.ca is not None:  # any certificate in the file may be the anchor
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return ctx
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the CA file {cfg.ca} ({e}): check --ca / "
                          "MGPU_CA") from e


def refusal(cfg: NodeConfig, status: int, secret: str | None) -> MgpuError | None:
    """The error for a handshake answered with HTTP ``status``: a 401 means the join secret
    is missing or wrong (not retried); None for anything else (retried)."""
    if status != 401:
        return None
    where = f"{cfg.master_host}:{cfg.master_port}"
    if secret is None:
        why = "this node has no join secret"
    else:
        why = "it does not accept this node's join secret"
    return MgpuError(
        f"the master at {where} refused node {cfg.node_id}: {why}; give the node the "
        "master's join secret (the master's DATA_DIR/join.token): --join-token-file FILE "
        "or MGPU_JOIN_TOKEN"
    )


def certificate_error(cfg: NodeConfig, why: object) -> MgpuError:
    """The error for a master whose TLS certificate does not verify (``why``)."""
    return MgpuError(
        f"cannot verify the TLS certificate of the master at "
        f"{cfg.master_host}:{cfg.master_port} ({why}): "
        + (f"it is not signed by the CA in {cfg.ca}" if cfg.ca
           else "pass --ca FILE (or set MGPU_CA) to the CA that signed it")
    )


def unreachable_hint(cfg: NodeConfig, dropped: bool) -> str:
    """What to add to "cannot reach the master": a TLS master drops a plain handshake
    without a word (``dropped``), so a node without TLS is told how to turn it on."""
    if dropped and not uses_tls(cfg):
        return ("; if it serves TLS, pass --ca FILE (or set MGPU_CA), or "
                "MGPU_TLS=1 for a certificate from a public CA")
    return ""
