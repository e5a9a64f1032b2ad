"""Where finished audio lives: a local directory (default) or S3-compatible storage."""

from soundry.storage.base import Storage, StorageError, validate_key
from soundry.storage.local import LocalStorage


def open_storage(url: str, **options) -> Storage:
    """A plain path or file:// URL → LocalStorage; s3://bucket/prefix → S3Storage."""
    if url.startswith("s3://"):
        from soundry.storage.s3 import S3Storage

        return S3Storage.from_url(url, **options)
    return LocalStorage(url.removeprefix("file://"))


__all__ = ["LocalStorage", "Storage", "StorageError", "open_storage", "validate_key"]
