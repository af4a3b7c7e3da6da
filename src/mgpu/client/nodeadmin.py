"""Calls about how nodes are used: drain, resume, and the node pools beside the nodes."""

from __future__ import annotations

from mgpu.client.client import SimpleClient
from mgpu.client.paths import API, quote
from mgpu.client.replies import decode as _decode
from mgpu.core.api_messages import DrainReply, DrainRequest, PoolInfo
from mgpu.core.errors import ApiError
from mgpu.core.models import NodeInfo


def drain(client: SimpleClient, node_id: str, reason: str = "") -> DrainReply:
    """Drain ``node_id`` (admins): no new jobs go there; its running jobs finish."""
    import msgspec

    body = msgspec.json.encode(DrainRequest(reason=reason))
    return _decode(client._call("POST", f"{API}/nodes/{quote(node_id)}/drain", body),
                   DrainReply)


def resume(client: SimpleClient, node_id: str) -> DrainReply:
    """Undo :func:`drain` (admins)."""
    return _decode(client._call("POST", f"{API}/nodes/{quote(node_id)}/resume"),
                   DrainReply)


def nodes_and_pools(client: SimpleClient) -> tuple[list[NodeInfo], list[PoolInfo]]:
    """Every node, and every node pool (none when the master has no pools file)."""
    import msgspec

    reply = _decode(client._call("GET", f"{API}/nodes"), dict[str, msgspec.Raw])
    if "nodes" not in reply:
        raise ApiError("the master's node list has no 'nodes'", 502)
    pools = _decode(reply["pools"], list[PoolInfo]) if "pools" in reply else []
    return _decode(reply["nodes"], list[NodeInfo]), pools
