"""What wakes the dashboard's streams: :class:`Changes`, one a master (``watch.py`` holds it;
``Master._on_saved`` calls :meth:`Changes.changed` after every save)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Changes:
    """The dashboard streams' events, set when the master saves a change, and what they
    computed since that change, shared (:meth:`memo`): streams of the same view look at
    the cluster once a change, not once each."""

    def __init__(self) -> None:
        self.events: set[asyncio.Event] = set()
        self.count = 0  # changes saved so far
        self._memo: dict[Hashable, Any] = {}
        self._memo_count = 0

    def changed(self) -> None:
        self.count += 1
        for ev in self.events:
            ev.set()

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, or what it returned for ``key`` since the last change."""
        if self._memo_count != self.count:
            self._memo.clear()
            self._memo_count = self.count
        if key not in self._memo:
            self._memo[key] = compute()
        value: T = self._memo[key]
        return value
