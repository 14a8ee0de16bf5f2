"""Training jobs: stored images → temporary ImageFolders → :func:`model.train.train` → registered model.

The source domain's labelled images become one sub-folder per label (unlabelled ones are left out), named by
:func:`class_folder_name` (one folder per distinct label, so labels such as ``a/b`` and ``a_b`` stay two
classes); the target domain's images go into one flat folder. ``on_step`` reports the optimisation steps as
the job's progress (and is where a cancel is noticed). The artefact is registered with its metrics; with ``activate``
an activation job is queued for it.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import select

from migrations.models import Image
from model.config import TrainConfig
from model.errors import ConfigError, DataError
from model.train import train
from service.jobs import activation
from service.jobs.worker import JobContext, JobFailedError
from service.registry import register_artefact

KIND = "train"
MAX_FOLDER_NAME = 200  # bytes; file systems allow 255


def class_folder_name(label: str) -> str:
    """A file-system-safe class folder name for a label, distinct for distinct labels.

    The label percent-encoded (UTF-8; letters, digits and ``_.-~`` kept, a leading ``.`` written ``%2E``, the
    empty label ``%``): readable for plain labels, and ``urllib.parse.unquote`` gives the label back, which is
    how a class name in the model's metadata reads. A name longer than :data:`MAX_FOLDER_NAME` keeps its start
    and ends in ``%_`` and a digest of the label; no percent-encoding produces ``%_``, so it cannot meet a
    short name.
    """
    name = quote(label, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) <= MAX_FOLDER_NAME:
        return name or "%"
    digest = hashlib.sha256(label.encode()).hexdigest()[:32]
    return f"{name[: MAX_FOLDER_NAME - 34]}%_{digest}"


def export_domain(context: JobContext, domain: str, out: Path, *, labelled: bool) -> int:
    """Write a domain's stored images under ``out`` (class sub-folders when ``labelled``); returns the count."""
    query = select(Image.id, Image.label, Image.stored_path).where(Image.domain == domain).order_by(Image.id)
    if labelled:
        query = query.where(Image.label.is_not(None))
    with context.db.session() as session:
        rows = session.execute(query).all()
    for image_id, label, stored_path in rows:
        folder = out / class_folder_name(str(label)) if labelled else out
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.img").write_bytes(context.store.path(str(stored_path)).read_bytes())
    return len(rows)


def run_training(context: JobContext) -> dict[str, Any]:
    params = context.job.params
    config = TrainConfig(
        method=str(params["method"]),
        bits=int(params["bits"]),
        backbone=str(params["backbone"]),
        mode=str(params.get("mode", "auto")),  # jobs queued before the field existed
        iterations=int(params["iterations"]),
        feature_cache=str(context.settings.data_dir / "feature-cache"),  # shared by every job on the same images
    )
    with tempfile.TemporaryDirectory(prefix="metah-train-", dir=context.settings.data_dir) as tmp:
        root = Path(tmp)
        sources = export_domain(context, str(params["source_domain"]), root / "source", labelled=True)
        targets = export_domain(context, str(params["target_domain"]), root / "target", labelled=False)
        if not sources or not targets:
            raise JobFailedError(
                f"training needs labelled source images and target images (found {sources} and {targets})",
                code="no_training_data",
            )
        context.progress(0, config.iterations)

        def on_step(step: int, total: int) -> None:
            if step % 5 == 0 or step == total:
                context.progress(step, total)

        try:
            result = train(config, root / "source", root / "target", root / "run", on_step=on_step, show_progress=False)
        except (ConfigError, DataError) as exc:
            raise JobFailedError(str(exc), code="invalid_training") from exc
        row = register_artefact(context.settings, context.db, result.paths.model, activate=False)
    out: dict[str, Any] = {
        "version": row.version,
        "metrics": row.metrics,
        "sources": sources,
        "targets": targets,
        **{key: result.metrics[key] for key in ("backbone", "mode", "choices")},
    }
    if params.get("activate"):
        try:
            out["activation_job_id"] = activation.enqueue_activation(context.db, row.version)
        except activation.ActivationRunningError as exc:
            context.errors.append({"code": "activation_running", "message": f"not activated: {exc}"})
    return out
