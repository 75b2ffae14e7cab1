"""A throwaway S3-compatible server for the tests (PYSHELF_TEST_STORAGE=s3).

moto's standalone server (`moto[server]`, requirements-dev.txt) runs as a subprocess on a free
loopback port and keeps its buckets in memory. Every pyshelf data directory that a test uses
gets its own bucket, named after the directory's path, so a server restarted on the same
DATA_DIR finds the same blobs. The credentials are dummies: moto accepts any.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests import settings_defaults

START_TIMEOUT_SECONDS = 30
PREFIX = "blobs"  # a prefix, as most deployments share a bucket
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "pyshelf-test",
    "AWS_SECRET_ACCESS_KEY": "pyshelf-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """moto_server on 127.0.0.1; `start()`, `bucket_for_data_dir(...)`, `stop()`."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="pyshelf-moto-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.created: set[str] = set()
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        """Start moto's server and wait until it answers."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from moto.server import main; main()",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer within {START_TIMEOUT_SECONDS} s")

    def log(self) -> str:
        """What the server printed."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate the server (its buckets go with it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log_path.unlink(missing_ok=True)

    @property
    def client(self) -> Any:
        """A boto3 client for the tests' own calls."""
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            )
        return self._client

    def create_bucket(self, name: str) -> str:
        """Create a bucket (once); return its name."""
        if name not in self.created:
            with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
                self.client.create_bucket(Bucket=name)
            self.created.add(name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=name):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=name, Delete={"Objects": keys})
            self.client.delete_bucket(Bucket=name)
        except self.client.exceptions.NoSuchBucket:
            pass
        self.created.discard(name)

    def storage_url_for_data_dir(self, data_dir: str | os.PathLike[str]) -> str:
        """STORAGE_URL of the bucket that belongs to a pyshelf DATA_DIR (created on first use)."""
        return f"s3://{self.create_bucket(bucket_name(data_dir))}/{PREFIX}"


def bucket_name(data_dir: str | os.PathLike[str]) -> str:
    """A bucket name derived from a data directory's absolute path."""
    return "t-" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]


# --- the session's server, as the fixtures in tests/conftest.py use it ---------------------

SERVER: S3Server | None = None
_original_environ: dict[str, str | None] = {}


def _default_bucket(settings: Any) -> None:
    if not settings.storage_url:
        assert SERVER is not None
        url = SERVER.storage_url_for_data_dir(settings.data_dir)
        object.__setattr__(settings, "storage_url", url)
        if not settings.s3_endpoint_url:
            object.__setattr__(settings, "s3_endpoint_url", SERVER.endpoint_url)


def activate() -> S3Server:
    """Start the session's server; Settings for test data dirs then default to its bucket."""
    global SERVER
    SERVER = S3Server().start()
    for name, value in CREDENTIALS.items():  # boto3 reads them from the environment
        _original_environ[name] = os.environ.get(name)
        os.environ[name] = value
    settings_defaults.register(_default_bucket)
    return SERVER


def deactivate() -> None:
    """Stop the session's server and give Settings and the environment back their own."""
    global SERVER
    settings_defaults.unregister(_default_bucket)
    for name, value in _original_environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if SERVER is not None:
        SERVER.stop()
        SERVER = None


def storage_env(data_dir: str | os.PathLike[str] | None) -> dict[str, str]:
    """STORAGE_URL and S3_ENDPOINT_URL for a subprocess using `data_dir` (S3 runs only)."""
    if SERVER is None or not data_dir or not settings_defaults.is_test_data_dir(data_dir):
        return {}
    return {
        "STORAGE_URL": SERVER.storage_url_for_data_dir(data_dir),
        "S3_ENDPOINT_URL": SERVER.endpoint_url,
        **CREDENTIALS,
    }


def drop_buckets(names: set[str]) -> None:
    """Delete the buckets a test made."""
    if SERVER is None:
        return
    for name in names:
        SERVER.drop_bucket(name)
