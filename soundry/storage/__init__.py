"""Where finished audio lives: a local directory (default) or S3-compatible storage."""

from soundry.storage.base import Storage, StorageError, validate_key
from soundry.storage.local import LocalStorage


def open_storage(url: str, settings=None) -> Storage:
    """A plain path or file:// URL → LocalStorage; s3://bucket/prefix → S3Storage (endpoint and
    credentials from ``settings``: s3_endpoint_url, s3_access_key_id, s3_secret_access_key, s3_region)."""
    if url.startswith("s3://"):
        from soundry.storage.s3 import S3Storage

        return S3Storage(url, getattr(settings, "s3_endpoint_url", ""), getattr(settings, "s3_access_key_id", ""),
                         getattr(settings, "s3_secret_access_key", ""), getattr(settings, "s3_region", "us-east-1"))
    return LocalStorage(url.removeprefix("file://"))


__all__ = ["LocalStorage", "Storage", "StorageError", "open_storage", "validate_key"]
