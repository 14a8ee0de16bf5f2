"""``HashIndex``: packed codes of one model version, by domain, with exact or approximate Hamming search.

Filtered search: one shard per domain
-------------------------------------
A search restricted to a domain must still return ``k`` hits when the domain is small inside a large index, so
post-filtering is out. Measured with ``scripts/bench_index.py --design`` (1M 64-bit codes, a 10k-code
domain, single query, k=10, one thread; benchmarks/index/design.md, docs/index.md):

* one index per domain: 0.036 ms (scans only the domain);
* one index + ``IDSelectorBitmap`` over positions in ``SearchParameters``: 2.86 ms; ``IDSelectorBatch``
  (hash set): 4.77 ms; the unfiltered search of that index: 1.10 ms. The selector is tested per code on
  top of the full scan, so a filtered search costs more than no filter at all.
* the price of shards for an unfiltered search: 1.27 ms over the two shards vs 1.10 ms over one index.

So each domain is its own shard; an unfiltered search queries every shard and merges in (distance, id)
order (the merged top-k of exact per-shard top-k lists is the exact top-k). Per-shard call overhead is a
few microseconds, fine for the handful of domains a deployment has.

Concurrency
-----------
A readers–writer lock guards the shards: searches share it, writes (add/upsert/remove) take it alone, so a
search sees a write completely or not at all. A batch search takes the lock per chunk of
``IndexOptions.query_chunk`` queries, so a long batch does not hold writers off; each query still sees one
state. OpenMP threads follow :class:`index.threads.ThreadPolicy`.

Exact and approximate
---------------------
When an index is built (:meth:`HashIndex.build`, :meth:`HashIndex.build_from_batches`), a domain with more
than ``IndexOptions.flat_max`` codes gets an IVF shard (:mod:`index.approximate`), the others a flat one.
Live writes keep the shard kind; :meth:`HashIndex.rebuild_reasons` says when a rebuild (in the background,
then :meth:`service.serving.ActivePair.swap`) would change it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from index.approximate import IVFShard
from index.codes import (
    Codes,
    Ids,
    check_bits,
    check_codes,
    check_domain,
    check_ids,
    check_k,
    check_model_version,
    check_radius,
    code_bytes,
    refuse_duplicates,
)
from index.errors import CodeFormatError, DuplicateIdError
from index.flat import FlatShard
from index.hits import Hits, merge_top_k, rows_to_hits
from index.shard import Shard
from index.threads import ReadWriteLock, ThreadPolicy, available_cpus

# One row of the database: (id, packed code as bytes or uint8 [B], domain).
Entry = tuple[int, bytes | npt.NDArray[np.uint8], str]
# A batch of rows of one domain: (ids [m], codes uint8 [m, B], domain).
Batch = tuple[npt.ArrayLike, npt.ArrayLike, str]

_ENTRY_CHUNK = 65_536


@dataclass(frozen=True)
class IndexOptions:
    """How an index is built and searched (not part of the code space; may differ between processes).

    Attributes:
        flat_max: a domain with more codes than this is built approximate (IVF); at most this many codes
            per domain are searched exactly. 1M 64-bit codes take ~1 ms per query on one core.
        nlist: IVF lists; ``None`` picks :func:`index.approximate.default_nlist`.
        nprobe: IVF lists probed per query (recall/speed trade-off; see docs/index.md).
        batch_threads: OpenMP threads for multi-query calls; ``None`` = CPUs available to the process.
        query_chunk: queries per read-lock hold in a batch search.
        seed: IVF training sample and k-means seed.
    """

    flat_max: int = 1_000_000
    nlist: int | None = None
    nprobe: int = 16
    batch_threads: int | None = None
    query_chunk: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.flat_max < 0 or self.nprobe < 1 or self.query_chunk < 1:
            raise ValueError(f"invalid index options: {self}")
        if (self.nlist or 1) < 1 or (self.batch_threads or 1) < 1:
            raise ValueError(f"invalid index options: {self}")

    def thread_policy(self) -> ThreadPolicy:
        return ThreadPolicy(self.batch_threads or available_cpus())


@dataclass(frozen=True)
class IndexState:
    """A consistent view of an index, valid while its read lock is held (:meth:`HashIndex.locked_state`)."""

    bits: int
    model_version: str
    last_change: int
    shards: dict[str, Shard] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(s) for s in self.shards.values())


class HashIndex:
    """Packed ``bits``-bit codes of one model version, partitioned by domain, with stable int64 ids.

    Thread-safe: any number of concurrent searches with writes from other threads.
    Shapes: ``B = bits // 8``; codes and queries are packed ``uint8 [N, B]`` (a single ``[B]`` is one row).
    """

    def __init__(
        self,
        bits: int,
        model_version: str,
        options: IndexOptions | None = None,
        *,
        last_change: int = 0,
        shards: dict[str, Shard] | None = None,
    ) -> None:
        """An index, empty unless ``shards`` (built by this package) are handed over."""
        if not isinstance(model_version, str) or not model_version:
            raise CodeFormatError(f"model_version must be a non-empty string, got {model_version!r}")
        self.bits = check_bits(bits)
        self.model_version = model_version
        self.options = options or IndexOptions()
        self._threads = self.options.thread_policy()
        self._lock = ReadWriteLock()
        self._shards: dict[str, Shard] = dict(shards or {})
        self._last_change = int(last_change)

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        entries: Iterable[Entry],
        *,
        bits: int,
        model_version: str,
        options: IndexOptions | None = None,
        last_change: int = 0,
    ) -> HashIndex:
        """Build from database rows ``(id, packed code, domain)`` (the rebuild path; the DB is the truth).

        Codes are ``bytes`` of length ``bits // 8`` (a BLOB column) or ``uint8 [bits // 8]``. Rows are
        consumed in chunks, so a generator over a cursor is fine. ``last_change`` is the database change the
        rows reflect.
        """
        return cls.build_from_batches(
            entry_batches(entries, bits),
            bits=bits,
            model_version=model_version,
            options=options,
            last_change=last_change,
        )

    @classmethod
    def build_from_batches(
        cls,
        batches: Iterable[Batch],
        *,
        bits: int,
        model_version: str,
        options: IndexOptions | None = None,
        last_change: int = 0,
    ) -> HashIndex:
        """Build from ``(ids [m], codes uint8 [m, B], domain)`` batches; ids must be unique overall."""
        options = options or IndexOptions()
        check_bits(bits)
        parts: dict[str, tuple[list[Ids], list[Codes]]] = {}
        for ids, codes, domain in batches:
            packed = check_codes(codes, bits)
            checked = check_ids(ids, packed.shape[0])
            id_parts, code_parts = parts.setdefault(check_domain(domain), ([], []))
            id_parts.append(checked)
            code_parts.append(packed)
        refuse_duplicates([p for id_parts, _ in parts.values() for p in id_parts])
        shards: dict[str, Shard] = {}
        with options.thread_policy().applied(2):
            for domain, (id_parts, code_parts) in parts.items():
                ids = np.concatenate(id_parts)
                codes = np.concatenate(code_parts) if len(code_parts) > 1 else code_parts[0]
                order = np.argsort(ids, kind="stable")
                ids, codes = ids[order], np.ascontiguousarray(codes[order])
                del id_parts[:], code_parts[:]
                if ids.size == 0:
                    continue
                shards[domain] = _build_shard(bits, ids, codes, options)
        return cls(bits, model_version, options, last_change=last_change, shards=shards)

    def rebuilt(self, options: IndexOptions | None = None) -> HashIndex:
        """A new index from this one's codes (e.g. to turn an outgrown flat shard into IVF).

        Copies every shard under one read-lock hold (writes wait for the copy, not for the build); run it
        in the background and swap the result in (:class:`service.serving.ActivePair`), catching up on
        the changes after the new index's ``last_change``.
        """
        with self._lock.read():
            exported = [(*shard.export(), domain) for domain, shard in self._shards.items()]
            last_change = self._last_change
        return HashIndex.build_from_batches(
            exported,
            bits=self.bits,
            model_version=self.model_version,
            options=options or self.options,
            last_change=last_change,
        )

    # ------------------------------------------------------------------------------------------ reading

    @property
    def last_change(self) -> int:
        """The last database change this index reflects (the largest ``change`` passed to a write)."""
        return self._last_change

    def __len__(self) -> int:
        with self._lock.read():
            return sum(len(s) for s in self._shards.values())

    def __contains__(self, id_: object) -> bool:
        if isinstance(id_, bool) or not isinstance(id_, int | np.integer) or id_ < 0:
            return False
        ids = np.asarray([id_], np.int64)
        with self._lock.read():
            return any(bool(s.contains(ids)[0]) for s in self._shards.values())

    def domains(self) -> dict[str, int]:
        """``{domain: number of codes}`` for every non-empty domain."""
        with self._lock.read():
            return {d: len(s) for d, s in self._shards.items()}

    def lookup(self, id_: int) -> tuple[str, Codes] | None:
        """``(domain, code uint8 [B])`` of one id, or ``None``.

        ``O(log n)`` on flat shards, ``O(n)`` on IVF shards (the database is the better place to ask).
        """
        ids = check_ids(id_)
        with self._lock.read():
            for domain, shard in self._shards.items():
                if shard.contains(ids)[0]:
                    return domain, shard.codes_of(ids)[0]
        return None

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        domain: str | None = None,
        max_distance: int | None = None,
        model_version: str | None = None,
        wait: bool = True,
    ) -> list[Hits]:
        """The ``k`` nearest codes of each query, in (distance, id) order.

        Args:
            queries: packed ``uint8 [Q, B]`` or one ``[B]``.
            k: hits per query (fewer when the index or domain holds fewer codes).
            domain: search this domain only (an unknown domain has no hits); ``None``: every domain.
            max_distance: drop hits farther than this (the result may then have fewer than ``k``).
            model_version: the model that encoded the queries; refused (:class:`CodeSpaceError`) when it is
                not this index's.
            wait: ``False``: raise :class:`index.IndexBusyError` instead of waiting while a write holds the index's
                lock or waits for it (a search on an event loop, which must not block).

        Returns:
            ``Q`` :class:`Hits`. Exact on flat shards; on IVF shards the candidates are approximate.
        """
        check_model_version(model_version, self.model_version)
        packed = check_codes(queries, self.bits, name="queries")
        k = check_k(k)
        limit = None if max_distance is None else check_radius(max_distance, self.bits, "max_distance")
        if domain is not None:
            check_domain(domain)
        hits: list[Hits] = []
        for start in range(0, packed.shape[0], self.options.query_chunk):
            chunk = packed[start : start + self.options.query_chunk]
            with self._threads.applied(packed.shape[0]), self._lock.read(blocking=wait):
                shards = self._selected(domain)
                parts = [shard.search(chunk, k) for shard in shards]
            ordered = len(shards) == 1 and shards[0].ordered
            distances, ids = merge_top_k(parts, chunk.shape[0], k, ordered=ordered)
            hits.extend(rows_to_hits(distances, ids, limit))
        return hits

    def range_search(
        self,
        queries: npt.ArrayLike,
        radius: int,
        *,
        domain: str | None = None,
        model_version: str | None = None,
    ) -> list[Hits]:
        """Every code within Hamming distance ``radius`` (inclusive) of each query, in (distance, id) order.

        ``radius`` is in ``[0, bits]``; ``bits`` returns everything. On IVF shards only the probed lists
        are searched. ``domain`` and ``model_version`` as in :meth:`search`.
        """
        check_model_version(model_version, self.model_version)
        packed = check_codes(queries, self.bits, name="queries")
        radius = check_radius(radius, self.bits, "radius")
        if domain is not None:
            check_domain(domain)
        out: list[Hits] = []
        for start in range(0, packed.shape[0], self.options.query_chunk):
            chunk = packed[start : start + self.options.query_chunk]
            with self._threads.applied(packed.shape[0]), self._lock.read():
                per_shard = [shard.range_search(chunk, radius) for shard in self._selected(domain)]
            for i in range(chunk.shape[0]):
                rows = [hits[i] for hits in per_shard if len(hits[i])]
                if len(rows) <= 1:
                    out.append(rows[0] if rows else Hits.empty())
                else:
                    distances, ids = merge_top_k(
                        [(r.distances[None, :], r.ids[None, :]) for r in rows], 1, sum(map(len, rows))
                    )
                    out.append(Hits(ids[0], distances[0]))
        return out

    def _selected(self, domain: str | None) -> list[Shard]:
        if domain is None:
            return [s for s in self._shards.values() if len(s)]
        shard = self._shards.get(domain)
        return [shard] if shard is not None and len(shard) else []

    # ------------------------------------------------------------------------------------------ writing

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, change: int | None = None) -> None:
        """Add new codes ``uint8 [m, B]`` with their ids ``[m]`` to ``domain``; all or nothing.

        Raises:
            DuplicateIdError: an id is already in the index (in any domain); nothing is added.
        """
        packed = check_codes(codes, self.bits)
        checked = check_ids(ids, packed.shape[0])
        domain = check_domain(domain)
        with self._lock.write():
            present = np.zeros(checked.shape[0], bool)
            for shard in self._shards.values():
                present |= shard.contains(checked)
            if present.any():
                raise DuplicateIdError(np.sort(checked[present]).tolist())
            self._add_locked(checked, packed, domain)
            self._note(change)

    def upsert(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, change: int | None = None) -> None:
        """Add codes, replacing any present entry with the same id (in any domain), atomically for readers."""
        packed = check_codes(codes, self.bits)
        checked = check_ids(ids, packed.shape[0])
        domain = check_domain(domain)
        with self._lock.write():
            self._remove_locked(checked)
            self._add_locked(checked, packed, domain)
            self._note(change)

    def remove(self, ids: npt.ArrayLike, *, change: int | None = None) -> int:
        """Remove ids (absent ones are ignored, so retries are harmless); returns how many were removed."""
        checked = check_ids(ids)
        with self._lock.write():
            removed = self._remove_locked(checked)
            self._note(change)
        return removed

    def note_change(self, change: int) -> None:
        """Record that the index reflects database change ``change`` (a change that touched no code)."""
        with self._lock.write():
            self._note(change)

    def _note(self, change: int | None) -> None:
        if change is not None:
            self._last_change = max(self._last_change, int(change))

    def _add_locked(self, ids: Ids, codes: Codes, domain: str) -> None:
        if ids.size == 0:
            return
        order = np.argsort(ids, kind="stable")
        ids, codes = ids[order], np.ascontiguousarray(codes[order])
        shard = self._shards.get(domain)
        if shard is None:
            self._shards[domain] = FlatShard.build(self.bits, ids, codes)
        else:
            shard.add(ids, codes)

    def _remove_locked(self, ids: Ids) -> int:
        removed = 0
        for domain in list(self._shards):
            removed += self._shards[domain].remove(ids)
            if not len(self._shards[domain]):
                del self._shards[domain]
        return removed

    # ---------------------------------------------------------------------------------------- lifecycle

    @contextmanager
    def locked_state(self) -> Iterator[IndexState]:
        """Hold the read lock and yield the current state (for snapshots; do not keep it after the block)."""
        with self._lock.read():
            yield IndexState(self.bits, self.model_version, self._last_change, dict(self._shards))

    def set_nprobe(self, nprobe: int) -> None:
        """Change the IVF lists probed per query (recall/speed) on every approximate shard, now."""
        with self._lock.write():
            for shard in self._shards.values():
                if isinstance(shard, IVFShard):
                    shard.set_nprobe(nprobe)

    def rebuild_reasons(self) -> list[str]:
        """Why a rebuild would pay off: a flat shard above ``flat_max``, or an IVF shard far from its size."""
        reasons = []
        with self._lock.read():
            for domain, shard in self._shards.items():
                n = len(shard)
                flat_max = self.options.flat_max
                if isinstance(shard, FlatShard) and n > flat_max:
                    reasons.append(f"domain {domain!r}: {n} codes in a flat shard (flat_max {flat_max})")
                elif isinstance(shard, IVFShard) and (n > 2 * shard.trained_size or n <= flat_max):
                    trained = shard.trained_size
                    reasons.append(f"domain {domain!r}: {n} codes in an IVF shard trained on {trained}")
        return reasons

    def memory_bytes(self) -> int:
        """Approximate bytes held by codes, ids and IVF structures."""
        with self._lock.read():
            return sum(s.nbytes() for s in self._shards.values())

    def save(self, path: str | Path) -> None:
        """Write a snapshot atomically (see :mod:`index.snapshot`)."""
        from index.snapshot import write_snapshot

        write_snapshot(self, Path(path))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        bits: int | None = None,
        model_version: str | None = None,
        options: IndexOptions | None = None,
        verify: bool = True,
        mmap_min_bytes: int | None = None,
    ) -> HashIndex:
        """Read a snapshot, checking it; see :func:`index.snapshot.read_snapshot`."""
        from index.snapshot import DEFAULT_MMAP_MIN_BYTES, read_snapshot

        return read_snapshot(
            Path(path),
            bits=bits,
            model_version=model_version,
            options=options,
            verify=verify,
            mmap_min_bytes=DEFAULT_MMAP_MIN_BYTES if mmap_min_bytes is None else mmap_min_bytes,
        )


def entry_batches(entries: Iterable[Entry], bits: int) -> Iterator[Batch]:
    """Database rows ``(id, packed code, domain)`` → one batch per domain per chunk of rows (codes checked)."""
    width = code_bytes(bits)
    iterator = iter(entries)
    while chunk := list(itertools.islice(iterator, _ENTRY_CHUNK)):
        by_domain: dict[str, tuple[list[int], list[bytes]]] = {}
        for id_, code, domain in chunk:
            raw = _code_bytes(code)
            if len(raw) != width:
                raise CodeFormatError(f"id {id_}: code has {len(raw)} bytes, {bits}-bit codes: {width}")
            ids, codes = by_domain.setdefault(domain, ([], []))
            ids.append(id_)
            codes.append(raw)
        for domain, (ids, codes) in by_domain.items():
            packed = np.frombuffer(b"".join(codes), np.uint8).reshape(len(ids), width)
            yield np.asarray(ids, dtype=np.int64), packed, domain


def _code_bytes(code: bytes | npt.ArrayLike) -> bytes:
    if isinstance(code, bytes | bytearray | memoryview):
        return bytes(code)
    array = np.asarray(code)
    if array.dtype != np.uint8 or array.ndim != 1:
        shape = list(array.shape)
        raise CodeFormatError(f"a row's code must be bytes or uint8 [B], got {array.dtype} {shape}")
    return array.tobytes()


def _build_shard(bits: int, ids: Ids, codes: Codes, options: IndexOptions) -> Shard:
    if ids.shape[0] > options.flat_max:
        return IVFShard.build(bits, ids, codes, nlist=options.nlist, nprobe=options.nprobe, seed=options.seed)
    return FlatShard.build(bits, ids, codes)
