"""Broken, hostile and oversized input: every answer is a contract error body, never a 500 or a traceback."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import MAX_UPLOAD, assert_error, post_image, search


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes that declare ``width × height`` pixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def a_png(digit_pngs: list[tuple[bytes, str]]) -> bytes:
    return digit_pngs[0][0]


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda png: b"", 422, "empty_image"),
        (lambda png: b"just some text, renamed to .png\n" * 4, 415, "unsupported_media_type"),
        (lambda png: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "unsupported_media_type"),
        (lambda png: png[: len(png) // 2], 422, "unreadable_image"),
        (lambda png: bomb_png(50_000, 50_000), 413, "image_too_large"),
        (lambda png: png_of(1100, 1000), 413, "image_too_large"),
    ],
    ids=["zero-bytes", "text-as-png", "eps", "truncated-png", "bomb-header", "over-max-pixels"],
)
def test_bad_images_are_refused_by_ingest_and_search(
    client: httpx.Client, a_png: bytes, make: Callable[[bytes], bytes], status: int, code: str
) -> None:
    data = make(a_png)
    assert_error(post_image(client, data), status, code)
    assert_error(search(client, data), status, code)
    assert client.get("/v1/images").json()["items"] == []


def test_oversized_bodies_are_cut_off_while_streaming(client: httpx.Client) -> None:
    too_big = b"\x89PNG" + bytes(MAX_UPLOAD + 1024)
    assert_error(post_image(client, too_big), 413, "payload_too_large")
    assert_error(search(client, too_big), 413, "payload_too_large")

    boundary = "metah-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + too_big
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must be counted, not read from a header
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    response = client.post(
        "/v1/images", content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    assert client.get("/v1/images").json()["items"] == []


@pytest.mark.parametrize("params", [{"k": 0}, {"k": 1001}, {"k": "ten"}, {"max_distance": -1}, {"domain": "../etc"}])
def test_bad_search_parameters_are_422(client: httpx.Client, a_png: bytes, params: dict[str, object]) -> None:
    assert_error(search(client, a_png, **params), 422, "validation_error")


@pytest.mark.parametrize(
    "metadata",
    ["{not json", "[1, 2, 3]", '"a string"', '{"x": NaN}', '{"big": "' + "x" * 20_000 + '"}'],
    ids=["syntax", "array", "string", "nan", "too-big"],
)
def test_bad_metadata_is_422(client: httpx.Client, a_png: bytes, metadata: str) -> None:
    assert_error(post_image(client, a_png, metadata=metadata), 422, "invalid_metadata")


def test_bad_form_fields_are_422(client: httpx.Client, a_png: bytes) -> None:
    assert_error(post_image(client, a_png, domain="no/slashes"), 422, "validation_error")
    assert_error(post_image(client, a_png, label="x" * 300), 422, "validation_error")
    assert_error(client.post("/v1/images", data={"label": "3"}), 422, "validation_error")
    assert_error(client.post("/v1/search", files={"picture": ("x.png", a_png)}), 422, "validation_error")
    assert_error(client.post("/v1/search", content=b"{}", headers={"Content-Type": "application/json"}), 422)
    text_field = client.post("/v1/search", data={"image": "not a file"})
    assert_error(text_field, 422, "validation_error")
    assert "image" in text_field.json()["error"]["message"]


def test_writes_need_the_api_key_and_searches_do_not(
    client: httpx.Client, anonymous: httpx.Client, a_png: bytes
) -> None:
    image_id = post_image(client, a_png).json()["id"]
    assert_error(post_image(anonymous, a_png), 401, "missing_api_key")
    assert_error(anonymous.delete(f"/v1/images/{image_id}"), 401, "missing_api_key")
    wrong = {"X-API-Key": "not-the-key"}
    assert_error(anonymous.delete(f"/v1/images/{image_id}", headers=wrong), 401, "invalid_api_key")
    assert client.get(f"/v1/images/{image_id}").status_code == 200

    assert search(anonymous, a_png).status_code == 200
    assert anonymous.post(f"/v1/images/{image_id}/similar").status_code == 200
    assert anonymous.get("/v1/images").status_code == 200


def test_unknown_and_malformed_ids(client: httpx.Client) -> None:
    for method, path in [
        ("GET", "/v1/images/999"),
        ("GET", "/v1/images/999/content"),
        ("DELETE", "/v1/images/999"),
        ("POST", "/v1/images/999/similar"),
    ]:
        assert_error(client.request(method, path), 404, "image_not_found")
    for bad in ("abc", "0", "-1", str(2**70)):
        assert_error(client.get(f"/v1/images/{bad}"), 422, "validation_error")
    assert_error(client.get("/v1/images", params={"after": "x"}), 422)
    assert_error(client.get("/v1/images", params={"limit": 0}), 422)


def test_unknown_routes_and_methods_use_the_error_body(client: httpx.Client) -> None:
    assert_error(client.get("/v2/nothing"), 404, "not_found")
    assert_error(client.put("/v1/search"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; boundary="],
    ids=["no-boundary", "empty-boundary"],
)
def test_a_malformed_multipart_request_is_400(client: httpx.Client, a_png: bytes, content_type: str) -> None:
    for path in ("/v1/images", "/v1/search"):
        response = client.post(path, content=b"--x\r\n" + a_png, headers={"Content-Type": content_type})
        assert_error(response, 400, "bad_request")
    assert client.get("/v1/images").json()["items"] == []
