"""Model activation on the Milvus backend (Milvus Lite, SQLite and PostgreSQL): the job re-encodes, asks the
indexer for the new model's collection, waits until it is built and caught up, then switches; the API swaps
model and collection together and no search fails meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from service import cursors
from service.db import Database
from service.registry import register_artefact
from service.storage import open_blob_store
from tests.service.conftest import StartServer, post_image, search
from tests.service.test_api_jobs import JOB_SETTINGS, WorkerThread, wait_job
from tests.service.test_milvus_backend import PNGs, hits_of, milvus_settings, oracle, wait_ready


def test_activation_builds_the_new_collection_then_switches_without_a_failed_search(
    start_server: StartServer, tmp_path: Path, digit_pngs: PNGs, second_artefact: Path
) -> None:
    live = start_server(**milvus_settings(tmp_path / "data", **JOB_SETTINGS))
    client = live.client()
    old = wait_ready(client)
    ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:12]]
    db = Database(live.settings.sqlalchemy_url)
    version = register_artefact(db, open_blob_store(live.settings), second_artefact, activate=False).version
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def keep_searching() -> None:
        with httpx.Client(base_url=live.base_url, timeout=30) as searcher:
            while not stop.is_set():
                response = search(searcher, digit_pngs[0][0], k=3)
                answers.append((response.status_code, response.json().get("model_version", "")))

    searching = threading.Thread(target=keep_searching)
    searching.start()
    worker = WorkerThread(live).start()
    try:
        job = wait_job(client, client.post(f"/v1/models/{version}/activate").json()["job_id"])
        assert job["status"] == "succeeded", job
        with db.session() as session:  # the switch came after the build: the previous collection is retired
            states = {c.model_version: c.state for c in cursors.all_cursors(session).values()}
        assert states == {version: cursors.READY, old["model_version"]: cursors.RETIRED}
        deadline = time.monotonic() + 10
        while (ready := wait_ready(client))["model_version"] != version:
            assert time.monotonic() < deadline, ready
            time.sleep(0.05)
        assert (ready["bits"], ready["indexed"]) == (32, len(ids))
        response = search(client, digit_pngs[3][0], k=12)
        assert response.json()["model_version"] == version
        assert hits_of(response) == oracle(live, response.json()["query"]["code_hex"], 12)
        created = post_image(client, digit_pngs[20][0], label="x")  # after the switch: indexed with the new model
        found = search(client, digit_pngs[20][0], k=20, max_distance=0).json()["hits"]
        assert created.json()["id"] in {hit["id"] for hit in found}
    finally:
        stop.set()
        searching.join()
        worker.stop()
        db.close()
    assert {status for status, _ in answers} == {200}, answers  # no 503 while the pair was swapped
    versions = [answer for _, answer in answers]
    assert versions[0] == old["model_version"] and versions[-1] == version


def test_a_search_right_after_an_activation_answers_with_the_new_model(
    start_server: StartServer, tmp_path: Path, digit_pngs: PNGs, second_artefact: Path
) -> None:
    """The replica's own poll (``changes_poll_s``, long here) has not swapped yet when the first search after an
    activation comes: the search finds its model's collection retired, swaps now and answers from the new
    collection, which holds an image acknowledged after the activation (the retired one does not)."""
    live = start_server(**milvus_settings(tmp_path / "data", **{**JOB_SETTINGS, "changes_poll_s": 8.0}))
    client = live.client()
    old = wait_ready(client)["model_version"]
    for data, label in digit_pngs[:6]:
        post_image(client, data, label=label)
    db = Database(live.settings.sqlalchemy_url)
    version = register_artefact(db, open_blob_store(live.settings), second_artefact, activate=False).version
    worker = WorkerThread(live).start()
    try:
        job = wait_job(client, client.post(f"/v1/models/{version}/activate").json()["job_id"])
        assert job["status"] == "succeeded", job
        created = post_image(client, digit_pngs[20][0], label="x").json()["id"]
        response = search(client, digit_pngs[20][0], k=20, max_distance=0)
        assert response.status_code == 200 and response.json()["model_version"] == version != old
        assert created in {hit["id"] for hit in response.json()["hits"]}
        assert wait_ready(client)["model_version"] == version
    finally:
        worker.stop()
        db.close()
