"""Named dependencies of the routes (``Annotated`` aliases): the runtime, the serving pair, write access,
an existing image, an upload's bytes and an image's form fields."""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any

from fastapi import Depends, File, Form, Header, Path, Request, UploadFile

from service import catalog
from service.catalog import NewImage
from service.errors import NotReadyError, PayloadTooLargeError, UnauthorizedError, UnprocessableError
from service.models import Image
from service.runtime import Runtime
from service.schemas import DOMAIN_PATTERN
from service.serving import ServingPair

LABEL_MAX = 256
MAX_ID = 2**63 - 1


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_pair(runtime: RuntimeDep) -> ServingPair:
    return serving_pair(runtime)


def serving_pair(runtime: Runtime) -> ServingPair:
    """The serving (model, index) pair, taken once per request; 503 while there is none."""
    if runtime.active is None:
        raise runtime.problem or NotReadyError("no model is loaded", code="no_model")
    return runtime.active.current


PairDep = Annotated[ServingPair, Depends(get_pair)]


async def require_api_key(
    runtime: RuntimeDep, x_api_key: Annotated[str | None, Header(description="needed on writes")] = None
) -> None:
    """Writes need ``X-API-Key`` when the server has ``METAH_API_KEY``; compared in constant time."""
    expected = runtime.settings.api_key
    if expected is None:
        return
    if x_api_key is None:
        raise UnauthorizedError("this request needs the X-API-Key header", code="missing_api_key")
    if not hmac.compare_digest(x_api_key.encode(), expected.get_secret_value().encode()):
        raise UnauthorizedError("the X-API-Key is not valid", code="invalid_api_key")


WriteAccess = Depends(require_api_key)

ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="image id")]


def existing_image(image_id: ImageId, runtime: RuntimeDep) -> Image:
    """The image row of the path's id; 404 when there is none."""
    return catalog.get_image(runtime, image_id)


ImageDep = Annotated[Image, Depends(existing_image)]


ImageFile = Annotated[UploadFile, File(description="the image file")]


async def upload_bytes(runtime: RuntimeDep, image: ImageFile) -> bytes:
    """The uploaded file's bytes (the body size was already bounded while streaming)."""
    return bounded_upload(runtime, await image.read(runtime.settings.max_upload_bytes + 1))


def bounded_upload(runtime: Runtime, data: bytes) -> bytes:
    """``data``, or 413 when the uploaded file alone is over ``max_upload_bytes``."""
    limit = runtime.settings.max_upload_bytes
    if len(data) > limit:
        raise PayloadTooLargeError(f"image exceeds the limit of {limit} bytes", code="upload_too_large")
    return data


UploadDep = Annotated[bytes, Depends(upload_bytes)]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in metadata")


def _parse_metadata(raw: str | None, max_bytes: int) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    if len(raw.encode()) > max_bytes:
        raise UnprocessableError(f"metadata exceeds {max_bytes} bytes", code="invalid_metadata")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise UnprocessableError(f"metadata is not valid JSON: {exc}", code="invalid_metadata") from exc
    if not isinstance(value, dict):
        raise UnprocessableError("metadata must be a JSON object", code="invalid_metadata")
    return value


async def image_form(
    runtime: RuntimeDep,
    domain: Annotated[str, Form(pattern=DOMAIN_PATTERN)] = "database",
    label: Annotated[str | None, Form(min_length=1, max_length=LABEL_MAX)] = None,
    metadata: Annotated[str | None, Form(description="a JSON object")] = None,
) -> NewImage:
    return NewImage(domain, label, _parse_metadata(metadata, runtime.settings.max_metadata_bytes))


ImageFormDep = Annotated[NewImage, Depends(image_form)]
