"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import PairDep, RuntimeDep
from service.runtime import Runtime
from service.schemas import Health, Ready, errors
from service.serving import ServingPair

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """200 while the process is up."""
    return Health()


@router.get("/readyz", responses=errors(503))
async def readyz(runtime: RuntimeDep, pair: PairDep) -> Ready:
    """200 when the model, its index and the database are usable; 503 otherwise."""
    indexed = await runtime.run_io(_indexed_after_ping, runtime, pair)
    return Ready(model_version=pair.model_version, bits=pair.bits, indexed=indexed)


def _indexed_after_ping(runtime: Runtime, pair: ServingPair) -> int:
    """The database answers, then the index's size (a Milvus round trip on that backend): one thread hop."""
    runtime.db.ping()
    return len(pair.index)
