"""The HTTP layer shared by the master's routes: replies, bodies, who is asking, errors.

:func:`guard`, the one middleware, authenticates every request but ``/api/v1/health``
(:func:`authenticate`): a client token (``Authorization: Bearer TOKEN``) stands for a user,
admin or not, kept on the request (:func:`identity`); the node WebSocket takes the join
secret instead. It also turns every ``MgpuError`` into its status with an ``ErrorReply``
(one line, saying what to do); a 500 only ever means a bug, and is logged with its
traceback. Bodies are decoded into the structs of ``core/messages.py`` with validation
(:func:`body`), so a malformed request becomes a 400 that names the field.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec
from aiohttp import hdrs, web

from mgpu.core import messages as m
from mgpu.core.api_paths import API, METRICS, NODE_WS
from mgpu.core.errors import (
    ApiError,
    Forbidden,
    MgpuError,
    Unauthorized,
    UsageError,
)
from mgpu.server.auth import BAD_TOKEN, NO_TOKEN, REVOKED, Identity, bearer

if TYPE_CHECKING:
    from mgpu.server.context import Context

MASTER: web.AppKey[Context] = web.AppKey("master")
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN = frozenset({f"{API}/health"})  # answered without a token
AUTH_OFF = Identity("(auth off)", admin=True)

encode = msgspec.json.Encoder().encode


class Route(NamedTuple):
    """One endpoint: what it takes and answers (for the OpenAPI document too)."""

    method: str
    path: str
    handler: Handler
    summary: str
    request: Any = None  # the body's struct
    response: Any = None  # the 2xx body's struct (None: not JSON, or a small dict)
    status: int = 200
    query: tuple[tuple[str, str], ...] = ()  # (name, description)
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def reply(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=encode(obj), status=status, content_type="application/json")


def error(message: str, status: int, code: str) -> web.Response:
    """An ``ErrorReply``; its message on one line (aiohttp's own may hold several)."""
    if "\n" in message:
        message = " ".join(message.split())
    return reply(m.ErrorReply(error=message, code=code), status)


async def body(request: web.Request, kind: type[T]) -> T:
    """The request body as ``kind``: 400 naming what is wrong, 413 when too large, 408 when
    it trickles in for longer than the master's read timeout."""
    cfg = master_of(request).cfg
    try:
        raw = await asyncio.wait_for(request.read(), cfg.read_timeout)
    except TimeoutError:
        raise ApiError(
            f"the request body took longer than {cfg.read_timeout:g} s to arrive "
            "(read_timeout / MGPU_READ_TIMEOUT): send it at once", 408) from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            f"the request body is larger than this master's limit of "
            f"{cfg.max_request_bytes} bytes (max_request_bytes / MGPU_MAX_REQUEST): "
            "send less at once (e.g. fewer jobs per submit)", 413) from None
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        result: T = dec.decode(raw)
    except msgspec.ValidationError as e:
        raise UsageError(f"invalid request: {e}") from None
    except msgspec.DecodeError as e:
        raise UsageError(f"the request body is not valid JSON: {e}") from None
    return result


MAX_QUERY_DIGITS = 20  # "0…01" up to this long is still read; longer is refused unparsed


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """The query parameter ``name`` as a whole number from ``low`` to ``high`` (``default``
    when absent): at most :data:`MAX_QUERY_DIGITS` ASCII digits, else a 400 that names the
    parameter and its range. The one parser of numbers in query strings."""
    text = request.query.get(name)
    if text is None:
        return default
    if not (0 < len(text) <= MAX_QUERY_DIGITS and text.isascii() and text.isdigit()) or not (
            low <= int(text) <= high):
        raise UsageError(f"{name} must be a whole number from {low} to {high}, "
                         f"not {text[:24]!r}")
    return int(text)


_FLAGS = {"1": True, "true": True, "0": False, "false": False, "": False}


def query_flag(request: web.Request, name: str) -> bool:
    """The query parameter ``name`` as a switch: 1/true or 0/false (absent: false)."""
    text = request.query.get(name)
    if text is None:
        return False
    flag = _FLAGS.get(text.lower() if len(text) <= 5 else text)
    if flag is None:
        raise UsageError(f"{name} must be 1 or 0 (true or false), not {text[:24]!r}")
    return flag


