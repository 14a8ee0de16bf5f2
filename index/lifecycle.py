"""Start-up: load the snapshot or rebuild from the database.

An index belongs to exactly one code space (bit length + model version). A model change therefore means a
new index, built from the database's re-encoded codes and swapped in together with its encoder by the service
(:class:`service.serving.ActivePair`), so that a search never pairs one model's query with another's index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from index.errors import SnapshotError, SnapshotProblem
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
