"""Training jobs: stored images → ImageFolders in the job's run folder → :func:`model.train.train` → registered
model.

The source domain's labelled images become one sub-folder per label (unlabelled ones are left out), named by
:func:`class_folder_name` (one folder per distinct label, so labels such as ``a/b`` and ``a_b`` stay two
classes); the target domain's images go into one flat folder. ``on_step`` reports the optimisation steps as
the job's progress (and is where a cancel is noticed). The artefact is registered with its metrics; with
``activate`` an activation job is queued for it.

Each job works in its own run folder, ``data_dir/training/job-<id>`` (:func:`run_folder`), and training writes
a checkpoint there every tenth of the run (at most every 200 steps). Each checkpoint is also copied to the blob
store (:class:`StoredCheckpoint`: ``checkpoints/job-<id>-step-<step>.pt``, the previous one deleted once the new
one is stored), so that a job that runs again after its worker died (kill -9, a lost machine) or stopped resumes
from the last checkpoint on any worker: from its run folder where that worker has it (a shared data dir, the
same worker), else from the blob store's copy, whichever holds the later step. A checkpoint that cannot be
stored is logged and training goes on (a retry then resumes from an earlier one). The folder and the stored
checkpoints are removed when the job succeeds, fails or is cancelled; those of jobs that will not run again
(left by a worker that died, then cancelled) are removed when the next training job starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import select

from model.checkpoint import load_checkpoint
from model.config import TrainConfig
from model.errors import CheckpointError, ConfigError, DataError
from model.train import RunPaths, TrainResult, train
from service.jobs import activation, queue
from service.jobs.worker import JobContext, JobFailedError, Released
from service.models import Image, Job
from service.registry import register_artefact
from service.settings import Settings
from service.storage import BlobStoreError, checkpoint_key, checkpoint_of

log = logging.getLogger(__name__)

KIND = "train"
RUNS = "training"  # data_dir/training/job-<id>: a job's run folder
_RUN_FOLDER = re.compile(r"job-(\d+)")
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
        (folder / f"{image_id}.img").write_bytes(context.store.get(str(stored_path)))
    return len(rows)


def run_folder(settings: Settings, job_id: int) -> Path:
    """The run folder of training job ``job_id``: the same for every attempt of the job."""
    return settings.data_dir / RUNS / f"job-{job_id}"


def _pending(context: JobContext, job_ids: set[int]) -> set[int]:
    """Those of ``job_ids`` that will run (again): queued or running."""
    with context.db.session() as session:
        pending = select(Job.id).where(Job.id.in_(list(job_ids)), Job.status.in_([queue.QUEUED, queue.RUNNING]))
        return set(session.scalars(pending))


def remove_stale_run_folders(context: JobContext) -> list[Path]:
    """Remove the run folders of jobs that will not run again (neither queued nor running) and the temporary
    folders (``metah-train-*``) of older versions; returns what was removed."""
    runs = context.settings.data_dir / RUNS
    found = {}
    for path in runs.iterdir() if runs.is_dir() else []:
        if (match := _RUN_FOLDER.fullmatch(path.name)) is not None:
            found[int(match[1])] = path
    alive = _pending(context, set(found))
    stale = [path for job_id, path in found.items() if job_id not in alive]
    stale += [path for path in context.settings.data_dir.glob("metah-train-*") if path.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the run folder %s of a job that will not run again", path)
    return stale


def remove_stale_checkpoints(context: JobContext) -> list[str]:
    """Delete the stored checkpoints of jobs that will not run again; returns their keys. A store that fails is
    logged: the next training job tries again."""
    try:
        found = {key: checkpoint_of(key) for key in context.store.checkpoint_keys()}
        alive = _pending(context, {job_step[0] for job_step in found.values() if job_step is not None})
        stale = [key for key, job_step in found.items() if job_step is not None and job_step[0] not in alive]
        for key in stale:
            context.store.delete(key)
            log.info("removed the stored checkpoint %s of a job that will not run again", key)
    except BlobStoreError as exc:
        log.warning("stored checkpoints of finished jobs not removed: %s", exc)
        return []
    return stale


class StoredCheckpoint:
    """A training job's latest checkpoint in the blob store (``checkpoints/job-<id>-step-<step>.pt``): the run
    folder's ``checkpoint.pt`` is copied there each time training writes it, and fetched from there by an
    attempt whose run folder holds an earlier step or none. Failures are logged, never raised: training goes on
    without the copy, or from the run folder's own checkpoint or the start."""

    def __init__(self, context: JobContext, paths: RunPaths) -> None:
        self.store = context.store
        self.job_id = context.job.id
        self.paths = paths
        self.stored: list[str] = []  # this job's keys in the store, known to this attempt

    def _keys(self) -> list[str]:
        """This job's stored checkpoints, the latest step last."""
        return sorted(self.store.checkpoint_keys(self.job_id), key=lambda key: checkpoint_of(key) or (0, 0))

    def fetch(self, local_step: int | None) -> bool:
        """Download the latest stored checkpoint into the run folder when its step is later than
        ``local_step`` (the run folder's; ``None``: it has none); ``True`` when it did."""
        try:
            self.stored = self._keys()
            latest = checkpoint_of(self.stored[-1]) if self.stored else None
            if latest is None or latest[1] <= (local_step or 0):
                return False
            partial = self.paths.checkpoint.with_name(f".{self.paths.checkpoint.name}.fetched")
            self.paths.root.mkdir(parents=True, exist_ok=True)
            with self.store.fetched(self.stored[-1], self.paths.root) as fetched:
                shutil.copyfile(fetched, partial)
            os.replace(partial, self.paths.checkpoint)
        except (BlobStoreError, OSError) as exc:  # a BlobNotFoundError too: deleted meanwhile
            log.warning("job %d: the stored checkpoint could not be fetched: %s", self.job_id, exc)
            return False
        log.info("job %d: fetched its checkpoint of step %d from the blob store", self.job_id, latest[1])
        return True

    def store_step(self, step: int) -> None:
        """Copy the run folder's checkpoint (of ``step``) to the store, then delete the job's earlier ones."""
        key = checkpoint_key(self.job_id, step)
        upload = self.paths.checkpoint.with_name(f".{self.paths.checkpoint.name}.upload")
        try:
            # checkpoint.pt is replaced by a rename, never rewritten in place: the link keeps this step's bytes
            os.link(self.paths.checkpoint, upload)
            self.store.put_file(key, upload)
        except (BlobStoreError, OSError) as exc:
            upload.unlink(missing_ok=True)
            log.warning(
                "job %d: the checkpoint of step %d was not stored (a retry starts earlier): %s", self.job_id, step, exc
            )
            return
        earlier, self.stored = [other for other in self.stored if other != key], [key]
        self._delete(earlier)

    def remove(self) -> None:
        """Delete every stored checkpoint of the job (it succeeded, failed or was cancelled)."""
        try:
            self._delete(self._keys())
        except BlobStoreError as exc:
            log.warning("job %d: stored checkpoints not removed (the next training job will): %s", self.job_id, exc)

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.store.delete(key)
            except BlobStoreError as exc:
                log.warning("job %d: the stored checkpoint %s was not deleted: %s", self.job_id, key, exc)


