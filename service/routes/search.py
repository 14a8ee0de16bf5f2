"""``POST /v1/search`` and ``POST /v1/images/{id}/similar`` (open: no API key needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from service.deps import ImageFile, ImageId, PairDep, RuntimeDep, runtime_of, serving_pair, upload_bytes
from service.errors import ModelSwitchedError
from service.retrieval import SearchQuery, search_similar, search_upload
from service.runtime import Runtime
from service.schemas import DOMAIN_FILTER_PATTERN, SearchResponse, errors
from service.serving import ServingPair

router = APIRouter(prefix="/v1", tags=["search"])

MAX_K = 1000


K = Annotated[int, Query(ge=1, le=MAX_K, description="hits to return")]
MaxDistance = Annotated[int | None, Query(ge=0, le=4096, description="Hamming radius")]
Domain = Annotated[str | None, Query(pattern=DOMAIN_FILTER_PATTERN, description="search this domain only")]


async def search_query(k: K = 10, max_distance: MaxDistance = None, domain: Domain = None) -> SearchQuery:
    return SearchQuery(k=k, max_distance=max_distance, domain=domain or None)


SearchQueryDep = Annotated[SearchQuery, Depends(search_query)]


@router.post("/search", responses=errors(413, 415, 422, 429, 503))
async def search(
    request: Request, image: ImageFile, k: K = 10, max_distance: MaxDistance = None, domain: Domain = None
) -> SearchResponse:
    """The stored images nearest to the uploaded one, ordered by (Hamming distance, id)."""
    # The hot path takes its parameters directly: solving the sub-dependencies the other routes use (runtime,
    # pair, upload, query) was the largest part of this route's work on the event loop (search-path notes, §4).
    runtime = runtime_of(request)
    pair = serving_pair(runtime)
    data = await upload_bytes(runtime, image)
    return await _answered(runtime, pair, search_upload, data, await search_query(k, max_distance, domain))


@router.post("/images/{image_id}/similar", responses=errors(404, 409, 422, 429, 503))
async def similar(runtime: RuntimeDep, pair: PairDep, image_id: ImageId, query: SearchQueryDep) -> SearchResponse:
    """The stored images nearest to a stored one (its stored code; the image itself is left out)."""
    return await _answered(runtime, pair, search_similar, image_id, query)


async def _answered(
    runtime: Runtime,
    pair: ServingPair,
    run: Callable[[Runtime, ServingPair, Any, SearchQuery], SearchResponse],
    subject: Any,
    query: SearchQuery,
) -> SearchResponse:
    """``run``'s answer; when the request's model was retired meanwhile (Milvus backend: another process activated
    the next one), this replica swaps to the active model now, not at its next poll, and answers with it."""
    try:
        return await runtime.run_admitted(run, runtime, pair, subject, query)
    except ModelSwitchedError:
        await runtime.run_io(runtime.follow_activation)
        if runtime.active is None or runtime.active.current is pair:
            raise
        return await runtime.run_admitted(run, runtime, runtime.active.current, subject, query)
