"""Interactive runs: the client side of ``mgpu srun`` and ``mgpu attach``.

An :class:`Interactive` session follows one job's output stream with ``status=1&attach=1``
(so the master knows a client is there, and cancels an interactive job whose clients have
all been gone for the grace period), writes stdout and stderr frames to their own file
descriptors as they come, forwards input through a chunked ``POST .../stdin`` from a
thread, and reconnects after a dropped connection, resuming at the byte it had reached, for
as long as the grace period lasts. Exit status: the job's exit code (128+N for signal N), or
:data:`NOT_RUN` when the job never started or ended without one (cancelled while pending,
lost node), with a message saying which; ``mgpu.cli`` also exits with :data:`NOT_RUN` when
srun could not get its job going (refused at submit, the master unreachable or lost).
"""

from __future__ import annotations

import os
import sys
import time

from mgpu.client.paths import API
from mgpu.client.replies import error_from_reply
from mgpu.core.errors import ApiError, ConnectionFailed
from mgpu.utils import plainjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from threading import Thread
    from typing import Any, Protocol, Self

    from mgpu.client.output_stream import OutputStream
    from mgpu.client.transport import Connection

    class JobClient(Protocol):
        """What a session needs of its client (``SimpleClient`` is one): a protocol, so
        that this module does not depend on the client module, which runs it."""

        def connection(self, timeout: float | None) -> Connection: ...
        def copy(self, timeout: float | None = None) -> Self: ...
        def stream_output(self, job_id: int, offset: int = 0, follow: bool = True, *,
                          status: bool = False, attach: bool = False,
                          label: bool = False) -> OutputStream: ...
        def cancel(self, *job_ids: int) -> object: ...
        def signal(self, job_id: int, signum: int) -> None: ...
        def resize(self, job_id: int, rows: int, cols: int) -> None: ...
        def __enter__(self) -> Self: ...
        def __exit__(self, *exc: object) -> None: ...

