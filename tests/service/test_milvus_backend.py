"""The service on ``METAH_INDEX_BACKEND=milvus`` with Milvus Lite (a file in the data dir): the API keeps no
codes, the indexer (a thread of the API process on Lite, elected by the database's lock) applies the ``changes``
log, and a write is acknowledged once it is indexed. Every test runs on SQLite and on PostgreSQL.

Searches are checked against a brute-force oracle over the codes the database holds (the same (distance, id)
order as the FAISS backend), right after each write (read-your-writes), after deletes and after a model swap.
The real Milvus 2.3.5 server tier (partition key, aliases, killing the indexer) is test_milvus_server.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from index import HashIndex
from service import repository
from service.db import Database
from service.indexer import milvus_options
from service.remote_index import RemoteIndex
from service.settings import Settings
from tests.service.conftest import (
    LiveServer,
    StartServer,
    assert_error,
    metah_environment,
    post_image,
    search,
)

PNGs = list[tuple[bytes, str]]


def milvus_settings(data_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "data_dir": data_dir,
        "index_backend": "milvus",
        "milvus_uri": str(data_dir / "milvus.db"),
        "changes_poll_s": 0.2,
        **overrides,
    }


@pytest.fixture
def milvus_live(start_server: StartServer, tmp_path: Path) -> LiveServer:
    return start_server(**milvus_settings(tmp_path / "data"))


def oracle(live: LiveServer, code_hex: str, k: int, *, domain: str | None = None) -> list[tuple[int, int]]:
    """The first ``k`` (id, distance) of a brute-force search over the database's codes of the active model."""
    db = Database(live.settings.sqlalchemy_url)
    try:
        with db.session() as session:
            version = repository.active_model(session).version  # type: ignore[union-attr]
            rows = [row for row in repository.iter_codes(session, version) if domain is None or row[2] == domain]
    finally:
        db.close()
    bits = len(bytes.fromhex(code_hex)) * 8
    index = HashIndex.build(rows, bits=bits, model_version=version)
    hits = index.search(np.frombuffer(bytes.fromhex(code_hex), np.uint8), k)[0]
    return hits.pairs()


def hits_of(response: httpx.Response) -> list[tuple[int, int]]:
    assert response.status_code == 200, response.text
    return [(hit["id"], hit["distance"]) for hit in response.json()["hits"]]


