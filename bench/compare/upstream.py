"""The upstream: nginx serving the package set's pages and files from disk on 127.0.0.1.

One nginx plays PyPI for every server (pages negotiated by Accept, pre-gzipped, ETags, 304s),
is the `upstream` baseline of the installs, and is the plain static server whose download
speed is the ceiling. Its access log records every request with the headers that matter, so
the benchmark can count what reached the upstream and replay exactly what pip asked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import free_port

START_TIMEOUT_SECONDS = 10
APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light"}  # command -> Debian package
STOP_TIMEOUT_SECONDS = 10
LOG_FIELDS = ("method", "uri", "status", "bytes", "accept", "accept_encoding", "user_agent")

NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    types {{ application/octet-stream whl gz metadata; }}
    default_type application/octet-stream;
    log_format bench '$request_method\\t$request_uri\\t$status\\t$body_bytes_sent\\t'
                     '$http_accept\\t$http_accept_encoding\\t$http_user_agent';
    access_log {run}/access.log bench;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {run}/tmp/body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
    # PEP 691: JSON for clients that ask for it (pip, uv), HTML otherwise.
    map $http_accept $simple_stem {{
        default index.html;
        "~*application/vnd\\.pypi\\.simple\\.(v1|latest)\\+json" index.json;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location /simple/ {{
            types {{ text/html html; application/vnd.pypi.simple.v1+json json; }}
            gzip_static on;
            gzip_vary on;
            add_header Vary Accept;
            add_header Cache-Control "max-age=600, public";
            try_files $uri$simple_stem =404;
        }}
        location /files/ {{
            alias {files}/;
            add_header Cache-Control "max-age=365000000, immutable, public";
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """Debian's nginx, when installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None
    )


def ensure_tools() -> None:
    """wrk and nginx from Debian (installed as root when missing; the service is not started)."""
    missing = [name for name in APT_PACKAGES if shutil.which(name) is None and name != "nginx"]
    if nginx_binary() is None:
        missing.append("nginx")
    if not missing:
        return
    if os.getuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install " + " ".join(missing))
    print(f"apt-get install {' '.join(APT_PACKAGES[m] for m in missing)}", flush=True)
    # Debian starts a daemon on installation unless policy-rc.d says no: the benchmark runs its
    # own nginx on a loopback port, so none must listen on port 80. An existing policy stays.
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)  # noqa: S607
        subprocess.run(  # noqa: S603
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
            + [APT_PACKAGES[m] for m in missing],
            check=True,
            env=env,
        )
    finally:
        if created:
            policy.unlink(missing_ok=True)


@dataclass
class Upstream:
    """nginx on a loopback port: /simple/ from `www`, /files/ from `files`."""

    run_dir: Path
    www: Path
    files: Path
    port: int
    workers: int = 2
    process: subprocess.Popen | None = None
    _log_offset: int = field(default=0, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def simple_url(self) -> str:
        return f"{self.url}/simple/"

    @property
    def files_url(self) -> str:
        return f"{self.url}/files/"

    @property
    def access_log(self) -> Path:
        return self.run_dir / "access.log"

    def start(self) -> None:
        """Write the configuration, start nginx in the foreground, wait until it answers."""
        # As root, nginx's workers would switch to `nobody`, who cannot read a 0700 temp dir.
        user = "user root root;" if os.getuid() == 0 else ""
        self._start_with(
            NGINX_CONF.format(
                workers=self.workers,
                run=self.run_dir,
                user=user,
                port=self.port,
                www=self.www,
                files=self.files,
            )
        )

    def _start_with(self, configuration: str) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is missing: apt-get install nginx-light (as root)")
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / "tmp" / name).mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "nginx.conf"
        conf.write_text(configuration)
        log = open(self.run_dir / "nginx.out", "ab")  # noqa: SIM115 - nginx owns it
        self.process = subprocess.Popen(  # noqa: S603 - Debian's nginx, our own config
            [binary, "-c", str(conf), "-p", str(self.run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.run_dir / 'error.log').read_text()}")
            try:
                with urllib.request.urlopen(self.simple_url, timeout=2):  # noqa: S310 - loopback
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer on {self.url} within {START_TIMEOUT_SECONDS} s")

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGKILL the process group."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGQUIT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def mark(self) -> int:
        """The access log's size now: `requests_since` counts what came after."""
        with contextlib.suppress(FileNotFoundError):
            return self.access_log.stat().st_size
        return 0

    def requests_since(self, offset: int) -> list[dict[str, str]]:
        """Every request logged after `offset` (nginx logs a request when it is answered)."""
        with self.access_log.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
        return [
            dict(zip(LOG_FIELDS, line.split("\t"), strict=False))
            for line in text.splitlines()
            if line
        ]


def prepared_upstream(work: Path, releases: list[Any]) -> Upstream:
    """An Upstream (not started yet) whose pages for `releases` are written under `work`."""
    from . import packages

    os.chmod(work, 0o755)  # noqa: S103 - nginx's workers read the pages from here
    upstream = Upstream(
        work / "nginx",
        work / "www",
        packages.CACHE_DIR / f"upstream-{packages.BUILD_VERSION}" / "files",
        free_port(),
    )
    upstream.run_dir.mkdir()
    packages.write_pages(upstream.www, releases, upstream.files_url)
    return upstream
