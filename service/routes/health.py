"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import PairDep, RuntimeDep
from service.schemas import Health, Ready, errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """200 while the process is up."""
    return Health()


@router.get("/readyz", responses=errors(503))
async def readyz(runtime: RuntimeDep, pair: PairDep) -> Ready:
    """200 when the model, its index and the database are usable; 503 otherwise."""
    await runtime.run_io(runtime.db.ping)
    indexed = await runtime.run_io(len, pair.index)  # a Milvus round trip on that backend: off the event loop
    return Ready(model_version=pair.model_version, bits=pair.bits, indexed=indexed)
