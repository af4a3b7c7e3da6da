"""A small HTTP/1.1 client connection for the ``mgpu`` command, on plain sockets.

Why not ``http.client``: importing it pulls in ``email`` and ``ssl`` and costs about twice
an empty interpreter's start-up, which alone would break the budget of ``mgpu submit``
(at most 2.5 times ``python -c pass``). The master speaks ordinary HTTP/1.1 (aiohttp), and the
client needs little of it: one request at a time on a persistent connection, bodies by
``Content-Length`` or chunked, and a chunked body read as it arrives (job output).

Contract of :class:`Connection`:

* :meth:`Connection.request` sends one request and returns the :class:`Response` once the
  status line and headers are in; the body is read with :meth:`Response.read` (all of it)
  or :meth:`Response.chunks` (as it arrives). A body must be read to its end, or the
  response closed, before the next request.
* A kept-alive connection that the server dropped while idle is re-opened once, and the
  request re-sent, only when nothing of a response arrived (the server never saw it).
* Every socket failure becomes :class:`~mgpu.core.errors.ConnectionFailed` naming the
  master's address; nothing else of ``OSError`` escapes.
* With a ``token``, every request (uploads too) carries ``Authorization: Bearer TOKEN``.
* With ``tls`` (or a ``ca`` file), the socket is wrapped in TLS and the master's certificate
  is verified against ``ca`` (else the system's CAs); ``ssl`` is imported only then.

It works on ``_socket``, the C module under ``socket``: ``import socket`` adds ``selectors``,
``array`` and its enums (a few ms of start-up), for wrappers this client does not use.
"""

from __future__ import annotations

import _socket
import os

from mgpu.core.errors import ConnectionFailed

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

_USER_AGENT = "mgpu-client/0.1.0"
_MAX_LINE = 65536
_MAX_HEADERS = 100


def unreachable(address: str) -> ConnectionFailed:
    """The error for a master nobody answers at ``address`` (``host:port``)."""
    return ConnectionFailed(
        f"cannot reach the master at {address}: is `mgpu server` running? "
        "Set --master or MGPU_MASTER to point elsewhere."
    )


class _Dropped(Exception):
    """The server closed a kept-alive connection before answering (safe to resend)."""


