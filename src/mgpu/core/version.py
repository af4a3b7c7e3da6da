"""mgpu's version: what ``mgpu --version``, ``/api/v1/health``, the OpenAPI document and
the master's ``master.json`` report."""

from __future__ import annotations

VERSION = "0.1.0"
