"""What the web UI relies on beyond CONTRACT §4's first version: the query's code in search responses,
``GET /v1/jobs``, ``GET /v1/models/{version}/plots/{name}``, and the UI's own files at ``/`` and ``/ui/...``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import httpx
import numpy as np
import pytest

from model.export import load_encoder
from service.jobs import activation, ingest, queue, training
from service.pipeline import encode_upload
from service.routes.ui import STATIC_DIR
from service.schemas import JobKind, JobStatus
from tests.service.conftest import MAX_PIXELS, LiveServer, assert_error, post_image, search

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------- query code


def test_search_reports_the_query_code(
    client: httpx.Client, api_artefact: Path, digit_pngs: list[tuple[bytes, str]]
) -> None:
    data = digit_pngs[0][0]
    expected = encode_upload(load_encoder(api_artefact), data, MAX_PIXELS)
    body = search(client, data).json()
    query = body["query"]
    assert set(query) == {"bits", "code_hex", "code_bits"}
    assert query["bits"] == body["bits"] == 16
    assert query["code_hex"] == expected.tobytes().hex() and len(query["code_hex"]) == 4
    assert re.fullmatch(r"[01]{16}", query["code_bits"])
    # bit 0 is the most significant bit of the first byte (np.packbits, big bit order)
    assert np.packbits([int(b) for b in query["code_bits"]]).tobytes().hex() == query["code_hex"]


def test_similar_reports_the_stored_code(client: httpx.Client, digit_pngs: list[tuple[bytes, str]]) -> None:
    ids = []
    for data, label in digit_pngs[:4]:
        response = post_image(client, data, label=label)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    by_upload = search(client, digit_pngs[2][0]).json()["query"]
    similar = client.post(f"/v1/images/{ids[2]}/similar", params={"k": 3})
    assert similar.status_code == 200, similar.text
    assert similar.json()["query"] == by_upload
    assert ids[2] not in {hit["id"] for hit in similar.json()["hits"]}


# ----------------------------------------------------------------------------------------------- job list


def _queue_jobs(client: httpx.Client, version: str) -> dict[str, int]:
    """Three queued jobs (no worker runs): an ingestion, a training and an activation."""
    archive = client.post("/v1/ingest-jobs", files={"archive": ("a.zip", _empty_zip(), "application/zip")})
    training = client.post("/v1/training-jobs", json={"source_domain": "mnist", "target_domain": "usps"})
    activation = client.post(f"/v1/models/{version}/activate")
    for response in (archive, training, activation):
        assert response.status_code == 202, response.text
    return {
        "ingest": archive.json()["job_id"],
        "train": training.json()["job_id"],
        "activate": activation.json()["job_id"],
    }


def _empty_zip() -> bytes:
    return b"PK\x05\x06" + bytes(18)  # the end-of-central-directory record of an empty zip


def test_jobs_are_listed_newest_first_and_filtered(client: httpx.Client) -> None:
    assert client.get("/v1/jobs").json() == {"items": []}
    ids = _queue_jobs(client, client.get("/readyz").json()["model_version"])
    items = client.get("/v1/jobs").json()["items"]
    assert [job["id"] for job in items] == sorted(ids.values(), reverse=True)
    assert items[0] == client.get(f"/v1/jobs/{items[0]['id']}").json()  # the same shape as one job
    assert {job["status"] for job in items} == {"queued"}

    for kind, job_id in ids.items():
        assert [job["id"] for job in client.get("/v1/jobs", params={"kind": kind}).json()["items"]] == [job_id]
    assert [j["id"] for j in client.get("/v1/jobs", params={"limit": 1}).json()["items"]] == [ids["activate"]]

    assert client.post(f"/v1/jobs/{ids['train']}/cancel").json()["status"] == "cancelled"
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [job["id"] for job in cancelled] == [ids["train"]]
    queued = client.get("/v1/jobs", params={"status": "queued", "kind": "train"}).json()["items"]
    assert queued == []


@pytest.mark.parametrize(
    "params",
    [{"kind": "bogus"}, {"status": "done"}, {"limit": 0}, {"limit": 1001}, {"limit": "many"}],
    ids=["unknown-kind", "unknown-status", "limit-0", "limit-too-large", "limit-not-a-number"],
)
def test_job_list_filters_are_checked(client: httpx.Client, params: dict[str, str | int]) -> None:
    assert_error(client.get("/v1/jobs", params=params), 422, "validation_error")


def test_the_job_filters_name_every_kind_and_state() -> None:
    assert set(get_args(JobKind)) == {ingest.KIND, training.KIND, activation.KIND}
    assert set(get_args(JobStatus)) == {queue.QUEUED, queue.RUNNING} | queue.FINISHED


def test_job_list_needs_no_api_key(anonymous: httpx.Client) -> None:
    assert anonymous.get("/v1/jobs").status_code == 200


# ------------------------------------------------------------------------------------------------- plots


def test_plots_of_a_model_version(server: LiveServer, client: httpx.Client) -> None:
    version = client.get("/readyz").json()["model_version"]
    folder = server.settings.models_dir / version
    assert (folder / "model.pt").is_file()
    for name in ("loss_curves.png", "pr_curve.png"):
        (folder / name).unlink(missing_ok=True)
        assert_error(client.get(f"/v1/models/{version}/plots/{name}"), 404, "plot_not_found")
        figure = PNG_MAGIC + name.encode()
        (folder / name).write_bytes(figure)
        response = client.get(f"/v1/models/{version}/plots/{name}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png" and response.content == figure

    assert_error(client.get("/v1/models/no-such-model/plots/pr_curve.png"), 404, "model_not_found")


@pytest.mark.parametrize("name", ["model.pt", "history.csv", "PR_CURVE.PNG", "pr_curve.png.bak", "%2e%2e"])
def test_only_the_listed_plots_are_served(client: httpx.Client, name: str) -> None:
    version = client.get("/readyz").json()["model_version"]
    assert_error(client.get(f"/v1/models/{version}/plots/{name}"), 422, "validation_error")


def test_a_plot_name_cannot_leave_the_model_folder(client: httpx.Client) -> None:
    version = client.get("/readyz").json()["model_version"]
    plots = f"/v1/models/{version}/plots"
    for path in (f"{plots}/..%2F..%2Fmetah.db", f"{plots}/../model.pt", f"{plots}/..", f"{plots}/%2F"):
        response = client.get(path)
        assert response.status_code in (404, 422) and b"SQLite" not in response.content, path
        assert set(response.json()) == {"error"}


# ---------------------------------------------------------------------------------------------------- UI


def test_the_ui_page_and_its_files_are_served(anonymous: httpx.Client) -> None:
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    referenced = re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text)
    assert {"/ui/app.js", "/ui/app.css"} <= set(referenced)
    for path in referenced:
        response = anonymous.get(path)
        assert response.status_code == 200, path
    assert anonymous.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert anonymous.get("/ui/app.css").headers["content-type"].startswith("text/css")


def test_every_script_import_resolves_and_nothing_is_fetched_from_elsewhere() -> None:
    files = {path.name: path.read_text() for path in STATIC_DIR.iterdir()}
    for name, text in files.items():
        assert not re.search(r"(?:src|href|from|url\()\s*=?\s*[\"']?(?:https?:)?//", text), name  # offline: no CDN
        for imported in re.findall(r'from "\./([^"]+)"', text):
            assert imported in files, f"{name} imports missing {imported}"


@pytest.mark.parametrize("path", ["/ui/missing.js", "/ui/index.html", "/ui/..%2Fapp.py", "/ui/.hidden.js", "/ui/"])
def test_unknown_ui_files_are_404(anonymous: httpx.Client, path: str) -> None:
    assert_error(anonymous.get(path), 404)


def test_the_ui_is_not_in_the_openapi_schema(anonymous: httpx.Client) -> None:
    paths = anonymous.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)
    assert "/v1/jobs" in paths and "/v1/models/{version}/plots/{name}" in paths
    assert "query" in anonymous.get("/openapi.json").json()["components"]["schemas"]["SearchResponse"]["properties"]


def test_a_training_job_without_a_length_leaves_it_to_the_mode(client: httpx.Client) -> None:
    body = {"source_domain": "mnist", "target_domain": "usps"}
    for extra in ({}, {"iterations": None}, {"iterations": 30}):
        response = client.post("/v1/training-jobs", json={**body, **extra})
        assert response.status_code == 202, response.text
    for bad in (0, -5, "many", 1.5, 10**9):
        assert client.post("/v1/training-jobs", json={**body, "iterations": bad}).status_code == 422
