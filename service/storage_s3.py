""":class:`~service.storage.BlobStore` on the S3 API (AWS S3, Ceph's radosgw, any server that speaks it).

Objects are named ``<prefix>/<blob key>`` in one bucket. Endpoint, region and credentials come from the standard
AWS variables (``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, …; CONTRACT
§5), read by boto3 itself, so its other sources (config files, instance roles) work too.

Write-once in one request: ``PutObject`` with ``If-None-Match: *`` stores the object only if the key is free and
answers 412 otherwise (AWS S3 since 2024; radosgw honours it, tests/service/test_blob_stores.py checks it on a
real one). Two writers racing on one key are settled by the server: one stores, the other gets 412 (or 409
``ConditionalRequestConflict`` from AWS while the first is in flight, which is retried until it becomes 412).

Failures that are not about one object (an endpoint that does not answer, refused credentials, a missing
bucket, a server error after boto3's retries) become :class:`~service.storage.BlobStoreError` with a plain
reason, which the API answers with 503 ``storage_unavailable`` and the CLI prints; boto3's exceptions never
leave this module.

The bucket must not be versioned (:meth:`S3BlobStore.create_if_missing` refuses one): blobs are write-once
already, a DELETE would only hide a blob behind a marker, and radosgw (Ceph 16.2, measured) ignores
``If-None-Match`` in a versioned bucket, so a second PUT of the same bytes says "stored" again and a caller that
deletes what it stored on failure would hide a blob another row points to.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from service.storage import (
    CHECKPOINTS,
    IMAGES,
    BlobNotFoundError,
    BlobStoreError,
    blob_key,
    check_file_key,
    check_key,
    check_model_key,
    checkpoint_of,
    image_digest,
    parse_blob_url,
    sha256_hex,
)

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_PUT_OUTCOMES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_REFUSED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken"}
)
_CONFLICT_RETRIES = 5
_BATCH_THREADS = 8  # put_many's concurrent PUTs (boto3 clients are thread-safe; the pool holds 16 connections)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _client_config() -> Config:
    # Path-style requests where an endpoint is set (radosgw, other S3 servers: ``bucket.host`` rarely resolves);
    # checksums only where the API requires them (servers other than AWS reject botocore's newer default
    # trailers); PutObject carries Content-MD5 instead, which every S3 server checks.
    custom_endpoint = bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    return Config(
        s3={"addressing_style": "path" if custom_endpoint else "auto"},
        retries={"mode": "standard", "max_attempts": 4},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=16,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class S3BlobStore:
    """Blobs as objects ``<prefix>/images/ab/cd/<sha256>``, ``<prefix>/models/<version>/<name>``,
    ``<prefix>/archives/<sha256>`` and ``<prefix>/checkpoints/job-<id>-step-<step>.pt`` in ``bucket``.

    Args:
        bucket: the bucket (made by :meth:`create_if_missing`, which ``metah migrate`` is to call).
        prefix: key prefix without slashes; ``""`` for none.
        client: a boto3 S3 client; by default one configured from the standard AWS variables.
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client if client is not None else self._default_client()

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        """The store of ``METAH_BLOB_URL=s3://bucket/prefix``."""
        bucket, prefix = parse_blob_url(url)
        return cls(bucket, prefix)

    @staticmethod
    def _default_client() -> Any:
        # botocore reads AWS_DEFAULT_REGION but not AWS_REGION, the name CONTRACT §5 (and the other SDKs) use
        region = os.environ.get("AWS_REGION") or None
        return boto3.session.Session().client("s3", region_name=region, config=_client_config())

    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, operation: str, *, expected: frozenset[str] = frozenset(), **params: Any) -> Any:
        """One request on the bucket. A ``ClientError`` whose code is in ``expected`` reaches the caller as it
        is; any other failure becomes :class:`BlobStoreError`."""
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            if _code(exc) in expected:
                raise
            raise self._unusable(exc) from exc
        except BotoCoreError as exc:
            raise self._unusable(exc) from exc

    def _unusable(self, exc: Exception) -> BlobStoreError:
        endpoint = self.client.meta.endpoint_url
        where = f"s3://{self.bucket} at {endpoint}"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return BlobStoreError(
                f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({exc})",
                reason="no credentials are configured",
            )
        if not isinstance(exc, ClientError):  # connection refused, DNS, timeouts, a connection dropped
            return BlobStoreError(f"S3 cannot be reached at {where}: {exc}", reason="it cannot be reached")
        code, message = _code(exc), str(exc.response.get("Error", {}).get("Message", ""))
        if code == "NoSuchBucket":
            return BlobStoreError(
                f"the bucket {self.bucket!r} does not exist: run `metah migrate` (S3 at {endpoint})",
                reason="its bucket does not exist",
            )
        if code in _REFUSED:
            return BlobStoreError(
                f"S3 refused access to {where} ({code}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the "
                "bucket's policy",
                reason="access was refused",
            )
        return BlobStoreError(f"S3 failed on {where}: {code} {message}".rstrip(), reason=f"it answered {code}")

    def put(self, data: bytes) -> tuple[str, bool]:
        """One conditional PUT. Says ``False`` when the object was there; also when a retry of this very PUT
        (the response to the first was lost) found the object the first one stored: a caller that deletes
        what it stored when it fails later then leaves that object behind, never deletes another's."""
        key = blob_key(sha256_hex(data))
        return key, self._put_if_absent(key, data)

    def put_at(self, key: str, data: bytes) -> bool:
        """:meth:`put` for a model file's key: one conditional PUT."""
        return self._put_if_absent(check_model_key(key), data)

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        name = self._object(key)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self._call(
                    "put_object",
                    expected=_PUT_OUTCOMES,
                    Key=name,
                    Body=data,
                    ContentMD5=md5,
                    ContentType="application/octet-stream",
                    IfNoneMatch="*",
                )
            except ClientError as exc:
                if _code(exc) == "PreconditionFailed":
                    return False
                if attempt + 1 < _CONFLICT_RETRIES:  # ConditionalRequestConflict: the first writer is in flight
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise self._unusable(exc) from exc
            return True
        raise AssertionError("unreachable")  # the loop returns or raises

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Concurrent PUTs (each durable when S3 answers); the keys in the order of ``blobs``."""
        if len(blobs) <= 1:
            return [self.put(data)[0] for data in blobs]
        with ThreadPoolExecutor(min(_BATCH_THREADS, len(blobs))) as pool:
            return [key for key, _ in pool.map(self.put, blobs)]

    def put_file(self, key: str, path: Path) -> None:
        """boto3's managed upload (multipart, in parallel, beyond 8 MiB), with no condition: an archive's key
        names its bytes, and a checkpoint's key a job's step, so storing it again is harmless."""
        name = self._object(check_file_key(key))
        try:
            self.client.upload_file(str(path), self.bucket, name, ExtraArgs={"ContentType": "application/octet-stream"})
        except S3UploadFailedError as exc:  # boto3 wraps the failed request's ClientError in its message only
            if isinstance(exc.__context__, ClientError | BotoCoreError):
                raise self._unusable(exc.__context__) from exc
            raise BlobStoreError(f"S3 upload to s3://{self.bucket} failed: {exc}", reason="an upload failed") from exc
        except (ClientError, BotoCoreError) as exc:
            raise self._unusable(exc) from exc
        path.unlink()

    @contextlib.contextmanager
    def fetched(self, key: str, scratch: Path) -> Iterator[Path]:
        """boto3's managed download (ranged GETs in parallel) into ``scratch``."""
        name = self._object(key)
        scratch.mkdir(parents=True, exist_ok=True)
        target = scratch / f".fetched.{uuid.uuid4().hex}.tmp"
        try:
            try:
                self.client.download_file(self.bucket, name, str(target))
            except ClientError as exc:
                if _code(exc) in _MISSING:  # a HEAD first: a missing bucket is a 404 too
                    raise BlobNotFoundError(f"no blob {key}") from None
                raise self._unusable(exc) from exc
            except BotoCoreError as exc:
                raise self._unusable(exc) from exc
            yield target
        finally:
            target.unlink(missing_ok=True)

    def _get_object(self, key: str) -> Any:
        name = self._object(key)
        try:
            return self._call("get_object", expected=_MISSING, Key=name)
        except ClientError:
            raise BlobNotFoundError(f"no blob {key}") from None

    def get(self, key: str) -> bytes:
        with self._get_object(key)["Body"] as body:
            try:
                data: bytes = body.read()
            except BotoCoreError as exc:  # the connection dropped or timed out mid-body
                raise self._unusable(exc) from exc
        return data

    def open(self, key: str) -> BinaryIO:
        """The response body, streamed from the server as it is read (an ``io.IOBase``: close it)."""
        body: BinaryIO = self._get_object(key)["Body"]
        return body

    def _head(self, key: str) -> dict[str, Any] | None:
        name = self._object(key)
        try:
            head: dict[str, Any] = self._call("head_object", expected=_MISSING, Key=name)
        except ClientError:  # HEAD has no body: a missing bucket is a 404 too
            return None
        return head

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise BlobNotFoundError(f"no blob {key}")
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        """Absent is fine (S3's DELETE answers 204 either way)."""
        self._call("delete_object", Key=self._object(key))

    def image_keys(self) -> Iterator[str]:
        """``ListObjectsV2`` pages of the images' prefix (1,000 keys a request)."""
        return (key for key in self._listed(f"{IMAGES}/") if image_digest(key) is not None)

    def checkpoint_keys(self, job_id: int | None = None) -> Iterator[str]:
        """``ListObjectsV2`` of the job's checkpoints (one request: a job keeps one or two)."""
        start = f"{CHECKPOINTS}/" if job_id is None else f"{CHECKPOINTS}/job-{job_id}-step-"
        return (key for key in self._listed(start) if checkpoint_of(key) is not None)

    def _listed(self, start: str) -> Iterator[str]:
        """The keys (without the store's prefix) of the objects whose key starts with ``start``."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix + start
            ):
                for listed in page.get("Contents", []):
                    yield str(listed["Key"]).removeprefix(prefix)
        except (ClientError, BotoCoreError) as exc:
            raise self._unusable(exc) from exc

    def presigned_url(self, key: str, expires_s: int = 300) -> str | None:
        """A GET URL signed with this store's credentials (computed locally: no request)."""
        name = self._object(key)
        try:
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=expires_s
            )
        except BotoCoreError as exc:  # no credentials to sign with
            raise self._unusable(exc) from exc
        return url

    def create_if_missing(self) -> bool:
        """Create the bucket when it is missing; refuse one that is versioned (see the module's notes). Two
        processes may race: the loser sees ``BucketAlreadyOwnedByYou`` and returns ``False``. Outside
        ``us-east-1`` the bucket is made in the client's region (AWS needs the location constraint)."""
        try:
            self._call("head_bucket", expected=_MISSING | {"NoSuchBucket"})
        except ClientError:
            pass
        else:
            versioning = self._call("get_bucket_versioning").get("Status")
            if versioning in ("Enabled", "Suspended"):
                raise BlobStoreError(
                    f"the bucket {self.bucket!r} is versioned ({versioning}): metah's blobs are write-once and "
                    "need a bucket without versioning (If-None-Match is not honoured in versioned buckets by "
                    "every server)",
                    reason="its bucket is versioned",
                )
            return False
        region = self.client.meta.region_name
        options: dict[str, Any] = {}
        if region and region not in ("us-east-1", "aws-global"):
            options["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call("create_bucket", expected=frozenset({"BucketAlreadyOwnedByYou"}), **options)
        except ClientError:
            return False
        return True
