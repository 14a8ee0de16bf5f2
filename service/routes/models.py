"""``GET /v1/models``: the model registry; ``GET /v1/models/{version}/plots/{name}``: a training run's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from service import registry, repository
from service.deps import RuntimeDep
from service.errors import NotFoundError
from service.runtime import Runtime
from service.schemas import ModelList, ModelPublic, errors

router = APIRouter(prefix="/v1/models", tags=["models"])

# The only files served from a model's folder: a fixed list, so no client-supplied name reaches the file system.
PlotName = Literal["loss_curves.png", "pr_curve.png"]


@router.get("")
async def list_models(runtime: RuntimeDep) -> ModelList:
    """Every registered model version with its metrics, and which one is active."""
    rows = await runtime.run_io(registry.list_models, runtime.db)
    return ModelList(
        items=[ModelPublic.from_row(row) for row in rows], active=next((r.version for r in rows if r.active), None)
    )


@router.get(
    "/{version}/plots/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, **errors(404, 422)},
)
async def get_plot(
    runtime: RuntimeDep, version: str, name: Annotated[PlotName, PathParam(description="which figure")]
) -> FileResponse:
    """A figure of the training run that produced ``version`` (loss curves, precision-recall curve)."""
    path = await runtime.run_io(plot_file, runtime, version, name)
    return FileResponse(
        path,
        media_type="image/png",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def plot_file(runtime: Runtime, version: str, name: PlotName) -> Path:
    """The figure ``name`` stored beside ``version``'s artefact; 404 when the model or the figure is missing."""
    with runtime.db.session() as session:
        row = repository.model_by_version(session, version)
    if row is None:
        raise NotFoundError(f"model {version} is not registered", code="model_not_found")
    path = registry.artefact_file(runtime.settings, row).parent / name
    if not path.is_file():
        raise NotFoundError(f"model {version} has no stored {name}", code="plot_not_found")
    return path