def _resume_step(paths: RunPaths) -> int | None:
    """The step of the run folder's checkpoint, or ``None`` when there is none (a corrupt one is removed)."""
    if not paths.checkpoint.is_file():
        return None
    try:
        return int(load_checkpoint(paths.checkpoint)["step"])
    except CheckpointError as exc:
        log.warning("training from the start: %s", exc)
        paths.checkpoint.unlink(missing_ok=True)
        return None


def _train(context: JobContext, config: TrainConfig, root: Path, stored: StoredCheckpoint) -> tuple[TrainResult, int]:
    """Train in ``root`` (resuming from the latest checkpoint, the run folder's or the stored one, when there is
    one); returns the result and the step training resumed from (0: from the start)."""
    paths = stored.paths
    step = _resume_step(paths)
    if stored.fetch(step):
        step = _resume_step(paths)

    def on_step(done: int, total: int) -> None:
        if done % 5 == 0 or done == total:
            context.progress(done, total)

    def attempt(resume: bool) -> TrainResult:
        try:
            return train(
                config,
                root / "source",
                root / "target",
                paths.root,
                resume=resume,
                on_step=on_step,
                show_progress=False,
                on_checkpoint=stored.store_step,
            )
        except (ConfigError, DataError) as exc:
            raise JobFailedError(str(exc), code="invalid_training") from exc

    if step is None:
        return attempt(False), 0
    log.info("job %d resumes training from step %d", context.job.id, step)
    try:
        return attempt(True), step
    except CheckpointError as exc:  # the images changed since (other classes): the checkpoint does not fit
        log.warning("job %d trains from the start: %s", context.job.id, exc)
        shutil.rmtree(paths.root, ignore_errors=True)
        return attempt(False), 0


def job_config(params: dict[str, Any], settings: Settings) -> TrainConfig:
    """A training job's run settings from its request; ``iterations`` unset (None): the mode's default length."""
    iterations = None if params.get("iterations") is None else int(params["iterations"])
    return TrainConfig(
        method=str(params["method"]),
        bits=int(params["bits"]),
        backbone=str(params["backbone"]),
        mode=str(params.get("mode", "auto")),  # jobs queued before the field existed
        iterations=iterations,
        feature_cache=str(settings.data_dir / "feature-cache"),  # shared by every job on the same images
    )


def run_training(context: JobContext) -> dict[str, Any]:
    params = context.job.params
    config = job_config(params, context.settings)
    remove_stale_run_folders(context)
    remove_stale_checkpoints(context)
    root = run_folder(context.settings, context.job.id)
    stored = StoredCheckpoint(context, RunPaths(root / "run"))
    try:
        for part in ("source", "target"):  # exported again: images may have been added or deleted since
            shutil.rmtree(root / part, ignore_errors=True)
        sources = export_domain(context, str(params["source_domain"]), root / "source", labelled=True)
        targets = export_domain(context, str(params["target_domain"]), root / "target", labelled=False)
        if not sources or not targets:
            raise JobFailedError(
                f"training needs labelled source images and target images (found {sources} and {targets})",
                code="no_training_data",
            )
        context.progress(0, config.iterations)  # unset (None): the trainer reports the mode's length from step 1
        result, resumed_from = _train(context, config, root, stored)
        row = register_artefact(context.db, context.store, result.paths.model, activate=False)
    except Released:
        raise  # the job runs again: the folder and the checkpoints stay for that attempt
    except Exception:
        shutil.rmtree(root, ignore_errors=True)  # failed or cancelled: the job will not run again
        stored.remove()
        raise
    shutil.rmtree(root, ignore_errors=True)
    stored.remove()
    out: dict[str, Any] = {
        "version": row.version,
        "metrics": row.metrics,
        "sources": sources,
        "targets": targets,
        "resumed_from_step": resumed_from,
        **{key: result.metrics[key] for key in ("backbone", "mode", "choices")},
    }
    if params.get("activate"):
        try:
            out["activation_job_id"] = activation.enqueue_activation(context.db, row.version)
        except activation.ActivationRunningError as exc:
            context.errors.append({"code": "activation_running", "message": f"not activated: {exc}"})
    return out
