"""Where finished audio lives: a local directory (default) or S3-compatible storage."""

from soundry.storage.base import Storage, StorageError, validate_key
from soundry.storage.local import LocalStorage


def open_storage(url: str) -> Storage:
    """A plain path or file:// URL → LocalStorage (s3:// is planned, see issue 5)."""
    if url.startswith("s3://"):
        raise StorageError(f"S3-compatible storage ({url}) is not implemented yet; use a local directory")
    return LocalStorage(url.removeprefix("file://"))


__all__ = ["LocalStorage", "Storage", "StorageError", "open_storage", "validate_key"]
