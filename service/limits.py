"""The service's limits: the request body size (:class:`BodySizeLimit`) and the CPU work in flight
(:class:`CpuSlots`).

Body size: enforced while the body streams in (before any multipart parsing finishes). A declared
``Content-Length`` over the limit is refused without reading the body; a chunked or lying body is cut off as
soon as the bytes received pass the limit. Either way the client gets 413 with the contract's error body,
whatever the application had started to do with the request.

CPU work: at most one thread per core decodes, encodes or searches at a time; requests beyond those slots
wait, at most ``queue`` of them: the next one is refused at once with 429 and ``Retry-After`` (instead of
waiting behind an unbounded queue that only grows under overload). I/O (the database, the blob store) is done
outside the slots.

Cheap searches on an idle server (:class:`InlineGate`): run on the event loop itself instead of a worker thread,
which saves the two thread wake-ups of the hop there and back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import TooBusyError, error_body


class _BodyTooLargeError(Exception):
    pass


class BodySizeLimit:
    """Pure ASGI middleware: 413 for request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        body = json.dumps(
            error_body("payload_too_large", f"request body exceeds the limit of {max_bytes} bytes")
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(send, max_bytes)
            return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # the app answered after its body was cut off (e.g. a 400 for a broken form): replace it
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send, max_bytes)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLargeError:
            if not started:
                await self._refuse(send, max_bytes)


class CpuSlots:
    """``slots`` threads may run CPU work at a time; at most ``slots + queue`` requests may be admitted.

    A request is :meth:`admitted` once (on the event loop, before it takes a thread) and holds a :meth:`slot`
    only around its CPU stages, so its database round trips leave the slot to another request.
    """

    def __init__(self, slots: int, queue: int, *, retry_after_s: int = 1) -> None:
        if slots < 1 or queue < 0:
            raise ValueError(f"need at least one slot and a queue of 0 or more (got {slots}, {queue})")
        self.slots, self.queue, self.retry_after_s = slots, queue, retry_after_s
        self._semaphore = threading.Semaphore(slots)
        self._count = threading.Lock()
        self._admitted = 0

    @property
    def admitted_now(self) -> int:
        """Requests admitted and not finished (running, waiting for a slot, or in their I/O)."""
        return self._admitted

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Admit one request for its whole duration; :class:`TooBusyError` when ``slots + queue`` already are."""
        with self._count:
            if self._admitted >= self.slots + self.queue:
                raise TooBusyError(
                    f"the server is busy: {self._admitted} requests are using or waiting for its "
                    f"{self.slots} CPU slots; retry in {self.retry_after_s} s",
                    retry_after_s=self.retry_after_s,
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._count:
                self._admitted -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one CPU slot (blocking the calling worker thread until one is free)."""
        with self._semaphore:
            yield


T = TypeVar("T")


class InlineGate:
    """Whether a search may run to completion on the event loop instead of in a worker thread.

    Handing a call to a worker thread and back wakes two sleeping threads; on the 2-core VM these notes were
    measured on that cost 0.3–0.5 ms, about as much as a digit search's whole work (search-path notes, §13). So
    a search runs on the event loop when the server is otherwise idle — it is the only request admitted — and
    the recent searches took at most ``budget_s`` each (an exponentially weighted mean of their durations,
    wherever they ran; unknown until the first one, which runs in a thread). The loop is then never held for
    much longer than ``budget_s``: a request that arrives meanwhile waits at most that long to be read, and a
    costly model (EfficientNet-Lite0 encodes for several milliseconds per image on a CPU) never qualifies.
    Under load, when any other request is admitted, searches take worker threads as before. A call that
    finds it would have to wait on the loop, or an upload larger than ``max_pixels`` (its decode alone could
    exceed the budget, whatever the recent searches cost), raises :class:`WouldWait` and is run again in a
    thread.

    Args:
        budget_s: the longest recent mean duration a search may have to run on the loop.
        max_pixels: the largest upload (declared width × height) decoded on the loop.
        enabled: ``False`` keeps every search in a thread (the runtime disables the gate when a search makes
            network round trips: PostgreSQL or Milvus, whose stalls must not stop the loop).
        weight: the weight of the latest duration in the mean.
    """

    def __init__(self, budget_s: float, max_pixels: int, *, enabled: bool = True, weight: float = 0.2) -> None:
        if budget_s <= 0 or max_pixels < 1 or not 0 < weight <= 1:
            raise ValueError(
                f"need a positive budget and pixel count and a weight in (0, 1] (got {budget_s}, {max_pixels}, "
                f"{weight})"
            )
        self.budget_s, self.max_pixels, self.enabled, self.weight = budget_s, max_pixels, enabled, weight
        self.mean_s: float | None = None

    def allows(self, admitted: int) -> bool:
        """Whether a search admitted as one of ``admitted`` requests in flight may run on the loop."""
        return self.enabled and admitted <= 1 and self.mean_s is not None and self.mean_s <= self.budget_s

    def timed(self, function: Callable[[], T]) -> T:
        """``function()``, its duration added to the mean (a call that raises, :class:`WouldWait` included, is
        not)."""
        started = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - started
        self.mean_s = seconds if self.mean_s is None else self.mean_s + self.weight * (seconds - self.mean_s)
        return result


class WouldWait(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a search running on the event loop where it would have to wait (a catch-up under the
    follower's lock, a write holding the index's lock) or decode a large upload: the caller runs it again in a
    worker thread."""
