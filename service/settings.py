"""The service's configuration (CONTRACT §5): one typed object read from ``METAH_*`` environment variables.

Built by the caller (``metah serve``, tests) and passed to :func:`service.app.create_app`; never at import.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.storage import parse_blob_url

MiB = 1024 * 1024


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1). Wildcards (0.0.0.0, ::) are not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Service settings.

    Attributes:
        data_dir: images (content-addressed), index snapshots and registered model artefacts.
        blob_url: ``s3://bucket/prefix`` stores images, model artefacts and their plots in S3 instead of the data
            dir (endpoint, region and credentials from the standard AWS variables); ``None`` = the data dir.
        database_url: SQLAlchemy URL; ``None`` = SQLite file ``data_dir/metah.db``.
        api_key: required in ``X-API-Key`` on writes when set; without it only a loopback host is allowed.
        model: encoder artefact registered (and activated) when the model registry is empty.
        host, port: where ``metah serve`` listens.
        max_upload_bytes: largest request body accepted (checked while the body streams in) → 413.
        max_pixels: largest declared image size (width × height) accepted → 413; guards against
            decompression bombs before any pixel is decoded.
        max_metadata_bytes: largest ``metadata`` JSON object accepted on an image → 422.
        torch_threads: intra-op threads for single-image inference in the server process.
        workers: job worker processes ``metah serve`` starts as its children, for jobs of any kind (0: none, nor
            ingest workers; run ``metah worker``).
        ingest_workers: further worker processes ``metah serve`` starts (when ``workers`` > 0) that run only
            ingest jobs, so that an archive is ingested while a model trains or is activated.
        max_archive_bytes: largest ingest archive upload (the request body limit of ``/v1/ingest-jobs``) → 413.
        archive_max_members, archive_max_total_bytes, archive_max_ratio: limits on an archive's contents
            (member count, total uncompressed size, uncompressed / compressed size); over any → the job fails.
        ingest_batch_size: images decoded, encoded and committed together by an ingest job.
        worker_poll_s: how often an idle worker looks for a queued job.
        job_heartbeat_s, job_stale_after_s: a running job's heartbeat period, and the silence after which
            a worker treats it as abandoned (its worker died) and queues it again.
        job_max_attempts: how many times a job may be claimed by a worker that then dies (the silence before it
            is queued again doubles each time); then the job fails with the error ``worker_died``.
        job_db_retry_s: how long a worker keeps writing a job's heartbeat, progress and outcome again, with
            backoff, when the database cannot be reached (a restart, a failover).
        changes_poll_s: how often the API applies other processes' writes (the ``changes`` log) to its index.
        blob_grace_s: how long an image blob whose last row was deleted (or whose row was never committed) stays
            before the blob sweep removes it; a writer slower than half of it between storing a blob and
            committing its row stores it again (:mod:`service.blobs`).
        blob_sweep_s: how often each job worker runs the blob sweep.
        cpu_queue: requests (searches, single uploads) that may wait for a CPU slot (one per core) beyond those
            running; the next one is answered 429 with ``Retry-After`` at once instead of queueing.
        index_backend: ``faiss`` (the codes in each API process, the default) or ``milvus`` (the codes in a
            Milvus collection per model version that one elected indexer keeps up with the ``changes`` log:
            :mod:`service.indexer`).
        milvus_uri: the Milvus server (``http://host:19530``) or a Milvus Lite file (``*.db``; one process
            only: the ``metah serve`` process then runs the indexer too); needed with ``index_backend=milvus``.
        milvus_prefix: collection names start with ``{milvus_prefix}_`` and the alias of the active one is
            ``{milvus_prefix}_active``, so that several deployments (a staging and a production one, two shops)
            can share one Milvus server; letters, digits and ``_``.
        index_wait_s: on the ``milvus`` backend, how long a write (an upload, a delete, a finished job) waits
            for the indexer to apply it before it is acknowledged anyway (read-your-writes while the indexer
            keeps up).
        indexer_poll_s: how often the indexer looks for new changes.
        log_format: ``json`` (one object per line, with the request or job id) or ``text`` (``metah serve``
            and ``metah worker``; other commands always log text).
    """

    model_config = SettingsConfigDict(env_prefix="METAH_", extra="ignore", frozen=True)

    data_dir: Path = Path("var")
    blob_url: str | None = None
    database_url: str | None = None
    api_key: SecretStr | None = None
    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=20 * MiB, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_metadata_bytes: int = Field(default=16 * 1024, ge=2)
    torch_threads: int = Field(default=1, ge=1)
    workers: int = Field(default=1, ge=0, le=64)
    ingest_workers: int = Field(default=1, ge=0, le=64)
    max_archive_bytes: int = Field(default=1024 * MiB, ge=1024)
    archive_max_members: int = Field(default=100_000, ge=1)
    archive_max_total_bytes: int = Field(default=8 * 1024 * MiB, ge=1)
    archive_max_ratio: float = Field(default=200.0, gt=0)
    ingest_batch_size: int = Field(default=64, ge=1, le=4096)
    worker_poll_s: float = Field(default=0.5, gt=0)
    job_heartbeat_s: float = Field(default=5.0, gt=0)
    job_stale_after_s: float = Field(default=60.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    job_db_retry_s: float = Field(default=60.0, ge=0)
    changes_poll_s: float = Field(default=1.0, gt=0)
    blob_grace_s: float = Field(default=3600.0, gt=0)
    blob_sweep_s: float = Field(default=300.0, gt=0)
    cpu_queue: int = Field(default=32, ge=0)
    index_backend: Literal["faiss", "milvus"] = "faiss"
    milvus_uri: str | None = None
    milvus_prefix: str = Field(default="metah", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    index_wait_s: float = Field(default=10.0, ge=0)
    indexer_poll_s: float = Field(default=0.05, gt=0)
    log_format: Literal["json", "text"] = "json"

    @field_validator("api_key", "database_url", "model", "blob_url", "milvus_uri", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(text, str) and not text.strip() else value

    @field_validator("blob_url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_blob_url(value)
        return value

    @model_validator(mode="after")
    def _milvus_needs_a_uri(self) -> Settings:
        if self.index_backend == "milvus" and self.milvus_uri is None:
            raise ValueError("METAH_INDEX_BACKEND=milvus needs METAH_MILVUS_URI (http://host:19530 or a Lite .db file)")
        return self

    @model_validator(mode="after")
    def _refuse_open_writes(self) -> Settings:
        if self.api_key is None and not is_loopback(self.host):
            raise ValueError(
                f"METAH_HOST={self.host} is not a loopback address: set METAH_API_KEY so that writes need a key"
            )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL in use (the SQLite default lives in the data dir)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'metah.db').resolve()}"

    @property
    def milvus_lite(self) -> bool:
        """The Milvus backend on a Milvus Lite file (one process opens it: the API's, which hosts the indexer)."""
        return self.milvus_uri is not None and self.milvus_uri.endswith(".db")

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def archives_dir(self) -> Path:
        return self.data_dir / "archives"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
