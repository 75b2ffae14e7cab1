"""The blob store in an S3-compatible bucket: one object per blob (the contract:
app/core/storage.py). boto3 is imported when a store is made, not with this module."""

from __future__ import annotations

import datetime as dt
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from app.core.storage import (
    COPY_CHUNK_BYTES,
    StorageUnavailable,
    StoredObject,
    check_key,
    placed_key,
)

READ_BUFFER_BYTES = 256 << 10  # 256 KiB: what one S3 reader keeps in memory
MULTIPART_BYTES = 16 << 20  # 16 MiB: larger files go up in parts of this size
PRESIGN_SECONDS = 300  # 5 minutes: a presigned download URL is good for this long
STATUS_PROBE = ".status-probe"  # the object /+status writes and removes under the prefix


class S3Storage:
    """Blobs as objects `PREFIX/ab/cd/<sha256>` in one bucket of an S3-compatible store.

    Writers hash into a local temp file (DATA_DIR/tmp) and `commit_temp` uploads it (multipart
    when large); an object already there is kept, since a key names its bytes. Reads stream.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        tmp_dir: Path | str,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: tuple[str, str] | None = None,
        client: Any = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.tmp_dir = Path(tmp_dir)
        self.endpoint_url = endpoint_url
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # MinIO and Ceph answer on one host name: the bucket goes in the path there.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        key_id, secret = credentials or (None, None)
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=config,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES
        )

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def object_name(self, key: str) -> str:
        """The object key of a blob in the bucket."""
        check_key(key)
        return f"{self.prefix}{key[:2]}/{key[2:4]}/{key}"

    def _call(self, operation: str, key: str | None = None, **params: Any) -> Any:
        """One S3 request; a missing object is FileNotFoundError, any failure StorageUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"blob {key} is not in s3://{self.bucket}") from None
            message = error.get("Message") or code
            raise StorageUnavailable(
                f"S3 {operation} on s3://{self.bucket}/{self.prefix} failed: {message} ({code})"
            ) from None
        except BotoCoreError as exc:
            raise StorageUnavailable(
                f"S3 {operation} on s3://{self.bucket}/{self.prefix} failed: {exc}"
            ) from None

    def exists(self, key: str) -> bool:
        """Whether the blob is stored (one HEAD)."""
        try:
            self._call("head_object", key, Key=self.object_name(key))
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        """The blob's length in bytes (one HEAD)."""
        head = self._call("head_object", key, Key=self.object_name(key))
        return int(head["ContentLength"])

    def open(self, key: str) -> io.BufferedReader:
        """A seekable, buffered reader: each seek elsewhere starts a new ranged GET."""
        raw = S3Reader(self, key, self.size(key))
        return io.BufferedReader(raw, READ_BUFFER_BYTES)

    def read_range(self, key: str, start: int, stop: int) -> Iterable[bytes]:
        """Bytes start..stop-1 of a blob, streamed in chunks (the GET goes out at once)."""
        if stop <= start:
            return []
        response = self._call(
            "get_object", key, Key=self.object_name(key), Range=f"bytes={start}-{stop - 1}"
        )
        return _Chunks(response["Body"])

    def save(self, key: str, source: BinaryIO) -> None:
        """Upload the rest of `source` under `key` (kept as is when already stored)."""
        if self.exists(key):
            return
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_fileobj(
                source, self.bucket, self.object_name(key), Config=self.transfer
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise StorageUnavailable(f"S3 upload to s3://{self.bucket} failed: {exc}") from None

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """A local temp file (DATA_DIR/tmp) for writers that hash while they write."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="stream.")
        return os.fdopen(fd, "wb"), Path(tmp_name)

    def commit_temp(self, key: str, tmp_path: Path, *, replace: bool = False) -> None:
        """Upload a finished temp file under `key`, then remove it; a failure leaves it.

        An object already there is kept (its key names its bytes) unless `replace`: verify
        --repair puts right bytes over a corrupt copy.
        """
        if replace or not self.exists(key):
            from boto3.exceptions import S3UploadFailedError
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                self.client.upload_file(
                    str(tmp_path), self.bucket, self.object_name(key), Config=self.transfer
                )
            except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
                raise StorageUnavailable(f"S3 upload to s3://{self.bucket} failed: {exc}") from None
        tmp_path.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error (S3 answers 204 either way)."""
        self._call("delete_object", key, Key=self.object_name(key))

    def objects(self) -> Iterator[StoredObject]:
        """Every object under the prefix (ListObjectsV2, 1000 a page)."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": self.prefix, "MaxKeys": 1000}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list_objects_v2", **params)
            for item in page.get("Contents", []):
                name = item["Key"]
                relative = name[len(self.prefix) :]
                if relative == STATUS_PROBE:
                    continue
                modified: dt.datetime = item["LastModified"]
                yield StoredObject(
                    name, placed_key(relative), int(item["Size"]), modified.timestamp()
                )
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def remove_stray(self, name: str) -> None:
        """Remove an object under the prefix that is not a blob."""
        if name.startswith(self.prefix):
            self._call("delete_object", Key=name)

    def presigned_url(self, key: str, filename: str, mimetype: str) -> str:
        """A GET URL good for PRESIGN_SECONDS that saves as `filename` (S3_REDIRECT)."""
        from urllib.parse import quote

        disposition = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
        if filename.isascii() and '"' not in filename:
            disposition = f'attachment; filename="{filename}"'
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self.object_name(key),
                    "ResponseContentDisposition": disposition,
                    "ResponseContentType": mimetype,
                },
                ExpiresIn=PRESIGN_SECONDS,
            )
        )

    def check_writable(self) -> dict[str, Any]:
        """Whether the bucket takes a new object (a tiny one, put and deleted again)."""
        url = f"s3://{self.bucket}/{self.prefix}"
        try:
            self._call("put_object", Key=self.prefix + STATUS_PROBE, Body=b"ok")
            self._call("delete_object", Key=self.prefix + STATUS_PROBE)
        except StorageUnavailable as exc:
            return {"ok": False, "url": url, "error": str(exc)[:200]}
        return {"ok": True, "url": url}


class S3Reader(io.RawIOBase):
    """A seekable view of one S3 object: reads stream one GET from the position onwards."""

    def __init__(self, storage: S3Storage, key: str, size: int) -> None:
        self.storage, self.key, self.length = storage, key, size
        self.position = 0
        self.body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self.position:
            self._drop_body()
            self.position = target
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.length:
            return 0
        if self.body is None:
            response = self.storage._call(
                "get_object",
                self.key,
                Key=self.storage.object_name(self.key),
                Range=f"bytes={self.position}-",
            )
            self.body = response["Body"]
        data = self.body.read(len(buffer))
        if not data:
            raise StorageUnavailable(f"blob {self.key} ended early at byte {self.position}")
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _drop_body(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


class _Chunks:
    """A StreamingBody read COPY_CHUNK_BYTES at a time; `close` frees it even if never read."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self.body.read(COPY_CHUNK_BYTES):
                yield chunk
        finally:
            self.body.close()

    def close(self) -> None:
        self.body.close()
