"""``/v1/images``: ingest (201, then 200 for the same bytes), records, content, pagination, delete."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from service.blobs import sweep
from service.db import Database
from service.storage import LocalBlobStore
from tests.service.conftest import LiveServer, assert_error, post_image, search


def test_ingest_creates_a_record_and_the_same_bytes_again_return_it(
    client: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    data, label = digit_pngs[0]
    first = post_image(client, data, label=label, metadata='{"source": "usps", "n": 1}')
    assert first.status_code == 201, first.text
    record = first.json()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert (record["domain"], record["label"], record["metadata"]) == ("database", label, {"source": "usps", "n": 1})
    assert (record["media_type"], record["size_bytes"]) == ("image/png", len(data))
    assert record["content_url"] == f"/v1/images/{record['id']}/content"
    assert record["created_at"].endswith("Z") or record["created_at"].endswith("+00:00")

    again = post_image(client, data, label="ignored", filename="other-name.png")
    assert again.status_code == 200
    assert again.json() == record

    elsewhere = post_image(client, data, domain="target")
    assert elsewhere.status_code == 201
    assert elsewhere.json()["id"] != record["id"] and elsewhere.json()["domain"] == "target"


def test_record_and_content_round_trip(client: httpx.Client, digit_pngs: list[tuple[bytes, str]]) -> None:
    data, label = digit_pngs[1]
    image_id = post_image(client, data, label=label).json()["id"]
    record = client.get(f"/v1/images/{image_id}")
    assert record.status_code == 200 and record.json()["label"] == label
    content = client.get(f"/v1/images/{image_id}/content")
    assert content.status_code == 200
    assert content.content == data
    assert content.headers["content-type"] == "image/png"
    assert content.headers["x-content-type-options"] == "nosniff"


def test_blobs_are_content_addressed(
    server: LiveServer, client: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    data, _ = digit_pngs[2]
    post_image(client, data, filename="../../etc/evil.png")
    digest = hashlib.sha256(data).hexdigest()
    blob = server.settings.data_dir / "images" / digest[:2] / digest[2:4] / digest
    assert blob.read_bytes() == data
    assert not any(p.name == "evil.png" for p in server.settings.data_dir.rglob("*"))


def test_listing_pages_with_a_keyset_cursor(client: httpx.Client, digit_pngs: list[tuple[bytes, str]]) -> None:
    ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:7]]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 3, **({"after": cursor} if cursor else {})}
        page = client.get("/v1/images", params=params).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted(ids) and pages == 3

    label = digit_pngs[0][1]
    filtered = client.get("/v1/images", params={"label": label, "domain": "database"}).json()
    assert [item["label"] for item in filtered["items"]] == [label]
    assert client.get("/v1/images", params={"domain": "nowhere"}).json() == {"items": [], "next": None}
    unfiltered = client.get("/v1/images", params={"domain": "", "label": "", "after": ""}).json()
    assert [item["id"] for item in unfiltered["items"]] == sorted(ids)


def test_delete_removes_the_image_everywhere(
    server: LiveServer, client: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    data, label = digit_pngs[3]
    image_id = post_image(client, data, label=label).json()["id"]
    kept_id = post_image(client, digit_pngs[4][0]).json()["id"]
    assert search(client, data, k=5).json()["hits"][0]["id"] == image_id

    assert client.delete(f"/v1/images/{image_id}").status_code == 204
    assert_error(client.get(f"/v1/images/{image_id}"), 404, "image_not_found")
    assert_error(client.get(f"/v1/images/{image_id}/content"), 404)
    assert_error(client.delete(f"/v1/images/{image_id}"), 404)
    hits = search(client, data, k=1000).json()["hits"]
    assert [h["id"] for h in hits] == [kept_id]
    digest = hashlib.sha256(data).hexdigest()
    blob = server.settings.data_dir / "images" / digest[:2] / digest[2:4] / digest
    assert blob.exists()  # the blob sweep removes it (service/blobs.py), not the delete
    db = Database(server.settings.sqlalchemy_url)
    try:
        assert sweep(db, LocalBlobStore(server.settings.data_dir), server.settings.blob_grace_s) == 0
        assert blob.exists()  # within the grace period
        time.sleep(0.01)
        assert sweep(db, LocalBlobStore(server.settings.data_dir), 0.001) == 1
    finally:
        db.close()
    assert not blob.exists()

    again = post_image(client, data, label=label)
    assert again.status_code == 201 and again.json()["id"] > kept_id  # ids are never reused


def test_concurrent_uploads_of_the_same_bytes_store_one_image(
    server: LiveServer, digit_pngs: list[tuple[bytes, str]]
) -> None:
    data, _ = digit_pngs[6]
    clients = [server.client() for _ in range(6)]
    with ThreadPoolExecutor(len(clients)) as pool:
        responses = list(pool.map(lambda c: post_image(c, data), clients))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert clients[0].get("/readyz").json()["indexed"] == 1


def test_delete_keeps_bytes_still_stored_in_another_domain(
    client: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    data, _ = digit_pngs[5]
    first = post_image(client, data, domain="source").json()["id"]
    second = post_image(client, data, domain="target").json()["id"]
    assert client.delete(f"/v1/images/{first}").status_code == 204
    assert client.get(f"/v1/images/{second}/content").content == data
