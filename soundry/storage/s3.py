"""S3-compatible object storage (AWS S3, MinIO, Ceph, moto…) through boto3.

``s3://bucket/prefix`` puts every key under ``prefix/``. A PUT is atomic in S3: an object is
either absent or complete, so an interrupted upload never becomes a download.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from soundry.storage.base import Storage, StorageError, validate_key


class S3Storage(Storage):
    def __init__(self, url: str, endpoint_url: str = "", access_key_id: str = "", secret_access_key: str = "",
                 region: str = "us-east-1"):
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"S3 storage URL must look like s3://bucket/prefix, not {url!r}")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30))

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, what: str, key: str, exc: Exception) -> StorageError:
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
        reason = f"object storage {what} failed" + (f" ({code})" if code.isalnum() else "")
        return StorageError(f"S3 {what} of s3://{self.bucket}/{self._key(key)} failed: {exc}", reason)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("upload", key, exc) from exc

    def put_file(self, key: str, src: BinaryIO, content_type: str = "application/octet-stream") -> None:
        """boto3's managed transfer: past 8 MiB a multipart upload of 8 MiB parts (a few in flight), never the
        whole file in memory; S3 shows the object only once the upload completes."""
        try:
            self.client.upload_fileobj(src, self.bucket, self._key(key), ExtraArgs={"ContentType": content_type})
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._fail("upload", key, exc) from exc

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("download", key, exc) from exc

    def open_read(self, key: str) -> BinaryIO:
        """The object downloaded (ranged parts, boto3's managed transfer) to a temporary file that stays in memory
        only up to 8 MiB: a part of a long upload is read without holding the whole object."""
        import tempfile

        dst = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        try:
            self.client.download_fileobj(self.bucket, self._key(key), dst)
        except (BotoCoreError, ClientError) as exc:
            dst.close()
            raise self._fail("download", key, exc) from exc
        dst.seek(0)
        return dst

    def iter_chunks(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("download", key, exc) from exc
        yield from body.iter_chunks(chunk_size)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("lookup", key, exc) from exc

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("lookup", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete", key, exc) from exc

    def keys(self) -> list[str]:
        """Every stored key (without the prefix); for tests and maintenance."""
        out, start = [], f"{self.prefix}/" if self.prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            out += [o["Key"][len(start):] for o in page.get("Contents", [])]
        return out
