"""Domain errors raised by ``index/``; the service maps them to HTTP status codes.

Every error derives from :class:`HashIndexError`, so a caller can catch the whole family at once.
"""

from __future__ import annotations

from typing import Literal

SnapshotProblem = Literal["missing", "corrupt", "code_space", "stale"]


class HashIndexError(Exception):
    """Base class of every error raised by ``index/``."""


class CodeFormatError(HashIndexError, ValueError):
    """Codes, encoder output, ids or query arguments have the wrong bit length, dtype, shape or value."""


class DuplicateIdError(HashIndexError, ValueError):
    """An ``add`` named ids that the index already holds; nothing was added.

    Attributes:
        ids: the offending ids (at most 20 of them, ascending).
    """

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids[:20]
        more = "" if len(ids) <= 20 else f" and {len(ids) - 20} more"
        super().__init__(f"ids already in the index: {self.ids}{more}")


class CodeSpaceError(HashIndexError, ValueError):
    """Two things that must share a code space (bits and model version) do not."""


class IndexBusyError(HashIndexError):
    """A search that was not to wait (``wait=False``) found a write holding, or waiting for, the index's lock."""


class SnapshotError(HashIndexError):
    """A snapshot cannot be used.

    Attributes:
        problem: ``missing`` (no file), ``corrupt`` (truncated, edited, unreadable), ``code_space``
            (other bits or model version) or ``stale`` (older than the database).
    """

    def __init__(self, problem: SnapshotProblem, message: str) -> None:
        self.problem: SnapshotProblem = problem
        super().__init__(f"{problem} snapshot: {message}")
