"""Start-up, readiness, the model registry and restarts on the same data dir (the index follows the DB)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from index import read_manifest
from tests.service.conftest import StartServer, assert_error, post_image, search


def test_healthz_and_readyz(client: httpx.Client, digit_pngs: list[tuple[bytes, str]]) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["bits"] == 16 and ready.json()["indexed"] == 0
    post_image(client, digit_pngs[0][0])
    assert client.get("/readyz").json()["indexed"] == 1


def test_openapi_describes_the_api(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/search", "/v1/images", "/v1/images/{image_id}", "/v1/images/{image_id}/similar"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_both_searches_document_the_same_query_parameters(client: httpx.Client) -> None:
    """Both take :class:`service.routes.search.SearchParams` (``/v1/search`` parses it by hand, outside FastAPI's
    per-request machinery): the same names, bounds and pattern, and the upload is a required multipart
    ``image``."""
    schema = client.get("/openapi.json").json()

    def query(path: str) -> dict[str, dict[str, object]]:
        parameters = schema["paths"][path]["post"]["parameters"]
        return {p["name"]: p["schema"] for p in parameters if p["in"] == "query"}

    search, similar = query("/v1/search"), query("/v1/images/{image_id}/similar")
    assert search == similar
    assert set(search) == {"k", "max_distance", "domain"}
    assert (search["k"]["minimum"], search["k"]["maximum"], search["k"]["default"]) == (1, 1000, 10)
    body = schema["paths"]["/v1/search"]["post"]["requestBody"]
    assert body["required"] is True and "multipart/form-data" in body["content"]
    reference = body["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert schema["components"]["schemas"][reference]["required"] == ["image"]


def test_the_first_start_registers_the_configured_model(
    client: httpx.Client, api_artefact: Path, tmp_path: Path
) -> None:
    listing = client.get("/v1/models").json()
    (model,) = listing["items"]
    assert listing["active"] == model["version"] and model["active"] is True
    assert (model["bits"], model["method"], model["backbone"]) == (16, "metah", "lenet")
    assert "evaluation" in model["metrics"]
    copied = tmp_path / "data" / "models" / model["version"] / "model.pt"
    assert copied.read_bytes() == api_artefact.read_bytes()
    assert client.get("/readyz").json()["model_version"] == model["version"]


def test_without_a_model_the_server_is_up_but_not_ready(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]]
) -> None:
    live = start_server(model=None)
    client = live.client()
    assert client.get("/healthz").status_code == 200
    assert_error(client.get("/readyz"), 503, "no_model")
    assert_error(search(client, digit_pngs[0][0]), 503, "no_model")
    assert_error(post_image(client, digit_pngs[0][0]), 503, "no_model")
    assert client.get("/v1/models").json() == {"items": [], "active": None}


def test_an_unmigrated_database_is_not_ready(start_server: StartServer) -> None:
    client = start_server(migrate=False).client()
    body = assert_error(client.get("/readyz"), 503, "database_not_migrated")
    assert "metah migrate" in body["error"]["message"]


def _index_source(caplog: pytest.LogCaptureFixture) -> str:
    (message,) = [r.getMessage() for r in caplog.records if r.name == "service.registry" and "index of" in r.msg]
    caplog.clear()
    return message.split(": ", 1)[1].split(",")[0]


def test_everything_survives_a_restart(
    start_server: StartServer, tmp_path: Path, digit_pngs: list[tuple[bytes, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.registry")
    data_dir = tmp_path / "data"
    first = start_server(data_dir)
    client = first.client()
    ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:6]]
    assert client.delete(f"/v1/images/{ids[2]}").status_code == 204
    query = digit_pngs[0][0]
    before = search(client, query, k=100).json()
    listing = client.get("/v1/images").json()
    first.stop()
    assert _index_source(caplog) == "rebuilt"  # first start: no snapshot yet
    version = before["model_version"]
    snapshot = data_dir / "index" / f"{version}.mhix"
    assert read_manifest(snapshot).count == 5

    second = start_server(data_dir, model=None)  # the registry remembers the model
    client = second.client()
    assert _index_source(caplog) == "snapshot"
    assert client.get("/readyz").json() == {"model_version": version, "bits": 16, "indexed": 5}
    after = search(client, query, k=100).json()
    assert after["hits"] == before["hits"]
    assert client.get("/v1/images").json() == listing
    assert client.get(f"/v1/images/{ids[0]}/content").content == digit_pngs[0][0]
    assert_error(client.get(f"/v1/images/{ids[2]}"), 404)
    assert post_image(client, digit_pngs[0][0]).status_code == 200  # still idempotent
    second.stop()

    snapshot.write_bytes(snapshot.read_bytes()[:100])  # a broken snapshot is only a cache: rebuilt from the DB
    third = start_server(data_dir, model=None).client()
    assert _index_source(caplog) == "rebuilt"
    assert third.get("/readyz").json()["indexed"] == 5
    assert search(third, query, k=100).json()["hits"] == before["hits"]


def test_a_missing_model_artefact_is_refused_with_a_clear_message(
    start_server: StartServer, tmp_path: Path, digit_pngs: list[tuple[bytes, str]]
) -> None:
    data_dir = tmp_path / "data"
    first = start_server(data_dir)
    image_id = post_image(first.client(), digit_pngs[0][0]).json()["id"]
    version = first.client().get("/readyz").json()["model_version"]
    first.stop()
    artefact = data_dir / "models" / version / "model.pt"
    artefact.unlink()

    client = start_server(data_dir, model=None).client()  # up, but not ready, and saying why
    assert client.get("/healthz").status_code == 200
    body = assert_error(client.get("/readyz"), 503, "model_unavailable")
    assert version in body["error"]["message"] and "model.pt" in body["error"]["message"]
    assert_error(search(client, digit_pngs[0][0]), 503, "model_unavailable")
    assert client.get(f"/v1/images/{image_id}").status_code == 200  # the stored data is still served
