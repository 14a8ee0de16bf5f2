"""The search route's in-memory form reader gives what Starlette's streaming form parser gives, body by body."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from service.forms import MAX_FIELD_BYTES, MAX_FIELDS, MAX_FILES, FormField, FormFile

MULTIPART = "multipart/form-data; boundary=b"


def part(name: str | None, data: bytes, filename: str | None = None) -> bytes:
    disposition = "form-data" + (f'; name="{name}"' if name is not None else "")
    disposition += f'; filename="{filename}"' if filename is not None else ""
    return f"--b\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode() + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--b--\r\n"


def starlette_field(content_type: str | None, data: bytes, name: str) -> FormFile | str | None:
    """What Starlette's ``Request.form()`` makes of the body (its 400s raised as they are)."""
    headers = [(b"content-length", str(len(data)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("latin-1")))
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "headers": headers}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": data, "more_body": False}

    async def read() -> FormFile | str | None:
        try:
            form = await Request(scope, receive).form()
        except MultiPartException as exc:  # what Starlette answers inside an application
            raise HTTPException(status_code=400, detail=exc.message) from None
        value = form.get(name)
        result = FormFile(await value.read()) if isinstance(value, UploadFile) else value
        await form.close()
        return result

    return asyncio.run(read())


def streamed(content_type: str | None, data: bytes, name: str, chunk: int) -> FormFile | str | None:
    """What :class:`FormField` makes of the body fed ``chunk`` bytes at a time, as the route feeds it."""
    field = FormField(content_type, name)
    for start in range(0, len(data), chunk):
        field.feed(data[start : start + chunk])
    return field.value()


def outcome(
    read: Callable[[str | None, bytes, str], FormFile | str | None], content_type: str | None, data: bytes
) -> tuple[str, object]:
    try:
        value = read(content_type, data, "image")
    except HTTPException as exc:
        return "error", (exc.status_code, exc.detail)
    return type(value).__name__, value


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n"
CASES = {
    "one file": (MULTIPART, body(part("image", PNG, "a.png"))),
    "an empty file": (MULTIPART, body(part("image", b"", "a.png"))),
    "a text field of that name": (MULTIPART, body(part("image", b"not a file"))),
    "no such field": (MULTIPART, body(part("other", PNG, "a.png"))),
    "the last of two wins": (MULTIPART, body(part("image", b"first", "a.png"), part("image", PNG, "b.png"))),
    "a file, then a text of that name": (MULTIPART, body(part("image", PNG, "a.png"), part("image", b"text"))),
    "other fields around it": (MULTIPART, body(part("k", b"5"), part("image", PNG, "x"), part("z", PNG, "z"))),
    "a quoted boundary": ('multipart/form-data; boundary="b"', body(part("image", PNG, "a.png"))),
    "a part without a name": (MULTIPART, body(part(None, PNG, "a.png"))),
    "no boundary": ("multipart/form-data", body(part("image", PNG, "a.png"))),
    "an empty boundary": ("multipart/form-data; boundary=", b"--x\r\n" + PNG),
    "not multipart at all": (MULTIPART, b"garbage without any boundary line"),
    "a broken header line": (MULTIPART, b"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n--b--\r\n"),
    "an empty body": (MULTIPART, b""),
    "too many fields": (MULTIPART, body(*[part(f"f{i}", b"v") for i in range(MAX_FIELDS + 1)])),
    "too many files": (MULTIPART, body(*[part(f"f{i}", b"v", "f") for i in range(MAX_FILES + 1)])),
    "a text field over 1 MiB": (MULTIPART, body(part("note", b"x" * (MAX_FIELD_BYTES + 1)))),
    "a file over 1 MiB is fine": (MULTIPART, body(part("image", b"y" * (MAX_FIELD_BYTES + 1), "big"))),
    "url-encoded": ("application/x-www-form-urlencoded", b"image=abc&k=5"),
    "url-encoded without it": ("application/x-www-form-urlencoded", b"k=5"),
    "JSON": ("application/json", b'{"image": "abc"}'),
    "no content type": (None, body(part("image", PNG, "a.png"))),
}


@pytest.mark.parametrize("chunk", [7, 1 << 30], ids=["7-byte chunks", "whole"])
@pytest.mark.parametrize(("content_type", "data"), list(CASES.values()), ids=list(CASES))
def test_the_form_reader_agrees_with_starlettes_parser(content_type: str | None, data: bytes, chunk: int) -> None:
    reader = functools.partial(streamed, chunk=chunk)
    assert outcome(reader, content_type, data) == outcome(starlette_field, content_type, data)


def test_an_uploaded_file_is_told_apart_from_text() -> None:
    upload = streamed(MULTIPART, body(part("image", PNG, "a.png")), "image", 64)
    assert isinstance(upload, FormFile) and upload == PNG
    assert streamed(MULTIPART, body(part("image", b"text")), "image", 64) == "text"
