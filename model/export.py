"""The encoder artefact (CONTRACT §3): a frozen TorchScript module with its metadata inside.

``torch.jit.load(path, _extra_files={"metah.json": ""})`` gives back the JSON metadata; nothing but torch
is needed to run it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.errors import CheckpointError

METADATA_FILE = "metah.json"
log = logging.getLogger(__name__)

REQUIRED_METADATA = ("bits", "input_size", "backbone", "method", "classes", "model_version", "created_at")


@dataclass(frozen=True)
class LoadedEncoder:
    module: torch.jit.ScriptModule
    metadata: dict[str, Any]

    @property
    def bits(self) -> int:
        return int(self.metadata["bits"])

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.metadata["input_size"]
        return int(height), int(width)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the module's parameters and buffers, in ``state_dict`` order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def new_model_version(method: str, bits: int, module: nn.Module, created_at: datetime) -> str:
    return f"{created_at:%Y%m%d-%H%M%S}-{method}-{bits}b-{weights_digest(module)[:8]}"


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _script(encoder: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """The frozen TorchScript module and how it was made: ``scripted``, or ``traced`` when scripting fails (some
    third-party backbones are not scriptable). A trace keeps only the path ``example`` took through the network,
    so the fallback is logged at WARNING and recorded in the artefact's metadata, never silent."""
    try:
        return torch.jit.freeze(torch.jit.script(encoder)), "scripted"
    except Exception as exc:  # torch raises RuntimeError, NotSupportedError, FrontendError, ...
        log.warning(
            "the encoder cannot be scripted, so it is exported as a trace (its control flow is fixed to the path an "
            "example input of shape %s takes; the metadata says export=traced): %s",
            tuple(example.shape),
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        )
    return torch.jit.freeze(torch.jit.trace(encoder, example, check_trace=False)), "traced"


def export_encoder(encoder: nn.Module, metadata: dict[str, Any], path: Path) -> None:
    """Script, freeze and save ``encoder`` (a copy, on CPU, in eval mode) with ``metadata`` inside.

    The copy's convolution weights are stored channels-last (NHWC), so the CPU's convolutions run in that layout
    from the first one on: at one thread, 1.8–2.6× the images/s of the eager NCHW network for EfficientNet-Lite0,
    where the NCHW artefact gave 1.3–1.5× (``benchmarks/service/efficientnet_lite0*.md``). Before, only the
    layout the caller's network happened to be in was kept (training converts it in place, a restored checkpoint
    is NCHW). Only the memory layout changes: the input is still ``[N, 3, H, W]`` in ``[0, 1]``, the output
    ``[N, bits]`` of ±1 (CONTRACT §3).

    The saved metadata is ``metadata`` plus ``export``: ``scripted``, or ``traced`` when scripting failed and the
    network was traced instead (also logged at WARNING). The write is atomic: a temporary file in the target
    folder is renamed over ``path``.
    """
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"artefact metadata lacks {missing}")
    frozen_input = copy.deepcopy(encoder).cpu().eval().to(memory_format=torch.channels_last)
    height, width = metadata["input_size"]
    example = torch.rand(2, 3, int(height), int(width))
    with torch.no_grad():
        module, how = _script(frozen_input, example)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    saved = {**metadata, "export": how}
    torch.jit.save(module, str(tmp), _extra_files={METADATA_FILE: json.dumps(saved, sort_keys=True)})
    os.replace(tmp, path)


def load_encoder(path: Path, device: str | torch.device = "cpu") -> LoadedEncoder:
    """Load an artefact written by :func:`export_encoder` and check its metadata.

    Raises:
        CheckpointError: missing file, not TorchScript, or metadata missing/invalid.
    """
    if not path.is_file():
        raise CheckpointError(f"model artefact {str(path)!r} does not exist")
    return _load(str(path), str(path), device)


def load_encoder_bytes(data: bytes, name: str, device: str | torch.device = "cpu") -> LoadedEncoder:
    """:func:`load_encoder` for an artefact held in memory (read from a blob store); ``name`` names it in errors."""
    return _load(io.BytesIO(data), name, device)


def _load(source: str | io.BytesIO, name: str, device: str | torch.device) -> LoadedEncoder:
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(source, map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError/... for non-TorchScript files
        raise CheckpointError(f"{name!r} is not a TorchScript encoder artefact ({exc})") from exc
    try:
        metadata = json.loads(extra[METADATA_FILE])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{name!r} has unreadable metadata: {exc}") from exc
    if not isinstance(metadata, dict) or any(key not in metadata for key in REQUIRED_METADATA):
        raise CheckpointError(f"{name!r} lacks metah metadata (one of {', '.join(REQUIRED_METADATA)})")
    module.eval()
    return LoadedEncoder(module, metadata)
