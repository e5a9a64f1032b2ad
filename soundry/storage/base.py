"""The storage interface and key rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class StorageError(RuntimeError):
    """A write or read failed (disk full, unwritable directory, unreachable bucket...).

    ``str(exc)`` is for the operator's log (it may name paths and buckets); ``reason`` is a short cause
    that names no internals and may be shown to users."""

    def __init__(self, detail: str, reason: str = "storage error"):
        super().__init__(detail)
        self.reason = reason


def validate_key(key: str) -> str:
    """Keys are relative, slash-separated names of [A-Za-z0-9._-]; no '..' parts."""
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage:
    def put(self, key: str, data: bytes, content_type: str) -> None:
        raise NotImplementedError

    def put_file(self, key: str, src: BinaryIO, content_type: str) -> None:
        """Store the rest of the open file ``src``; local and S3 storage stream it (this default reads it whole)."""
        self.put(key, src.read(), content_type)

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def open_read(self, key: str) -> BinaryIO:
        """A seekable binary file of the stored object, to read a part of it (close it after use): local storage
        opens the file itself, S3 downloads it to a temporary file; this default holds it in memory."""
        import io

        return io.BytesIO(self.get(key))

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def local_path(self, key: str) -> Path | None:
        return None

    def iter_chunks(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        data = self.get(key)
        for i in range(0, len(data), chunk_size):
            yield data[i: i + chunk_size]
