"""How a long-running mgpu process (master, agents, ``mgpu up``) is asked to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], object]) -> None:
    """Call ``stop`` on ``loop`` when SIGTERM or SIGINT arrives (each time it does): the
    process then stops cleanly, as it would on Ctrl-C, instead of dying mid-write."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
