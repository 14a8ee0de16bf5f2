"""Local servers and their processes (Linux)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_command(processes: int) -> list[str]:
    """The start of a command that runs ``processes`` local processes under ``torchrun`` (one node, a free port);
    the module and its arguments follow."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={processes}",
        f"--master_port={free_port()}",
    ]


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux ``/proc``), whichever of its threads started them."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found
