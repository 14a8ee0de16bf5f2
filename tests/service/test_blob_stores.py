"""The BlobStore contract, run against both stores: the local folder and S3 on a real radosgw (tests/s3server.py).

Write-once is checked where it can be seen: on the local store the file keeps its inode and mtime; on S3 the
object keeps its Last-Modified (one-second resolution: the second write comes more than a second later), and
bytes planted under the key behind the store's back survive a put.
"""

from __future__ import annotations

import hashlib
import socket
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from service.settings import Settings
from service.storage import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    LocalBlobStore,
    archive_key,
    blob_key,
    checkpoint_key,
    model_key,
    open_blob_store,
    sha256_hex,
)
from service.storage_s3 import S3BlobStore
from tests.s3server import S3Server, fresh_bucket

MB = 1024 * 1024


@pytest.fixture
def s3_store(s3_environ: S3Server) -> S3BlobStore:
    """A store in a bucket of its own, made the way ``metah migrate`` is to make it."""
    store = S3BlobStore.from_url(f"s3://{fresh_bucket()}/tests/run")
    assert store.create_if_missing()
    return store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path)
    s3: BlobStore = request.getfixturevalue("s3_store")
    return s3


def write_marks(store: BlobStore, key: str) -> Any:
    """What changes when the blob is written again: the file's inode and mtime; the object's Last-Modified."""
    if isinstance(store, LocalBlobStore):
        status = store.path(key).stat()
        return status.st_ino, status.st_mtime_ns
    assert isinstance(store, S3BlobStore)
    time.sleep(1.1)  # Last-Modified counts seconds
    return store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")["LastModified"]


def test_put_then_read_back(store: BlobStore) -> None:
    data = b"\x89PNG not really, but bytes" * 100
    key, new = store.put(data)
    assert (key, new) == (blob_key(sha256_hex(data)), True)
    assert store.get(key) == data
    with store.open(key) as stream:
        assert stream.read(10) + stream.read() == data
    assert store.exists(key)
    assert store.size(key) == len(data)


def test_put_many_keeps_order_and_stores_duplicates_once(store: BlobStore) -> None:
    blobs = [f"image {i % 5}".encode() for i in range(12)]
    keys = store.put_many(blobs)
    assert keys == [blob_key(sha256_hex(data)) for data in blobs]
    assert all(store.get(key) == data for key, data in zip(keys, blobs, strict=True))
    assert store.put(blobs[3]) == (keys[3], False)
    assert store.put_many([]) == []


def test_a_second_put_of_the_same_bytes_writes_nothing(store: BlobStore) -> None:
    key, _ = store.put(b"same bytes")
    before = write_marks(store, key)
    assert store.put(b"same bytes") == (key, False)
    assert store.put_many([b"same bytes"]) == [key]
    assert write_marks(store, key) == before
    assert store.get(key) == b"same bytes"


