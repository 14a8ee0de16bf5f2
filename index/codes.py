"""The one gate for the code format: packing encoder output and checking packed codes and ids.

Conventions, stated once for the whole project:

* a bit is ``1`` where the encoder output is ``> 0`` and ``0`` otherwise (so an exact ``0.0`` is bit 0, unlike
  ``sign()``);
* a ``bits``-bit code is packed most-significant-bit first (``np.packbits(..., bitorder="big")``) into
  ``bits // 8`` bytes of ``uint8``; ``bits`` must be a positive multiple of 8;
* ids are stable non-negative 64-bit integers chosen by the database (``-1`` is FAISS's "no result").

Every public function checks shape, dtype and bit length and raises :class:`CodeFormatError` with a message
that says what was expected and what came.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from index.errors import CodeFormatError, CodeSpaceError, DuplicateIdError

Codes = npt.NDArray[np.uint8]
Ids = npt.NDArray[np.int64]

MAX_BITS = 4096


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a valid code length (a positive multiple of 8, at most 4096)."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise CodeFormatError(f"bits must be an int, got {type(bits).__name__}")
    if bits <= 0 or bits % 8 != 0 or bits > MAX_BITS:
        raise CodeFormatError(f"bits must be a positive multiple of 8 up to {MAX_BITS}, got {bits}")
    return int(bits)


def code_bytes(bits: int) -> int:
    """Bytes per packed code: ``bits // 8``."""
    return check_bits(bits) // 8


def _describe(array: np.ndarray) -> str:
    return f"{array.dtype} array of shape {list(array.shape)}"


