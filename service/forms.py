"""One field of a form body, read as the body streams in, for the search route's plain ASGI handler.

Only the wanted field's bytes are kept, in memory: the body is bounded by :class:`service.limits.BodySizeLimit`,
so no spooled temporary file per part and no thread hop to write one, which Starlette's form parser needs
because it keeps every part of bodies of any size. Parsing is python-multipart's, as in Starlette, and so are
the rules and the 400 messages: a part needs a ``name``, a part with a ``filename`` is a file, a plain field
holds at most 1 MiB, at most 1,000 files and 1,000 fields, a non-form content type has no fields, and the last
part of a name wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException

MAX_FILES = 1000
MAX_FIELDS = 1000
MAX_FIELD_BYTES = 1024 * 1024
URLENCODED, MULTIPART = b"application/x-www-form-urlencoded", b"multipart/form-data"
T = TypeVar("T")


class FormFile(bytes):
    """An uploaded file's bytes (a part that had a ``filename``), as opposed to a plain text field's ``str``."""


def bad_form(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=message)


def _guarded(call: Callable[..., T], *args: object) -> T:
    """``call(*args)``, python-multipart's parse errors raised as Starlette's 400."""
    try:
        return call(*args)
    except FormParserError:
        raise bad_form("Invalid multipart data.") from None


class _Parts:
    """python-multipart's callbacks: the value of the last part named ``wanted``."""

    def __init__(self, wanted: str) -> None:
        self.wanted = wanted
        self.value: FormFile | str | None = None
        self.files = self.fields = 0
        self._header: list[bytes] = [b"", b""]
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._data = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.data,
            "on_part_end": self.end,
        }

    def begin(self) -> None:
        self._disposition, self._data = b"", bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def header_end(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise bad_form('The Content-Disposition header field "name" must be provided.')
        self._name = options[b"name"].decode("utf-8", errors="replace")
        self._is_file = b"filename" in options
        if self._is_file:
            self.files += 1
            if self.files > MAX_FILES:
                raise bad_form(f"Too many files. Maximum number of files is {MAX_FILES}.")
        else:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise bad_form(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")

    def data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            if self._name == self.wanted:  # other files are skipped, not kept
                self._data += data[start:end]
            return
        if len(self._data) + end - start > MAX_FIELD_BYTES:
            raise bad_form(f"Part exceeded maximum size of {MAX_FIELD_BYTES // 1024}KB.")
        self._data += data[start:end]

    def end(self) -> None:
        if self._name == self.wanted:
            self.value = FormFile(self._data) if self._is_file else self._data.decode("utf-8", errors="replace")
        self._data = bytearray()


class FormField:
    """Field ``name`` of a form body fed chunk by chunk (:meth:`feed`, then :meth:`value`). Raises a 400
    :class:`HTTPException` for a malformed multipart body."""

    def __init__(self, content_type: str | None, name: str) -> None:
        self.name = name
        kind, options = parse_options_header(content_type or "")
        self.kind = kind
        self._text = bytearray()  # a URL-encoded body, parsed at the end
        self._parts = _Parts(name)
        self._parser: MultipartParser | None = None
        if kind == MULTIPART:
            if b"boundary" not in options:
                raise bad_form("Missing boundary in multipart.")
            self._parser = _guarded(MultipartParser, options[b"boundary"], self._parts.callbacks())

    def feed(self, chunk: bytes) -> None:
        if self._parser is not None:
            _guarded(self._parser.write, chunk)
        elif self.kind == URLENCODED:
            self._text += chunk

    def value(self) -> FormFile | str | None:
        """A :class:`FormFile` for an uploaded file, a ``str`` for a text field, ``None`` when the body has no
        such field (or is not a form)."""
        if self._parser is not None:
            _guarded(self._parser.finalize)
            return self._parts.value
        if self.kind == URLENCODED:
            return dict(parse_qsl(self._text.decode("latin-1"), keep_blank_values=True)).get(self.name)
        return None
