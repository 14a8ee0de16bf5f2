"""``/v1/images``: add (idempotent), read, list, fetch the bytes, delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import StreamingResponse

from service import catalog
from service.deps import ImageDep, ImageFormDep, ImageId, PairDep, RuntimeDep, UploadDep, WriteAccess
from service.schemas import DOMAIN_FILTER_PATTERN, ImagePage, ImagePublic, errors

CHUNK = 256 * 1024  # bytes read from the blob store per piece of the streamed response

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAccess],
    responses={200: {"model": ImagePublic, "description": "already stored"}, **errors(401, 413, 415, 422, 503)},
)
async def add_image(
    runtime: RuntimeDep, pair: PairDep, image: UploadDep, form: ImageFormDep, response: Response
) -> ImagePublic:
    """Store an image: 201 with the new record, or 200 with the existing one for the same bytes and domain."""
    result = await runtime.run_cpu(catalog.ingest, runtime, pair, image, form)
    if result.change is not None:  # the Milvus backend: acknowledged once the indexer applied it (bounded)
        await runtime.run_io(runtime.wait_indexed, result.change)
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return ImagePublic.from_row(result.image)


@router.get("", responses=errors(422))
async def list_images(
    runtime: RuntimeDep,
    domain: Annotated[str | None, Query(pattern=DOMAIN_FILTER_PATTERN)] = None,
    label: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(pattern=r"^[0-9]{0,18}$", description="`next` of the previous page")] = None,
) -> ImagePage:
    """Images in id order, a page at a time (keyset pagination); empty filters are no filters."""
    rows, last = await runtime.run_io(
        lambda: catalog.list_images(
            runtime, domain=domain or None, label=label or None, limit=limit, after=int(after) if after else None
        )
    )
    return ImagePage(items=[ImagePublic.from_row(r) for r in rows], next=None if last is None else str(last))


@router.get("/{image_id}", responses=errors(404, 422))
async def get_image(image: ImageDep) -> ImagePublic:
    return ImagePublic.from_row(image)


@router.get(
    "/{image_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/*": {}}}, **errors(404, 422, 503)},
)
async def get_content(runtime: RuntimeDep, image: ImageDep) -> StreamingResponse:
    """The original bytes, with the media type sniffed at upload.

    Streamed from the blob store by this process whatever the store, rather than a redirect to a presigned S3
    URL: the S3 endpoint the service reaches need not be reachable by its clients, and these headers (media
    type, ``nosniff``, the content security policy) are the service's to set, not the bucket's.
    """
    stream = await runtime.run_io(catalog.open_content, runtime, image)
    return StreamingResponse(
        _pieces(stream),
        media_type=image.media_type,
        headers={
            "Content-Length": str(image.size_bytes),
            "ETag": f'"{image.sha256}"',
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'",
        },
    )


def _pieces(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's bytes a piece at a time (read in a worker thread by Starlette); closes it at the end, or when
    the client goes away."""
    with stream:
        while piece := stream.read(CHUNK):
            yield piece


@router.delete(
    "/{image_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[WriteAccess],
    responses=errors(401, 404, 422),
)
async def delete_image(runtime: RuntimeDep, image_id: ImageId) -> Response:
    """Delete an image; it is never returned by a search afterwards."""
    await runtime.run_io(catalog.delete, runtime, image_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
