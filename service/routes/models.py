"""``GET /v1/models``: the model registry; ``GET /v1/models/{version}/plots/{name}``: a training run's figures."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Response
from fastapi import Path as PathParam

from service import registry, repository
from service.deps import RuntimeDep
from service.errors import NotFoundError
from service.runtime import Runtime
from service.schemas import ModelList, ModelPublic, errors
from service.storage import BlobNotFoundError, model_key

router = APIRouter(prefix="/v1/models", tags=["models"])

# The only model files served: a fixed list (storage.PLOT_FILES), so no client-supplied name reaches the store.
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
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **errors(404, 422, 503)},
)
async def get_plot(
    runtime: RuntimeDep, version: str, name: Annotated[PlotName, PathParam(description="which figure")]
) -> Response:
    """A figure of the training run that produced ``version`` (loss curves, precision-recall curve)."""
    figure = await runtime.run_io(plot_bytes, runtime, version, name)
    return Response(
        figure,
        media_type="image/png",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def plot_bytes(runtime: Runtime, version: str, name: PlotName) -> bytes:
    """The figure ``name`` stored with ``version``'s artefact; 404 when the model or the figure is missing."""
    with runtime.db.session() as session:
        row = repository.model_by_version(session, version)
    if row is None:
        raise NotFoundError(f"model {version} is not registered", code="model_not_found")
    try:
        return runtime.store.get(model_key(row.version, name))
    except BlobNotFoundError:
        raise NotFoundError(f"model {version} has no stored {name}", code="plot_not_found") from None