def pack_codes(values: npt.ArrayLike, bits: int) -> Codes:
    """Binarise encoder output and pack it.

    Args:
        values: encoder output, real or boolean, ``[N, bits]`` (or one code ``[bits]``); typically exactly
            ``±1.0``. Non-finite values are refused.
        bits: the code length the caller expects.

    Returns:
        ``uint8 [N, bits // 8]``, C-contiguous (a single ``[bits]`` input gives ``[1, bits // 8]``).
    """
    nbytes = code_bytes(bits)
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != bits:
        hint = ""
        if array.dtype == np.uint8 and array.ndim == 2 and array.shape[1] == nbytes:
            hint = " (these look like codes that are already packed: use check_codes)"
        raise CodeFormatError(f"encoder output must be [N, {bits}], got {_describe(array)}{hint}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise CodeFormatError("encoder output contains NaN or infinite values")
    elif array.dtype.kind not in "biu":
        raise CodeFormatError(f"encoder output must be real or boolean, got {_describe(array)}")
    return np.ascontiguousarray(np.packbits(array > 0, axis=1, bitorder="big"))


def unpack_codes(codes: npt.ArrayLike, bits: int) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`pack_codes` on the bits: ``uint8 [N, bits // 8]`` → ``uint8 [N, bits]`` of 0/1."""
    packed = check_codes(codes, bits)
    return np.unpackbits(packed, axis=1, count=bits, bitorder="big")


def check_codes(codes: npt.ArrayLike, bits: int, *, name: str = "codes") -> Codes:
    """Validate packed codes.

    Args:
        codes: ``uint8 [N, bits // 8]`` or one code ``uint8 [bits // 8]``; ``bytes`` of the right length
            are accepted as one code. No other dtype is converted silently.
        bits: the code length of the index.
        name: what to call the argument in error messages.

    Returns:
        ``uint8 [N, bits // 8]``, C-contiguous (a view when the input already was).
    """
    nbytes = code_bytes(bits)
    if isinstance(codes, bytes | bytearray | memoryview):
        codes = np.frombuffer(codes, dtype=np.uint8)
    array = np.asarray(codes)
    if array.dtype != np.uint8:
        raise CodeFormatError(
            f"{name} must be packed uint8 [N, {nbytes}] for {bits}-bit codes (pack encoder output with "
            f"pack_codes), got {_describe(array)}"
        )
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != nbytes:
        raise CodeFormatError(
            f"{name} must be uint8 [N, {nbytes}] for {bits}-bit codes, got {_describe(array)}"
            + (f" (that is {array.shape[-1] * 8}-bit codes)" if array.ndim in (1, 2) else "")
        )
    return np.ascontiguousarray(array)


def check_ids(ids: npt.ArrayLike, count: int | None = None) -> Ids:
    """Validate ids: integers in ``[0, 2**63)``, unique within the call.

    Args:
        ids: ``[N]`` integers (any integer dtype, or a sequence of ints), or one int.
        count: the number of codes they go with, if any.

    Returns:
        ``int64 [N]`` (a copy unless the input already was ``int64``).
    """
    array = np.asarray(ids)
    if array.ndim == 0:
        array = array[None]
    if array.size == 0:
        array = array.astype(np.int64).reshape(0)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise CodeFormatError(f"ids must be a 1-D array of integers, got {_describe(array)}")
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise CodeFormatError("ids must be below 2**63")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        raise CodeFormatError(f"ids must be non-negative, got {int(array.min())}")
    if count is not None and array.shape[0] != count:
        raise CodeFormatError(f"got {array.shape[0]} ids for {count} codes")
    if array.size > 1:
        ordered = np.sort(array)
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeated.size:
            raise CodeFormatError(f"ids repeat within one call: {np.unique(repeated)[:20].tolist()}")
    return array


def hamming_distances(queries: npt.ArrayLike, codes: npt.ArrayLike, bits: int) -> npt.NDArray[np.int32]:
    """Plain numpy Hamming distances (the oracle and the benchmark baseline).

    Args:
        queries: packed ``uint8 [Q, bits // 8]``.
        codes: packed ``uint8 [N, bits // 8]``.
        bits: the code length.

    Returns:
        ``int32 [Q, N]``: ``popcount(query XOR code)``. Memory is ``O(Q · N)``: chunk large inputs.
    """
    q = check_codes(queries, bits, name="queries")
    c = check_codes(codes, bits)
    if bits % 64 == 0:  # XOR and count 8 bytes at a time
        q, c = q.view(np.uint64), c.view(np.uint64)
    out = np.empty((q.shape[0], c.shape[0]), dtype=np.int32)
    for i, query in enumerate(q):
        counts = np.bitwise_count(np.bitwise_xor(c, query))
        out[i] = counts[:, 0] if counts.shape[1] == 1 else counts.sum(axis=1, dtype=np.int32)
    return out


def check_k(k: int) -> int:
    """Return ``k`` (hits per query) if it is a positive int."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise CodeFormatError(f"k must be a positive int, got {k!r}")
    return int(k)


def check_radius(radius: int, bits: int, name: str) -> int:
    """Return a Hamming radius ``>= 0``, capped at ``bits`` (``name`` is the argument's name in the error)."""
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 0:
        raise CodeFormatError(f"{name} must be an int >= 0, got {radius!r}")
    return min(int(radius), bits)


def check_domain(domain: str) -> str:
    """Return ``domain`` if it is a non-empty string."""
    if not isinstance(domain, str) or not domain:
        raise CodeFormatError(f"domain must be a non-empty string, got {domain!r}")
    return domain


def refuse_duplicates(id_parts: list[Ids]) -> None:
    """Raise :class:`DuplicateIdError` when an id occurs twice in the concatenation of ``id_parts``."""
    if not id_parts:
        return
    ids = np.sort(np.concatenate(id_parts))
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if repeated.size:
        raise DuplicateIdError(np.unique(repeated).tolist())


def check_model_version(queried: str | None, indexed: str) -> None:
    """Refuse (:class:`CodeSpaceError`) queries of model ``queried`` on an index of model ``indexed``."""
    if queried is not None and queried != indexed:
        raise CodeSpaceError(f"queries of model {queried!r} cannot search the index of model {indexed!r}")
