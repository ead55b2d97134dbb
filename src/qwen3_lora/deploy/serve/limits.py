"""Why a request gets 429 or 504: the admission limits every model request passes.

`max_concurrency` requests hold a model slot at once and up to `max_queue` more wait for one;
a request beyond that is answered 429 at once (`server_busy`). A request that has not finished
within `request_timeout_s`, queueing included, is answered 504 (`request_timeout`); the work it
already started keeps its slot until it ends, so timeouts cannot pile unbounded work onto the
model.
"""

from __future__ import annotations

import asyncio

from .errors import request_timeout, server_busy


class Admission:
    """Counts admitted requests and hands out model slots; lives on the app's event loop."""

    def __init__(self, max_concurrency: int, max_queue: int, timeout_s: float):
        self.max_concurrency = max_concurrency
        self.limit = max_concurrency + max_queue
        self.timeout_s = timeout_s
        self.admitted = 0
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Create the semaphore on the running loop (asyncio objects belong to one loop)."""
        self._slots = asyncio.Semaphore(self.max_concurrency)

    def admit(self) -> float:
        """Take a place (429 when every slot and queue place is taken); returns the deadline."""
        if self._slots is None:
            raise RuntimeError("ModelRunner.start() was not called (use the app's lifespan)")
        if self.admitted >= self.limit:
            raise server_busy()
        self.admitted += 1
        return asyncio.get_running_loop().time() + self.timeout_s

    def leave(self) -> None:
        """An admitted request ends without having started work (it got no slot, or failed)."""
        self.admitted -= 1

    async def acquire_slot(self) -> None:
        """Wait for a model slot until the timeout (504)."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except asyncio.TimeoutError:
            raise request_timeout(self.timeout_s) from None

    def give_back_slot(self) -> None:
        """A slot was taken but no work started on it."""
        self._slots.release()

    def finished(self, future: asyncio.Future | None = None) -> None:
        """Started work has ended: its place and its slot are free again."""
        self.admitted -= 1
        self._slots.release()
        if future is not None and not future.cancelled():
            future.exception()  # retrieved: a timed-out request no longer awaits it

    @staticmethod
    def remaining(deadline: float) -> float:
        return max(0.0, deadline - asyncio.get_running_loop().time())
