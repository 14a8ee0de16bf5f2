"""``GET /metrics``: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import RuntimeDep
from service.observability import CONTENT_TYPE

router = APIRouter(tags=["observability"])


@router.get("/metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    """Request latency per route, search stage timings, index size and job counts."""
    body = await runtime.run_io(runtime.metrics.exposition)
    return Response(content=body, media_type=CONTENT_TYPE)
