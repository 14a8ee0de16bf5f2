"""Reading image archives (zip, tar, tar.gz) safely, without extracting anything to disk.

Members are read into memory one at a time; nothing is written under a member's name, so no name can choose
a path. Still, names that are absolute or climb out (``..``) are refused, as are links, devices and other
non-regular members: they are reported per member and skipped. Limits on the whole archive (member count,
total uncompressed size, expansion ratio) are checked from the headers before any data is read; over a limit
the archive is refused as a whole (:class:`ArchiveError`). A zip member never yields more than its declared
size (``zipfile`` stops there and checks the CRC), and a tar member's size is its header's.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from service.errors import CodedError

Format = Literal["zip", "tar"]


class ArchiveError(CodedError):
    """The archive as a whole is refused (not an archive, corrupt, over a limit)."""

    code = "invalid_archive"


class MemberError(CodedError):
    """One member is refused (unsafe name, link, device, too large)."""

    code = "invalid_member"


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_total_bytes: int
    max_ratio: float
    max_member_bytes: int


@dataclass(frozen=True)
class Member:
    """A file in the archive: its name as written, its uncompressed size, and why it is refused (if it is)."""

    name: str
    size: int
    problem: MemberError | None = None

    @property
    def path(self) -> PurePosixPath:
        return PurePosixPath(self.name)


def sniff(path: Path) -> Format:
    """The archive format from the file's content (never its name). Raises :class:`ArchiveError`."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, tarfile.TarError):
        pass
    raise ArchiveError("not a zip, tar or tar.gz archive", code="not_an_archive")


def check_name(name: str) -> str | None:
    """Why a member name is unsafe (``None`` when it is fine): absolute, drive, ``..``, NUL, backslash."""
    if not name or "\x00" in name:
        return "empty or NUL in the name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if "\\" in name:
        return "backslash in the name"
    if ".." in PurePosixPath(name).parts:
        return "path climbs out of the archive (..)"
    return None


def _member(name: str, size: int, regular: bool, limits: Limits) -> Member:
    if (why := check_name(name)) is not None:
        return Member(name, size, MemberError(f"unsafe member name: {why}", code="unsafe_path"))
    if not regular:
        return Member(name, size, MemberError("not a regular file (link, device or other)", code="not_a_file"))
    if size > limits.max_member_bytes:
        problem = MemberError(f"member of {size} bytes exceeds {limits.max_member_bytes}", code="member_too_large")
        return Member(name, size, problem)
    return Member(name, size)


class Archive:
    """An opened archive: :attr:`members` (directories left out), :meth:`read` one member's bytes."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.format = sniff(path)
        self.limits = limits
        self._compressed = max(path.stat().st_size, 1)
        self._total = 0
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._tar_infos: dict[str, tarfile.TarInfo] = {}
        try:
            if self.format == "zip":
                self._zip = zipfile.ZipFile(path)
                self.members = self._zip_members(self._zip)
            else:
                self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by close()
                self.members = list(self._tar_members(self._tar))
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
            self.close()
            raise ArchiveError(f"the archive is corrupt: {exc}", code="corrupt_archive") from exc
        except ArchiveError:
            self.close()
            raise

    def _count(self, n: int, size: int) -> None:
        limits = self.limits
        if n > limits.max_members:
            raise ArchiveError(f"the archive has more than {limits.max_members} members", code="too_many_members")
        self._total += size
        if self._total > limits.max_total_bytes:
            raise ArchiveError(
                f"the archive expands to more than {limits.max_total_bytes} bytes", code="archive_too_large"
            )
        if self._total / self._compressed > limits.max_ratio:
            raise ArchiveError(
                f"the archive expands more than {limits.max_ratio:g} times its size (a zip bomb?)",
                code="expansion_ratio",
            )

    def _zip_members(self, archive: zipfile.ZipFile) -> list[Member]:
        infos = archive.infolist()
        self._count(len(infos), 0)
        out = []
        for n, info in enumerate(infos, 1):
            if info.is_dir():
                continue
            self._count(n, info.file_size)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0: written by a tool that records no Unix mode
            regular = kind in (0, stat.S_IFREG)
            out.append(_member(info.filename, info.file_size, regular, self.limits))
        return out

    def _tar_members(self, archive: tarfile.TarFile) -> Iterator[Member]:
        n = 0
        while (info := archive.next()) is not None:  # header by header: the limits stop a bomb early
            n += 1
            if info.isdir():
                self._count(n, 0)
                continue
            self._count(n, info.size if info.isreg() else 0)
            member = _member(info.name, info.size, info.isreg(), self.limits)
            if member.problem is None:
                self._tar_infos[info.name] = info
            yield member

    def read(self, member: Member) -> bytes:
        """The member's bytes (at most its declared size). Raises :class:`MemberError`."""
        if member.problem is not None:
            raise member.problem
        try:
            handle: IO[bytes] | None
            if self._zip is not None:
                handle = self._zip.open(member.name)
            else:
                assert self._tar is not None
                handle = self._tar.extractfile(self._tar_infos[member.name])
            if handle is None:
                raise MemberError("not a regular file", code="not_a_file")
            with handle:
                data = handle.read(self.limits.max_member_bytes + 1)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, KeyError, ValueError) as exc:
            raise MemberError(f"cannot read the member: {exc}", code="corrupt_member") from exc
        if len(data) > self.limits.max_member_bytes:
            raise MemberError(f"member exceeds {self.limits.max_member_bytes} bytes", code="member_too_large")
        return data

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
