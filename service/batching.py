"""Dynamic batching of the searches' encodes (an experiment, measured in search-path notes §8 and reverted).

A search decodes its upload, then hands the pixels to :meth:`EncodeBatcher.encode` and waits. Whoever finds
fewer than ``leaders`` passes running becomes a leader: it takes the waiting uploads (oldest first, those of
the same encoder, at most the backbone's CPU pass size), encodes them in one pass holding one CPU slot, hands
each its code, and leaves once its own upload is encoded. Nobody waits for a batch to fill: a lone search is
a batch of one.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from model.backbones import CPU_PASS
from model.export import LoadedEncoder
from service.limits import CpuSlots
from service.pipeline import encode

MAX_BATCH = 64


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
    """Concurrent callers' single-image encodes as shared forward passes; thread-safe."""

    def __init__(self, slots: CpuSlots, leaders: int) -> None:
        self.slots, self.leaders = slots, leaders
        self._changed = threading.Condition()
        self._waiting: deque[_Upload] = deque()
        self._leading = 0

    def encode(self, encoder: LoadedEncoder, pixels: np.ndarray) -> np.ndarray:
        mine = _Upload(encoder, pixels)
        with self._changed:
            self._waiting.append(mine)
            while not mine.finished:
                if self._leading >= self.leaders or not self._waiting:  # (mine is in a running pass)
                    self._changed.wait()
                    continue
                batch = self._take()
                self._leading += 1
                self._changed.release()
                try:
                    self._run(batch)
                finally:
                    self._changed.acquire()
                    self._leading -= 1
                    self._changed.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.code is not None
        return mine.code

    def _take(self) -> list[_Upload]:
        first = self._waiting[0]
        size = max(1, min(CPU_PASS.get(str(first.encoder.metadata["backbone"]), MAX_BATCH), MAX_BATCH))
        batch = [upload for upload in self._waiting if upload.encoder is first.encoder][:size]
        for upload in batch:
            self._waiting.remove(upload)
        return batch

    def _run(self, batch: list[_Upload]) -> None:
        try:
            with self.slots.slot():
                codes = encode(batch[0].encoder, np.stack([upload.pixels for upload in batch]))
        except BaseException as exc:
            for upload in batch:
                upload.error = exc
            return
        for upload, code in zip(batch, codes, strict=True):
            upload.code = code
