"""Request and response models of the HTTP API (CONTRACT §4). Tables live in ``service/models.py``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from model.config import MODE_SCHEDULES
from service.models import Image, Job, ModelVersion

DOMAIN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# In query strings an empty value means "no filter" (``?domain=&label=``).
DOMAIN_FILTER_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"


def content_url(image_id: int) -> str:
    return f"/v1/images/{image_id}/content"


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ImagePublic(BaseModel):
    id: int
    sha256: str
    domain: str
    label: str | None
    metadata: dict[str, Any]
    media_type: str
    size_bytes: int
    width: int
    height: int
    created_at: datetime
    content_url: str

    @classmethod
    def from_row(cls, image: Image) -> ImagePublic:
        return cls(
            id=image.id,
            sha256=image.sha256,
            domain=image.domain,
            label=image.label,
            metadata=image.meta,
            media_type=image.media_type,
            size_bytes=image.size_bytes,
            width=image.width,
            height=image.height,
            created_at=image.created_at,
            content_url=content_url(image.id),
        )


class ImagePage(BaseModel):
    items: list[ImagePublic]
    next: str | None = Field(description="pass as `after` for the next page; null on the last page")


class DomainCount(BaseModel):
    name: str
    count: int = Field(description="stored images in this domain")


class DomainList(BaseModel):
    domains: list[DomainCount] = Field(description="every domain holding stored images, by name")


class Hit(BaseModel):
    id: int
    distance: int
    domain: str
    label: str | None
    metadata: dict[str, Any]
    content_url: str


class QueryCode(BaseModel):
    """The query's binary code: bit ``i`` is 1 when the encoder's output ``i`` is > 0, packed MSB first."""

    bits: int
    code_hex: str = Field(description="the packed code (`bits / 8` bytes, most significant bit first) in hex")
    code_bits: str = Field(description="the code as `bits` characters 0/1, bit 0 first")


class SearchResponse(BaseModel):
    model_version: str
    bits: int
    took_ms: float
    query: QueryCode
    hits: list[Hit]


class Ready(BaseModel):
    model_version: str
    bits: int
    indexed: int


class Health(BaseModel):
    status: str = "ok"


class ModelPublic(BaseModel):
    version: str
    bits: int
    active: bool
    method: str | None
    backbone: str | None
    metrics: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: ModelVersion) -> ModelPublic:
        return cls(
            version=row.version,
            bits=row.bits,
            active=row.active,
            method=row.meta.get("method"),
            backbone=row.meta.get("backbone"),
            metrics=row.metrics,
            created_at=row.created_at,
        )


class ModelList(BaseModel):
    items: list[ModelPublic]
    active: str | None


JobKind = Literal["ingest", "train", "activate"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Progress(BaseModel):
    done: int
    total: int


class JobPublic(BaseModel):
    id: int
    kind: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    progress: Progress
    errors: list[dict[str, Any]]
    result: dict[str, Any]
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            progress=Progress(done=job.progress_done, total=job.progress_total),
            errors=job.errors,
            result=job.result,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobList(BaseModel):
    items: list[JobPublic] = Field(description="newest first")


class TrainingJobCreate(BaseModel):
    source_domain: str = Field(pattern=DOMAIN_PATTERN, description="labelled images (labels become classes)")
    target_domain: str = Field(pattern=DOMAIN_PATTERN, description="target-domain images (labels unused)")
    bits: int = Field(default=64, ge=16, le=128, multiple_of=8)
    method: Literal["metah", "tah", "source_only"] = "metah"
    backbone: Literal["auto", "lenet", "efficientnet_lite0", "efficientnet_lite2"] = Field(
        default="auto",
        description="auto: lenet for small digit-like images, efficientnet_lite0 otherwise. The EfficientNets "
        "start from ImageNet weights shipped with metah; resnet18/50 need an ImageNet weights file, which a "
        "training job cannot take (train them with `metah train --backbone-weights FILE`), and from random "
        "weights they do not train well on a catalogue's size of data.",
    )
    mode: Literal["auto", "frozen", "finetune"] = Field(
        default="auto", description="auto: frozen backbone features on a CPU worker, finetune on a GPU worker"
    )
    iterations: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="optimisation steps; null (default): the mode's default, "
        + ", ".join(f"{s.iterations} {mode}" for mode, s in MODE_SCHEDULES.items()),
    )
    activate: bool = False


class JobCreated(BaseModel):
    job_id: int


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry documenting the error body for these statuses."""
    return {status: {"model": ErrorBody} for status in statuses}
