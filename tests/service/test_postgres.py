"""The service against a real PostgreSQL server: migrations both ways, then the core API round trip.

Needs ``METAH_TEST_POSTGRES_URL`` (a role allowed to create databases, e.g.
``postgresql+psycopg://metah:metah@127.0.0.1:5432/postgres``); ``.ci/run`` starts the local PostgreSQL 15 and
sets it. Every test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from migrations.runner import current_revision, downgrade, head_revision, upgrade
from tests.service.conftest import StartServer, post_image, search

ADMIN_URL = os.environ.get("METAH_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not ADMIN_URL, reason="METAH_TEST_POSTGRES_URL is not set")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    assert ADMIN_URL is not None
    name = f"metah_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrations_upgrade_and_downgrade_on_postgres(pg_url: str) -> None:
    upgrade(pg_url)
    assert current_revision(pg_url) == head_revision()
    engine = create_engine(pg_url)
    try:
        assert {"images", "codes", "model_versions", "jobs", "changes"} <= set(inspect(engine).get_table_names())
        downgrade(pg_url, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(pg_url)
        assert current_revision(pg_url) == head_revision()
    finally:
        engine.dispose()


def test_ingest_search_delete_and_restart_on_postgres(
    pg_url: str, start_server: StartServer, digit_pngs: list[tuple[bytes, str]]
) -> None:
    server = start_server(database_url=pg_url)
    client = server.client()
    ids = []
    for data, label in digit_pngs[:12]:
        response = post_image(client, data, domain="usps", label=label)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    again = post_image(client, digit_pngs[0][0], domain="usps", label=digit_pngs[0][1])
    assert again.status_code == 200
    assert again.json()["id"] == ids[0]

    hits = search(client, digit_pngs[3][0], k=5).json()["hits"]
    assert hits[0]["distance"] == 0
    assert ids[3] in [hit["id"] for hit in hits if hit["distance"] == 0]
    assert [(h["distance"], h["id"]) for h in hits] == sorted((h["distance"], h["id"]) for h in hits)

    assert client.delete(f"/v1/images/{ids[3]}").status_code == 204
    assert ids[3] not in [hit["id"] for hit in search(client, digit_pngs[3][0], k=12).json()["hits"]]
    data_dir = server.settings.data_dir
    server.stop()

    restarted = start_server(data_dir, database_url=pg_url)
    client = restarted.client()
    assert client.get("/readyz").json()["indexed"] == 11
    assert client.get(f"/v1/images/{ids[5]}").json()["label"] == digit_pngs[5][1]
    assert client.get(f"/v1/images/{ids[3]}").status_code == 404


def test_ingest_job_on_postgres(pg_url: str, start_server: StartServer, digit_pngs: list[tuple[bytes, str]]) -> None:
    from tests.service.test_api_jobs import JOB_SETTINGS, WorkerThread, image_folder, submitted, wait_job, zip_of

    server = start_server(database_url=pg_url, **JOB_SETTINGS)
    client = server.client()
    worker = WorkerThread(server).start()
    try:
        job = wait_job(client, submitted(client, zip_of(image_folder(digit_pngs, 20))))
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["result"]["created"] == 20, job
    assert search(client, digit_pngs[0][0], max_distance=0).json()["hits"][0]["distance"] == 0
