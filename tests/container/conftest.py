"""Fixtures for testing the image with podman: the image, containers and volumes, all by name.

Run by `make test-container` (which installs podman and makes the base image first, see
prepare.sh); `make test` never collects this folder. Every name carries this run's id, and
every container, volume and image made here is removed by that name at the end.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import __version__
from tests.conftest import ROOT, free_port

BASE_IMAGE = "localhost/python-base:bookworm"  # made by prepare.sh, kept between runs
IMAGE_UID = 10001  # the Dockerfile's PYSHELF_UID
RUN_ID = secrets.token_hex(4)
IMAGE = f"localhost/pyshelf-test:{RUN_ID}"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HEALTHY_TIMEOUT_SECONDS = 90
# podman without systemd says so on every run and stop; it is noise here (CONTAINER.md).
_PODMAN_NOISE = re.compile(r"^time=.*(systemd|healthcheck).*\n?", re.MULTILINE)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run podman; stdout and stderr as text, without the no-systemd noise."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run the container tests with `make test-container`")
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    result.stderr = _PODMAN_NOISE.sub("", result.stderr)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@dataclass
class Container:
    """A pyshelf container on the host's network, listening on 127.0.0.1:`port`."""

    name: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def logs(self) -> str:
        """Everything the container printed (stdout and stderr)."""
        result = podman("logs", self.name, check=False)
        return result.stdout + _PODMAN_NOISE.sub("", result.stderr)

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT_SECONDS) -> float:
        """Run the image's HEALTHCHECK until it passes (no systemd runs it); seconds taken."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.inspect("{{.State.Running}}") != "true":
                pytest.fail(f"{self.name} exited {self.exit_code()}:\n{self.logs()}")
            if podman("healthcheck", "run", self.name, check=False).returncode == 0:
                return time.monotonic() - started
            time.sleep(0.5)
        pytest.fail(f"{self.name} not healthy within {timeout} s:\n{self.logs()}")

    def exit_code(self) -> int:
        return int(self.inspect("{{.State.ExitCode}}"))

    def exec(self, *args: str) -> subprocess.CompletedProcess:
        """`podman exec`, as an admin runs a command in the running container."""
        return podman("exec", self.name, *args, check=False)

    def processes(self) -> list[tuple[str, str]]:
        """(host uid, command line) of every process in the container."""
        lines = podman("top", self.name, "huser", "args").stdout.splitlines()[1:]
        return [(line.split(None, 1)[0], line.split(None, 1)[1].strip()) for line in lines]


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """The image built from the working tree (with the local base image); removed at the end."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        pytest.fail(f"no base image {BASE_IMAGE}: run `make test-container` (prepare.sh makes it)")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
    revision = git.stdout.decode().strip() or "unknown"  # not a git checkout: an export
    # The host's CA bundle lets pip in RUN steps trust what the host trusts; never copied in.
    mounts = ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
    started = time.monotonic()
    podman(
        "build", "--pull=never", "--format", "docker", *mounts,
        "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
        "--build-arg", f"VERSION={__version__}",
        "--build-arg", f"REVISION={revision}",
        "-t", IMAGE, str(ROOT),
        timeout=900,
    )  # fmt: skip
    print(f"\nbuilt {IMAGE} in {time.monotonic() - started:.1f} s")
    yield IMAGE
    podman("rmi", "--force", IMAGE, check=False)


@pytest.fixture
def make_volume() -> Iterator[Callable[[], str]]:
    """Make fresh named volumes; all removed at the end."""
    names: list[str] = []

    def make() -> str:
        names.append(f"pyshelf-test-{RUN_ID}-{secrets.token_hex(3)}")
        podman("volume", "create", names[-1])
        return names[-1]

    yield make
    for name in names:
        podman("volume", "rm", "--force", name, check=False)


@pytest.fixture
def volume(make_volume: Callable[[], str]) -> str:
    """A fresh named volume."""
    return make_volume()


@pytest.fixture
def run_container(image: str, request: pytest.FixtureRequest) -> Iterator[object]:
    """Start detached containers of the image; logs shown on failure, all removed by name."""
    containers: list[Container] = []

    def run(*options: str, scheme: str = "http", **env: str) -> Container:
        container = Container(f"pyshelf-test-{RUN_ID}-{secrets.token_hex(3)}", free_port(), scheme)
        containers.append(container)
        env = {"HOST": "127.0.0.1", "PORT": str(container.port), **env}
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        podman(
            "run", "--detach", "--name", container.name, "--network=host",
            *env_args, *options, image,
        )  # fmt: skip
        return container

    yield run
    report = getattr(request.node, "rep_call", None)
    for container in containers:
        if report is not None and report.failed:
            print(f"--- {container.name} log ---\n{container.logs()[-20000:]}")
        podman("rm", "--force", "--volumes", "--time", "0", container.name, check=False)


def run_once(image: str, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`podman run --rm IMAGE ARGS`: a one-off command, as `docker run --rm ... IMAGE user list`."""
    return podman("run", "--rm", "--network=host", *options, image, *args, check=False)


def image_config(image: str) -> dict:
    """The image's configuration (User, Env, Labels, ...) with its Healthcheck."""
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    return {**inspected["Config"], "Healthcheck": inspected.get("Healthcheck")}
