"""Dynamic batching of the searches' encodes: concurrent searches' uploads go through the network in one forward
pass instead of one pass each (search-path notes, §8).

A search decodes its upload, then hands the pixels to :meth:`EncodeBatcher.encode` and waits. A caller that
finds no pass running becomes the leader: it takes the waiting uploads (oldest first, those of the same
encoder, at most the backbone's CPU pass size), encodes them in one pass holding one CPU slot, hands each its
code, and leads again until its own upload is encoded. Nobody waits for a batch to fill: a lone search is a
batch of one, and under load a batch is whatever queued while the previous pass ran.

One pass at a time for a backbone that batches (LeNet: a pass of many images costs far less per image than
one pass each); a backbone that is fastest one image per pass on a CPU thread (EfficientNet-Lite0,
``model.backbones.CPU_PASS``) runs a pass per CPU slot at once instead, as it did without batching.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.backbones import cpu_pass_size
from model.export import LoadedEncoder
from service.limits import CpuSlots
from service.pipeline import encode

MAX_BATCH = 64  # uploads in one pass at most, whatever the backbone's pass size


@dataclass(eq=False)
class _Upload:
    encoder: LoadedEncoder
    pixels: np.ndarray
    code: np.ndarray | None = None
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.code is not None or self.error is not None


class EncodeBatcher:
    """Concurrent callers' single-image encodes in shared forward passes; thread-safe.

    Args:
        slots: the CPU slots the passes run in (one each); a backbone of pass size 1 runs up to
            ``slots.slots`` passes at once.
        observe: called with each pass's number of uploads, after the pass (a metric).
    """

    def __init__(self, slots: CpuSlots, observe: Callable[[int], object] = lambda size: None) -> None:
        self.slots, self.observe = slots, observe
        self._changed = threading.Condition()
        self._waiting: deque[_Upload] = deque()
        self._running = 0

    @property
    def waiting(self) -> int:
        """Uploads queued for a pass (not yet in one)."""
        return len(self._waiting)

    def encode(self, encoder: LoadedEncoder, pixels: np.ndarray) -> np.ndarray:
        """One decoded image's packed code, ``uint8 [bits // 8]`` (``pixels``: uint8 ``[H, W, 3]`` at the
        encoder's input size), from a pass shared with the other callers waiting. Raises what the pass raised."""
        mine = _Upload(encoder, pixels)
        with self._changed:
            self._waiting.append(mine)
            while not mine.finished:
                batch = self._take()
                if not batch:  # a pass is running (maybe with mine in it): wait for it to end
                    self._changed.wait()
                    continue
                self._running += 1
                self._changed.release()
                try:
                    self._run(batch)
                finally:
                    self._changed.acquire()
                    self._running -= 1
                    self._changed.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.code is not None
        return mine.code

    def _take(self) -> list[_Upload]:
        """The next pass's uploads, taken off the queue: the oldest and the next ones of the same encoder, up to
        its backbone's pass size; none when the queue is empty or no further pass may start (call holding
        ``_changed``)."""
        if not self._waiting:
            return []
        first = self._waiting[0]
        size = cpu_pass_size(str(first.encoder.metadata["backbone"]), MAX_BATCH)
        if self._running >= (1 if size > 1 else self.slots.slots):
            return []
        batch = [upload for upload in self._waiting if upload.encoder is first.encoder][:size]
        for upload in batch:
            self._waiting.remove(upload)
        return batch

    def _run(self, batch: list[_Upload]) -> None:
        """Encode ``batch`` in one pass (in a CPU slot) and hand each upload its code, or the pass's error."""
        try:
            with self.slots.slot():
                codes = encode(batch[0].encoder, np.stack([upload.pixels for upload in batch]))
        except BaseException as exc:  # each caller of the pass raises it, not only the one that ran it
            for upload in batch:
                upload.error = exc
            return
        for upload, code in zip(batch, codes, strict=True):
            upload.code = code
        self.observe(len(batch))
