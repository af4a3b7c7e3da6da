"""The master's HTTP API prefix, shared by the routes that answer under it, the client that
asks and the node agents that connect: one place to change when the API's version changes."""

from __future__ import annotations

API = "/api/v1"
NODE_WS = f"{API}/node/ws"  # node agents' WebSocket (the join secret, not a user token)
METRICS = "/metrics"  # Prometheus scrapes (the metrics token, or loopback: README "Metrics")
