"""A full disk during ingestion: an 8 MiB tmpfs as the data dir (the model takes half; mounting needs root, as
in CI). The upload that does not fit gets a clear 503, no row or file is left half-written, and uploads work
again once space is freed (deleted images' blobs removed by the blob sweep)."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.blobs import sweep
from service.db import Database
from service.storage import LocalBlobStore
from tests.service.conftest import StartServer, assert_error, post_image

DISK_BYTES = 8 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def database_url() -> None:
    """SQLite beside the small disk, not on it: this test fills the image store, not the database."""
    return


def noise_png(seed: int) -> bytes:
    """About 750 KB that do not compress: a few fill the small disk."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(500, 500, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_full_disk_is_a_clear_503_and_leaves_nothing_half_written(
    small_disk: Path, tmp_path: Path, start_server: StartServer
) -> None:
    server = start_server(small_disk, database_url=f"sqlite:///{tmp_path / 'metah.db'}", max_upload_bytes=2**20)
    client = server.client()
    acknowledged: list[int] = []
    refused = None
    for seed in range(40):
        response = post_image(client, noise_png(seed), domain="noise")
        if response.status_code != 201:
            refused = response
            break
        acknowledged.append(response.json()["id"])
    assert refused is not None, "the disk never filled up"
    assert_error(refused, 503, "storage_full")
    assert len(acknowledged) >= 3

    items = client.get("/v1/images", params={"limit": 1000}).json()["items"]
    assert [item["id"] for item in items] == acknowledged  # no row without its file
    blobs = [p for p in server.settings.images_dir.rglob("*") if p.is_file()]
    assert len(blobs) == len(acknowledged) and not [p for p in blobs if p.name.endswith(".tmp")]
    for image_id in acknowledged:
        assert client.get(f"/v1/images/{image_id}/content").status_code == 200
    assert client.get("/readyz").json()["indexed"] == len(acknowledged)

    for image_id in acknowledged[:3]:  # free some space: the blob sweep removes what deletes leave
        assert client.delete(f"/v1/images/{image_id}").status_code == 204
    db = Database(server.settings.sqlalchemy_url)
    time.sleep(0.01)
    # the sweep after the grace period: the three deleted, and the entry of the upload that did not fit
    assert sweep(db, LocalBlobStore(small_disk), 0.001) == 4
    db.close()
    assert post_image(client, noise_png(1000), domain="noise").status_code == 201
