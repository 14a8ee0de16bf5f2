"""``MilvusIndex``: the codes of one model version in a Milvus collection (pymilvus 2.5, Milvus ≥ 2.3, Milvus Lite).

A :class:`index.protocol.CodeIndex` like :class:`index.HashIndex`, for deployments that outgrow one machine:
the codes live in Milvus, shared by every API replica, instead of in each process. Same ids, codes, domains,
errors and (distance, id) order as the FAISS index.

Collection
----------
One collection per model version, named ``{prefix}_{readable version}_{digest}`` (:func:`collection_name`):
``id`` INT64 primary key, ``domain`` VARCHAR, ``code`` BINARY_VECTOR (``dim = bits``), metric HAMMING. On a
server ``domain`` is the partition key, so a domain-filtered search scans only that domain's partition. Milvus
Lite cannot filter on a partition key, so there it is a plain scalar field (the filter is then applied during
the scan). The name carries a digest of the model version, the ``code`` field's dim is ``bits`` and, on a
server, the description names both; opening a collection of another code space raises :class:`CodeSpaceError`.

Exact and approximate, the ``flat_max`` rule
--------------------------------------------
:meth:`MilvusIndex.build_from_batches` counts the codes of each domain while it inserts them and then builds
``BIN_FLAT`` (exact) when no domain holds more than ``IndexOptions.flat_max`` codes, ``BIN_IVF_FLAT`` beyond
(``nlist`` from :func:`index.approximate.default_nlist`, ``nprobe`` from the options), the same rule as FAISS's
per-domain shards. Milvus has one index per collection, so one large domain makes every domain approximate.
Milvus Lite only has ``BIN_FLAT``: there the collection stays exact at any size. No HNSW: on real codes
(thousands of identical codes) its recall stalls (docs/index.md).

Tie guarantee
-------------
Milvus orders equal distances arbitrarily (by segment and arrival, not by id), and its top-k is capped at
16,384 (``TOPK_MAX``). So every search asks for ``k + tie_margin`` candidates and re-orders them by
(distance, id). Then, per query:

* fewer candidates than asked: the candidates are everything the (filtered) collection holds → exact;
* else, with ``d`` the largest candidate distance, every code nearer than ``d`` is among the candidates; if at
  least ``k`` of them are nearer than ``d``, the first ``k`` are the answer → exact;
* else the rest comes from distance ``d`` (then ``d + 1``, … for ``k`` near ``TOPK_MAX``): a range search
  restricted to exactly that distance returns the lowest ids there. When one distance holds more codes than
  ``TOPK_MAX``, the id range is split at the median of what came back until every part holds fewer (about
  ``log2(codes at that distance / TOPK_MAX)`` extra requests).

With ``BIN_FLAT`` (and on Milvus Lite), the answer is therefore **exactly** the FAISS answer: the first ``k``
codes in (distance, id) order, ids included, whatever the ties; most queries take one request, a query whose
k-th distance is shared by more codes than the margin takes one or a few more. ``range_search`` is exact the
same way (split by id range beyond ``TOPK_MAX`` hits). With ``BIN_IVF_FLAT`` the candidates (and the
range-search bands) come from the probed lists only, as with FAISS IVF: distances are exact, the set is
approximate, and ties are broken by id among what the probed lists hold.

Consistency and read-your-writes
--------------------------------
Searches use the collection's consistency level (``MilvusOptions.consistency_level``, default ``Bounded``:
a search may miss writes from the last few seconds). ``Strong`` per request cost ~200 ms per search (issue 13),
so it is not used. A caller that must see a write passes that write's Milvus timestamp as
``guarantee_timestamp=`` (Customized consistency): the search waits only until the query nodes have applied
that timestamp, which for a write already indexed is no wait at all. :attr:`MilvusIndex.write_timestamp` is the
timestamp of the last write made through this client to the collection. The intended flow: the one indexer
applies change ``n``, stores ``(cursor = n, write_timestamp)`` in the database; a request that follows change
``n`` waits until the stored cursor reaches ``n`` and searches with that timestamp. Writes' own checks
(``add``'s duplicates, ``remove``'s count) read at Session level, so a writer sees its own writes. Milvus
Lite returns no timestamps (``write_timestamp`` stays 0) and answers every read after the writes before it.
A server's delete returns no timestamp (seen on 2.3.5): ``write_timestamp`` does not cover deletes, and
after a delete this object reads at Strong until its next insert. A reader elsewhere may see a deleted id for
up to the Bounded staleness (the service drops hits that have no row). ``last_change`` is kept in memory like
:class:`index.HashIndex`'s; the durable cursor belongs in the database.

Limits of this first increment: writes are atomic per request of ``batch_rows`` rows, not per call; on a
server ``upsert`` is a delete then an insert (see :meth:`MilvusIndex.upsert`). Aliases, cursors and the one
writer are the service's (:mod:`service.indexer`).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pymilvus import DataType, MilvusClient
from pymilvus.client import ts_utils

from index.approximate import default_nlist
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
    refuse_duplicates,
)
from index.errors import CodeFormatError, CodeSpaceError, DuplicateIdError
from index.hash_index import Batch, Entry, IndexOptions, entry_batches
from index.hits import Hits, sort_hits

TOPK_MAX = 16_384  # Milvus's limit on limit (and on offset + limit)
_ID_CHUNK = 4096  # ids per `id in [...]` expression
_MAX_DOMAIN = 512  # VARCHAR max_length of `domain`
_ID_END = 2**63  # ids are in [0, 2**63)

IndexType = Literal["BIN_FLAT", "BIN_IVF_FLAT"]


@dataclass(frozen=True)
class MilvusOptions:
    """How :class:`MilvusIndex` talks to Milvus (not part of the code space).

    Attributes:
        lite: the client is Milvus Lite (a local ``*.db`` file): no partition key, ``BIN_FLAT`` only.
        prefix: collection names start with ``{prefix}_`` (several deployments can share a server).
        consistency_level: the collection's default for searches (``Bounded``, ``Session`` or ``Eventually``;
            ``Strong`` costs ~200 ms per search).
        tie_margin: extra candidates per search, so ties at the k-th distance rarely need a second request.
        batch_rows: rows per insert/upsert request.
        timeout_s: per request, retries included (pymilvus retries some failures up to 75 times with back-off,
            and bounds that by the timeout only when it is an ``int``; a float bounds each attempt only).
    """

    lite: bool = False
    prefix: str = "metah"
    consistency_level: str = "Bounded"
    tie_margin: int = 16
    batch_rows: int = 10_000
    timeout_s: float = 60

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.prefix):
            raise ValueError(f"collection prefix must be letters, digits and _, got {self.prefix!r}")
        if self.tie_margin < 0 or self.batch_rows < 1 or self.timeout_s <= 0:
            raise ValueError(f"invalid Milvus options: {self}")


def is_lite(uri: str) -> bool:
    """A URI naming a local file (``*.db``) is served by Milvus Lite (pymilvus's own rule)."""
    return uri.endswith(".db")


def connect(uri: str, token: str = "", *, timeout_s: float | None = None) -> tuple[MilvusClient, MilvusOptions]:
    """A client for ``uri`` (``http://host:19530`` or a Milvus Lite file) and the matching options.

    The client has a connection of its own: pymilvus shares one per URI by default, and closing any client of it
    would close it for all of them (another part of the process, a test's fixture).
    """
    alias = f"metah-{uuid.uuid4().hex}"
    return MilvusClient(uri=uri, token=token, timeout=timeout_s, alias=alias), MilvusOptions(lite=is_lite(uri))


def disconnect(client: MilvusClient, uri: str) -> None:
    """Close a client of :func:`connect`; for Milvus Lite also stop the Lite server of that file (pymilvus keeps
    one per file and process until exit, and would hand it to the next client of the same path)."""
    client.close()
    if is_lite(uri):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


def collection_name(prefix: str, model_version: str) -> str:
    """``{prefix}_{version with other characters as _}_{12 hex of its SHA-256}``: a valid, injective name."""
    readable = re.sub(r"[^A-Za-z0-9_]", "_", model_version)[:120]
    digest = hashlib.sha256(model_version.encode()).hexdigest()[:12]
    return f"{prefix}_{readable}_{digest}"


def index_kind(largest_domain: int, flat_max: int, *, lite: bool) -> IndexType:
    """FAISS's rule: exact up to ``flat_max`` codes in a domain, IVF beyond (Milvus Lite: always exact)."""
    return "BIN_IVF_FLAT" if largest_domain > flat_max and not lite else "BIN_FLAT"


def _literal(value: str) -> str:
    """A string literal for a Milvus boolean expression (JSON escaping is what its parser accepts)."""
    return json.dumps(value, ensure_ascii=False)


def _and(*parts: str) -> str:
    return " and ".join(f"({p})" for p in parts if p)


class MilvusIndex:
    """Packed ``bits``-bit codes of one model version in one Milvus collection (see the module docstring).

    Thread-safe as far as the client is (pymilvus's gRPC client is). Shapes: ``B = bits // 8``; codes and
    queries are packed ``uint8 [N, B]`` (a single ``[B]`` is one row).
    """

    def __init__(
        self,
        client: MilvusClient,
        bits: int,
        model_version: str,
        options: IndexOptions | None = None,
        *,
        milvus: MilvusOptions | None = None,
        last_change: int = 0,
    ) -> None:
        """Open the collection of ``model_version``, creating it (empty, ``BIN_FLAT``) when it is missing.

        Raises:
            CodeSpaceError: the collection exists with other bits or another model version.
        """
        self._setup(client, bits, model_version, options, milvus, last_change)
        if client.has_collection(self.name, timeout=self.milvus.timeout_s):
            self._check_collection()
        else:
            self._create()
            self._create_index("BIN_FLAT", 0)

    def _setup(
        self,
        client: MilvusClient,
        bits: int,
        model_version: str,
        options: IndexOptions | None,
        milvus: MilvusOptions | None,
        last_change: int,
    ) -> None:
        if not isinstance(model_version, str) or not model_version:
            raise CodeFormatError(f"model_version must be a non-empty string, got {model_version!r}")
        self._bits = check_bits(bits)
        self._model_version = model_version
        self.options = options or IndexOptions()
        self.milvus = milvus or MilvusOptions()
        self.client = client
        self.name = collection_name(self.milvus.prefix, model_version)
        self._last_change = int(last_change)
        self._kind: IndexType | None = None
        # A server's delete carries no timestamp pymilvus keeps (seen on 2.3.5), so after a delete this object
        # reads at Strong until its next insert, whose timestamp is later than the delete.
        self._strong_reads = False

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        client: MilvusClient,
        entries: Iterable[Entry],
        *,
        bits: int,
        model_version: str,
        options: IndexOptions | None = None,
        milvus: MilvusOptions | None = None,
        last_change: int = 0,
    ) -> MilvusIndex:
        """Build from database rows ``(id, packed code, domain)``; see :meth:`build_from_batches`."""
        return cls.build_from_batches(
            client,
            entry_batches(entries, bits),
            bits=bits,
            model_version=model_version,
            options=options,
            milvus=milvus,
            last_change=last_change,
        )

    @classmethod
    def build_from_batches(
        cls,
        client: MilvusClient,
        batches: Iterable[Batch],
        *,
        bits: int,
        model_version: str,
        options: IndexOptions | None = None,
        milvus: MilvusOptions | None = None,
        last_change: int = 0,
    ) -> MilvusIndex:
        """Replace the collection of ``model_version`` by these ``(ids [m], codes uint8 [m, B], domain)``.

        The index type follows the ``flat_max`` rule (module docstring), decided once every code is in.
        Ids must be unique overall (:class:`DuplicateIdError`, and the collection is dropped).
        """
        self = cls.__new__(cls)
        self._setup(client, bits, model_version, options, milvus, last_change)
        milvus = self.milvus
        if client.has_collection(self.name, timeout=milvus.timeout_s):
            client.drop_collection(self.name, timeout=milvus.timeout_s)
        self._create()
        counts: dict[str, int] = {}
        seen: list[Ids] = []
        try:
            for ids, codes, domain in batches:
                packed = check_codes(codes, bits)
                checked = check_ids(ids, packed.shape[0])
                domain = self._check_domain(domain)
                seen.append(checked)
                self._write("insert", checked, packed, domain)
                counts[domain] = counts.get(domain, 0) + checked.shape[0]
            refuse_duplicates(seen)
        except BaseException:
            client.drop_collection(self.name, timeout=milvus.timeout_s)
            raise
        if not milvus.lite:  # seal the segments, so the index is built over them now, not when they fill up
            client.flush(self.name, timeout=milvus.timeout_s)
        largest = max(counts.values(), default=0)
        self._create_index(index_kind(largest, self.options.flat_max, lite=milvus.lite), largest)
        return self

    def drop(self) -> None:
        """Drop the collection (a retired model version); the object is unusable afterwards."""
        self.client.drop_collection(self.name, timeout=self.milvus.timeout_s)

    def _create(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("domain", DataType.VARCHAR, max_length=_MAX_DOMAIN, is_partition_key=not self.milvus.lite)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=self._bits)
        self.client.create_collection(
            self.name,
            schema=schema,
            description=self._description(),
            consistency_level=self.milvus.consistency_level,
            timeout=self.milvus.timeout_s,
        )

    def _create_index(self, kind: IndexType, count: int) -> None:
        params = {"nlist": self.options.nlist or default_nlist(count)} if kind == "BIN_IVF_FLAT" else {}
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="code", index_type=kind, metric_type="HAMMING", params=params)
        self.client.create_index(self.name, index_params, timeout=self.milvus.timeout_s)
        self.client.load_collection(self.name, timeout=self.milvus.timeout_s)
        self._kind = kind

    def _description(self) -> str:
        return f"metah codes: {self._bits} bits, model {json.dumps(self._model_version)}"

    def _check_collection(self) -> None:
        """The name holds the model version's digest; the ``code`` field's dim must be ``bits``, and the
        description (kept by a server, empty on Milvus Lite) must name this code space."""
        info = self.client.describe_collection(self.name, timeout=self.milvus.timeout_s)
        dims = [int(f.get("params", {}).get("dim", 0)) for f in info.get("fields", []) if f.get("name") == "code"]
        description = info.get("description") or self._description()
        if dims != [self._bits] or description != self._description():
            raise CodeSpaceError(
                f"collection {self.name!r} holds {dims[0] if dims else '?'}-bit codes ({description!r}), "
                f"expected {self._description()!r}"
            )
        self.client.load_collection(self.name, timeout=self.milvus.timeout_s)

    # ------------------------------------------------------------------------------------------ reading

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def last_change(self) -> int:
        """The last database change this object wrote (the largest ``change`` passed to a write)."""
        return self._last_change

    @property
    def write_timestamp(self) -> int:
        """Milvus hybrid timestamp of the last write to this collection by this process (0: none, or Lite)."""
        return int(ts_utils.get_collection_ts(self.name) or 0)

    @property
    def index_type(self) -> IndexType:
        """``BIN_FLAT`` (exact) or ``BIN_IVF_FLAT`` (approximate), as built (asked once; it never changes)."""
        if self._kind is None:
            info = self.client.describe_index(self.name, "code", timeout=self.milvus.timeout_s)
            self._kind = "BIN_IVF_FLAT" if info.get("index_type") == "BIN_IVF_FLAT" else "BIN_FLAT"
        return self._kind

    def __len__(self) -> int:
        return self.count()

    def count(self, *, guarantee_timestamp: int | None = None) -> int:
        """How many codes the collection holds; ``guarantee_timestamp`` as in :meth:`search`."""
        return self._count("", guarantee_timestamp)

    def __contains__(self, id_: object) -> bool:
        if isinstance(id_, bool) or not isinstance(id_, int | np.integer) or id_ < 0:
            return False
        return bool(self._present(np.asarray([id_], np.int64)).size)

    def domains(self, *, guarantee_timestamp: int | None = None) -> dict[str, int]:
        """``{domain: number of codes}`` for every non-empty domain (``2 × domains + 1`` queries);
        ``guarantee_timestamp`` as in :meth:`search`."""
        names: list[str] = []
        while True:
            expr = f"domain not in [{', '.join(map(_literal, names))}]" if names else ""
            rows = self._query(expr, ["domain"], limit=1, guarantee=guarantee_timestamp)
            if not rows:
                break
            names.append(str(rows[0]["domain"]))
        return {name: self._count(f"domain == {_literal(name)}", guarantee_timestamp) for name in sorted(names)}

    def lookup(self, id_: int) -> tuple[str, Codes] | None:
        """``(domain, code uint8 [B])`` of one id, or ``None``."""
        ids = check_ids(id_)
        rows = self._query(f"id == {int(ids[0])}", ["domain", "code"], consistency="Session")
        if not rows:
            return None
        code = rows[0]["code"]
        raw = code[0] if isinstance(code, list) else code
        return str(rows[0]["domain"]), np.frombuffer(bytes(raw), np.uint8).copy()

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        domain: str | None = None,
        max_distance: int | None = None,
        model_version: str | None = None,
        wait: bool = True,
        guarantee_timestamp: int | None = None,
    ) -> list[Hits]:
        """The ``k`` nearest codes of each query, in (distance, id) order (tie guarantee: module docstring).

        Args:
            queries: packed ``uint8 [Q, B]`` or one ``[B]``.
            k: hits per query (fewer when the collection or domain holds fewer codes).
            domain: search this domain only (an unknown domain has no hits); ``None``: every domain.
            max_distance: drop hits farther than this.
            model_version: the model that encoded the queries; :class:`CodeSpaceError` when not this index's.
            wait: unused (no lock of this process is held by a write: Milvus applies them).
            guarantee_timestamp: see every write up to this Milvus timestamp (read-your-writes).
        """
        check_model_version(model_version, self._model_version)
        packed = check_codes(queries, self._bits, name="queries")
        k = check_k(k)
        limit = self._bits if max_distance is None else check_radius(max_distance, self._bits, "max_distance")
        expr = "" if domain is None else f"domain == {_literal(check_domain(domain))}"
        asked = min(k + self.milvus.tie_margin, TOPK_MAX)
        out: list[Hits] = []
        for start in range(0, packed.shape[0], self.options.query_chunk):
            chunk = packed[start : start + self.options.query_chunk]
            rows = self._search(chunk, asked, expr, None, guarantee_timestamp)
            for query, (ids, distances) in zip(chunk, rows, strict=True):
                hits = self._complete_top_k(query, ids, distances, k, asked, expr, limit, guarantee_timestamp)
                keep = hits.distances <= limit
                out.append(Hits(hits.ids[keep], hits.distances[keep]))
        return out

    def range_search(
        self,
        queries: npt.ArrayLike,
        radius: int,
        *,
        domain: str | None = None,
        model_version: str | None = None,
        guarantee_timestamp: int | None = None,
    ) -> list[Hits]:
        """Every code within Hamming distance ``radius`` (inclusive) of each query, in (distance, id) order.

        ``radius`` is in ``[0, bits]``. More than ``TOPK_MAX`` hits for a query cost a request per
        ``TOPK_MAX / 2`` hits or so. ``domain``, ``model_version``, ``guarantee_timestamp`` as in :meth:`search`.
        """
        check_model_version(model_version, self._model_version)
        packed = check_codes(queries, self._bits, name="queries")
        radius = check_radius(radius, self._bits, "radius")
        expr = "" if domain is None else f"domain == {_literal(check_domain(domain))}"
        out: list[Hits] = []
        for query in packed:
            ids, distances = self._ids_within(query, (0, radius), expr, None, guarantee_timestamp)
            out.append(sort_hits(distances, ids))
        return out

    def _complete_top_k(
        self,
        query: Codes,
        ids: Ids,
        distances: npt.NDArray[np.int32],
        k: int,
        asked: int,
        expr: str,
        limit: int,
        guarantee: int | None,
    ) -> Hits:
        """The exact first ``k`` in (distance, id) order from Milvus's ``asked`` candidates (module docstring)."""
        hits = sort_hits(distances, ids)
        if len(hits) < asked:  # everything the collection (or domain) holds
            return Hits(hits.ids[:k], hits.distances[:k])
        farthest = int(hits.distances[-1])
        nearer = hits.distances < farthest  # every code nearer than `farthest` is among the candidates
        if int(nearer.sum()) >= k:
            return Hits(hits.ids[:k], hits.distances[:k])
        got_ids, got_distances = [hits.ids[nearer]], [hits.distances[nearer]]
        have = int(nearer.sum())
        distance = farthest
        while have < k and distance <= limit:
            band, _ = self._ids_within(query, (distance, distance), expr, k - have, guarantee)
            band = np.sort(band)[: k - have]
            got_ids.append(band)
            got_distances.append(np.full(band.shape[0], distance, np.int32))
            have += band.shape[0]
            distance += 1
        return Hits(np.concatenate(got_ids), np.concatenate(got_distances))

    def _ids_within(
        self,
        query: Codes,
        distances: tuple[int, int],
        expr: str,
        need: int | None,
        guarantee: int | None,
        ids: tuple[int, int] = (0, _ID_END),
    ) -> tuple[Ids, npt.NDArray[np.int32]]:
        """Codes at a distance in ``distances`` (inclusive) with an id in ``ids`` (half-open), unordered.

        ``need``: only the ``need`` lowest ids are wanted; the result then holds at least them (or all there
        are). A full answer (``TOPK_MAX``) is incomplete: the id range is split at the median id that came
        back, the lower half first.
        """
        lo, hi = ids
        id_expr = f"id >= {lo}" + (f" and id < {hi}" if hi < _ID_END else "")
        found_ids, found = self._search(query[None, :], TOPK_MAX, _and(expr, id_expr), distances, guarantee)[0]
        if found_ids.shape[0] < TOPK_MAX:
            return found_ids, found
        middle = int(np.sort(found_ids)[found_ids.shape[0] // 2])
        low_ids, low = self._ids_within(query, distances, expr, need, guarantee, (lo, middle))
        if need is not None and low_ids.shape[0] >= need:
            return low_ids, low
        left = None if need is None else need - low_ids.shape[0]
        high_ids, high = self._ids_within(query, distances, expr, left, guarantee, (middle, hi))
        return np.concatenate([low_ids, high_ids]), np.concatenate([low, high])

    def _search(
        self,
        queries: Codes,
        limit: int,
        expr: str,
        distances: tuple[int, int] | None,
        guarantee: int | None,
    ) -> list[tuple[Ids, npt.NDArray[np.int32]]]:
        """One Milvus search request: per query ``(ids, distances)`` as Milvus ordered them."""
        params: dict[str, Any] = {}
        if distances is not None:  # range search: range_filter <= distance < radius
            params.update(range_filter=distances[0], radius=distances[1] + 1)
        if self.index_type == "BIN_IVF_FLAT":
            params["nprobe"] = self.options.nprobe
        extra: dict[str, Any] = {"consistency_level": "Strong"} if self._strong_reads else {}
        if guarantee and not self._strong_reads:  # 0 would mean "now" to Milvus (Strong): no write needs no wait
            extra = {"consistency_level": "Customized", "guarantee_timestamp": int(guarantee)}
        result = self.client.search(
            self.name,
            data=[q.tobytes() for q in queries],
            filter=expr,
            limit=limit,
            output_fields=[],
            search_params={"metric_type": "HAMMING", "params": params},
            anns_field="code",
            timeout=self.milvus.timeout_s,
            **extra,
        )
        rows = []
        for row in result:
            ids = np.asarray(getattr(row, "ids", [hit["id"] for hit in row]), np.int64)
            found = getattr(row, "distances", [hit["distance"] for hit in row])
            rows.append((ids, np.rint(np.asarray(found, np.float64)).astype(np.int32)))
        return rows

    def _count(self, expr: str, guarantee: int | None = None) -> int:
        rows = self._query(expr, ["count(*)"], guarantee=guarantee)
        return int(rows[0]["count(*)"]) if rows else 0

    def _query(
        self,
        expr: str,
        fields: list[str],
        *,
        limit: int | None = None,
        consistency: str | None = None,
        guarantee: int | None = None,
    ) -> list[dict[str, Any]]:
        """``guarantee``: a Milvus timestamp the read must see (Customized consistency; 0 or ``None``: none)."""
        extra: dict[str, Any] = {} if limit is None else {"limit": limit}
        if self._strong_reads or consistency is not None:
            extra["consistency_level"] = "Strong" if self._strong_reads else consistency
        elif guarantee:
            extra.update(consistency_level="Customized", guarantee_timestamp=int(guarantee))
        return list(
            self.client.query(self.name, filter=expr, output_fields=fields, timeout=self.milvus.timeout_s, **extra)
        )

    def _present(self, ids: Ids) -> Ids:
        """The ids of ``ids`` the collection holds (read at Session level: this client's writes are seen)."""
        found: list[int] = []
        for chunk in _chunks(np.unique(ids), _ID_CHUNK):
            rows = self._query(f"id in [{', '.join(map(str, chunk.tolist()))}]", ["id"], consistency="Session")
            found.extend(int(r["id"]) for r in rows)
        return np.asarray(sorted(found), np.int64)

    # ------------------------------------------------------------------------------------------ writing

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, change: int | None = None) -> None:
        """Add new codes ``uint8 [m, B]`` with their ids ``[m]`` to ``domain``.

        Raises:
            DuplicateIdError: an id is already in the collection (in any domain) or twice in ``ids``; nothing
                is added. (Checked by a query first: concurrent writers of the same ids are the caller's to
                avoid; the one indexer of issue 13 is the only writer.)
        """
        packed = check_codes(codes, self._bits)
        checked = check_ids(ids, packed.shape[0])
        domain = self._check_domain(domain)
        refuse_duplicates([checked])
        present = self._present(checked)
        if present.size:
            raise DuplicateIdError(present.tolist())
        self._write("insert", checked, packed, domain)
        self._note(change)

    def upsert(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, change: int | None = None) -> None:
        """Add codes, replacing any present entry with the same id (in any domain).

        Milvus Lite: Milvus's upsert, atomic for readers per request. With a partition key (a server): delete
        then insert, because Milvus 2.3.5's upsert puts the new row in the wrong partition (seen here: two ids
        upserted into domain ``b`` were stored, but a ``domain == "b"`` filter found neither). A search between
        the two requests can miss these ids; one that waits for :attr:`write_timestamp` (taken after the
        insert) sees them.
        """
        packed = check_codes(codes, self._bits)
        checked = check_ids(ids, packed.shape[0])
        domain = self._check_domain(domain)
        if self.milvus.lite:
            self._write("upsert", checked, packed, domain)
        else:
            for start in range(0, checked.shape[0], self.milvus.batch_rows):
                part = slice(start, start + self.milvus.batch_rows)
                self.client.delete(self.name, ids=checked[part].tolist(), timeout=self.milvus.timeout_s)
                self._write("insert", checked[part], packed[part], domain)
        self._note(change)

    def remove(self, ids: npt.ArrayLike, *, change: int | None = None) -> int:
        """Remove ids (absent ones are ignored, so retries are harmless); returns how many were present."""
        checked = np.unique(check_ids(ids))
        present = self._present(checked)
        for chunk in _chunks(checked, _ID_CHUNK):  # every id, not just the ones seen: deletes are idempotent
            self.client.delete(self.name, ids=chunk.tolist(), timeout=self.milvus.timeout_s)
        self._strong_reads = not self.milvus.lite
        self._note(change)
        return int(present.size)

    def note_change(self, change: int) -> None:
        """Record that the index reflects database change ``change`` (a change that touched no code)."""
        self._note(change)

    def _note(self, change: int | None) -> None:
        if change is not None:
            self._last_change = max(self._last_change, int(change))

    def _check_domain(self, domain: str) -> str:
        domain = check_domain(domain)
        if len(domain.encode()) > _MAX_DOMAIN:
            raise CodeFormatError(f"domain names are at most {_MAX_DOMAIN} bytes in Milvus, got {domain[:40]!r}…")
        return domain

    def _write(self, kind: Literal["insert", "upsert"], ids: Ids, codes: Codes, domain: str) -> None:
        send = self.client.insert if kind == "insert" else self.client.upsert
        for start in range(0, ids.shape[0], self.milvus.batch_rows):
            rows = [
                {"id": int(i), "domain": domain, "code": code.tobytes()}
                for i, code in zip(
                    ids[start : start + self.milvus.batch_rows],
                    codes[start : start + self.milvus.batch_rows],
                    strict=True,
                )
            ]
            send(self.name, rows, timeout=self.milvus.timeout_s)
        self._strong_reads = False


def _chunks(array: npt.NDArray[Any], size: int) -> Iterator[npt.NDArray[Any]]:
    for start in range(0, array.shape[0], size):
        yield array[start : start + size]
