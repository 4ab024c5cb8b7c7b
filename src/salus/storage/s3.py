"""An S3-compatible object store (AWS S3, MinIO, Ceph RGW, moto).

S3 publishes an object only when its upload completes, so a crashed writer
never leaves a partial object under a final key. Small objects (up to
``buffer_limit``) are buffered and sent with one ``PutObject``; larger ones
go up as a multipart upload to a temporary key and are then copied to the
final key with their metadata. Metadata travels as ``x-amz-meta-*`` headers,
so re-wrapping a data key is a server-side copy onto itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from salus.errors import IntegrityError, InvalidInput, Unavailable
from salus.storage.objects import ObjectNotFound, validate_name

__all__ = ["S3ObjectStore"]

_PART = 8 * 1024 * 1024


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _meta_out(meta: Mapping[str, str]) -> dict[str, str]:
    for key, value in meta.items():
        if not key.isascii() or not value.isascii():
            raise InvalidInput("S3 object metadata must be ASCII.")
    return {k.lower(): v for k, v in meta.items()}


class _S3Writer:
    def __init__(self, store: S3ObjectStore) -> None:
        self._store = store
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._tmp_key = store.key_for_tmp(uuid.uuid4().hex)
        self._parts: list[dict[str, Any]] = []
        self._closed = False

    def write(self, chunk: bytes | memoryview) -> None:
        self._buffer += chunk
        while len(self._buffer) >= self._store.buffer_limit:
            self._flush_part(bytes(self._buffer[:_PART]))
            del self._buffer[:_PART]

    def _flush_part(self, data: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._tmp_key)[
                "UploadId"
            ]
        number = len(self._parts) + 1
        response = client.upload_part(
            Bucket=bucket,
            Key=self._tmp_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append({"ETag": response["ETag"], "PartNumber": number})

    def commit(self, name: str, meta: Mapping[str, str]) -> bool:
        store = self._store
        key = store.key_for(validate_name(name))
        try:
            if store.exists(name):
                self.abort()
                return False
            if self._upload_id is None:
                store.client.put_object(
                    Bucket=store.bucket, Key=key, Body=bytes(self._buffer), Metadata=_meta_out(meta)
                )
            else:
                if self._buffer:
                    self._flush_part(bytes(self._buffer))
                store.client.complete_multipart_upload(
                    Bucket=store.bucket,
                    Key=self._tmp_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                self._upload_id = None
                store.copy(self._tmp_key, key, meta)
                store.client.delete_object(Bucket=store.bucket, Key=self._tmp_key)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._buffer.clear()
        return True

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            try:
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._tmp_key, UploadId=self._upload_id
                )
            except Exception:  # noqa: S110 - best effort; lifecycle rules clean the rest
                pass
            self._upload_id = None
        self._closed = True


class _S3Reader:
    def __init__(self, store: S3ObjectStore, key: str, head: Mapping[str, Any]) -> None:
        self._store = store
        self._key = key
        self.size = int(head["ContentLength"])
        self.meta: Mapping[str, str] = dict(head.get("Metadata", {}))
        self._etag = head.get("ETag")

    def read_range(self, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise InvalidInput("Invalid byte range.")
        length = max(0, min(length, self.size - start))
        if length == 0:
            return b""
        try:
            response = self._store.client.get_object(
                Bucket=self._store.bucket,
                Key=self._key,
                Range=f"bytes={start}-{start + length - 1}",
                **({"IfMatch": self._etag} if self._etag else {}),
            )
        except Exception as exc:
            code = _client_error_code(exc)
            if code in {"NoSuchKey", "404"}:
                raise ObjectNotFound() from None
            if code in {"PreconditionFailed", "412"}:
                raise IntegrityError("A stored object changed while it was read.") from None
            raise Unavailable("The object store could not be read.") from None
        data = response["Body"].read()
        if len(data) != length:
            raise IntegrityError("A stored object is shorter than expected.")
        return bytes(data)

    def prefetch(self) -> None:
        return None

    def readinto(self, start: int, buffer: memoryview) -> int:
        data = self.read_range(start, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def iter_chunks(self, chunk_size: int = _PART) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:
            chunk = self.read_range(offset, chunk_size)
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        return None


class S3ObjectStore:
    """Objects in one bucket, under ``prefix``, sharded like the filesystem store."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        buffer_limit: int = _PART,
        client: Any = None,
    ) -> None:
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.buffer_limit = max(_PART, buffer_limit)

    def key_for(self, name: str) -> str:
        return f"{self.prefix}{name[0:2]}/{name[2:4]}/{name}"

    def key_for_tmp(self, token: str) -> str:
        return f"{self.prefix}.tmp/{token}"

    def copy(self, source_key: str, target_key: str, meta: Mapping[str, str]) -> None:
        self.client.copy(
            {"Bucket": self.bucket, "Key": source_key},
            self.bucket,
            target_key,
            ExtraArgs={"Metadata": _meta_out(meta), "MetadataDirective": "REPLACE"},
        )

    def writer(self) -> _S3Writer:
        return _S3Writer(self)

    def _head(self, name: str) -> Mapping[str, Any] | None:
        try:
            head: Mapping[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self.key_for(validate_name(name))
            )
        except Exception as exc:
            if _client_error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise Unavailable("The object store could not be reached.") from None
        return head

    def open(self, name: str) -> _S3Reader:
        head = self._head(name)
        if head is None:
            raise ObjectNotFound()
        return _S3Reader(self, self.key_for(name), head)

    def head(self, name: str) -> Mapping[str, str] | None:
        head = self._head(name)
        return None if head is None else dict(head.get("Metadata", {}))

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def delete(self, name: str) -> bool:
        existed = self.exists(name)
        self.client.delete_object(Bucket=self.bucket, Key=self.key_for(name))
        return existed

    def list(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = str(item["Key"]).rsplit("/", 1)[-1]
                rel = str(item["Key"])[len(self.prefix) :]
                if rel.startswith(".tmp/") or not name.startswith(prefix):
                    continue
                yield name

    def replace_meta(self, name: str, meta: Mapping[str, str]) -> None:
        key = self.key_for(validate_name(name))
        if not self.exists(name):
            raise ObjectNotFound()
        self.copy(key, key, meta)

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception:
            raise Unavailable("The object store could not be reached.") from None
