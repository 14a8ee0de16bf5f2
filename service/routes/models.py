"""``GET /v1/models``: the model registry."""

from __future__ import annotations

from fastapi import APIRouter

from service import registry
from service.deps import RuntimeDep
from service.schemas import ModelList, ModelPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
async def list_models(runtime: RuntimeDep) -> ModelList:
    """Every registered model version with its metrics, and which one is active."""
    rows = await runtime.run_io(registry.list_models, runtime.db)
    return ModelList(
        items=[ModelPublic.from_row(row) for row in rows], active=next((r.version for r in rows if r.active), None)
    )
