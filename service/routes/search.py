"""``POST /v1/search`` and ``POST /v1/images/{id}/similar`` (open: no API key needed)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.deps import ImageId, PairDep, RuntimeDep, UploadDep
from service.retrieval import SearchQuery, search_similar, search_upload
from service.schemas import DOMAIN_FILTER_PATTERN, SearchResponse, errors

router = APIRouter(prefix="/v1", tags=["search"])

MAX_K = 1000


async def search_query(
    k: Annotated[int, Query(ge=1, le=MAX_K, description="hits to return")] = 10,
    max_distance: Annotated[int | None, Query(ge=0, le=4096, description="Hamming radius")] = None,
    domain: Annotated[str | None, Query(pattern=DOMAIN_FILTER_PATTERN, description="search this domain only")] = None,
) -> SearchQuery:
    return SearchQuery(k=k, max_distance=max_distance, domain=domain or None)


SearchQueryDep = Annotated[SearchQuery, Depends(search_query)]


@router.post("/search", responses=errors(413, 415, 422, 429, 503))
async def search(runtime: RuntimeDep, pair: PairDep, image: UploadDep, query: SearchQueryDep) -> SearchResponse:
    """The stored images nearest to the uploaded one, ordered by (Hamming distance, id)."""
    return await runtime.run_admitted(search_upload, runtime, pair, image, query)


@router.post("/images/{image_id}/similar", responses=errors(404, 409, 422, 429, 503))
async def similar(runtime: RuntimeDep, pair: PairDep, image_id: ImageId, query: SearchQueryDep) -> SearchResponse:
    """The stored images nearest to a stored one (its stored code; the image itself is left out)."""
    return await runtime.run_admitted(search_similar, runtime, pair, image_id, query)
