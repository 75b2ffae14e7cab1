"""The three servers under test, each started on an empty data directory and stopped for sure.

pyshelf runs through entrypoint.sh (migrations, bootstrap, gunicorn); devpi-server after
devpi-init, configured over its HTTP API (root/pypi mirroring the upstream, root/dev with
bases root/pypi); proxpi under gunicorn with pyshelf's worker count, class and threads. Each
runs in its own session, so its whole process tree can be measured and killed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tests.conftest import clean_env, free_port

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".bench-venvs"
WEB_CONCURRENCY = 2  # gunicorn workers, pyshelf's and proxpi's (this is a 2-CPU machine)
THREADS = 8  # gunicorn's gthread threads per worker: pyshelf's default
READY_TIMEOUT_SECONDS = 90
POLL_SECONDS = 0.01
STOP_TIMEOUT_SECONDS = 20
REQUEST_TIMEOUT_SECONDS = 60
PROJECT_PROBE = "bench-pkg-00"  # startup ends with the first 200 of this project's page
# pip's Accept header (proxpi answers 406 to a request without one)
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
# What each venv holds; pins for devpi come from requirements-devpi.txt (the e2e tests' pins).
VENV_REQUIREMENTS = {
    "devpi": ["-r", str(ROOT / "requirements-devpi.txt")],
    "proxpi": ["proxpi==1.3.1", "gunicorn==27.0.1"],
    "tools": ["uv==0.13.8", "py-spy==0.4.3"],
}


def ensure_venv(name: str) -> Path:
    """.bench-venvs/NAME with its packages from PyPI (once); the venv's bin directory."""
    venv = VENVS / name
    marker = venv / ".installed"
    wanted = " ".join(VENV_REQUIREMENTS[name])
    if marker.is_file() and marker.read_text() == wanted:
        return venv / "bin"
    print(f"installing {wanted} into {venv} (from PyPI, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)  # noqa: S603
    subprocess.run(  # noqa: S603 - pip of the venv just made, pinned packages
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *VENV_REQUIREMENTS[name]],
        check=True,
        timeout=900,
    )
    marker.write_text(wanted)
    return venv / "bin"


