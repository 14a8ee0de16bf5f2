"""Start-up and model changes: load the snapshot or rebuild from the database; swap indexes atomically.

An index belongs to exactly one code space (bit length + model version). A model change therefore means a
new index: build it in the background (from the database's re-encoded codes), then :meth:`ActiveIndex.swap`
it in; searches keep using the old index until that moment, and each search uses one index throughout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy.typing as npt

from index.errors import CodeSpaceError, SnapshotError, SnapshotProblem
from index.hash_index import Batch, Entry, HashIndex, IndexOptions
from index.snapshot import check_code_space, read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadReport:
    """How :func:`load_or_rebuild` got its index.

    Attributes:
        source: ``snapshot`` or ``rebuilt``.
        problem: why the snapshot was not used (``None`` when it was).
        detail: a human-readable reason.
        seconds: wall time of loading or rebuilding (and saving).
    """

    source: Literal["snapshot", "rebuilt"]
    problem: SnapshotProblem | None
    detail: str
    seconds: float


def load_or_rebuild(
    path: str | Path,
    *,
    bits: int,
    model_version: str,
    last_change: int,
    rows: Callable[[], Iterable[Entry]] | None = None,
    batches: Callable[[], Iterable[Batch]] | None = None,
    options: IndexOptions | None = None,
    save: bool = True,
    verify: bool = True,
) -> tuple[HashIndex, LoadReport]:
    """Load the snapshot at ``path`` if it is intact, of this code space and as recent as the database;
    otherwise rebuild from the database and (``save``) write a fresh snapshot.

    Args:
        bits, model_version: the code space of the active model.
        last_change: the database's latest change; a snapshot reflecting another change is stale.
        rows: called only when rebuilding; yields ``(id, packed code, domain)`` rows.
        batches: instead of ``rows``: yields ``(ids [m], codes uint8 [m, B], domain)`` (faster for millions).
    """
    if (rows is None) == (batches is None):
        raise ValueError("pass exactly one of rows and batches")
    start = time.perf_counter()
    path = Path(path)
    try:
        manifest = read_manifest(path)
        check_code_space(manifest, bits, model_version)
        if manifest.last_change != last_change:
            raise SnapshotError(
                "stale", f"snapshot reflects change {manifest.last_change}, the database is at {last_change}"
            )
        index = HashIndex.load(path, bits=bits, model_version=model_version, options=options, verify=verify)
        return index, LoadReport("snapshot", None, f"loaded {path}", time.perf_counter() - start)
    except SnapshotError as error:
        # a first start has no snapshot yet: that is routine, anything else deserves a warning
        level = logging.INFO if error.problem == "missing" else logging.WARNING
        log.log(level, "rebuilding the index from the database: %s", error)
        if rows is not None:
            index = HashIndex.build(
                rows(), bits=bits, model_version=model_version, options=options, last_change=last_change
            )
        else:
            assert batches is not None
            index = HashIndex.build_from_batches(
                batches(), bits=bits, model_version=model_version, options=options, last_change=last_change
            )
        if save:
            index.save(path)
        return index, LoadReport("rebuilt", error.problem, str(error), time.perf_counter() - start)


class ActiveIndex:
    """The index that serves now, swapped atomically.

    Readers take :attr:`current` once per request and use that object throughout. Writes go through this
    holder so that none is lost during a swap: :meth:`swap` blocks writes, lets ``catch_up`` apply the
    database changes made after the new index was built, and replaces the index.
    """

    def __init__(self, index: HashIndex) -> None:
        self._index = index
        self._write_gate = threading.Lock()

    @property
    def current(self) -> HashIndex:
        """The serving index (a plain attribute read: atomic)."""
        return self._index

    def swap(self, new: HashIndex, *, catch_up: Callable[[HashIndex], None] | None = None) -> HashIndex:
        """Make ``new`` the serving index; returns the old one (searches already running finish on it).

        ``catch_up(new)`` runs while writes are held off, before the swap: apply there the database changes
        after ``new.last_change`` (re-encoded with ``new``'s model when the model changed).
        """
        if new is self._index:
            return new
        with self._write_gate:
            if catch_up is not None:
                catch_up(new)
            old, self._index = self._index, new
        log.info(
            "index swapped: model %s (%d bits) -> %s (%d bits), %d codes",
            old.model_version,
            old.bits,
            new.model_version,
            new.bits,
            len(new),
        )
        return old

    def _target(self, model_version: str) -> HashIndex:
        index = self._index
        if index.model_version != model_version:
            raise CodeSpaceError(
                f"codes of model {model_version!r} cannot go into the index of model {index.model_version!r}"
            )
        return index

    def add(
        self,
        ids: npt.ArrayLike,
        codes: npt.ArrayLike,
        domain: str,
        *,
        model_version: str,
        change: int | None = None,
    ) -> None:
        """:meth:`HashIndex.add` on the serving index, whose model must be ``model_version``."""
        with self._write_gate:
            self._target(model_version).add(ids, codes, domain, change=change)

    def upsert(
        self,
        ids: npt.ArrayLike,
        codes: npt.ArrayLike,
        domain: str,
        *,
        model_version: str,
        change: int | None = None,
    ) -> None:
        """:meth:`HashIndex.upsert` on the serving index, whose model must be ``model_version``."""
        with self._write_gate:
            self._target(model_version).upsert(ids, codes, domain, change=change)

    def remove(self, ids: npt.ArrayLike, *, change: int | None = None) -> int:
        """:meth:`HashIndex.remove` on the serving index (ids are model-independent)."""
        with self._write_gate:
            return self._index.remove(ids, change=change)
