"""Snapshot files: one file per index, written atomically, checked on load, memory-mapped when large.

The snapshot is a cache of the database (the source of truth): anything wrong with it means "rebuild", see
:func:`index.lifecycle.load_or_rebuild`.

Layout (little-endian)::

    [0, 8)        magic b"METAHIX1", then zeros up to 4096
    sections      per shard: ids (int64 [n], ascending) and the FAISS serialisation of its index,
                  each starting at a multiple of 64
    manifest      UTF-8 JSON (see :class:`Manifest`), at ``manifest_offset``
    trailer       u64 manifest_offset · u64 manifest_length · sha256(manifest) (32 bytes) · b"METAHEND"

The manifest holds the SHA-256 of everything before it, so a truncated file (no trailer), an edited byte
anywhere (payload or manifest digest mismatch) or a foreign file (magic) is detected.

Saving holds the index's read lock only while the bytes are copied to the temporary file (searches go on,
writes wait); ``fsync`` and the rename happen after the lock is released.

Loading memory-maps the file: flat shards then search the mapped pages in place (FAISS ``ZeroCopyIOReader``,
no copy, page cache shared between processes), IVF lists too; a shard copies its data into its own memory
before its first write. Files under ``mmap_min_bytes`` are copied at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import faiss
import numpy as np

from index.approximate import IVFShard
from index.codes import check_bits
from index.errors import CodeFormatError, SnapshotError
from index.flat import FlatShard
from index.shard import Shard

if TYPE_CHECKING:
    from index.hash_index import HashIndex, IndexOptions

FORMAT = 1
MAGIC = b"METAHIX1"
END_MAGIC = b"METAHEND"
HEADER_BYTES = 4096
ALIGN = 64
_TRAILER = struct.Struct("<QQ32s8s")
DEFAULT_MMAP_MIN_BYTES = 64 << 20


@dataclass(frozen=True)
class ShardRecord:
    """Where one domain's shard lives in the file. Offsets and lengths are in bytes from the file start."""

    domain: str
    kind: str
    count: int
    ids: tuple[int, int]
    faiss: tuple[int, int]
    meta: dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    """What a snapshot holds.

    Attributes:
        bits, model_version: the code space.
        count: codes in the snapshot.
        last_change: the last database change the snapshot reflects.
        created_at: ISO 8601 UTC time of writing.
        payload_bytes: bytes covered by ``payload_sha256`` (everything before the manifest).
        payload_sha256: hex SHA-256 of those bytes.
        shards: one :class:`ShardRecord` per domain.
    """

    bits: int
    model_version: str
    count: int
    last_change: int
    created_at: str
    payload_bytes: int
    payload_sha256: str
    shards: tuple[ShardRecord, ...]
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        shards = tuple(
            ShardRecord(
                domain=str(s["domain"]),
                kind=str(s["kind"]),
                count=int(s["count"]),
                ids=(int(s["ids"][0]), int(s["ids"][1])),
                faiss=(int(s["faiss"][0]), int(s["faiss"][1])),
                meta=dict(s["meta"]),
            )
            for s in data["shards"]
        )
        return cls(
            bits=check_bits(int(data["bits"])),
            model_version=str(data["model_version"]),
            count=int(data["count"]),
            last_change=int(data["last_change"]),
            created_at=str(data["created_at"]),
            payload_bytes=int(data["payload_bytes"]),
            payload_sha256=str(data["payload_sha256"]),
            shards=shards,
            format=int(data["format"]),
        )


