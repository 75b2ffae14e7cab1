"""The blob store: file contents addressed by sha256, written atomically.

Two backends behind one contract: `LocalStorage` (files under DATA_DIR/blobs) and `S3Storage`
(objects in an S3-compatible bucket). `make_storage` picks one from the settings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from app.core.config import Settings

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_PLACED_RE = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})$")
COPY_CHUNK_BYTES = 1 << 20  # 1 MiB
READ_BUFFER_BYTES = 256 << 10  # 256 KiB: what one S3 reader keeps in memory
MULTIPART_BYTES = 16 << 20  # 16 MiB: larger files go up in parts of this size
PRESIGN_SECONDS = 300  # 5 minutes: a presigned download URL is good for this long
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a write the disk refused for want of room
STATUS_PROBE = ".status-probe"  # the object /+status writes and removes under the prefix


class StorageUnavailable(OSError):
    """The blob store did not answer (S3 endpoint down, denied, or failing): a 503, not a 500."""


@dataclass(frozen=True)
class StoredObject:
    """One thing found in the blob store; `key` is None when it is not a well-placed blob."""

    name: str  # a path (local) or an object key (S3): what `remove_stray` takes
    key: str | None
    size: int
    modified_at: float  # seconds since the epoch


def write_at(file: Any, offset: int, chunk: bytes) -> None:
    """Write all of `chunk` at `offset` of an unbuffered file (a raw write may be short); a
    failed write (a full disk) cuts the file back to `offset`, so a retry leaves no gap."""
    try:
        file.seek(offset)
        view = memoryview(chunk)
        while view:
            view = view[file.write(view) :]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(file.fileno(), offset)
        raise


def _placed_key(relative: str) -> str | None:
    """The key of `ab/cd/<sha256>` when ab and cd are the key's first four digits."""
    placed = _PLACED_RE.match(relative)
    if placed is None or placed.group(3)[:4] != placed.group(1) + placed.group(2):
        return None
    return placed.group(3)


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise ValueError(f"blob keys are lowercase sha256 hex digests, not {key!r}")
    return key


class Storage(Protocol):
    """Four verbs over immutable blobs, then what verify, backup and hashing writers use.

    A missing blob raises FileNotFoundError; a store that does not answer, StorageUnavailable.
    """

    def open(self, key: str) -> io.BufferedReader:
        """Open a blob for reading."""
        ...

    def save(self, key: str, source: BinaryIO) -> None:
        """Store the rest of `source` under `key`, all or nothing."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the blob is stored."""
        ...

    def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        ...

    def size(self, key: str) -> int:
        """The blob's length in bytes."""
        ...

    def objects(self) -> Iterator[StoredObject]:
        """Everything in the store (strays too), for verify."""
        ...

    def remove_stray(self, name: str) -> None:
        """Remove something `objects` found that is not a blob."""
        ...

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """A local temp file for writers that hash while they write (then `commit_temp`)."""
        ...

    def commit_temp(self, key: str, tmp_path: Path, *, replace: bool = False) -> None:
        """Store a finished, fsynced temp file under `key` (over a damaged copy with `replace`);
        the temp file is gone after."""
        ...


class LocalStorage:
    """Blobs as files under one directory: `ab/cd/<sha256>`; `local_path` lets views sendfile."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / ".tmp"

    def local_path(self, key: str) -> Path:
        """Where the blob lives (or would live) on disk."""
        _check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def local_file(self, key: str) -> str:
        """local_path as a string, built without pathlib: for every cached download."""
        _check_key(key)
        return f"{self.root}/{key[:2]}/{key[2:4]}/{key}"

    def open(self, key: str) -> io.BufferedReader:
        """Open a blob for reading."""
        return open(self.local_path(key), "rb")

    def exists(self, key: str) -> bool:
        """Whether the blob is stored."""
        return self.local_path(key).is_file()

    def save(self, key: str, source: BinaryIO) -> None:
        """Copy `source` to a temp file, fsync it, then rename it into place."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix=key[:16] + ".")
        try:
            with os.fdopen(fd, "wb") as tmp:
                shutil.copyfileobj(source, tmp, COPY_CHUNK_BYTES)
                tmp.flush()
                os.fsync(tmp.fileno())
            self.commit_temp(key, Path(tmp_name))
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """A temp file on the blobs' filesystem, for writers that hash while they write."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="stream.")
        return os.fdopen(fd, "wb"), Path(tmp_name)

    def commit_temp(self, key: str, tmp_path: Path, *, replace: bool = False) -> None:
        """Move a finished, fsynced temp file into place under `key` (an atomic rename: the
        same bytes, or right ones over a damaged copy, so `replace` changes nothing here)."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        self.local_path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        """The blob's length in bytes."""
        return self.local_path(key).stat().st_size

    def objects(self) -> Iterator[StoredObject]:
        """Every file under the root (not .tmp), with its key when it is where its key says."""
        for first in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if first.name == ".tmp":
                continue
            paths = [first] if not first.is_dir() else sorted(first.iterdir())
            for second in paths:
                inner = sorted(second.iterdir()) if second.is_dir() else [second]
                for path in inner:
                    try:
                        stat = path.stat()
                    except OSError:  # evicted meanwhile
                        continue
                    key = _placed_key(path.relative_to(self.root).as_posix())
                    key = key if path.is_file() else None
                    yield StoredObject(str(path), key, stat.st_size, stat.st_mtime)

    def remove_stray(self, name: str) -> None:
        """Remove a stray file (never a folder, never outside the root)."""
        path = Path(name)
        if self.root in path.parents and not path.is_dir():
            path.unlink(missing_ok=True)


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
        _check_key(key)
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
                    name, _placed_key(relative), int(item["Size"]), modified.timestamp()
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


def parse_storage_url(url: str) -> tuple[str, str, str]:
    """('file', folder, '') or ('s3', bucket, prefix) from STORAGE_URL; ValueError if neither."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
        return "file", parts.path, ""
    if parts.scheme == "s3" and re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parts.netloc):
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: no ?query or #fragment in an s3:// URL")
        return "s3", parts.netloc, parts.path.strip("/")
    raise ValueError(
        f"{url!r} is not file:///FOLDER or s3://BUCKET/PREFIX (bucket: 3-63 lowercase "
        "letters, digits, '.' or '-')"
    )


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
