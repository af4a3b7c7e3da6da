"""The node's own credential (``server/nodeauth.py``): given by the master on the node id's
first join, kept in ``DATA_DIR/node.credential`` (0600) as ``NODE_ID CREDENTIAL``, and
presented in every later registration. A file for another node id is not presented."""

from __future__ import annotations

from pathlib import Path

from mgpu.utils.secretfile import read_secret, write_secret

FILE = "node.credential"


def load(data_dir: Path, node_id: str) -> str | None:
    """The credential of ``node_id`` kept in ``data_dir``, or None."""
    text = read_secret(data_dir / FILE, "node credential file")
    if text is None:
        return None
    owner, _, credential = text.partition(" ")
    return credential.strip() or None if owner == node_id else None


def save(data_dir: Path, node_id: str, credential: str) -> None:
    """Keep ``credential`` for ``node_id`` (0600, replacing the file atomically)."""
    write_secret(data_dir / FILE, f"{node_id} {credential}")
