"""Which blob store the settings name: `make_storage` (the contract: app/core/storage.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.storage import parse_storage_url
from app.core.storage_local import LocalStorage
from app.core.storage_s3 import S3Storage

if TYPE_CHECKING:
    from app.core.config import Settings


def make_storage(settings: Settings) -> LocalStorage | S3Storage:
    """The blob store STORAGE_URL names (DATA_DIR/blobs when unset)."""
    if settings.uses_s3:
        _scheme, bucket, prefix = parse_storage_url(settings.storage_url)
        return S3Storage(
            bucket,
            prefix,
            tmp_dir=settings.tmp_dir,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            credentials=(settings.s3_access_key_id, settings.s3_secret_access_key)
            if settings.s3_access_key_id and settings.s3_secret_access_key
            else None,
        )
    return LocalStorage(settings.blob_dir)