def query_text(request: web.Request, name: str, most: int) -> str | None:
    """The query parameter ``name`` as text of at most ``most`` characters (None: absent)."""
    text = request.query.get(name)
    if text is not None and len(text) > most:
        raise UsageError(f"{name} must be at most {most} characters, not {len(text)}")
    return text


def job_id_arg(request: web.Request) -> int:
    text = request.match_info["job_id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise UsageError(f"{text[:40]!r} is not a job id: job ids are whole numbers")
    return int(text)


# ---------------------------------------------------------------------- middleware


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate the request, run its handler, and turn errors into ``ErrorReply``s.

    One middleware, not two: each layer costs a coroutine per request (bench/auth.py).
    """
    try:
        who = authenticate(request)
        if who is None or who.token_id is None:
            return await handler(request)
        # Requests are kept by token while they run, so that revoking a token ends those
        # still open with it (a follow, a wait, an upload) at once.
        requests = request.app[MASTER].open_requests
        task = asyncio.current_task()
        assert task is not None
        held = requests.setdefault(who.token_id, set())
        held.add(task)
        try:
            return await handler(request)
        except asyncio.CancelledError as e:
            if e.args != (REVOKED,):
                raise
            task.uncancel()
            raise Unauthorized(BAD_TOKEN) from None
        finally:
            held.discard(task)
            if not held:
                requests.pop(who.token_id, None)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.reason if e.text is None else e.text, e.status, "http")
    except MgpuError as e:
        # Its class's status and code: the table of core/errors.py, read back by clients.
        resp = error(e.message, e.status, e.code)
        if isinstance(e, Unauthorized):
            resp.headers["WWW-Authenticate"] = 'Bearer realm="mgpu"'
        elif e.status == 408:
            resp.force_close()  # the rest of the body may still be on its way
        return resp


def authenticate(request: web.Request) -> Identity | None:
    """Who is asking: the identity of the request's token, or :class:`Unauthorized` with
    what to do. ``/api/v1/health`` is open; the node WebSocket's handler checks the join
    secret itself (``Master.admit_node``). The token is looked at before the path: that is
    the usual case, and the cheaper order (bench/auth.py)."""
    master = request.app[MASTER]
    if not master.cfg.auth:
        request[IDENTITY] = AUTH_OFF
        return AUTH_OFF
    token = bearer(request.headers.get(hdrs.AUTHORIZATION))  # istr: no case folding
    who = master.tokens.check(token)
    if who is not None:
        request[IDENTITY] = who
        return who
    path = request.path
    if path in OPEN or path in (NODE_WS, METRICS):  # these two check for themselves
        return None
    if path == "/" or path.startswith("/ui/"):
        return None  # (the dashboard's pages hold no data: they ask for a token)
    raise Unauthorized(NO_TOKEN if token is None else BAD_TOKEN)


def master_of(request: web.Request) -> Context:
    return request.app[MASTER]


def identity(request: web.Request) -> Identity:
    return request[IDENTITY]


def admin_only(who: Identity, what: str) -> None:
    if not who.admin:
        raise Forbidden(
            f"{what} is for admins, and {who.user}'s token is not an admin's: ask an admin "
            "(the master's own admin token is in its DATA_DIR/admin.token)"
        )


class _BadRequests(logging.Filter):
    """A malformed request (bad URL, header or method, turned away by aiohttp's parser with
    a 4xx) is a client's mistake, not the master's: one warning line, not a traceback a
    hostile client could fill the log with. Anything else passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(exc, "code", 0)
        if (exc is not None and type(exc).__module__.startswith("aiohttp.http_exceptions")
                and isinstance(code, int) and 400 <= code < 500):
            first = str(getattr(exc, "message", "") or exc).strip().splitlines()
            what = record.getMessage()
            record.msg = "%s: %d %s"
            record.args = (what, code, first[0][:200] if first else "")
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def quiet_bad_requests() -> None:
    """Install :class:`_BadRequests` on aiohttp's server log (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequests) for f in server.filters):
        server.addFilter(_BadRequests())
