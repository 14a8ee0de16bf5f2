"""The (model, index) pair that answers searches, swapped as one object.

A request takes :attr:`ActivePair.current` once and uses that pair throughout, so its query is encoded by the
same model that encoded the index it searches. Index writes go through :class:`ActivePair` so that none is
lost or misplaced during a swap: after an activation job has re-encoded the images, the API's
:meth:`service.follow.ChangeFollower.follow_activation` builds the new pair, then calls :meth:`ActivePair.swap`
with a ``catch_up`` that applies the database changes after the new index's ``last_change`` (encoding any image
still without a code of the new model).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy.typing as npt

from index.protocol import CodeIndex
from model.export import LoadedEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingPair:
    """An encoder and the index of the codes it produced (same bits, same model version)."""

    encoder: LoadedEncoder
    index: CodeIndex

    def __post_init__(self) -> None:
        if self.index.model_version != self.model_version or self.index.bits != self.encoder.bits:
            raise ValueError(
                f"index ({self.index.model_version}, {self.index.bits} bits) does not belong to model "
                f"{self.model_version} ({self.encoder.bits} bits)"
            )

    @property
    def model_version(self) -> str:
        return str(self.encoder.metadata["model_version"])

    @property
    def bits(self) -> int:
        return self.encoder.bits


class ActivePair:
    """Holds the serving pair; writes to its index are serialised with swaps."""

    def __init__(self, pair: ServingPair) -> None:
        self._pair = pair
        self._gate = threading.Lock()

    @property
    def current(self) -> ServingPair:
        return self._pair

    def swap(self, new: ServingPair, *, catch_up: Callable[[ServingPair], None] | None = None) -> ServingPair:
        """Serve ``new`` from now on; returns the old pair (requests already running finish on it)."""
        with self._gate:
            if catch_up is not None:
                catch_up(new)
            old, self._pair = self._pair, new
        log.info("serving model %s (was %s)", new.model_version, old.model_version)
        return old

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, model_version: str, change: int) -> bool:
        """Upsert codes of ``model_version`` into the serving index; ``False`` when another model serves now
        (a swap happened after they were encoded; its catch-up has taken the committed rows into account)."""
        with self._gate:
            pair = self._pair
            if pair.model_version != model_version:
                log.info("codes of model %s not indexed: model %s serves now", model_version, pair.model_version)
                return False
            pair.index.upsert(ids, codes, domain, change=change)
            return True

    def remove(self, ids: npt.ArrayLike, *, change: int) -> int:
        with self._gate:
            return self._pair.index.remove(ids, change=change)
