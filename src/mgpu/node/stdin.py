"""A job's input on its way from the master through the agent to the keeper, bounded.

Every hop holds at most a window: the master sends at most ``INPUT_WINDOW`` bytes of a
job's input that the node has not acknowledged (``JobInputAck``), so the agent holds at
most that much; the agent passes at most :data:`STDIN_WINDOW` bytes to the keeper that the
keeper has not yet written to the job's stdin (``STDIN_WRITTEN``), so the keeper holds at
most that much. A job that does not read its input thus blocks the client's upload.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mgpu.core import keeper_messages as kp
from mgpu.node.runs import NodeRun

STDIN_WINDOW = 256 * 1024  # bytes of a job's input passed to the keeper and not yet written
# Keeper -> agent: {key, written}: bytes of the job's STDIN data the keeper has taken off
# its buffer (written to the job's stdin, or dropped because the job closed it or ended),
# counted from the first. A keeper that sends it says so in HELLO ("stdin_credit": true,
# and each job's count so far as "stdin_written", for an agent that re-adopts it);
# with a keeper that does not say so, input counts as written once it is passed on.
STDIN_WRITTEN = kp.STDIN_CREDIT

OnInputAck = Callable[[NodeRun], None]
Send = Callable[[bytes, "dict[str, Any] | bytes"], None]


class InputPump:
    """Passes input to the keeper a window at a time; ``on_ack(job)`` when more of a
    job's input was written (``job.input_delivered``), for the agent to tell the master.

    ``credit`` says the keeper reports what it wrote; without (a keeper that does not), input
    counts as written once passed on, and only the master and agent hops are bounded.
    """

    def __init__(self, send: Send, on_ack: OnInputAck) -> None:
        self.send = send
        self.on_ack = on_ack
        self.credit = False

    def feed(self, job: NodeRun, data: bytes, eof: bool) -> None:
        """Input from the master (``eof``: the input ends after ``data``)."""
        job.input_got += len(data)
        job.input_held += data
        job.input_eof = job.input_eof or eof
        self._pass(job)

    def written(self, job: NodeRun, written: int) -> None:
        """The keeper has written ``written`` bytes of what this agent passed it."""
        if written <= job.input_written:
            return
        job.input_written = min(written, job.input_passed)
        self.on_ack(job)
        self._pass(job)

    def dropped(self, job: NodeRun) -> None:
        """The job takes no more input (it ended): all it was sent counts as delivered."""
        if job.input_got <= job.input_written:
            return
        job.input_held.clear()
        job.input_passed = job.input_written = job.input_got
        self.on_ack(job)

    def _pass(self, job: NodeRun) -> None:
        room = STDIN_WINDOW - (job.input_passed - job.input_written)
        try:
            if room > 0 and job.input_held:
                chunk = bytes(job.input_held[:room])
                self.send(kp.STDIN, job.key.encode() + b"\n" + chunk)
                del job.input_held[:len(chunk)]
                job.input_passed += len(chunk)
                if not self.credit:
                    self.written(job, job.input_passed)
                    return
            if job.input_eof and not job.input_held:
                job.input_eof = False
                self.send(kp.STDIN_EOF, {"key": job.key})
        except ConnectionError:
            self.dropped(job)
