"""The catalogue of awkward files (issue 6): each one, with the status it must get from ingestion and search.

Real pictures in every format a client may send are accepted and decoded as a viewer shows them; broken,
disguised and oversized ones get the contract's error body; nothing half-written is left behind.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import API_KEY, LiveServer, StartServer, assert_error, post_image, search
from tests.service.test_api_errors import bomb_png
from tests.service.test_api_jobs import JOB_SETTINGS, WorkerThread, submitted, wait_job, zip_of

EXIF_ORIENTATION = 0x0112


def digit_array(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.array(image.convert("L"))


def encoded(pixels: np.ndarray | Image.Image, fmt: str, **options: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sixteen_bit(png: bytes) -> bytes:
    return encoded(Image.fromarray(digit_array(png).astype(np.uint16) * 257), "PNG")


def exif_rotated(png: bytes) -> bytes:
    """The digit stored sideways (rotated 90° counter-clockwise) with the EXIF tag that turns it upright."""
    sideways = Image.fromarray(digit_array(png)).transpose(Image.Transpose.ROTATE_90)
    exif = sideways.getexif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to display"
    return encoded(sideways, "PNG", exif=exif.tobytes())


def animated_gif(png: bytes) -> bytes:
    first = Image.fromarray(digit_array(png))
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[Image.fromarray(255 - digit_array(png))])
    return buffer.getvalue()


def truncated_jpeg(png: bytes) -> bytes:
    data = encoded(np.kron(digit_array(png), np.ones((8, 8), np.uint8)), "JPEG", quality=90)
    return data[: len(data) // 2]


ACCEPTED: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("png-16-bit", sixteen_bit),
    ("png-palette", lambda png: encoded(Image.fromarray(digit_array(png)).convert("P"), "PNG")),
    ("jpeg-cmyk", lambda png: encoded(Image.fromarray(digit_array(png)).convert("CMYK"), "JPEG", quality=95)),
    ("png-exif-rotated", exif_rotated),
    ("gif-animated", animated_gif),
    ("webp", lambda png: encoded(Image.fromarray(digit_array(png)), "WEBP", lossless=True)),
    ("png-1x1", lambda png: encoded(np.zeros((1, 1), np.uint8), "PNG")),
    ("bmp", lambda png: encoded(Image.fromarray(digit_array(png)), "BMP")),
    ("tiff", lambda png: encoded(Image.fromarray(digit_array(png)), "TIFF")),
]

REFUSED: list[tuple[str, Callable[[bytes], bytes], int, str]] = [
    ("zero-bytes", lambda png: b"", 422, "empty_image"),
    ("text-renamed-png", lambda png: b"plain text, renamed to digit.png\n" * 8, 415, "unsupported_media_type"),
    (
        "svg",
        lambda png: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        415,
        "unsupported_media_type",
    ),
    ("pdf", lambda png: b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF", 415, "unsupported_media_type"),
    ("truncated-png", lambda png: png[: len(png) // 2], 422, "unreadable_image"),
    ("truncated-jpeg", truncated_jpeg, 422, "unreadable_image"),
    ("bomb-20000x20000", lambda png: bomb_png(20_000, 20_000), 413, "image_too_large"),
]


@pytest.fixture
def a_png(digit_pngs: list[tuple[bytes, str]]) -> bytes:
    return digit_pngs[0][0]


@pytest.mark.parametrize(("name", "make"), ACCEPTED, ids=[name for name, _ in ACCEPTED])
def test_pictures_in_every_accepted_form_are_stored_and_searchable(
    client: httpx.Client, a_png: bytes, name: str, make: Callable[[bytes], bytes]
) -> None:
    data = make(a_png)
    created = post_image(client, data, domain="odd", filename=f"{name}.bin")
    assert created.status_code == 201, created.text
    record = created.json()
    assert client.get(f"/v1/images/{record['id']}/content").content == data  # the original bytes, untouched
    hits = search(client, data, max_distance=0, domain="odd").json()["hits"]
    assert [hit["id"] for hit in hits] == [record["id"]]


@pytest.mark.parametrize(
    "make", [sixteen_bit, exif_rotated], ids=["16-bit-scaled-not-clipped", "exif-orientation-applied"]
)
def test_awkward_encodings_get_the_code_of_the_picture_they_show(
    client: httpx.Client, a_png: bytes, make: Callable[[bytes], bytes]
) -> None:
    assert post_image(client, a_png, domain="plain").status_code == 201
    query = search(client, make(a_png), k=1, domain="plain").json()
    assert query["hits"][0]["distance"] == 0  # the same picture: the same code as the plain 8-bit upright PNG
    plain = search(client, a_png, k=1, domain="plain").json()
    assert query["query"]["code_hex"] == plain["query"]["code_hex"]


@pytest.mark.parametrize(("name", "make", "status", "code"), REFUSED, ids=[name for name, *_ in REFUSED])
def test_broken_and_disguised_files_are_refused_and_leave_nothing(
    server: LiveServer,
    client: httpx.Client,
    a_png: bytes,
    name: str,
    make: Callable[[bytes], bytes],
    status: int,
    code: str,
) -> None:
    data = make(a_png)
    assert_error(post_image(client, data, filename=f"{name}.png"), status, code)
    assert_error(search(client, data), status, code)
    assert client.get("/v1/images").json()["items"] == []
    images = server.settings.images_dir
    assert not images.exists() or not any(p.is_file() for p in images.rglob("*"))


MiB = 1024 * 1024
HUGE_UPLOAD = 200 * MiB


@dataclass
class RawUpload:
    """What a raw-socket client saw of a huge upload: the body bytes (with their chunk framing) the server's kernel
    took before it closed the connection or stopped reading, what it answered, and the most that the sockets'
    buffers and the server's read-ahead hold once it stopped."""

    sent: int
    answer: bytes
    buffered_at_most: int

    def response(self) -> httpx.Response:
        head, _, body = self.answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})


