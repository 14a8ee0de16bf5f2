"""Sample a running process with py-spy and say where its time went, as a markdown table.

Used by ``scripts/bench_service.py --profile`` on the job worker during bulk ingestion. py-spy attaches with
ptrace (root, or ``kernel.yama.ptrace_scope = 0``); it samples without pausing the process.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_PACKAGES = ("service/", "index/", "model/")


def py_spy() -> str:
    """The py-spy executable beside this interpreter, else the one on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    found = str(local) if local.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return found


@contextmanager
def recording(pid: int, out: Path, rate: int = 200) -> Iterator[None]:
    """Record ``pid``'s Python stacks into ``out`` (py-spy's raw collapsed format) while the block runs."""
    # --idle keeps samples of threads blocked in system calls (fsync, locks): with a ``focus`` the summary is
    # then a wall-clock breakdown of that function
    command = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--nolineno", "--nonblocking", "--idle"]
    recorder = subprocess.Popen(
        [*command, "--rate", str(rate), "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes the file when interrupted
        _, stderr = recorder.communicate(timeout=60)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {stderr.decode(errors='replace')[-500:]}")


def _stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    """``(frames root → leaf, samples)`` per line of a raw collapsed-stack file."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def summarise(raw: Path, rate: int, focus: str | None = None, top: int = 18) -> str:
    """Markdown: inclusive time of the project's own functions, and self time of the hottest leaves.

    With ``focus`` (a function name such as ``IngestJob._run``), only samples inside that function count,
    and only the frames below it: the breakdown of that one function.
    """
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in _stacks(raw):
        if focus is not None:
            start = next((i for i, frame in enumerate(frames) if frame.startswith(f"{focus} (")), None)
            if start is None:
                continue
            frames = frames[start:]
        total += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            if any(f"({package}" in frame for package in PROJECT_PACKAGES):
                inclusive[frame] += count
    if total == 0:
        return "(no samples)\n"

    def table(title: str, counter: collections.Counter[str]) -> list[str]:
        rows = [f"| {title} | samples | seconds | share |", "|---|---:|---:|---:|"]
        for frame, count in counter.most_common(top):
            rows.append(f"| `{frame}` | {count} | {count / rate:.2f} | {count / total:.1%} |")
        return rows

    scope = f"inside `{focus}`" if focus else "in the process"
    lines = [
        f"{total} samples at {rate} Hz: {total / rate:.2f} s {scope}, waits in system calls included.",
        "",
        *table("project function (inclusive)", inclusive),
        "",
        *table("leaf frame (self time)", leaves),
    ]
    return "\n".join(lines) + "\n"
