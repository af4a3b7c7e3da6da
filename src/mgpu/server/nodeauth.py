"""Node credentials: each node id, once it has joined, is bound to a secret of its own.

The join secret lets a machine into the cluster; it does not make it any node it names. On
a node id's first registration the master makes a credential (256 random bits), saves only
its SHA-256 digest (``node_credentials`` table), and sends it in the ``Registered`` reply;
the agent keeps it (0600, in its data dir) and presents it in every later ``Register``.
From then on a registration for that id without it (or with another) is refused, whoever
holds the join secret: a machine cannot take over a live node's id, its jobs and its GPUs.

An admin resets a node's credential (``DELETE /api/v1/nodes/{node_id}/credential``) when
the node lost its data dir; the next registration for the id then gets a new one. A node
that presents a credential the master has no digest of (reset, or a new master) is given a
new one too: the id had none to protect.
"""

from __future__ import annotations

import hashlib
import hmac

from mgpu.server.auth import MAX_TOKEN, new_token
from mgpu.server.store import NodeCredentialRow

RESET_HINT = (
    "if this machine is that node and lost its data dir, an admin resets the node's "
    "credential (`mgpu nodes --reset-credential {node}`) "
    "and it joins again; otherwise give this node another id (--node-id / MGPU_NODE_ID)"
)


def _digest(credential: str) -> bytes:
    return hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()


class NodeCredentials:
    """The node credentials in memory, by node id; the database holds the same."""

    def __init__(self, rows: list[NodeCredentialRow]) -> None:
        self._by_node = {r.node_id: bytes.fromhex(r.digest) for r in rows}

    def has(self, node_id: str) -> bool:
        return node_id in self._by_node

    def refusal(self, node_id: str, given: str | None) -> str | None:
        """Why a registration for ``node_id`` presenting ``given`` must be refused, or None
        (the credential matches, or the id has none yet)."""
        want = self._by_node.get(node_id)
        if want is None:
            return None
        if given is not None and len(given) <= MAX_TOKEN and hmac.compare_digest(
                _digest(given), want):
            return None
        what = "did not present it" if given is None else "presented another"
        return (f"node {node_id} has its own credential and this agent {what}: "
                + RESET_HINT.replace("{node}", node_id))

    def make(self, node_id: str, now: float) -> tuple[str, NodeCredentialRow]:
        """A new credential for ``node_id`` and its row (in effect once :meth:`add`-ed, after
        it is saved)."""
        credential = new_token()
        return credential, NodeCredentialRow(node_id, _digest(credential).hex(), now)

    def add(self, row: NodeCredentialRow) -> None:
        self._by_node[row.node_id] = bytes.fromhex(row.digest)

    def remove(self, node_id: str) -> None:
        self._by_node.pop(node_id, None)
