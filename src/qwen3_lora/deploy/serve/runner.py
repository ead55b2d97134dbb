"""The model runner: every piece of model work runs on one worker thread, never on the event
loop, after passing the admission limits (`limits`). Task requests for the same task (and the
same answer length, model and adapter switch) arriving within `batch_window_ms` run as one batch.

A request may ask for the base model (`adapter: false`): its work runs inside the predictor's
`without_adapter()` on the model thread, so the switch never overlaps another request's work.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from .errors import request_timeout
from .limits import Admission
from .settings import ServeConfig


def adapter_switch(predictor, adapter: bool):
    """The context a piece of model work runs in: as loaded, or with the adapter switched off."""
    return nullcontext() if adapter else predictor.without_adapter()


def with_adapter(predictor, adapter: bool, fn: Callable, *args, **kwargs):
    """`fn(*args, **kwargs)` inside `adapter_switch`; model thread only."""
    with adapter_switch(predictor, adapter):
        return fn(*args, **kwargs)


def stream_with_adapter(predictor, adapter: bool, make_pieces: Callable[[], Iterator[str]]):
    """The pieces of `make_pieces()`, generated inside `adapter_switch`: entered, iterated and
    closed on the model thread by `ModelRunner.stream`."""
    with adapter_switch(predictor, adapter):
        yield from make_pieces()


_BatchKey = tuple[object, str, int | None, bool]  # predictor, task, max_new_tokens, adapter


@dataclass
class _BatchItem:
    text: str
    future: asyncio.Future


class ModelRunner:
    """Runs model work on one worker thread under the admission limits and the request timeout."""

    def __init__(self, predictor, config: ServeConfig):
        self.predictor = predictor
        self.config = config
        self.admission = Admission(
            config.max_concurrency, config.max_queue, config.request_timeout_s
        )
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[_BatchKey, list[_BatchItem]] = {}
        self._timers: dict[_BatchKey, asyncio.TimerHandle] = {}

    # Lifecycle: asyncio objects belong to the loop the app runs on.
    def start(self) -> None:
        self.admission.start()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen3-lora-model")

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def on_model_thread(self, fn: Callable[[], Any]) -> Any:
        """Run one piece of model work; every piece goes through here, on the worker thread."""
        return fn()

    def _submit(self, fn: Callable[[], Any]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self.on_model_thread, fn)

    async def _run_admitted(self, start: Callable[[], asyncio.Future]):
        """Admit, wait for a slot, start the work and await it until the request's deadline."""
        admission = self.admission
        deadline = admission.admit()
        work = None
        try:
            await admission.acquire_slot()
            try:
                work = start()
            except BaseException:
                admission.give_back_slot()
                raise
        finally:
            if work is None:
                admission.leave()
        work.add_done_callback(admission.finished)
        try:
            return await asyncio.wait_for(asyncio.shield(work), admission.remaining(deadline))
        except asyncio.TimeoutError:
            raise request_timeout(admission.timeout_s) from None

    async def call(self, fn: Callable, *args, **kwargs):
        """Run `fn` on the model thread."""
        return await self._run_admitted(lambda: self._submit(lambda: fn(*args, **kwargs)))

    async def predict(
        self,
        task: str,
        text: str,
        max_new_tokens: int | None,
        *,
        predictor=None,
        adapter: bool = True,
    ):
        """(prediction, batch size): one task prediction, batched with others for the task.

        `predictor` defaults to the runner's; `adapter` false runs it with the adapter off."""
        key = (predictor or self.predictor, task, max_new_tokens, adapter)
        return await self._run_admitted(lambda: self._enqueue(key, text))

    def _enqueue(self, key: _BatchKey, text: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        item = _BatchItem(text, loop.create_future())
        batch = self._pending.setdefault(key, [])
        batch.append(item)
        if len(batch) >= self.config.max_batch_size:
            self._flush(key)
        elif key not in self._timers:
            self._timers[key] = loop.call_later(
                self.config.batch_window_ms / 1000, self._flush, key
            )
        return item.future

    def _flush(self, key: _BatchKey) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        items = self._pending.pop(key, [])
        if not items:
            return
        predictor, task, max_new_tokens, adapter = key
        texts = [item.text for item in items]
        kwargs: dict[str, Any] = {"batch_size": len(texts)}
        if max_new_tokens:
            kwargs["max_new_tokens"] = max_new_tokens
        work = self._submit(
            lambda: with_adapter(predictor, adapter, predictor.predict, task, texts, **kwargs)
        )

        def deliver(done: asyncio.Future) -> None:
            error = None if done.cancelled() else done.exception()
            results = None if done.cancelled() or error else done.result()
            for i, item in enumerate(items):
                if item.future.done():
                    continue
                if done.cancelled():
                    item.future.cancel()
                elif error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result((results[i], len(items)))

        work.add_done_callback(deliver)

    async def stream(self, make_pieces: Callable[[], Iterator[str]]) -> AsyncIterator[str]:
        """Iterate `make_pieces()` on the model thread, yielding its pieces on the event loop.

        Raises 429/504 `ApiError`s before the first piece; past the deadline it raises 504 too,
        and the producer is closed at its next piece. The slot is held until the producer ends.
        """
        admission = self.admission
        deadline = admission.admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        started = False

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: the server is shutting down
                stop.set()

        def produce() -> None:
            try:
                # After a stop (client gone, deadline) the producer is closed, which ends a
                # generation at its next token; the slot stays taken until it has ended.
                pieces = make_pieces()
                try:
                    for piece in pieces:
                        if stop.is_set():
                            break
                        put("piece", piece)
                finally:
                    close = getattr(pieces, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:
                put("error", exc)
            finally:
                put("end", None)

        try:
            await admission.acquire_slot()
            try:
                work = self._submit(produce)
            except BaseException:
                admission.give_back_slot()
                raise
            started = True
            work.add_done_callback(admission.finished)
            while True:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), admission.remaining(deadline))
                except asyncio.TimeoutError:
                    raise request_timeout(admission.timeout_s) from None
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            if not started:
                admission.leave()