def test_concurrent_puts_of_the_same_bytes_store_it_once(store: BlobStore) -> None:
    """Exactly one of eight racing writers is told it stored the blob: on S3 the server decides (412)."""
    data = b"uploaded by eight clients at once" * 1000
    threads, start = 8, threading.Barrier(8)
    results: list[tuple[str, bool]] = []

    def upload() -> None:
        start.wait()
        results.append(store.put(data))

    workers = [threading.Thread(target=upload) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert {key for key, _ in results} == {blob_key(sha256_hex(data))}
    assert sorted(new for _, new in results) == [False] * (threads - 1) + [True]
    assert store.get(results[0][0]) == data


def test_delete(store: BlobStore) -> None:
    key, _ = store.put(b"to be deleted")
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(BlobNotFoundError):
        store.get(key)
    store.delete(key)  # absent is fine
    assert store.put(b"to be deleted") == (key, True)


@pytest.mark.parametrize("read", ["get", "open", "size"])
def test_a_missing_blob_is_an_error_naming_it(store: BlobStore, read: str) -> None:
    key = blob_key(sha256_hex(b"never stored"))
    assert not store.exists(key)
    with pytest.raises(BlobNotFoundError, match=key) as caught:
        getattr(store, read)(key)
    assert isinstance(caught.value, FileNotFoundError)  # what the callers written for files already handle


def test_a_large_blob_streams(store: BlobStore) -> None:
    data = hashlib.shake_256(b"20 MB of bytes that do not compress").digest(20 * MB)
    key, new = store.put(data)
    assert new
    assert store.size(key) == len(data)
    digest = hashlib.sha256()
    with store.open(key) as stream:
        while chunk := stream.read(MB):
            assert len(chunk) <= MB
            digest.update(chunk)
    assert digest.hexdigest() == sha256_hex(data)
    assert store.get(key) == data


HOSTILE_KEYS = [
    "../metah.db",
    "/etc/passwd",
    "metah.db",
    "images",
    "images/",
    f"images/../{'a' * 64}",
    f"images/aa/aa/../../{'a' * 64}",
    f"images/ab/cd/{'a' * 64}",  # the fan-out folders do not match the digest
    f"images/AA/AA/{'A' * 64}",
    f"images/aa/aa/{'a' * 63}",
    f"images/aa/aa/{'a' * 64}/x",
    f"images/aa/aa/{'a' * 64}\n",
    f"/images/aa/aa/{'a' * 64}",
    f"models/aa/aa/{'a' * 64}",
    "models/v1/history.csv",  # model keys: a safe version, one of the listed files
    "models/v1/model.pt/x",
    "models//model.pt",
    "models/../model.pt",
    "models/.v1/model.pt",
    "models/v1",
    f"archives/{'a' * 63}",
    f"archives/{'a' * 64}/x",
    f"archives/aa/aa/{'a' * 64}",
    "checkpoints/job-0-step-1.pt",  # checkpoint keys: positive job ids and steps, written without leading zeros
    "checkpoints/job-01-step-1.pt",
    "checkpoints/job-1-step-1",
    "checkpoints/job-1/step-1.pt",
    "checkpoints/job-1-step-1.pt/x",
    "checkpoints/../job-1-step-1.pt",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_a_key_that_is_not_a_blob_key_is_refused_before_any_io(
    store: BlobStore, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isinstance(store, S3BlobStore):
        monkeypatch.setattr(store, "client", None)  # any request would fail with AttributeError, not ValueError
    for call in (store.get, store.open, store.exists, store.size, store.delete, store.presigned_url):
        with pytest.raises(ValueError, match="not a blob path"):
            call(key)


def test_the_local_store_creates_its_folder(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "data")
    assert store.create_if_missing()
    assert not store.create_if_missing()
    assert store.put(b"x")[1]


def test_a_missing_bucket_says_to_migrate_then_is_created(s3_environ: S3Server) -> None:
    store = S3BlobStore(fresh_bucket())
    with pytest.raises(BlobStoreError, match="does not exist: run `metah migrate`"):
        store.put(b"first image")
    assert not store.exists(blob_key(sha256_hex(b"first image")))
    assert store.create_if_missing()
    assert not store.create_if_missing()
    key, new = store.put(b"first image")
    assert new
    assert store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read() == b"first image"  # no prefix


def test_store_if_absent_is_one_conditional_request(s3_store: S3BlobStore) -> None:
    """The server decides, not a HEAD before the PUT: bytes already under the key (put there behind the store's
    back) are neither overwritten nor read, and ``put`` is a single request either way."""
    requests: list[str] = []
    s3_store.client.meta.events.register("before-send.s3", lambda request, **_: requests.append(request.method))
    key = blob_key(sha256_hex(b"the real bytes"))
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/{key}", Body=b"planted")
    requests.clear()
    assert s3_store.put(b"the real bytes") == (key, False)
    assert requests == ["PUT"]
    assert s3_store.get(key) == b"planted"


def test_a_versioned_bucket_is_refused(s3_store: S3BlobStore) -> None:
    """radosgw 16.2 ignores If-None-Match in a versioned bucket (measured: a second PUT of the same bytes made a
    second version and answered 200), and a DELETE there only hides the object."""
    s3_store.client.put_bucket_versioning(Bucket=s3_store.bucket, VersioningConfiguration={"Status": "Enabled"})
    with pytest.raises(BlobStoreError, match="is versioned"):
        s3_store.create_if_missing()


def test_a_presigned_url_reads_the_blob_without_credentials(s3_store: S3BlobStore, tmp_path: Path) -> None:
    key, _ = s3_store.put(b"shared by link")
    url = s3_store.presigned_url(key, expires_s=60)
    assert url is not None
    assert "Signature" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"shared by link"
    assert LocalBlobStore(tmp_path).presigned_url(key) is None  # the local store streams instead


def test_settings_choose_the_store(s3_environ: S3Server, tmp_path: Path) -> None:
    local = open_blob_store(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalBlobStore)
    assert local.root == tmp_path.resolve()
    remote = open_blob_store(Settings(data_dir=tmp_path, blob_url="s3://my-bucket/a/b/"))
    assert isinstance(remote, S3BlobStore)
    assert (remote.bucket, remote.prefix) == ("my-bucket", "a/b")
    assert remote.client.meta.endpoint_url == s3_environ.endpoint
    assert remote.client.meta.region_name == s3_environ.region
    assert isinstance(open_blob_store(Settings(data_dir=tmp_path, blob_url=" ")), LocalBlobStore)


@pytest.mark.parametrize(
    "url",
    ["my-bucket", "http://my-bucket/x", "s3://", "s3://Upper/x", "s3://ab", "s3://my-bucket/a//b", "s3://b/../x"],
)
def test_a_bad_blob_url_is_refused_at_startup(url: str) -> None:
    with pytest.raises(ValueError, match=r"METAH_BLOB_URL|bucket name|key prefix"):
        Settings(blob_url=url)


def test_model_files_are_stored_once_under_their_version(store: BlobStore) -> None:
    key = model_key("1700000000-abc")
    assert key == "models/1700000000-abc/model.pt"
    assert store.put_at(key, b"an encoder artefact")
    assert not store.put_at(key, b"an encoder artefact")
    assert not store.put_at(key, b"other bytes")  # write-once: a version's files never change
    assert store.get(key) == b"an encoder artefact"
    plot = model_key("1700000000-abc", "pr_curve.png")
    assert not store.exists(plot)
    assert store.put_at(plot, b"\x89PNG")
    assert store.size(plot) == 4
    store.delete(plot)
    assert not store.exists(plot)
    with pytest.raises(ValueError, match="not a blob path of a model file"):
        store.put_at(blob_key(sha256_hex(b"x")), b"x")  # image keys are named by their bytes: put() names them


@pytest.mark.parametrize("size", [1000, 20 * MB])  # 20 MB: a multipart upload and a ranged download on S3
def test_an_archive_is_stored_from_a_file_and_read_back_as_one(store: BlobStore, tmp_path: Path, size: int) -> None:
    data = hashlib.shake_256(b"an uploaded archive").digest(size)
    upload = tmp_path / "upload.tmp"
    upload.write_bytes(data)
    key = archive_key(sha256_hex(data))
    assert key == f"archives/{sha256_hex(data)}"
    store.put_file(key, upload)
    assert not upload.exists()  # taken by the store
    assert store.size(key) == size
    scratch = tmp_path / "scratch"
    with store.fetched(key, scratch) as path:
        assert path.read_bytes() == data
    assert list(scratch.glob("*")) == []  # a download is removed afterwards
    assert store.exists(key)
    store.delete(key)
    with pytest.raises(BlobNotFoundError), store.fetched(key, scratch):
        pass
    upload.write_bytes(data)
    with pytest.raises(ValueError, match="not a blob path of an archive"):
        store.put_file(blob_key(sha256_hex(data)), upload)
    assert upload.exists()


def test_checkpoints_are_stored_from_files_and_listed_by_job_never_as_images(store: BlobStore, tmp_path: Path) -> None:
    keys = [checkpoint_key(1, 10), checkpoint_key(1, 20), checkpoint_key(12, 10)]
    assert keys[0] == "checkpoints/job-1-step-10.pt"
    for i, key in enumerate(keys):
        upload = tmp_path / "checkpoint.pt"
        upload.write_bytes(b"checkpoint %d" % i)
        store.put_file(key, upload)
        assert not upload.exists()  # taken by the store
    assert sorted(store.checkpoint_keys(1)) == keys[:2]  # not job 12's
    assert sorted(store.checkpoint_keys()) == keys
    assert list(store.image_keys()) == []  # the blob sweep never sees them
    with store.fetched(keys[1], tmp_path / "scratch") as path:
        assert path.read_bytes() == b"checkpoint 1"
    for key in keys:
        store.delete(key)
    assert list(store.checkpoint_keys()) == []
    with pytest.raises(ValueError, match="no checkpoint key"):
        checkpoint_key(0, 10)


@pytest.mark.parametrize(("version", "name"), [("../x", "model.pt"), ("v1", "history.csv"), ("", "model.pt")])
def test_a_model_key_needs_a_safe_version_and_a_listed_file(version: str, name: str) -> None:
    with pytest.raises(ValueError, match="not a blob path of a model file"):
        model_key(version, name)


def unreachable_store(bucket: str) -> S3BlobStore:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    return S3BlobStore(bucket, client=client)


def test_an_endpoint_that_does_not_answer_is_a_blob_store_error() -> None:
    """boto3's exceptions never leave the store: the API answers 503, the CLI prints one line."""
    store = unreachable_store("metah-unreachable")
    key = blob_key(sha256_hex(b"x"))
    for call in (lambda: store.put(b"x"), lambda: store.get(key), lambda: store.exists(key), store.create_if_missing):
        with pytest.raises(BlobStoreError, match=r"S3 cannot be reached at s3://metah-unreachable at http://127") as e:
            call()
        assert e.value.reason == "it cannot be reached"


def test_refused_credentials_are_a_blob_store_error(s3_store: S3BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    key, _ = s3_store.put(b"stored with the right key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused = S3BlobStore(s3_store.bucket, s3_store.prefix)
    calls = (
        lambda: refused.put(b"x"),
        lambda: refused.get(key),
        lambda: refused.exists(key),
        refused.create_if_missing,
    )
    for call in calls:
        with pytest.raises(BlobStoreError, match="S3 refused access") as caught:
            call()
        assert caught.value.reason == "access was refused"
        assert "not-the-secret" not in str(caught.value)


def test_a_missing_bucket_is_a_blob_store_error_for_every_request(s3_environ: S3Server) -> None:
    store = S3BlobStore(fresh_bucket())
    key = blob_key(sha256_hex(b"x"))
    for call in (lambda: store.get(key), lambda: store.open(key), lambda: store.delete(key)):
        with pytest.raises(BlobStoreError, match="does not exist: run `metah migrate`") as caught:
            call()
        assert caught.value.reason == "its bucket does not exist"


def median_ms(action: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def test_a_small_get_on_loopback_is_not_held_back_by_nagle(s3_store: S3BlobStore) -> None:
    """Without ``tcp_nodelay=1`` on radosgw's frontend a small GET took ~49 ms; with it ~5 ms. The bound is
    loose (a busy 2-core machine) but far below Nagle's delay."""
    blobs = [f"image {i}".encode() * 1000 for i in range(40)]
    keys = [s3_store.put(data)[0] for data in blobs[:1]]
    s3_store.get(keys[0])  # connection made
    put_ms = median_ms(lambda: s3_store.put(blobs.pop()), repeats=30)
    get_ms = median_ms(lambda: s3_store.get(keys[0]), repeats=50)
    head_ms = median_ms(lambda: s3_store.exists(keys[0]), repeats=50)
    print(f"radosgw on loopback, 9 KB blob: PUT {put_ms:.1f} ms, GET {get_ms:.1f} ms, HEAD {head_ms:.1f} ms (median)")
    assert get_ms < 30, f"GET median {get_ms:.1f} ms: is tcp_nodelay set on the frontend?"
