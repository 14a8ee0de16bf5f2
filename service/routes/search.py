"""``POST /v1/search`` and ``POST /v1/images/{id}/similar`` (open: no API key needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from service.deps import (
    ImageFile,
    ImageId,
    PairDep,
    RuntimeDep,
    bounded_upload,
    runtime_of,
    serving_pair,
    upload_bytes,
)
from service.errors import ModelSwitchedError
from service.forms import FormField, FormFile
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
    """``POST /v1/search`` as FastAPI documents it (its endpoint's signature, in the OpenAPI schema), answered by
    a plain ASGI handler (:meth:`serve`) instead of FastAPI's and Starlette's per-request machinery: the query
    string is validated by :class:`SearchParams`, the upload is taken from the body as it streams in and kept in
    memory (:class:`service.forms.FormField`; the body is already bounded by the size limit), and the answer is
    written by pydantic directly. That machinery (request and response objects, dependency solving, the form
    parser's spooled files) was the largest part of a search's work on the event loop, which every request of
    the process shares (search-path notes, §7 and §10). The middleware, the routing and the error handlers stay
    the application's: a bad parameter or a missing file raises :class:`RequestValidationError` (422 in the
    contract's error body), a malformed form a 400."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        if self.dependencies:  # FastAPI would run them; this handler does not
            raise TypeError(f"{type(self).__name__} runs no route dependencies; {self.path} declares some")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What the router calls once the path matched (FastAPI would run the ASGI app it built for the route from
        :meth:`get_route_handler`, for a route of an included router a second one per inclusion)."""
        allowed = self.methods or set()
        if scope["method"] not in allowed:
            raise HTTPException(status_code=405, headers={"Allow": ", ".join(sorted(allowed))})
        await self.serve(scope, receive, send)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            params = SearchParams.model_validate(QueryParams(scope["query_string"]))
        except ValidationError as exc:
            raise RequestValidationError(_located("query", exc)) from None
        field = FormField(Headers(scope=scope).get("content-type"), UPLOAD_FIELD)
        await stream_body(receive, field.feed)
        image = field.value()
        if not isinstance(image, FormFile):
            kind = "missing" if image is None else "value_error"
            message = "Field required" if image is None else "Expected an uploaded file"
            raise RequestValidationError([{"type": kind, "loc": ("body", UPLOAD_FIELD), "msg": message}])
        answer = await upload_search(scope["state"]["runtime"], image, params)
        payload = answer.model_dump_json().encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def stream_body(receive: Receive, consume: Callable[[bytes], None]) -> None:
    """Hand the request body to ``consume`` chunk by chunk as it arrives; a client that disconnects before its
    end gets the 400 FastAPI gives."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPException(status_code=400, detail="There was an error parsing the body")
        consume(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _located(where: str, exc: ValidationError) -> list[dict[str, Any]]:
    return [{**error, "loc": (where, *error["loc"])} for error in exc.errors(include_url=False)]


async def search(request: Request, image: ImageFile, params: SearchParamsDep) -> SearchResponse:
    """The stored images nearest to the uploaded one, ordered by (Hamming distance, id).

    (The route's handler answers without calling this function: its signature is what the OpenAPI schema shows,
    and its body what FastAPI's own machinery would run.)"""
    runtime = runtime_of(request)
    return await upload_search(runtime, await upload_bytes(runtime, image), params)


async def upload_search(runtime: Runtime, data: bytes, params: SearchParams) -> SearchResponse:
    """:func:`search`'s answer for an upload's bytes (the route's handler calls it directly)."""
    pair = serving_pair(runtime)
    return await _answered(runtime, pair, search_upload, bounded_upload(runtime, data), params.query())


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
        return await runtime.run_search(run, runtime, pair, subject, query)
    except ModelSwitchedError:
        await runtime.run_io(runtime.follow_activation)
        if runtime.active is None or runtime.active.current is pair:
            raise
        return await runtime.run_search(run, runtime, runtime.active.current, subject, query)
