"""The FastAPI application: :func:`create_app` wires settings, lifespan, limits, errors and routes.

Nothing is loaded at import. The lifespan opens the :class:`service.runtime.Runtime` (database, blob store,
active model and its index) in a worker thread and hands it to requests as lifespan state
(``request.state.runtime``); on shutdown it writes the index snapshot and closes the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio.to_thread
from fastapi import FastAPI

from service.errors import install_error_handlers
from service.limits import BodySizeLimit
from service.routes import health, images, models, search
from service.runtime import open_runtime
from service.settings import Settings

API_VERSION = "1"


@asynccontextmanager
async def _lifespan(settings: Settings, app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    runtime = await anyio.to_thread.run_sync(open_runtime, settings)
    try:
        yield {"runtime": runtime}
    finally:
        await anyio.to_thread.run_sync(runtime.close)


def create_app(settings: Settings) -> FastAPI:
    """The metah HTTP API (CONTRACT §4) for ``settings``."""
    app = FastAPI(
        title="metah",
        summary="Cross-domain image retrieval with MeTAH hashing",
        version=API_VERSION,
        lifespan=partial(_lifespan, settings),
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    for module in (health, search, images, models):
        app.include_router(module.router)
    return app
