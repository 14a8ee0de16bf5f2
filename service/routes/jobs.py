"""Jobs: ``POST /v1/ingest-jobs`` (queue an archive), ``GET /v1/jobs`` (newest first), ``GET /v1/jobs/{id}``,
``POST /v1/jobs/{id}/cancel``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile, status

from service import repository
from service.deps import MAX_ID, RuntimeDep, WriteAccess
from service.errors import ConflictError, NotFoundError
from service.jobs import activation, ingest, queue, training
from service.models import Job
from service.runtime import Runtime
from service.schemas import (
    DOMAIN_PATTERN,
    JobCreated,
    JobKind,
    JobList,
    JobPublic,
    JobStatus,
    TrainingJobCreate,
    errors,
)

router = APIRouter(prefix="/v1", tags=["jobs"])

INGEST_PATH = "/v1/ingest-jobs"

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]


@router.post(
    INGEST_PATH.removeprefix("/v1"),
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAccess],
    responses=errors(401, 413, 415, 422),
)
async def create_ingest_job(
    runtime: RuntimeDep,
    response: Response,
    archive: Annotated[UploadFile, File(description="zip, tar or tar.gz of images")],
    domain: Annotated[str, Form(pattern=DOMAIN_PATTERN)] = "database",
) -> JobCreated:
    """Store the archive and queue its ingestion; labels come from ``manifest.csv`` or sub-folder names."""
    job_id = await runtime.run_io(ingest.submit, runtime.settings, runtime.db, runtime.store, archive.file, domain)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return JobCreated(job_id=job_id)


@router.post(
    "/training-jobs", status_code=status.HTTP_202_ACCEPTED, dependencies=[WriteAccess], responses=errors(401, 422)
)
async def create_training_job(runtime: RuntimeDep, response: Response, body: TrainingJobCreate) -> JobCreated:
    """Queue training on the stored images of two domains; the model is registered (and activated if asked)."""
    job_id = await runtime.run_io(enqueue, runtime, training.KIND, body.model_dump())
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return JobCreated(job_id=job_id)


@router.post(
    "/models/{version}/activate",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAccess],
    responses=errors(401, 404, 409),
    tags=["models"],
)
async def activate_model(runtime: RuntimeDep, response: Response, version: str) -> JobCreated:
    """Queue re-encoding every image with ``version``; model and index are swapped together at the end."""
    job_id = await runtime.run_io(queue_activation, runtime, version)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return JobCreated(job_id=job_id)


def enqueue(runtime: Runtime, kind: str, params: dict[str, Any]) -> int:
    with runtime.db.session() as session:
        job_id = queue.enqueue(session, kind, params).id
        session.commit()
        return job_id


def queue_activation(runtime: Runtime, version: str) -> int:
    with runtime.db.session() as session:
        if repository.model_by_version(session, version) is None:
            raise NotFoundError(f"model {version} is not registered", code="model_not_found")
    try:
        return activation.enqueue_activation(runtime.db, version)
    except activation.ActivationRunningError as exc:
        raise ConflictError(str(exc), code="activation_running") from exc


@router.get("/jobs", responses=errors(422))
async def list_jobs(
    runtime: RuntimeDep,
    kind: Annotated[JobKind | None, Query(description="only jobs of this kind")] = None,
    state: Annotated[JobStatus | None, Query(alias="status", description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobList:
    """The newest jobs first, optionally of one kind and in one state."""
    rows = await runtime.run_io(list_job_rows, runtime, kind, state, limit)
    return JobList(items=[JobPublic.from_row(row) for row in rows])


def list_job_rows(runtime: Runtime, kind: str | None, status: str | None, limit: int) -> list[Job]:
    with runtime.db.session() as session:
        return repository.list_jobs(session, kind=kind, status=status, limit=limit)


@router.get("/jobs/{job_id}", responses=errors(404, 422))
async def get_job(runtime: RuntimeDep, job_id: JobId) -> JobPublic:
    job = await runtime.run_io(queue.get, runtime.db, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist", code="job_not_found")
    return JobPublic.from_row(job)


@router.post("/jobs/{job_id}/cancel", dependencies=[WriteAccess], responses=errors(401, 404, 409, 422))
async def cancel_job(runtime: RuntimeDep, job_id: JobId) -> JobPublic:
    """Cancel a queued job at once; a running one stops at its next batch (``cancel_requested``)."""
    job = await runtime.run_io(queue.request_cancel, runtime.db, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist", code="job_not_found")
    if job.status in (queue.SUCCEEDED, queue.FAILED):
        raise ConflictError(f"job {job_id} has already {job.status}", code="job_finished")
    return JobPublic.from_row(job)
