"""Packed binary codes and FAISS binary indexes. Never imports torch or ``service``.

The one place that turns encoder output into packed codes (:mod:`index.codes`) and answers Hamming queries
(:class:`HashIndex`): exact flat shards, approximate IVF shards for large domains, one shard per domain,
and snapshots that are a cache of the database (:mod:`index.snapshot`, :func:`load_or_rebuild`). Swapping
the index of one model for another's is the service's (:class:`service.serving.ActivePair`), which swaps
encoder and index as one. :class:`CodeIndex` (:mod:`index.protocol`) is what the service needs of an index;
:class:`index.milvus.MilvusIndex` (imported from there, it needs pymilvus) keeps the codes in Milvus instead.
Design notes and benchmarks: docs/index.md.
"""

from index.codes import check_codes, check_ids, code_bytes, hamming_distances, pack_codes, unpack_codes
from index.errors import (
    CodeFormatError,
    CodeSpaceError,
    DuplicateIdError,
    HashIndexError,
    IndexBusyError,
    SnapshotError,
)
from index.hash_index import HashIndex, IndexOptions
from index.hits import Hits
from index.lifecycle import LoadReport, load_or_rebuild
from index.protocol import CodeIndex
from index.snapshot import Manifest, read_manifest

__all__ = [
    "CodeFormatError",
    "CodeIndex",
    "CodeSpaceError",
    "DuplicateIdError",
    "HashIndex",
    "HashIndexError",
    "Hits",
    "IndexBusyError",
    "IndexOptions",
    "LoadReport",
    "Manifest",
    "SnapshotError",
    "check_codes",
    "check_ids",
    "code_bytes",
    "hamming_distances",
    "load_or_rebuild",
    "pack_codes",
    "read_manifest",
    "unpack_codes",
]
