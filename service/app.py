"""The FastAPI application: :func:`create_app` wires settings, lifespan, limits, errors and routes.

Nothing is loaded at import. The lifespan opens the :class:`service.runtime.Runtime` (database, blob store,
active model and its index) in a worker thread and hands it to requests as lifespan state
(``request.state.runtime``); on shutdown it writes the index snapshot and closes the database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI

from service.cursors import INDEX_NOT_READY, INDEX_UNAVAILABLE
from service.errors import install_error_handlers
from service.jobs.process import WorkerProcesses
from service.limits import BodySizeLimit
from service.observability import Metrics, RequestObserver
from service.routes import domains, health, images, jobs, models, search, ui
from service.routes import metrics as observability_routes
from service.runtime import Runtime, open_runtime, read_state
from service.settings import Settings

API_VERSION = "1"

log = logging.getLogger(__name__)


async def _follow_changes(runtime: Runtime) -> None:
    """Apply job workers' writes to the index every ``changes_poll_s`` (a search that finds the log ahead of the
    index catches up too)."""
    while True:
        await anyio.sleep(runtime.settings.changes_poll_s)
        try:
            await runtime.run_io(runtime.follow_activation)
            await runtime.run_io(runtime.catch_up)
        except Exception:
            log.exception("applying the database changes to the index failed (retrying)")


@asynccontextmanager
async def _lifespan(settings: Settings, metrics: Metrics, app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    runtime = await anyio.to_thread.run_sync(open_runtime, settings, metrics)
    metrics.watch_state(partial(read_state, runtime))
    # Workers run unless the service cannot work at all; they build the Milvus collection it may wait for.
    usable = runtime.problem is None or runtime.problem.code in (INDEX_NOT_READY, INDEX_UNAVAILABLE)
    workers = WorkerProcesses(settings, settings.workers if usable else 0)
    workers.start()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_follow_changes, runtime)
            yield {"runtime": runtime}
            tasks.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(workers.stop)
        await anyio.to_thread.run_sync(runtime.close)


def create_app(settings: Settings) -> FastAPI:
    """The metah HTTP API (CONTRACT §4) for ``settings``."""
    app = FastAPI(
        title="metah",
        summary="Cross-domain image retrieval with MeTAH hashing",
        version=API_VERSION,
        lifespan=partial(_lifespan, settings, metrics := Metrics()),
    )
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_upload_bytes,
        per_path={jobs.INGEST_PATH: settings.max_archive_bytes},
    )
    app.add_middleware(RequestObserver, metrics=metrics)  # outermost: refused bodies are observed too
    for module in (health, search, images, domains, models, jobs, observability_routes, ui):
        app.include_router(module.router)
    return app
