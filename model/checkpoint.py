"""Resumable training state on disk: written atomically, read with ``weights_only`` and checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from model.errors import CheckpointError

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "config", "classes", "model", "step")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing, unreadable, corrupt, or not a metah checkpoint.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files (pickle, zip, runtime errors)
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a metah checkpoint ({exc})") from exc
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a metah checkpoint (missing keys)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {state['format']}, expected {CHECKPOINT_FORMAT}")
    return state