def push_upload(server: LiveServer, *, declare_length: bool) -> RawUpload:
    """POST a 200 MB multipart "PNG" to ``/v1/images`` on a raw socket, a thread reading the answer meanwhile.

    The body is sent chunked (no length to refuse it by) or with its ``Content-Length``; sending stops when the
    server closes the connection, or has answered and takes no byte for two seconds (it stopped reading).
    """
    host, port = server.server.servers[0].sockets[0].getsockname()[:2]
    sock = socket.create_connection((host, port), timeout=0.5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    answer = bytearray()
    answered, finished = threading.Event(), threading.Event()

    def read() -> None:
        while not finished.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return  # reset by the server's close, after its answer (or without one)
            if not data:
                return
            answer.extend(data)
            answered.set()

    reader = threading.Thread(target=read, name="upload-answer", daemon=True)
    reader.start()
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n\x89PNG\r\n\x1a\n'
    tail = b"\r\n--b--\r\n"
    framing = (
        f"Content-Length: {len(head) + HUGE_UPLOAD + len(tail)}" if declare_length else "Transfer-Encoding: chunked"
    )
    request = (
        f"POST /v1/images HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\n{framing}\r\n\r\n"
    ).encode()
    chunk = bytes(MiB)
    pieces = [head, *[chunk] * (HUGE_UPLOAD // MiB), tail]
    sent = 0
    stalled_since: float | None = None
    deadline = time.monotonic() + 120
    try:
        sock.sendall(request)
        for piece in pieces:
            frame = piece if declare_length else f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            if piece is tail and not declare_length:
                frame += b"0\r\n\r\n"  # the last chunk
            view = memoryview(frame)
            while view:
                try:
                    count = sock.send(view)
                except TimeoutError:
                    stalled_since = stalled_since or time.monotonic()
                    if (answered.is_set() and time.monotonic() - stalled_since > 2) or time.monotonic() > deadline:
                        raise
                    continue
                stalled_since = None
                sent += count
                view = view[count:]
    except OSError:
        pass  # the server closed the connection (broken pipe, reset) or stopped reading
    answered.wait(timeout=30)  # a server that read it all answers after the last byte
    finished.set()
    reader.join(timeout=10)
    buffered = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])  # the server's receive buffer
    buffered += sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + MiB  # ours, and the server's read-ahead
    sock.close()
    return RawUpload(sent, bytes(answer), buffered)


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
def test_a_200_mb_upload_is_cut_off_at_the_limit(start_server: StartServer, declare_length: bool) -> None:
    """Against the default 20 MiB limit: the server answers 413 and stops reading a 200 MB body (chunked: just past
    the limit, where it can know; with a Content-Length over the limit, before reading up to it), and stores
    nothing. Past the point where it stopped, only what the two sockets' buffers hold is accepted."""
    limit = 20 * MiB
    server = start_server(max_upload_bytes=limit)
    upload = push_upload(server, declare_length=declare_length)
    assert_error(upload.response(), 413, "payload_too_large")
    if declare_length:
        assert upload.sent < limit, upload.sent  # refused on its header, not read up to the limit
    else:
        assert limit < upload.sent <= limit + upload.buffered_at_most, upload.sent
    assert server.client().get("/v1/images").json()["items"] == []
    assert not server.settings.images_dir.exists() or not any(server.settings.images_dir.rglob("*.*"))


def test_nested_archives_are_not_expanded(start_server: StartServer, digit_pngs: list[tuple[bytes, str]]) -> None:
    server = start_server(**JOB_SETTINGS)
    client = server.client()
    inner = zip_of([("7/a.png", digit_pngs[0][0])])
    outer = zip_of([("inner.zip", inner), ("inner.tar.gz", inner), ("3/b.png", digit_pngs[1][0])])
    worker = WorkerThread(server).start()
    try:
        job = wait_job(client, submitted(client, outer))
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["result"]["created"] == 1, job
    assert {e["item"]: e["code"] for e in job["errors"]} == {
        "inner.zip": "unsupported_media_type",
        "inner.tar.gz": "unsupported_media_type",
    }


def test_manifest_naming_missing_files_reports_each(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]]
) -> None:
    server = start_server(**JOB_SETTINGS)
    client = server.client()
    manifest = "path,label,domain\nthere.png,1,\ngone.png,2,\nsub/also-gone.png,3,\n"
    archive = zip_of([("manifest.csv", manifest.encode()), ("there.png", digit_pngs[0][0])])
    worker = WorkerThread(server).start()
    try:
        job = wait_job(client, submitted(client, archive))
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["result"]["created"] == 1, job
    assert {e["item"] for e in job["errors"]} >= {"gone.png", "sub/also-gone.png"}