NOT_RUN = 125  # the job did not run to an exit code of its own
DOUBLE_INTERRUPT = 1.0  # two Ctrl-C within this many seconds cancel the job
READ_SIZE = 1 << 16


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Interactive:
    """One client following one job; :meth:`run` returns the exit status to leave with."""

    def __init__(
        self,
        client: JobClient,
        job_id: int,
        *,
        quiet: bool = False,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        on_running: Callable[[], None] | None = None,
        stdin_fd: int | None = None,
        stdin_data: bytes | None = None,
        grace: float = 10.0,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.quiet = quiet
        self.on_stdout = on_stdout or (lambda data: write_all(1, data))
        self.on_stderr = on_stderr or (lambda data: write_all(2, data))
        self.on_running = on_running
        self.stdin_fd = stdin_fd
        self.stdin_data = stdin_data
        self.grace = grace
        self.offset = 0
        self.label = False  # a multi-task job's lines as "0: line"
        self.end: dict[str, Any] | None = None  # the END frame's fields
        self._said: set[str] = set()
        self._last_interrupt = 0.0
        self._uploader: Thread | None = None
        self._wanted: list[Callable[[], None]] = []  # what signal handlers asked for
        self._handling = False

    def say(self, key: str, text: str) -> None:
        """A line about the job on stderr, once per ``key`` (none with ``quiet``)."""
        if self.quiet or key in self._said:
            return
        self._said.add(key)
        sys.stderr.write(f"mgpu: {text}\n")
        sys.stderr.flush()

    # -------------------------------------------------------------------------- output

    def run(self) -> int:
        lost_at: float | None = None
        while self.end is None:
            try:
                stream = self.client.stream_output(self.job_id, self.offset, follow=True,
                                                   status=True, attach=True,
                                                   label=self.label)
                lost_at = None
                try:
                    for kind, data in stream:
                        if kind == 1:
                            self.on_stdout(data)
                        elif kind == 2:
                            self.on_stderr(data)
                        elif kind == 3:
                            self._on_status(plainjson.loads(data))
                finally:
                    self.offset = stream.offset  # what was written: resume after it
                self.end = stream.end_fields
            except ConnectionFailed:
                if lost_at is None:
                    lost_at = time.monotonic()
                    self.say("lost", "lost the master; reconnecting")
                if time.monotonic() - lost_at > self.grace:
                    raise
                time.sleep(0.2)
        return self._exit_status(self.end)

    def _on_status(self, status: dict[str, object]) -> None:
        state = status.get("state")
        if state == "pending":
            gpus = status.get("gpus")
            noun = "GPU" if gpus == 1 else "GPUs"
            ahead = status.get("ahead")
            self.say("queued", f"job {self.job_id} queued, waiting for {gpus} {noun} "
                     f"({ahead} job{'' if ahead == 1 else 's'} ahead)")
        elif status.get("node"):  # running, or already over by the time we looked
            gpu_ids = status.get("gpu_ids")
            ids = ",".join(str(i) for i in gpu_ids) if isinstance(gpu_ids, list) else ""
            where = f"on {status.get('node')} (GPUs {ids})"
            if state != "running":
                self.say("running", f"job {self.job_id} ran {where}: {state}")
                return
            self.say("running", f"job {self.job_id} running {where}")
            self._start_upload()
            if self.on_running is not None:
                self.on_running()

    def _exit_status(self, end: dict[str, Any]) -> int:
        state, code, reason = end.get("state"), end.get("exit_code"), end.get("reason")
        why = f": {reason}" if reason else ""
        if not end.get("started", True):
            self.say("end", f"job {self.job_id} never started ({state}{why})")
            return NOT_RUN
        if not isinstance(code, int):
            self.say("end", f"job {self.job_id} ended without an exit code ({state}{why})")
            return NOT_RUN
        if state in ("cancelled", "timeout", "node_fail"):
            self.say("end", f"job {self.job_id} {state}{why}")
        return code

    # --------------------------------------------------------------------------- input

    def _start_upload(self) -> None:
        if self._uploader is not None or (self.stdin_fd is None and self.stdin_data is None):
            return
        from threading import Thread

        self._uploader = Thread(target=self._upload, name="mgpu-stdin", daemon=True)
        self._uploader.start()

    def _chunks(self) -> Iterator[bytes]:
        if self.stdin_data is not None:
            for i in range(0, len(self.stdin_data), READ_SIZE):
                yield self.stdin_data[i : i + READ_SIZE]
            return
        assert self.stdin_fd is not None
        while True:
            try:
                data = os.read(self.stdin_fd, READ_SIZE)
            except OSError:
                return
            if not data:
                return
            yield data

    def _upload(self) -> None:
        """Stream stdin to the job (one chunked POST); its end is the job's EOF."""
        conn = self.client.connection(None)
        try:
            resp = conn.upload(f"{API}/jobs/{self.job_id}/stdin", self._chunks())
            answer = resp.read()
            if resp.status >= 300:
                raise error_from_reply(resp.status, answer)
        except (ConnectionFailed, ApiError) as e:
            self.say("stdin", f"input to job {self.job_id} stopped: {e}")
        finally:
            conn.close()

    # ------------------------------------------------------------------------- control

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the job; a second one within a second cancels it."""
        # The clock is read and set first: a second Ctrl-C may run this handler again
        # inside the first one (Python runs handlers between any two bytecodes).
        now, last = time.monotonic(), self._last_interrupt
        self._last_interrupt = now
        self._want(self._cancel if now - last < DOUBLE_INTERRUPT else self._forward_interrupt)

    def _cancel(self) -> None:
        self.say("cancel", f"cancelling job {self.job_id}")
        self._background(lambda c: c.cancel(self.job_id))

    def _forward_interrupt(self) -> None:
        self._said.discard("interrupt")
        self.say("interrupt", f"interrupt sent to job {self.job_id} "
                 "(once more within 1 s to cancel it)")
        self._background(lambda c: c.signal(self.job_id, 2))

    def resize(self, rows: int, cols: int) -> None:
        self._want(lambda: self._background(lambda c: c.resize(self.job_id, rows, cols)))

    def _want(self, action: Callable[[], None]) -> None:
        """Do ``action`` now, from a signal handler; or, when this handler interrupted
        another one (which may be half-way through importing ``threading``, the first
        time), leave it to that one, which does it once it is done with its own."""
        self._wanted.append(action)
        while not self._handling and self._wanted:
            self._handling = True
            try:
                while self._wanted:
                    self._wanted.pop(0)()
            finally:
                self._handling = False

    def wait_stdin(self, timeout: float = 5.0) -> None:
        """Let the input still in flight reach the master before the process ends."""
        if self._uploader is not None:
            self._uploader.join(timeout)

    def _background(self, call: Callable[[JobClient], object]) -> None:
        """A control call on a connection of its own, off the signal handler."""
        import contextlib
        from threading import Thread

        def go() -> None:
            with (self.client.copy(timeout=10.0) as c,
                  contextlib.suppress(ConnectionFailed, ApiError)):
                call(c)

        Thread(target=go, daemon=True).start()