class Response:
    """One response: status and headers read, the body still on the wire."""

    def __init__(self, conn: Connection, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._done = False

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        """The body in pieces as they arrive (one per chunk when the body is chunked)."""
        if self._done:
            return
        conn = self._conn
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                yield from conn._read_chunked()
            elif "content-length" in self.headers:
                length = int(self.headers["content-length"])
                if length:
                    yield conn._read_exact(length)
            else:  # an HTTP/1.0-style body: until the server closes
                conn._keep = False
                while data := conn._read_some():
                    yield data
        except TimeoutError:
            conn.close()
            raise ConnectionFailed(
                f"the master at {conn.address} stopped answering (nothing for {conn.wait:g} s)"
            ) from None
        except OSError as e:
            conn.close()
            raise conn._failed(e) from None
        except BaseException:
            conn.close()
            raise
        self._done = True
        if not conn._keep:
            conn.close()

    def close(self) -> None:
        """Give up on the rest of the body (the connection cannot be reused)."""
        if not self._done:
            self._done = True
            self._conn.close()


class Connection:
    """A persistent HTTP/1.1 connection to one ``host:port``."""

    def __init__(self, host: str, port: int, timeout: float | None, *,
                 token: str | None = None, tls: bool = False, ca: str | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.tls = tls or ca is not None
        self.ca = ca
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._auth = f"Authorization: Bearer {token}" if token else None
        self._sock: _socket.socket | None = None
        self._buf = b""
        self._keep = True
        self.wait = timeout or 0.0  # the socket timeout of the request under way

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf = b""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        timeout: float | None = None,
        endless: bool = False,
    ) -> Response:
        """Send a request and read the status line and headers of its response.

        ``timeout`` is the socket timeout for this request in seconds (default: the
        connection's); ``endless`` waits without limit (a followed output stream, which may
        stay silent as long as its job does).
        """
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.address}", f"User-Agent: {_USER_AGENT}"]
        if self._auth is not None:
            head.append(self._auth)
        if body is not None:
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        wait = None if endless else (timeout or self.timeout)
        self.wait = wait or 0.0
        for attempt in (0, 1):
            reused = self._sock is not None
            try:
                sock = self._connect()
                sock.settimeout(wait)
                sock.sendall(data)
                return self._read_head(reused)
            except _Dropped:
                self.close()
                if attempt:
                    break
            except TimeoutError:
                self.close()
                raise ConnectionFailed(
                    f"the master at {self.address} did not answer within {self.wait:g} s"
                ) from None
            except OSError as e:
                self.close()
                if not (reused and attempt == 0):
                    raise self._failed(e) from None
        raise ConnectionFailed(f"the master at {self.address} closed the connection")

    def upload(self, path: str, chunks: Iterable[bytes]) -> Response:
        """``POST`` a body sent in chunks as ``chunks`` yields them (a job's stdin); the
        response once the body has ended. Never re-sent: nothing to resend it from."""
        head = [f"POST {path} HTTP/1.1", f"Host: {self.address}", f"User-Agent: {_USER_AGENT}",
                "Content-Type: application/octet-stream", "Transfer-Encoding: chunked"]
        if self._auth is not None:
            head.append(self._auth)
        self.wait = 0.0
        try:
            sock = self._connect()
            sock.settimeout(None)
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            for data in chunks:
                if data:
                    sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            return self._read_head(False)
        except OSError as e:
            self.close()
            raise self._failed(e) from None

    # ------------------------------------------------------------------------ internals

    def _connect(self) -> _socket.socket:
        """The open socket, else a new one: ``socket.create_connection`` on ``_socket``."""
        if self._sock is not None:
            return self._sock
        # An ASCII host goes as bytes: a str would load the IDNA codec (start-up time).
        host = self.host.encode() if self.host.isascii() else self.host
        sock = None
        try:
            for family, kind, proto, _, address in _socket.getaddrinfo(
                host, self.port, 0, _socket.SOCK_STREAM
            ):
                sock = _socket.socket(family, kind, proto)
                try:
                    sock.settimeout(self.timeout)
                    sock.connect(address)
                    break
                except OSError:
                    sock.close()
                    sock = None
        except OSError:
            sock = None
        if sock is None:
            raise unreachable(self.address)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
        if self.tls:
            sock = self._wrap(sock)
        self._sock = sock
        self._keep = True
        return sock

    def _wrap(self, sock: _socket.socket) -> _socket.socket:
        """``sock`` in TLS, the master's certificate verified (host name or IP included)."""
        import ssl

        try:
            ctx = ssl.create_default_context(
                cafile=os.path.expanduser(self.ca) if self.ca else None)
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise ConnectionFailed(
                f"cannot load the CA file {self.ca} ({e}): check --ca / MGPU_CA"
            ) from None
        try:
            return ctx.wrap_socket(sock, server_hostname=self.host)  # type: ignore[arg-type]
        except ssl.SSLCertVerificationError as e:
            sock.close()
            hint = ("it is not signed by the CA in " + self.ca if self.ca else
                    "pass --ca FILE or set MGPU_CA to the CA that signed it "
                    "(`mgpu certs` writes ca.pem)")
            raise ConnectionFailed(
                f"cannot verify the TLS certificate of the master at {self.address} "
                f"({e.verify_message}): {hint}"
            ) from None
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise ConnectionFailed(
                f"TLS with the master at {self.address} failed ({e}): is it serving TLS "
                "(--tls-cert)? For a master without TLS, unset MGPU_TLS and MGPU_CA"
            ) from None

    def _failed(self, e: OSError) -> ConnectionFailed:
        if isinstance(e, ConnectionRefusedError):
            return unreachable(self.address)
        return ConnectionFailed(f"lost the connection to the master at {self.address}: {e}")

    def _read_head(self, reused: bool) -> Response:
        try:
            line = self._read_line()
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as e:
            if reused:
                raise _Dropped from None
            raise self._failed(e) from None
        if not line:
            if reused:
                raise _Dropped
            raise ConnectionFailed(f"the master at {self.address} closed the connection"
                                   + ("" if self.tls else self._tls_hint))
        while True:
            version, _, rest = line.partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/") or not code.isdigit():
                raise ConnectionFailed(f"{self.address} does not answer like an mgpu master"
                                       + ("" if self.tls else self._tls_hint))
            headers = self._read_headers()
            status = int(code)
            if status != 100:
                break
            line = self._read_line()
        conn_header = headers.get("connection", "").lower()
        self._keep = version == b"HTTP/1.1" and "close" not in conn_header
        return Response(self, status, headers)

    _tls_hint = " (if it serves TLS, pass --ca FILE or set MGPU_CA, or MGPU_TLS=1)"

    def _read_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            line = self._read_line()
            if line in (b"\r\n", b"\n", b""):
                return headers
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raise ConnectionFailed(f"the master at {self.address} sent too many headers")

    def _read_some(self) -> bytes:
        if self._buf:
            data, self._buf = self._buf, b""
            return data
        assert self._sock is not None
        return self._sock.recv(65536)

    def _read_line(self) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[: i + 1], self._buf[i + 1 :]
                return line
            if len(self._buf) > _MAX_LINE:
                raise ConnectionFailed(f"the master at {self.address} sent an overlong line")
            assert self._sock is not None
            data = self._sock.recv(65536)
            if not data:
                line, self._buf = self._buf, b""
                return line
            self._buf += data

    def _read_exact(self, n: int) -> bytes:
        parts = [self._buf[:n]]
        got = len(parts[0])
        self._buf = self._buf[n:]
        while got < n:
            assert self._sock is not None
            data = self._sock.recv(min(n - got, 1 << 20))
            if not data:
                raise ConnectionFailed(f"the master at {self.address} closed the connection")
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def _read_chunked(self) -> Iterator[bytes]:
        while True:
            line = self._read_line()
            if not line:
                raise ConnectionFailed(f"the master at {self.address} closed the connection")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ConnectionFailed(f"bad chunk from the master at {self.address}") from None
            if size == 0:
                self._read_headers()  # trailers, then the blank line
                return
            data = self._read_exact(size)
            self._read_exact(2)  # CRLF after the chunk
            yield data