@pytest.mark.parametrize(
    "key",
    [API_KEY[:-1], API_KEY + "0", API_KEY.upper(), "Bearer " + API_KEY, API_KEY[:-1] + chr(ord(API_KEY[-1]) + 1)],
    ids=["prefix", "suffix", "case", "bearer", "last-char"],
)
def test_almost_right_keys_are_refused(server: LiveServer, a_png: bytes, key: str) -> None:
    assert_error(post_image(server.client(api_key=key), a_png), 401, "invalid_api_key")
    assert server.client().get("/v1/images").json()["items"] == []


def test_a_key_in_the_query_string_is_ignored(server: LiveServer, a_png: bytes) -> None:
    anonymous = server.client(api_key=None)
    for name in ("api_key", "X-API-Key", "key"):
        response = anonymous.post("/v1/images", params={name: API_KEY}, files={"image": ("a.png", a_png, "image/png")})
        assert_error(response, 401, "missing_api_key")


def test_an_archive_member_count_at_the_default_limit_scale(start_server: StartServer) -> None:
    """100,000 tiny members against the default limit (100,000): one over is refused before any is read."""
    server = start_server(**{**JOB_SETTINGS, "archive_max_members": 100_000})
    client = server.client()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(100_001):
            archive.writestr(f"m/{i}.png", b"")
    worker = WorkerThread(server).start()
    try:
        job = wait_job(client, submitted(client, buffer.getvalue()))
    finally:
        worker.stop()
    assert job["status"] == "failed" and job["errors"][0]["code"] == "too_many_members", job
    assert client.get("/v1/images").json()["items"] == []