def venv_version(bin_dir: Path, distribution: str) -> str:
    """The installed version of `distribution` in a venv."""
    out = subprocess.run(  # noqa: S603 - the venv's python, a fixed one-liner
        [
            str(bin_dir / "python"),
            "-c",
            f"import importlib.metadata as m; print(m.version({distribution!r}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def session_pids(leader: int) -> list[int]:
    """Every live process in the session that `leader` started (start_new_session=True)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == leader and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over `pids`; PSS shares forked workers' common pages fairly."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss


def cpu_ticks(pids: list[int]) -> int:
    """User plus system CPU time of `pids`, in clock ticks (proc(5): stat fields 14 and 15)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def get(
    url: str, headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT_SECONDS
) -> tuple[int, dict[str, str], bytes]:
    """One GET on a new connection: (status, lower-cased headers, body); never follows."""
    parts = http.client.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def wait_for_200(
    url: str,
    deadline: float,
    process: subprocess.Popen | None = None,
    accept: str = PIP_ACCEPT,
) -> None:
    """Poll `url` until it answers 200 (refused connections and errors retried) or time is up."""
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            status, _, body = get(
                url, {"Accept": accept}, timeout=max(1.0, deadline - time.monotonic())
            )
            if status == 200:
                return
            last = f"{status}: {body[:200]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{url} did not answer 200 in time; last: {last}")


@dataclass
class Server:
    """One server process tree on a loopback port with its own empty data directory."""

    NAME: ClassVar[str] = ""
    work_dir: Path  # the data directory and the log go in here
    upstream_url: str  # the upstream's /simple/ URL
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"{self.NAME}-{self.port}.log"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    def mirror_page_url(self, project: str) -> str:
        """The project's page on the server's mirror of the upstream (what startup waits for)."""
        raise NotImplementedError

    def stage_simple_url(self) -> str:
        """The index that pip and uv install from: the stage over the mirror, where there is one."""
        raise NotImplementedError

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def cwd(self) -> Path:
        """Where the server runs (gunicorn reads ./gunicorn.conf.py: only pyshelf's own)."""
        return self.work_dir

    def prepare(self) -> None:
        """Work before the server process starts (part of the startup time)."""

    def configure(self, deadline: float) -> None:
        """Work after it answers and before it can serve the upstream (part of startup too)."""

    def start(self) -> Server:
        """Start on the empty data directory; wait for the first 200 of a mirrored page.

        `startup_seconds` runs from the first process start to that 200.
        """
        self.work_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        self.prepare()
        argv, env = self.command()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our venvs' servers, built argv
                argv,
                cwd=self.cwd(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.configure(deadline)
            wait_for_200(self.mirror_page_url(PROJECT_PROBE), deadline, self.process)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        """SIGTERM the session, wait, then SIGKILL whatever is left of it."""
        if self.process is None:
            return
        leader = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(leader, signal.SIGKILL)
                self.process.wait(timeout=5)
        for pid in session_pids(leader):  # a worker that outlived its master
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def pids(self) -> list[int]:
        """The server's processes now."""
        return session_pids(self.process.pid) if self.process else []

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (gunicorn's workers; devpi's single process)."""
        return self.pids()

    def log(self) -> str:
        """What the server printed so far."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def wait_until_idle(self, timeout_seconds: float = 15, poll_seconds: float = 0.25) -> None:
        """Wait until the server's processes use at most one clock tick (10 ms) of CPU per
        poll, two polls in a row (a worker still importing, or finishing queued requests,
        would steal the CPU from the next measurement)."""
        deadline = time.monotonic() + timeout_seconds
        last, quiet = -1, 0
        while quiet < 2 and time.monotonic() < deadline:
            ticks = cpu_ticks(self.pids())
            quiet = quiet + 1 if 0 <= ticks - last <= 1 else 0
            last = ticks
            time.sleep(poll_seconds)


@dataclass
class Pyshelf(Server):
    """pyshelf through entrypoint.sh, as the image runs it; stage admin/dev over root/pypi."""

    NAME: ClassVar[str] = "pyshelf"

    def mirror_page_url(self, project: str) -> str:
        return f"{self.url}/root/pypi/+simple/{project}/"

    def stage_simple_url(self) -> str:
        return f"{self.url}/admin/dev/+simple/"

    def cwd(self) -> Path:
        return ROOT

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = clean_env(
            DATA_DIR=str(self.data_dir),
            PORT=str(self.port),
            HOST="127.0.0.1",
            PYSHELF_PYTHON=str(ROOT / ".venv" / "bin" / "python"),
            MIRROR_URL=self.upstream_url,
            ADMIN_PASSWORD=secrets.token_hex(16),
            WEB_CONCURRENCY=str(WEB_CONCURRENCY),
            THREADS=str(THREADS),
            ACCESS_LOG="false",
            LOG_LEVEL="WARNING",
        )
        return [str(ROOT / "entrypoint.sh"), "serve"], env

    def worker_pids(self) -> list[int]:
        leader = self.process.pid if self.process else -1
        return [pid for pid in self.pids() if pid != leader]


@dataclass
class Devpi(Server):
    """devpi-server (waitress, one process, its default 50 threads) after devpi-init."""

    NAME: ClassVar[str] = "devpi"
    root_password: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def bin_dir(self) -> Path:
        return VENVS / "devpi" / "bin"

    def mirror_page_url(self, project: str) -> str:
        return f"{self.url}/root/pypi/+simple/{project}/"

    def stage_simple_url(self) -> str:
        return f"{self.url}/root/dev/+simple/"

    def prepare(self) -> None:
        # No root/pypi of pypi.org: the benchmark creates it with the upstream's URL, so devpi
        # never has a reason to contact anything but 127.0.0.1.
        subprocess.run(  # noqa: S603 - devpi-init from our venv
            [
                str(self.bin_dir / "devpi-init"),
                "--serverdir",
                str(self.data_dir),
                "--no-root-pypi",
                "--root-passwd",
                self.root_password,
            ],
            env=clean_env(),
            capture_output=True,
            check=True,
            timeout=READY_TIMEOUT_SECONDS,
        )

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            str(self.bin_dir / "devpi-server"),
            "--serverdir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        return argv, clean_env()

    def _api(self, method: str, path: str, body: dict, auth: str | None) -> dict:
        parts = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_SECONDS)
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if auth:
            headers["X-Devpi-Auth"] = auth
        try:
            parts.request(method, path, body=json.dumps(body), headers=headers)
            response = parts.getresponse()
            data = response.read()
        finally:
            parts.close()
        if response.status != 200:
            raise RuntimeError(f"devpi {method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data)

    def configure(self, deadline: float) -> None:
        """root/pypi mirroring the upstream, root/dev with bases root/pypi, over devpi's API."""
        wait_for_200(f"{self.url}/+api", deadline, self.process, "application/json")
        login = self._api("POST", "/+login", {"user": "root", "password": self.root_password}, None)
        token = login["result"]["password"]
        auth = base64.b64encode(f"root:{token}".encode()).decode()
        self._api("PUT", "/root/pypi", {"type": "mirror", "mirror_url": self.upstream_url}, auth)
        self._api("PUT", "/root/dev", {"type": "stage", "bases": ["root/pypi"]}, auth)


@dataclass
class Proxpi(Server):
    """proxpi under gunicorn: pyshelf's worker count, worker class and threads."""

    NAME: ClassVar[str] = "proxpi"

    def mirror_page_url(self, project: str) -> str:
        return f"{self.url}/index/{project}/"

    def stage_simple_url(self) -> str:
        return f"{self.url}/index/"  # proxpi has no stages: its one index

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(VENVS / "proxpi" / "bin" / "gunicorn"),
            "--workers",
            str(WEB_CONCURRENCY),
            "--worker-class",
            "gthread",
            "--threads",
            str(THREADS),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "warning",
            "--no-control-socket",
            "proxpi.server:app",
        ]
        env = clean_env(
            PROXPI_INDEX_URL=self.upstream_url,
            PROXPI_CACHE_DIR=str(self.data_dir),
            PROXPI_LOGGING_LEVEL="WARNING",
        )
        return argv, env

    def worker_pids(self) -> list[int]:
        leader = self.process.pid if self.process else -1
        return [pid for pid in self.pids() if pid != leader]


SERVERS: dict[str, type[Server]] = {cls.NAME: cls for cls in (Pyshelf, Devpi, Proxpi)}
