"""The master's HTTP API prefix, shared by the routes that answer under it and the client
that asks: one place to change when the API's version changes."""

from __future__ import annotations

API = "/api/v1"