class _HashingWriter:
    """File writer that hashes what it writes and knows its offset."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes | memoryview) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.offset += len(data)
        return len(data)

    def align(self, boundary: int) -> None:
        pad = -self.offset % boundary
        if pad:
            self.write(bytes(pad))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _write_faiss(index: faiss.IndexBinary, writer: _HashingWriter) -> tuple[int, int]:
    start = writer.offset
    faiss.write_index_binary(index, faiss.PyCallbackIOWriter(writer.write))  # type: ignore[attr-defined]
    return start, writer.offset - start


def _write_payload(state_shards: dict[str, Shard], writer: _HashingWriter) -> list[ShardRecord]:
    writer.write(MAGIC)
    writer.align(HEADER_BYTES)
    records = []
    for domain, shard in state_shards.items():
        if not len(shard):
            continue
        writer.align(ALIGN)
        ids_start = writer.offset
        writer.write(np.ascontiguousarray(shard.ids, dtype="<i8").data.cast("B"))
        ids_section = (ids_start, writer.offset - ids_start)
        writer.align(ALIGN)
        faiss_section = _write_faiss(shard.faiss_index(), writer)
        records.append(ShardRecord(domain, shard.kind, len(shard), ids_section, faiss_section, shard.meta()))
    return records


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_snapshot(index: HashIndex, path: Path) -> Manifest:
    """Write ``index`` to ``path`` atomically: temporary file in the same directory, fsync, rename, fsync dir.

    Returns the manifest written.
    """
    if sys.byteorder != "little":  # the format is little-endian and FAISS writes native order
        raise SnapshotError("corrupt", "snapshots are only written on little-endian machines")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as file:
            writer = _HashingWriter(file)
            with index.locked_state() as state:
                records = _write_payload(state.shards, writer)
                bits, model_version, last_change = state.bits, state.model_version, state.last_change
            manifest = Manifest(
                bits=bits,
                model_version=model_version,
                count=sum(r.count for r in records),
                last_change=last_change,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                payload_bytes=writer.offset,
                payload_sha256=writer.hexdigest(),
                shards=tuple(records),
            )
            raw = manifest.to_json()
            file.write(raw)
            file.write(_TRAILER.pack(writer.offset, len(raw), hashlib.sha256(raw).digest(), END_MAGIC))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return manifest


def _parse_manifest(read: Callable[[int, int], bytes], size: int) -> Manifest:
    """Check magic, trailer and manifest digest; ``read(offset, length)`` reads from the file."""
    if size < HEADER_BYTES + _TRAILER.size or read(0, len(MAGIC)) != MAGIC:
        raise SnapshotError("corrupt", "not a metah index snapshot (bad magic or too short)")
    offset, length, digest, end = _TRAILER.unpack(read(size - _TRAILER.size, _TRAILER.size))
    if end != END_MAGIC or offset + length + _TRAILER.size != size or offset < HEADER_BYTES:
        raise SnapshotError("corrupt", "truncated or damaged trailer")
    raw = read(offset, length)
    if hashlib.sha256(raw).digest() != digest:
        raise SnapshotError("corrupt", "manifest checksum mismatch")
    try:
        manifest = Manifest.from_json(raw)
    except (ValueError, KeyError, TypeError) as error:
        raise SnapshotError("corrupt", f"unreadable manifest: {error}") from error
    if manifest.format != FORMAT or manifest.payload_bytes != offset:
        raise SnapshotError("corrupt", f"unsupported format {manifest.format} or inconsistent payload size")
    for record in manifest.shards:
        for start, length in (record.ids, record.faiss):
            if start < HEADER_BYTES or start + length > offset:
                raise SnapshotError("corrupt", f"section of domain {record.domain!r} outside the payload")
        if record.ids[1] != 8 * record.count or record.kind not in ("flat", "ivf"):
            raise SnapshotError("corrupt", f"inconsistent shard record for domain {record.domain!r}")
    return manifest


def read_manifest(path: Path) -> Manifest:
    """Read and check the manifest only (cheap: the payload is not read or verified)."""
    try:
        with open(path, "rb") as file:

            def read(offset: int, length: int) -> bytes:
                file.seek(offset)
                return file.read(length)

            return _parse_manifest(read, os.fstat(file.fileno()).st_size)
    except FileNotFoundError as error:
        raise SnapshotError("missing", str(path)) from error
    except (OSError, ValueError) as error:
        if isinstance(error, SnapshotError):
            raise
        raise SnapshotError("corrupt", f"{path}: {error}") from error


def check_code_space(manifest: Manifest, bits: int | None, model_version: str | None) -> None:
    """Raise ``SnapshotError("code_space")`` when the snapshot is of another bit length or model version."""
    if bits is not None and manifest.bits != bits:
        raise SnapshotError("code_space", f"snapshot has {manifest.bits}-bit codes, expected {bits}")
    if model_version is not None and manifest.model_version != model_version:
        raise SnapshotError(
            "code_space", f"snapshot is of model {manifest.model_version!r}, expected {model_version!r}"
        )


def _open_shard(record: ShardRecord, bits: int, mapped: mmap.mmap, options: IndexOptions) -> Shard:
    ids = np.frombuffer(mapped, dtype="<i8", count=record.count, offset=record.ids[0])
    if record.count and not (ids[0] >= 0 and (ids[1:] > ids[:-1]).all()):
        raise SnapshotError("corrupt", f"ids of domain {record.domain!r} are not ascending")
    blob = np.frombuffer(mapped, dtype=np.uint8, count=record.faiss[1], offset=record.faiss[0])
    try:
        reader = faiss.ZeroCopyIOReader(faiss.swig_ptr(blob), blob.size)  # type: ignore[attr-defined]
        index = faiss.read_index_binary(reader)
    except RuntimeError as error:
        raise SnapshotError("corrupt", f"FAISS cannot read domain {record.domain!r}: {error}") from error
    if index.d != bits or index.ntotal != record.count:
        raise SnapshotError("corrupt", f"domain {record.domain!r}: index does not match the manifest")
    if record.kind == "flat" and isinstance(index, faiss.IndexBinaryFlat):
        return FlatShard(bits, ids, index, backing=mapped)
    if record.kind == "ivf" and isinstance(index, faiss.IndexBinaryIVF):
        return IVFShard(
            bits,
            ids,
            index,
            nprobe=options.nprobe,
            trained_size=int(record.meta.get("trained_size", record.count)),
            backing=mapped,
        )
    kind = type(index).__name__
    raise SnapshotError("corrupt", f"domain {record.domain!r}: {kind} is not a {record.kind} shard")


def read_snapshot(
    path: Path,
    *,
    bits: int | None = None,
    model_version: str | None = None,
    options: IndexOptions | None = None,
    verify: bool = True,
    mmap_min_bytes: int = DEFAULT_MMAP_MIN_BYTES,
) -> HashIndex:
    """Load a snapshot as a :class:`~index.hash_index.HashIndex`.

    Args:
        bits, model_version: the code space expected (``None``: take the snapshot's).
        options: search/build options of the loaded index.
        verify: check the payload's SHA-256 (~0.2 s per 250 MB); without it a damaged file may load wrong.
        mmap_min_bytes: files at least this large stay memory-mapped; smaller ones are copied into memory.

    Raises:
        SnapshotError: ``missing``, ``corrupt`` or ``code_space``.
    """
    from index.hash_index import HashIndex, IndexOptions

    options = options or IndexOptions()
    try:
        file = open(path, "rb")  # noqa: SIM115 - the map outlives this function; the fd does not need to
    except FileNotFoundError as error:
        raise SnapshotError("missing", str(path)) from error
    try:
        with file:
            size = os.fstat(file.fileno()).st_size
            if size < HEADER_BYTES + _TRAILER.size:
                raise SnapshotError("corrupt", f"{size} bytes is too short for a snapshot")
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as error:
        raise SnapshotError("corrupt", f"{path}: {error}") from error
    manifest = _parse_manifest(lambda offset, length: mapped[offset : offset + length], size)
    check_code_space(manifest, bits, model_version)
    if verify:
        with memoryview(mapped) as view, view[: manifest.payload_bytes] as payload:
            if hashlib.sha256(payload).hexdigest() != manifest.payload_sha256:
                raise SnapshotError("corrupt", "payload checksum mismatch")
    shards: dict[str, Shard] = {}
    for record in manifest.shards:
        shard = _open_shard(record, manifest.bits, mapped, options)
        if size < mmap_min_bytes:
            shard.own()
        shards[record.domain] = shard
    try:
        return HashIndex(
            manifest.bits,
            manifest.model_version,
            options,
            last_change=manifest.last_change,
            shards=shards,
        )
    except CodeFormatError as error:
        raise SnapshotError("corrupt", str(error)) from error