def wait_ready(client: httpx.Client, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (response := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.05)
    return dict(response.json())


def test_every_write_is_searchable_when_acknowledged_and_searches_match_the_oracle(
    milvus_live: LiveServer, digit_pngs: PNGs
) -> None:
    client = milvus_live.client()
    assert wait_ready(client)["indexed"] == 0
    ids = []
    for i, (data, label) in enumerate(digit_pngs[:24]):
        created = post_image(client, data, label=label, domain="usps" if i % 3 else "mnist")
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
        found = search(client, data, k=1, max_distance=0, domain=created.json()["domain"]).json()["hits"]
        assert found and found[0]["distance"] == 0  # read-your-writes: no wait, no retry in the test
    assert post_image(client, digit_pngs[0][0], domain="mnist").status_code == 200  # idempotent, not twice
    assert wait_ready(client)["indexed"] == len(ids)

    for data, _ in digit_pngs[24:30]:
        response = search(client, data, k=10)
        assert hits_of(response) == oracle(milvus_live, response.json()["query"]["code_hex"], 10)
        filtered = search(client, data, k=5, domain="usps")
        assert hits_of(filtered) == oracle(milvus_live, filtered.json()["query"]["code_hex"], 5, domain="usps")

    gone = ids[::2]
    for image_id in gone:
        assert client.delete(f"/v1/images/{image_id}").status_code == 204
    for data, _ in digit_pngs[:24]:
        response = search(client, data, k=30)
        assert not set(gone) & {hit for hit, _ in hits_of(response)}
        assert hits_of(response) == oracle(milvus_live, response.json()["query"]["code_hex"], 30)
    similar = client.post(f"/v1/images/{ids[1]}/similar", params={"k": 5})
    assert ids[1] not in {hit for hit, _ in hits_of(similar)} and len(hits_of(similar)) == 5
    assert wait_ready(client)["indexed"] == len(ids) - len(gone)


def test_a_write_waits_for_the_indexer_at_most_index_wait_s_and_is_indexed_later(
    start_server: StartServer, tmp_path: Path, digit_pngs: PNGs
) -> None:
    """An indexer that looks for changes only every 4 s: the upload is acknowledged after ``index_wait_s`` (0.5 s),
    not found at once, and found once the indexer's next round applied it (nothing is lost)."""
    live = start_server(**milvus_settings(tmp_path / "data", index_wait_s=0.5, indexer_poll_s=4.0))
    client = live.client()
    wait_ready(client)
    time.sleep(0.2)  # the indexer's first round (the build) is over: the next one is seconds away
    started = time.monotonic()
    created = post_image(client, digit_pngs[0][0], label="0")
    took = time.monotonic() - started
    assert created.status_code == 201 and 0.5 <= took < 2.0, (created.text, took)
    assert search(client, digit_pngs[0][0], k=1, max_distance=0).json()["hits"] == []
    deadline = time.monotonic() + 10
    while not (hits := search(client, digit_pngs[0][0], k=1, max_distance=0).json()["hits"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert hits[0]["id"] == created.json()["id"]


def test_bad_index_settings_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="METAH_MILVUS_URI"):
        Settings(data_dir=tmp_path, index_backend="milvus")
    with pytest.raises(ValidationError, match="METAH_MILVUS_URI"):
        Settings(data_dir=tmp_path, index_backend="milvus", milvus_uri="  ")
    with pytest.raises(ValidationError, match="'faiss' or 'milvus'"):
        Settings(data_dir=tmp_path, index_backend="elasticsearch")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, index_backend="milvus", milvus_uri="x.db", index_wait_s=-1)
    for prefix in ("", "shop-a", "1shop", "a" * 65, "shop a"):  # Milvus's own rule for collection names
        with pytest.raises(ValidationError, match="milvus_prefix"):
            Settings(data_dir=tmp_path, index_backend="milvus", milvus_uri="x.db", milvus_prefix=prefix)
    assert milvus_options(Settings(data_dir=tmp_path, milvus_prefix="shop_2")).prefix == "shop_2"
    assert Settings(data_dir=tmp_path).index_backend == "faiss"  # the default stays FAISS


def test_serve_refuses_the_milvus_backend_without_a_uri(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = metah_environment(DATA_DIR=str(tmp_path / "var"), INDEX_BACKEND="milvus", PORT="0")
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "METAH_MILVUS_URI" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "var").exists()  # refused before anything was written


def test_an_unreachable_milvus_answers_503_and_loses_no_write_attempt(
    start_server: StartServer, tmp_path: Path, digit_pngs: PNGs
) -> None:
    """Nothing listens at the URI: /healthz 200, /readyz and model-dependent requests 503 with a clear error,
    no row is written; the metadata routes still answer."""
    from workbench.processes import free_port

    live = start_server(**milvus_settings(tmp_path / "data", milvus_uri=f"http://127.0.0.1:{free_port()}"))
    client = live.client()
    assert client.get("/healthz").status_code == 200
    body = assert_error(client.get("/readyz"), 503, "index_unavailable")
    assert "cannot be reached" in body["error"]["message"] or "connecting" in body["error"]["message"]
    assert_error(post_image(client, digit_pngs[0][0]), 503, "index_unavailable")
    assert_error(search(client, digit_pngs[0][0]), 503, "index_unavailable")
    assert client.get("/v1/images").json()["items"] == []


def test_milvus_going_away_answers_503_and_keeps_every_write(
    start_server: StartServer, tmp_path: Path, digit_pngs: PNGs
) -> None:
    """The Milvus Lite server process stops under a running API: searches and /readyz answer 503
    ``index_unavailable`` (never a 500), /healthz and /metrics answer, and an upload is still committed and
    acknowledged after ``index_wait_s`` (the indexer applies it once Milvus is back)."""
    from milvus_lite.server_manager import server_manager_instance

    live = start_server(**milvus_settings(tmp_path / "data", index_wait_s=0.5))
    client = live.client()
    wait_ready(client)
    assert post_image(client, digit_pngs[0][0]).status_code == 201
    server_manager_instance.release_server(str(live.settings.milvus_uri))
    assert_error(search(client, digit_pngs[0][0]), 503, "index_unavailable")
    assert_error(client.get("/readyz"), 503, "index_unavailable")
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
    created = post_image(client, digit_pngs[1][0], label="1")
    assert created.status_code == 201, created.text
    assert client.get(f"/v1/images/{created.json()['id']}").json()["label"] == "1"


def test_counts_on_milvus_lite_read_no_cursor(
    milvus_live: LiveServer, digit_pngs: PNGs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lite is one process whose reads see its writes: ``/readyz`` counts without first reading the indexer's
    cursor row (a Milvus server needs its write timestamp; Lite has none to wait for)."""
    client = milvus_live.client()
    wait_ready(client)
    assert post_image(client, digit_pngs[0][0], domain="usps").status_code == 201
    reads = [0]
    cursor = RemoteIndex._cursor

    def counted(index: RemoteIndex) -> Any:
        reads[0] += 1
        return cursor(index)

    monkeypatch.setattr(RemoteIndex, "_cursor", counted)
    for _ in range(3):
        assert wait_ready(client)["indexed"] == 1
    assert reads[0] == 0
    assert search(client, digit_pngs[0][0], k=1).json()["hits"][0]["distance"] == 0
    assert reads[0] >= 1, "a search still checks that its model is the active one"
