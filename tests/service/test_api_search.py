"""``POST /v1/search`` and ``/v1/images/{id}/similar`` against an exact Hamming oracle."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import APIRouter, Depends
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from index import hamming_distances
from model.export import load_encoder
from service.pipeline import encode_upload
from service.routes.search import UploadSearchRoute, stream_body
from service.routes.search import search as search_endpoint
from tests.service.conftest import MAX_PIXELS, assert_error, post_image, search

N_IMAGES = 24


@pytest.fixture
def stored(client: httpx.Client, digit_pngs: list[tuple[bytes, str]]) -> dict[int, bytes]:
    """``{id: bytes}`` of N_IMAGES ingested digits, half in domain ``source``, half in ``target``."""
    out = {}
    for i, (data, label) in enumerate(digit_pngs[:N_IMAGES]):
        response = post_image(client, data, label=label, domain="source" if i % 2 == 0 else "target")
        assert response.status_code == 201, response.text
        out[response.json()["id"]] = data
    return out


def _oracle(artefact: Path, stored: dict[int, bytes], query: bytes) -> list[tuple[int, int]]:
    """``[(distance, id)]`` of every stored image, in (distance, id) order."""
    encoder = load_encoder(artefact)
    ids = sorted(stored)
    codes = np.stack([encode_upload(encoder, stored[i], MAX_PIXELS) for i in ids])
    distances = hamming_distances(encode_upload(encoder, query, MAX_PIXELS)[None], codes, encoder.bits)[0]
    return sorted(zip(distances.tolist(), ids, strict=True))


def _artefact_oracle(artefact: Path, stored: dict[int, bytes], query: bytes) -> list[tuple[int, int]]:
    """The same ranking from the artefact alone, nothing of metah's own code: ``torch.jit.load``, CONTRACT §3's
    preprocessing written out (decode → RGB → bilinear resize of the whole image to ``input_size`` → ``[0, 1]``),
    bit = value > 0, and the Hamming distance as the count of unequal bits."""
    extra = {"metah.json": ""}
    module = torch.jit.load(str(artefact), _extra_files=extra)
    height, width = json.loads(extra["metah.json"])["input_size"]

    def bits_of(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            out: np.ndarray = module(x)[0].numpy() > 0
        return out

    query_bits = bits_of(query)
    return sorted((int((bits_of(data) != query_bits).sum()), image_id) for image_id, data in stored.items())


def test_search_orders_hits_by_distance_then_id(
    client: httpx.Client, stored: dict[int, bytes], api_artefact: Path, digit_pngs: list[tuple[bytes, str]]
) -> None:
    query = digit_pngs[N_IMAGES + 1][0]
    response = search(client, query, k=1000)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["bits"] == 16 and body["model_version"] and body["took_ms"] >= 0
    got = [(hit["distance"], hit["id"]) for hit in body["hits"]]
    assert got == _oracle(api_artefact, stored, query)
    assert got == _artefact_oracle(api_artefact, stored, query)
    assert len({distance for distance, _ in got}) > 3  # a ranking, not a tie of everything
    assert set(body["hits"][0]) == {"id", "distance", "domain", "label", "metadata", "content_url"}

    top = search(client, query, k=5).json()["hits"]
    assert [(h["distance"], h["id"]) for h in top] == got[:5]


def test_a_stored_image_finds_itself_first(client: httpx.Client, stored: dict[int, bytes]) -> None:
    first_id = min(stored)
    hits = search(client, stored[first_id], k=3).json()["hits"]
    assert (hits[0]["id"], hits[0]["distance"]) == (first_id, 0)
    assert hits[0]["content_url"] == f"/v1/images/{first_id}/content"


def test_a_hit_carries_its_rows_fields(client: httpx.Client, digit_pngs: list[tuple[bytes, str]]) -> None:
    """The hit of an image shows the label, domain and metadata it was stored with, byte for byte (non-ASCII,
    nested, numbers), on both databases (SQLite keeps JSON as text, PostgreSQL as JSON)."""
    data = digit_pngs[-1][0]
    metadata = {"sku": "é-42 ✓", "sizes": [36, 38.5], "nested": {"ok": True, "none": None}}
    created = post_image(client, data, label="größe", domain="shop-2", metadata=json.dumps(metadata)).json()
    hit = search(client, data, k=1, domain="shop-2").json()["hits"][0]
    assert hit == {
        "id": created["id"],
        "distance": 0,
        "domain": "shop-2",
        "label": "größe",
        "metadata": metadata,
        "content_url": f"/v1/images/{created['id']}/content",
    }


def test_domain_and_radius_filters(client: httpx.Client, stored: dict[int, bytes]) -> None:
    query = stored[min(stored)]
    everything = search(client, query, k=1000).json()["hits"]
    target = search(client, query, k=1000, domain="target").json()["hits"]
    assert target == [h for h in everything if h["domain"] == "target"]
    assert search(client, query, domain="nowhere").json()["hits"] == []
    near = search(client, query, k=1000, max_distance=2).json()["hits"]
    assert near == [h for h in everything if h["distance"] <= 2]


def test_similar_uses_the_stored_code_and_leaves_the_image_out(client: httpx.Client, stored: dict[int, bytes]) -> None:
    image_id = sorted(stored)[3]
    by_upload = [h for h in search(client, stored[image_id], k=1000).json()["hits"] if h["id"] != image_id]
    similar = client.post(f"/v1/images/{image_id}/similar", params={"k": 1000})
    assert similar.status_code == 200, similar.text
    assert similar.json()["hits"] == by_upload
    top = client.post(f"/v1/images/{image_id}/similar", params={"k": 4, "domain": "source"}).json()["hits"]
    assert top == [h for h in by_upload if h["domain"] == "source"][:4]


def test_search_on_an_empty_index_has_no_hits(client: httpx.Client, digit_pngs: list[tuple[bytes, str]]) -> None:
    response = search(client, digit_pngs[0][0])
    assert response.status_code == 200 and response.json()["hits"] == []


def test_the_search_route_class_refuses_route_dependencies_it_would_not_run() -> None:
    router = APIRouter()
    with pytest.raises(TypeError, match="dependencies"):
        router.add_api_route(
            "/search", search_endpoint, methods=["POST"], dependencies=[Depends(lambda: None)],
            route_class_override=UploadSearchRoute,
        )  # fmt: skip


def test_searches_are_answered_by_the_route_s_own_handler(
    client: httpx.Client, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI builds its own ASGI app for a route of an included router; the route's ``handle`` must still be
    what answers (else FastAPI's per-request machinery would serve the search, unnoticed)."""
    served: list[str] = []
    serve = UploadSearchRoute.serve

    async def counted(route: UploadSearchRoute, scope: Scope, receive: Receive, send: Send) -> None:
        served.append(scope["path"])
        await serve(route, scope, receive, send)

    monkeypatch.setattr(UploadSearchRoute, "serve", counted)
    assert search(client, digit_pngs[0][0]).status_code == 200
    assert_error(client.put("/v1/search"), 405, "method_not_allowed")
    assert served == ["/v1/search"]


def test_a_body_that_breaks_off_is_a_400_as_fastapi_gives() -> None:
    """The search route reads its own body: a client that disconnects mid-upload is a 400, not a server error."""
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n\x89PNG'
    sent: list[dict[str, object]] = [
        {"type": "http.request", "body": head, "more_body": True},
        {"type": "http.disconnect"},
    ]
    messages = iter(sent)

    async def receive() -> dict[str, object]:
        return next(messages)

    received: list[bytes] = []
    with pytest.raises(HTTPException) as caught:
        asyncio.run(stream_body(receive, received.append))
    assert caught.value.status_code == 400 and received == [head]
