"""Packing, unpacking and the one gate for the code format."""

from __future__ import annotations

import numpy as np
import pytest

from index import CodeFormatError, check_codes, check_ids, code_bytes, hamming_distances, pack_codes, unpack_codes


@pytest.mark.parametrize("bits", [8, 64, 128])
def test_pack_unpack_round_trip_including_all_zero_and_all_one(bits: int) -> None:
    rng = np.random.default_rng(bits)
    signs = np.where(rng.random((50, bits)) < 0.5, -1.0, 1.0).astype(np.float32)
    signs[0] = -1.0  # the all-zero code
    signs[1] = 1.0
    packed = pack_codes(signs, bits)
    assert packed.dtype == np.uint8 and packed.shape == (50, bits // 8) and packed.flags.c_contiguous
    assert not packed[0].any() and (packed[1] == 255).all()
    assert np.array_equal(unpack_codes(packed, bits), (signs > 0).astype(np.uint8))
    assert np.array_equal(pack_codes(unpack_codes(packed, bits), bits), packed)


def test_convention_is_value_above_zero_most_significant_bit_first() -> None:
    values = np.zeros((1, 16))
    values[0, 0] = 1.0  # first bit → top bit of byte 0
    values[0, 15] = 0.5  # last bit → lowest bit of byte 1
    values[0, 3] = 0.0  # exactly zero is bit 0 (not sign())
    values[0, 4] = -1.0
    assert pack_codes(values, 16).tolist() == [[0x80, 0x01]]
    assert pack_codes(np.array([True] + [False] * 7), 8).tolist() == [[0x80]]  # one code, boolean


def test_hamming_oracle_counts_differing_bits() -> None:
    a = np.array([[0b1010_0000, 0xFF]], np.uint8)
    b = np.array([[0b0010_0000, 0xFF], [0x00, 0x00], [0b1010_0000, 0xFF]], np.uint8)
    assert hamming_distances(a, b, 16).tolist() == [[1, 10, 0]]


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.zeros((3, 8), np.int64), "must be packed uint8 \\[N, 8\\] for 64-bit codes"),
        (np.zeros((3, 8), np.float32), "got float32 array"),
        (np.zeros((3, 16), np.uint8), "that is 128-bit codes"),
        (np.zeros((3, 4), np.uint8), "that is 32-bit codes"),
        (np.zeros((2, 3, 8), np.uint8), "must be uint8 \\[N, 8\\]"),
        (b"\x00" * 7, "that is 56-bit codes"),
    ],
)
def test_wrong_dtype_shape_or_bit_length_is_a_clear_error(codes: object, message: str) -> None:
    with pytest.raises(CodeFormatError, match=message):
        check_codes(codes, 64)  # type: ignore[arg-type]


def test_check_codes_accepts_one_code_and_bytes() -> None:
    assert check_codes(np.arange(8, dtype=np.uint8), 64).shape == (1, 8)
    assert check_codes(bytes(range(8)), 64).tolist() == [list(range(8))]


@pytest.mark.parametrize("bits", [0, 12, -8, 8192])
def test_bits_must_be_a_positive_multiple_of_eight(bits: int) -> None:
    with pytest.raises(CodeFormatError, match="multiple of 8"):
        code_bytes(bits)


def test_pack_refuses_wrong_width_nan_and_packed_input() -> None:
    with pytest.raises(CodeFormatError, match="must be \\[N, 64\\]"):
        pack_codes(np.ones((2, 48)), 64)
    with pytest.raises(CodeFormatError, match="NaN"):
        pack_codes(np.full((1, 8), np.nan), 8)
    with pytest.raises(CodeFormatError, match="already packed"):
        pack_codes(np.zeros((2, 8), np.uint8), 64)
    with pytest.raises(CodeFormatError, match="real or boolean"):
        pack_codes(np.array([["a"] * 8]), 8)


def test_check_ids() -> None:
    assert check_ids([3, 1, 2], 3).dtype == np.int64
    assert check_ids(7).tolist() == [7]
    with pytest.raises(CodeFormatError, match="non-negative"):
        check_ids([-1])
    with pytest.raises(CodeFormatError, match="repeat"):
        check_ids([4, 4])
    with pytest.raises(CodeFormatError, match="2 ids for 3 codes"):
        check_ids([1, 2], 3)
    with pytest.raises(CodeFormatError, match="integers"):
        check_ids([1.5])
    with pytest.raises(CodeFormatError, match="below 2\\*\\*63"):
        check_ids(np.array([2**63], np.uint64))
