"""The model registry (``model_versions``) and opening a serving pair: artefact + index of its codes.

The index follows the database: :func:`open_index` loads the snapshot in ``data_dir/index`` when it reflects
the database's latest change, and otherwise rebuilds it from the ``codes`` table (and writes a new snapshot).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from index import HashIndex, SnapshotError, load_or_rebuild, read_manifest
from model.errors import CheckpointError
from model.export import LoadedEncoder, load_encoder
from service import repository
from service.db import Database
from service.models import ModelVersion
from service.serving import ServingPair
from service.settings import Settings

log = logging.getLogger(__name__)

# A training run's figures (model/train.py writes them beside model.pt), served by GET /v1/models/{v}/plots/{name}.
PLOT_FILES = ("loss_curves.png", "pr_curve.png")

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _file_name(version: str) -> str:
    """A file-system-safe name for a model version (versions are generated, but never trust a name)."""
    if not _SAFE_NAME.fullmatch(version):
        raise CheckpointError(f"model version {version!r} is not a safe name")
    return version


def snapshot_path(settings: Settings, version: str) -> Path:
    return settings.index_dir / f"{_file_name(version)}.mhix"


def artefact_file(settings: Settings, row: ModelVersion) -> Path:
    """The artefact of a registry row (paths inside the data dir are stored relative to it)."""
    path = Path(row.artefact_path)
    return path if path.is_absolute() else settings.data_dir / path


def register_artefact(settings: Settings, db: Database, source: Path, *, activate: bool) -> ModelVersion:
    """Copy an artefact into ``data_dir/models/<version>/model.pt`` (with the run's plots found beside it) and add
    it to the registry (idempotent).

    Raises:
        CheckpointError: not a metah encoder artefact.
    """
    encoder = load_encoder(source)
    version = str(encoder.metadata["model_version"])
    relative = Path("models") / _file_name(version) / "model.pt"
    target = settings.data_dir / relative
    for name in ("model.pt", *PLOT_FILES):  # the run's figures, when present, go beside the artefact
        origin, copy = (source, target) if name == "model.pt" else (source.with_name(name), target.with_name(name))
        if origin.is_file() and not copy.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            tmp = copy.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(origin, tmp)
            os.replace(tmp, copy)
    metadata = dict(encoder.metadata)
    metrics = metadata.pop("metrics", {}) or {}
    with db.session() as session:
        row = repository.model_by_version(session, version)
        if row is None:
            row = repository.add_model(
                session,
                version=version,
                artefact_path=relative.as_posix(),
                bits=encoder.bits,
                metrics=metrics if isinstance(metrics, dict) else {"value": metrics},
                meta=metadata,
            )
            log.info("registered model %s (%d bits) from %s", version, encoder.bits, source)
        if activate:
            repository.activate_model(session, version)
        session.commit()
        session.refresh(row)
        return row


def load_registered(settings: Settings, row: ModelVersion) -> LoadedEncoder:
    """Load a registry row's artefact and check it is the model the row says it is."""
    encoder = load_encoder(artefact_file(settings, row))
    if encoder.metadata.get("model_version") != row.version or encoder.bits != row.bits:
        raise CheckpointError(
            f"artefact {row.artefact_path!r} holds model {encoder.metadata.get('model_version')!r} "
            f"({encoder.bits} bits), the registry expects {row.version!r} ({row.bits} bits)"
        )
    return encoder


def open_index(settings: Settings, db: Database, version: str, bits: int) -> HashIndex:
    """The index of ``version``'s codes: the snapshot if current, else rebuilt from the database."""
    with db.session() as session:  # one read transaction: the change number and the rows agree
        index, report = load_or_rebuild(
            snapshot_path(settings, version),
            bits=bits,
            model_version=version,
            last_change=repository.last_change(session),
            rows=lambda: repository.iter_codes(session, version),
        )
    log.info(
        "index of model %s: %s, %d codes (%s, %.3f s)",
        version,
        report.source,
        len(index),
        report.detail,
        report.seconds,
    )
    return index


def open_active_pair(settings: Settings, db: Database) -> ServingPair | None:
    """The active model with its index; registers ``settings.model`` first when the registry has no active
    model. ``None`` when there is no model at all."""
    with db.session() as session:
        row = repository.active_model(session)
    if row is None and settings.model is not None:
        row = register_artefact(settings, db, settings.model, activate=True)
    if row is None:
        return None
    encoder = load_registered(settings, row)
    return ServingPair(encoder, open_index(settings, db, row.version, row.bits))


def list_models(db: Database) -> list[ModelVersion]:
    with db.session() as session:
        return repository.list_models(session)


def save_snapshot(settings: Settings, pair: ServingPair) -> bool:
    """Write the serving index's snapshot unless the one on disk already reflects the same change (a cache:
    the next start uses it only if it is still current). Returns whether a file was written."""
    path = snapshot_path(settings, pair.model_version)
    try:
        manifest = read_manifest(path)
        if manifest.model_version == pair.model_version and manifest.last_change == pair.index.last_change:
            return False
    except SnapshotError:
        pass
    pair.index.save(path)
    return True
