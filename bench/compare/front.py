"""nginx in front of one pyshelf with ACCEL_REDIRECT_PREFIX: pyshelf decides, nginx sends the
blob. The configuration is docs/operations.md's ("Files sent by nginx"), on loopback ports."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .upstream import Upstream

ACCEL_PREFIX = "/_pyshelf_blobs"

FRONT_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path {run}/tmp/body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
    upstream pyshelf {{
        server 127.0.0.1:{backend};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 0;
        location / {{
            proxy_pass http://pyshelf;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
        location {prefix}/ {{
            internal;
            alias {blobs}/;
            etag off;
            add_header ETag $upstream_http_etag;
            add_header X-Request-ID $upstream_http_x_request_id;
            add_header X-Content-Type-Options $upstream_http_x_content_type_options;
        }}
    }}
}}
"""


@dataclass
class FrontNginx(Upstream):
    """nginx on `port` proxying to the pyshelf on `backend`, sending blobs from `files`."""

    backend: int = 0

    @property
    def simple_url(self) -> str:
        return f"{self.url}/+status"  # what start() waits for: pyshelf through the front

    def start(self) -> None:
        """Write the front's configuration and start it (the upstream's way)."""
        user = "user root root;" if os.getuid() == 0 else ""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        configuration = FRONT_CONF.format(
            workers=self.workers,
            run=self.run_dir,
            user=user,
            port=self.port,
            backend=self.backend,
            prefix=ACCEL_PREFIX,
            blobs=self.files,
        )
        self._start_with(configuration)
