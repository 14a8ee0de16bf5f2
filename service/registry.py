"""The model registry (``model_versions``) and opening a serving pair: artefact + index of its codes.

A registered model's artefact and figures are blobs (``models/<version>/<name>``, :func:`service.storage.model_key`)
of the blob store, so every process that shares the database and the store can load it, whatever its data dir.

The index follows the database: :func:`open_index` loads the snapshot in ``data_dir/index`` when it reflects
the database's latest change, and otherwise rebuilds it from the ``codes`` table (and writes a new snapshot).
"""

from __future__ import annotations

import logging
from pathlib import Path

from index import HashIndex, SnapshotError, load_or_rebuild, read_manifest
from model.errors import CheckpointError
from model.export import LoadedEncoder, load_encoder, load_encoder_bytes
from service import repository
from service.db import Database
from service.models import ModelVersion
from service.serving import ServingPair
from service.settings import Settings
from service.storage import ARTEFACT, MODEL_FILES, SAFE_NAME, BlobNotFoundError, BlobStore, model_key
from service.storage import PLOT_FILES as PLOT_FILES  # the figures a registered model may have

log = logging.getLogger(__name__)


def _file_name(version: str) -> str:
    """A file-system-safe name for a model version (versions are generated, but never trust a name)."""
    if not SAFE_NAME.fullmatch(version):
        raise CheckpointError(f"model version {version!r} is not a safe name")
    return version


def snapshot_path(settings: Settings, version: str) -> Path:
    return settings.index_dir / f"{_file_name(version)}.mhix"


def register_artefact(db: Database, store: BlobStore, source: Path, *, activate: bool) -> ModelVersion:
    """Store an artefact file as the blob ``models/<version>/model.pt`` (with the run's figures found beside it:
    :data:`PLOT_FILES`) and add it to the registry (idempotent: blobs are write-once).

    Raises:
        CheckpointError: not a metah encoder artefact.
        BlobStoreError: the blob store cannot be used.
    """
    encoder = load_encoder(source)
    version = _file_name(str(encoder.metadata["model_version"]))
    for name in MODEL_FILES:
        origin = source if name == ARTEFACT else source.with_name(name)
        if origin.is_file():
            store.put_at(model_key(version, name), origin.read_bytes())
    metadata = dict(encoder.metadata)
    metrics = metadata.pop("metrics", {}) or {}
    with db.session() as session:
        row = repository.model_by_version(session, version)
        if row is None:
            row = repository.add_model(
                session,
                version=version,
                artefact_path=model_key(version),
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


def load_registered(store: BlobStore, row: ModelVersion) -> LoadedEncoder:
    """Load a registry row's artefact from the blob store and check it is the model the row says it is.

    Raises:
        CheckpointError: the artefact is missing, unreadable, or another model.
        BlobStoreError: the blob store cannot be used.
    """
    try:
        data = store.get(row.artefact_path)
    except (ValueError, BlobNotFoundError) as exc:
        raise CheckpointError(f"the artefact {row.artefact_path!r} of model {row.version} is not stored") from exc
    encoder = load_encoder_bytes(data, row.artefact_path)
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


def active_or_registered(settings: Settings, db: Database, store: BlobStore) -> ModelVersion | None:
    """The active model's row; registers (and activates) ``settings.model`` first when no model is active.
    ``None`` when there is no model at all."""
    with db.session() as session:
        row = repository.active_model(session)
    if row is None and settings.model is not None:
        row = register_artefact(db, store, settings.model, activate=True)
    return row


def open_active_pair(settings: Settings, db: Database, store: BlobStore) -> ServingPair | None:
    """The active model with its index (:func:`active_or_registered`); ``None`` when there is no model at all."""
    if (row := active_or_registered(settings, db, store)) is None:
        return None
    encoder = load_registered(store, row)
    return ServingPair(encoder, open_index(settings, db, row.version, row.bits))


def list_models(db: Database) -> list[ModelVersion]:
    with db.session() as session:
        return repository.list_models(session)


def save_snapshot(settings: Settings, pair: ServingPair) -> bool:
    """Write the serving index's snapshot unless the one on disk already reflects the same change (a cache:
    the next start uses it only if it is still current). Returns whether a file was written."""
    if not isinstance(pair.index, HashIndex):  # a Milvus collection is kept by Milvus
        return False
    path = snapshot_path(settings, pair.model_version)
    try:
        manifest = read_manifest(path)
        if manifest.model_version == pair.model_version and manifest.last_change == pair.index.last_change:
            return False
    except SnapshotError:
        pass
    pair.index.save(path)
    return True
