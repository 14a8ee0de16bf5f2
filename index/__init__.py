"""Packed binary codes and FAISS binary indexes. Never imports torch or ``service``.

The one place that turns encoder output into packed codes (:mod:`index.codes`) and answers Hamming queries
(:class:`HashIndex`): exact flat shards, approximate IVF shards for large domains, one shard per domain,
snapshots that are a cache of the database (:mod:`index.snapshot`, :func:`load_or_rebuild`), and atomic
swaps between model versions (:class:`ActiveIndex`). Design notes and benchmarks: docs/index.md.
"""

from index.codes import check_codes, check_ids, code_bytes, hamming_distances, pack_codes, unpack_codes
from index.errors import CodeFormatError, CodeSpaceError, DuplicateIdError, HashIndexError, SnapshotError
from index.hash_index import HashIndex, IndexOptions
from index.hits import Hits
from index.lifecycle import ActiveIndex, LoadReport, load_or_rebuild
from index.snapshot import Manifest, read_manifest

__all__ = [
    "ActiveIndex",
    "CodeFormatError",
    "CodeSpaceError",
    "DuplicateIdError",
    "HashIndex",
    "HashIndexError",
    "Hits",
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
