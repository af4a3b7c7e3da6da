"""The master's OpenAPI 3.1 document (``GET /api/v1/openapi.json``), made from the code.

Paths come from the route table it is given (the master's is
:data:`mgpu.server.api.ROUTES`) and schemas from the
msgspec structs the routes decode and encode (``msgspec.json.schema_components``, JSON
Schema 2020-12, which OpenAPI 3.1 uses as it is), so the document cannot drift from what
the master accepts. Every operation but ``health`` needs ``Authorization: Bearer TOKEN``;
every error is an ``ErrorReply``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import msgspec

from mgpu.core import messages as m
from mgpu.core.version import __version__ as VERSION
from mgpu.server.http import Route

REF = "#/components/schemas/{name}"


@functools.cache
def document(routes: tuple[Route, ...]) -> bytes:
    """The document of ``routes`` as JSON (built once for a table)."""
    return msgspec.json.encode(build(routes))


def build(routes: Iterable[Route]) -> dict[str, Any]:
    """The document of ``routes``, as a dict."""
    routes = tuple(routes)
    kinds: list[Any] = [m.ErrorReply]
    for r in routes:
        for kind in (r.request, r.response):
            if kind is not None and kind not in kinds:
                kinds.append(kind)
    schemas, components = msgspec.json.schema_components(kinds, ref_template=REF)
    schema_of = dict(zip(kinds, schemas, strict=True))
    error = {"description": "an error: one line that says what to do",
             "content": {"application/json": {"schema": schema_of[m.ErrorReply]}}}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"operationId": r.handler.__name__, "summary": r.summary}
        params: list[dict[str, Any]] = []
        if "{job_id}" in r.path:
            params.append({"name": "job_id", "in": "path", "required": True,
                           "schema": {"type": "integer", "minimum": 1}})
        if "{node_id}" in r.path:
            params.append({"name": "node_id", "in": "path", "required": True,
                           "schema": {"type": "string", "maxLength": 128}})
        params += [{"name": name, "in": "query", "required": False, "description": text,
                    "schema": {"type": "string"}} for name, text in r.query]
        if params:
            op["parameters"] = params
        if r.request is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of[r.request]}}}
        elif r.handler.__name__ == "stdin":
            op["requestBody"] = {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}
        ok: dict[str, Any] = {"description": "success"}
        if r.response is not None:
            ok["content"] = {"application/json": {"schema": schema_of[r.response]}}
        elif r.handler.__name__ == "metrics":  # Prometheus's text format, its own token
            ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
            op["security"] = [{"metrics": []}, {}]
        elif r.handler.__name__ == "output":
            ok["content"] = {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}
        else:
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        op["responses"] = {str(r.status): ok, "4XX": error, "5XX": error}
        if r.handler.__name__ == "health":
            op["security"] = []
        elif r.handler.__name__ == "node_ws":
            op["security"] = [{"join": []}]
            op["responses"] = {"101": {"description": "switching to the node protocol "
                                       "(msgpack messages, docs/protocol.md)"},
                               "4XX": error}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "mgpu master", "version": VERSION,
                 "description": "The HTTP API of an mgpu master (docs/protocol.md)."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a client token (`mgpu token create`)"},
                "join": {"type": "http", "scheme": "bearer",
                         "description": "the node join secret (DATA_DIR/join.token)"},
                "metrics": {"type": "http", "scheme": "bearer",
                            "description": "the metrics token (metrics_token_file); "
                            "none from loopback when it is not set"},
            },
        },
        "security": [{"bearer": []}],
    }
