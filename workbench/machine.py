"""The machine a benchmark ran on, described the same way by every benchmark."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VERSIONED = {"torch": "torch", "faiss": "faiss", "numpy": "numpy", "PIL": "pillow", "httpx": "httpx"}


def cpu_name() -> str:
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The checked-out commit (12 hex digits), ``-dirty`` when tracked files outside ``benchmarks/`` differ from
    it (a benchmark writes its raw lines there while it runs); ``unknown`` outside a git checkout.

    ``METAH_GIT_COMMIT``, when set, is the answer: a copy of the tree on a lent GPU machine names the commit it was
    made from (that copy's git metadata, if any, can be older than its files).
    """
    named = os.environ.get("METAH_GIT_COMMIT")
    if named:
        return named
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)benchmarks"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine(**extra: Any) -> dict[str, Any]:
    """The commit, CPU, cores, memory, load, niceness and the versions of the libraries the benchmark imported
    (torch, faiss, numpy, Pillow, httpx), plus the GPU when torch sees one; ``extra`` adds benchmark-specific
    entries."""
    from index.threads import available_cpus  # local: index imports faiss, which a GPU image may not have

    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": git_commit(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cpus_available": available_cpus(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "niceness": os.nice(0),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    for module, name in VERSIONED.items():
        if module in sys.modules:
            info[name] = getattr(sys.modules[module], "__version__", None)
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return {**info, **extra}
