"""``POST /v1/search`` and ``POST /v1/images/{id}/similar`` (open: no API key needed)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from service.deps import ImageFile, ImageId, PairDep, RuntimeDep, runtime_of, serving_pair, upload_bytes
from service.errors import ModelSwitchedError
from service.retrieval import SearchQuery, search_similar, search_upload
from service.runtime import Runtime
from service.schemas import DOMAIN_FILTER_PATTERN, SearchResponse, errors
from service.serving import ServingPair

router = APIRouter(prefix="/v1", tags=["search"])

MAX_K = 1000
UPLOAD_FIELD = "image"


class SearchParams(BaseModel):
    """A search's query parameters."""

    k: int = Field(10, ge=1, le=MAX_K, description="hits to return")
    max_distance: int | None = Field(None, ge=0, le=4096, description="Hamming radius")
    domain: str | None = Field(None, pattern=DOMAIN_FILTER_PATTERN, description="search this domain only")

    def query(self) -> SearchQuery:
        return SearchQuery(k=self.k, max_distance=self.max_distance, domain=self.domain or None)


SearchParamsDep = Annotated[SearchParams, Query()]


class UploadSearchRoute(APIRoute):
    """``POST /v1/search`` as FastAPI documents it (its endpoint's signature), served without FastAPI's per-request
    machinery: the query parameters are validated by :class:`SearchParams`, the form is parsed by Starlette as
    FastAPI would, and the answer is written by pydantic directly. That machinery (dependency solving, body
    extraction, response validation) was the largest part of a search's work on the event loop, which every
    request of the process shares (search-path notes, §7). Errors are FastAPI's: a bad parameter or a missing
    file raises :class:`RequestValidationError` (422 in the contract's error body)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if self.dependencies:  # FastAPI would run them; this handler does not
            raise TypeError(f"{type(self).__name__} runs no route dependencies; {self.path} declares some")
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            try:
                params = SearchParams.model_validate(request.query_params)
            except ValidationError as exc:
                raise RequestValidationError(_located("query", exc)) from None
            form = await parsed_form(request)
            try:
                image = form.get(UPLOAD_FIELD)
                if not isinstance(image, UploadFile):
                    kind = "missing" if image is None else "value_error"
                    message = "Field required" if image is None else "Expected an uploaded file"
                    raise RequestValidationError([{"type": kind, "loc": ("body", UPLOAD_FIELD), "msg": message}])
                answer: SearchResponse = await endpoint(request, image, params)
            finally:
                await form.close()
            return Response(answer.model_dump_json(), media_type="application/json")

        return handle


async def parsed_form(request: Request) -> FormData:
    """The request's form, parsed as FastAPI parses it: Starlette's 400 for malformed multipart data, and a 400
    for anything else that fails on the way (a client that disconnects mid-body, say)."""
    try:
        return await request.form()
    except HTTPException:
        raise
    except Exception as exc:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


def _located(where: str, exc: ValidationError) -> list[dict[str, Any]]:
    return [{**error, "loc": (where, *error["loc"])} for error in exc.errors(include_url=False)]


async def search(request: Request, image: ImageFile, params: SearchParamsDep) -> SearchResponse:
    """The stored images nearest to the uploaded one, ordered by (Hamming distance, id)."""
    runtime = runtime_of(request)
    pair = serving_pair(runtime)
    data = await upload_bytes(runtime, image)
    return await _answered(runtime, pair, search_upload, data, params.query())


router.add_api_route(
    "/search",
    search,
    methods=["POST"],
    responses=errors(413, 415, 422, 429, 503),
    route_class_override=UploadSearchRoute,
)


@router.post("/images/{image_id}/similar", responses=errors(404, 409, 422, 429, 503))
async def similar(runtime: RuntimeDep, pair: PairDep, image_id: ImageId, params: SearchParamsDep) -> SearchResponse:
    """The stored images nearest to a stored one (its stored code; the image itself is left out)."""
    return await _answered(runtime, pair, search_similar, image_id, params.query())


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
