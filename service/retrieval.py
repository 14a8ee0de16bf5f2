"""Searches: an upload or a stored image's code against the serving index, answered with database rows.

A search is four calls: decode (one parse of the bytes) → encode → pack (in a forward pass shared with concurrent
searches: :mod:`service.batching`), :func:`nearest_rows` (``index.search`` + :func:`hydrate`),
:func:`to_response` (which also reports the query's code). Hits whose row is
gone (deleted after the index was read) are dropped, so a deleted image is never returned, and the index is
asked for more until ``k`` live hits are found or it has none left.

The CPU stages (decode, encode, index search) hold one of the runtime's CPU slots; the database round trips do
not. No lock is taken to see other processes' writes: the hydrate query also reads the log's last change, and
only when the index had not applied it yet (a job worker's write, committed before this request) is it caught
up (:meth:`service.follow.ChangeFollower.catch_up`, under its lock) and the index searched again.

A search runs in a worker thread, or on the event loop itself when the server is idle and searches are cheap
(:class:`service.limits.InlineGate`, ``may_wait=False``): there it never waits, raising
:class:`service.limits.WouldWait` instead of catching up, of waiting while a write holds the index, or of
decoding a large upload, and the caller runs it again in a thread.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

import numpy as np

from index import Hits, IndexBusyError, unpack_codes
from service import repository
from service.errors import ConflictError, NotFoundError
from service.limits import WouldWait
from service.pipeline import ImageInfo, decode_upload
from service.runtime import Runtime
from service.schemas import Hit, QueryCode, SearchResponse, content_url
from service.serving import ServingPair


@dataclass(frozen=True)
class SearchQuery:
    k: int = 10
    max_distance: int | None = None
    domain: str | None = None


def search_upload(
    runtime: Runtime, pair: ServingPair, data: bytes, query: SearchQuery, *, may_wait: bool = True
) -> SearchResponse:
    """The ``k`` stored images nearest to an uploaded one, in (distance, id) order. Without ``may_wait`` (on the
    event loop), an upload over the gate's pixel limit raises :class:`WouldWait` before it is decoded, and a
    catch-up as in :func:`nearest_rows`."""
    started = time.perf_counter()
    stage = runtime.metrics.stage
    with runtime.cpu.slot(), stage("decode"):
        check = None if may_wait else partial(_decodes_on_loop, runtime.inline.max_pixels)
        pixels = decode_upload(pair.encoder, data, runtime.settings.max_pixels, check)
    with stage("encode"):
        code = runtime.encodes.encode(pair.encoder, pixels)  # in a pass shared with concurrent searches
    hits, rows = nearest_rows(runtime, pair, code, query, may_wait=may_wait)
    return to_response(pair, code, hits, rows, started, query.k)


def _decodes_on_loop(max_pixels: int, info: ImageInfo) -> None:
    """An upload decoded on the event loop must be small: a larger one is decoded in a worker thread."""
    if info.width * info.height > max_pixels:
        raise WouldWait


def search_similar(
    runtime: Runtime, pair: ServingPair, image_id: int, query: SearchQuery, *, may_wait: bool = True
) -> SearchResponse:
    """The ``k`` stored images nearest to stored image ``image_id`` (itself excluded), from its stored code
    (``may_wait``: as :func:`nearest_rows`)."""
    started = time.perf_counter()
    with runtime.db.session() as session:
        if repository.image_by_id(session, image_id) is None:
            raise NotFoundError(f"image {image_id} does not exist", code="image_not_found")
        stored = repository.stored_code(session, image_id, pair.model_version)
    if stored is None:
        raise ConflictError(f"image {image_id} has no code of model {pair.model_version} yet", code="not_encoded")
    code = np.frombuffer(stored, np.uint8)
    hits, rows = nearest_rows(runtime, pair, code, query, exclude=image_id, may_wait=may_wait)
    return to_response(pair, code, hits, rows, started, query.k)


def nearest_rows(
    runtime: Runtime,
    pair: ServingPair,
    code: np.ndarray,
    query: SearchQuery,
    *,
    exclude: int | None = None,
    may_wait: bool = True,
) -> tuple[Hits, dict[int, HitRow]]:
    """The index's hits nearest to ``code`` (without id ``exclude``) and the rows of those still stored.

    Read-your-writes without a lock: the change the index had applied is read before it is searched, the
    log's last change in the hydrate query; when the log is ahead (a write committed before this request that
    the index has not applied yet), the index catches up and is searched again. Without ``may_wait`` (a search
    on the event loop), :class:`service.limits.WouldWait` is raised where it would wait: for a catch-up (the
    follower's lock, then applying what it reads) or for a write that holds the index's lock.

    The serving index can hold ids whose rows were deleted after it was read (it drops them at its next
    catch-up). Their hits have no row, so when fewer than ``query.k`` hits have one, the index is asked again
    for twice as many, until ``k`` have a row or the index returned fewer than asked (it has no more).
    """
    asked = query.k + (exclude is not None)
    applied = runtime.applied_change()  # None: no follower, nothing to check
    while True:
        with runtime.cpu.slot(), runtime.metrics.stage("search"):
            try:
                hits = pair.index.search(
                    code,
                    asked,
                    domain=query.domain,
                    max_distance=query.max_distance,
                    model_version=pair.model_version,
                    wait=may_wait,
                )[0]
            except IndexBusyError:  # a write holds the index: wait for it in a worker thread, not on the loop
                raise WouldWait from None
        exhausted = len(hits) < asked
        if exclude is not None:
            keep = hits.ids != exclude
            hits = Hits(hits.ids[keep], hits.distances[keep])
        with runtime.metrics.stage("hydrate"):
            last, rows = hydrate(runtime, hits.ids.tolist(), check=applied is not None)
        if last is not None and applied is not None and last > applied:
            if not may_wait:
                raise WouldWait
            runtime.catch_up()  # the index missed a committed write: apply it (under the follower's lock)
            applied = None  # it now holds every change up to ``last`` at least: search again, unchecked
            continue
        applied = None
        if len(rows) >= query.k or exhausted:
            return hits, rows
        asked *= 2


class HitRow(NamedTuple):
    """What a hit shows of its image's row."""

    domain: str
    label: str | None
    meta: dict[str, Any]


@lru_cache(maxsize=64)
def _hydrate_sql(paramstyle: str, count: int) -> str:
    """One statement for :func:`hydrate` with ``count`` ids, in the driver's own parameter style. A one-row
    subquery left-joined to the hits keeps the log's last change when no hit has a row any more."""
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[paramstyle]  # sqlite3; psycopg
    hits = f"images.id IN ({', '.join([mark] * count)})" if count else "1 = 0"
    return (
        "SELECT log.last, images.id, images.domain, images.label, images.metadata "
        f"FROM (SELECT max(id) AS last FROM changes) AS log LEFT JOIN images ON {hits}"
    )


def hydrate(runtime: Runtime, ids: list[int], *, check: bool) -> tuple[int | None, dict[int, HitRow]]:
    """The rows of the ``ids`` still stored and, with ``check``, the log's last change (else ``None``).

    One round trip, the search path's only database call: the driver's own SQL on a DB-API cursor
    (:meth:`service.db.Database.cursor`), without SQLAlchemy's ``Connection`` and result objects around it
    (search-path notes, §4)."""
    with runtime.db.cursor() as cursor:
        cursor.execute(_hydrate_sql(runtime.db.engine.dialect.paramstyle, len(ids)), tuple(ids))
        result: list[Any] = cursor.fetchall()
    last = int(result[0][0] or 0) if check else None
    rows = {int(id_): HitRow(domain, label, _json(meta)) for _, id_, domain, label, meta in result if id_ is not None}
    return last, rows


def _json(value: Any) -> dict[str, Any]:
    """The ``metadata`` column as read without SQLAlchemy's types: text on SQLite, decoded by psycopg on
    PostgreSQL (it is always a JSON object)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def describe_code(code: np.ndarray, bits: int) -> QueryCode:
    """A packed code ``uint8 [bits // 8]`` as hex (the packed bytes) and as a string of 0/1 (bit 0 first)."""
    unpacked = unpack_codes(code[None], bits)[0]
    return QueryCode(bits=bits, code_hex=code.tobytes().hex(), code_bits="".join(map(str, unpacked.tolist())))


def to_response(
    pair: ServingPair, code: np.ndarray, hits: Hits, rows: dict[int, HitRow], started: float, k: int
) -> SearchResponse:
    out = []
    for image_id, distance in hits.pairs():
        image = rows.get(image_id)
        if image is None:
            continue
        out.append(
            Hit(
                id=image_id,
                distance=distance,
                domain=image.domain,
                label=image.label,
                metadata=image.meta,
                content_url=content_url(image_id),
            )
        )
    return SearchResponse(
        model_version=pair.model_version,
        bits=pair.bits,
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        query=describe_code(code, pair.bits),
        hits=out[:k],
    )
