"""The image as an admin runs it: env vars, a volume, healthcheck, pip and twine from outside."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from app import __version__
from tests.builders import make_wheel, write_dist
from tests.conftest import basic_auth, clean_env, run_pip, run_twine
from tests.container.conftest import IMAGE_UID, Container, image_config, podman, run_once
from tests.e2e.helpers import multipart, upload_fields
from tests.fake_upstream import FakeUpstream

STOP_SECONDS = 10  # `podman stop --time 10`: SIGTERM, then SIGKILL after this long
GENERATED_PASSWORD = re.compile(r"Generated password for 'admin': (\S+)")


def test_image_is_configured_as_an_appliance(image: str) -> None:
    """Non-root numeric user, /data volume, port 3141, healthcheck, SIGTERM, OCI labels."""
    config = image_config(image)

    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert list(config["Volumes"]) == ["/data"]
    assert list(config["ExposedPorts"]) == ["3141/tcp"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/app/entrypoint.sh", "healthcheck"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["/app/entrypoint.sh"]
    assert config["Cmd"] == ["serve"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "pyshelf"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"]


def test_image_holds_no_data_no_secrets_and_no_compiler(image: str) -> None:
    """/data is empty, /app holds only the code, and the runtime stage has no compiler."""
    secret_names = " -o ".join(f"-name '{n}'" for n in (".env*", "*.pem", "*.key", "*.sqlite3"))
    script = (
        f"ls -A /data; echo ---; ls -A /app; echo ---; find /app {secret_names}; echo ---; "
        "command -v gcc cc || true"
    )
    result = run_once(image, "-c", script, options=("--entrypoint", "sh"))

    data, code, secret_files, compilers = (p.split() for p in result.stdout.split("---\n"))
    assert result.returncode == 0, result.stderr
    assert data == []
    assert set(code) <= {"app", "migrations", "entrypoint.sh", "gunicorn.conf.py", "__pycache__"}
    assert secret_files == []
    assert compilers == []


def upload_slowly(
    url: str, password: str, dist: tuple[str, bytes], sending: threading.Event
) -> tuple[str, float]:
    """POST an upload as twine does, spread over about two seconds: status line, time done."""
    filename, content = dist
    body, content_type = multipart(upload_fields(filename, content), filename, content)
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.putrequest("POST", parts.path)
    connection.putheader("Content-Type", content_type)
    connection.putheader("Content-Length", str(len(body)))
    connection.putheader("Authorization", basic_auth("admin", password))
    connection.endheaders()
    step = len(body) // 20 + 1
    for offset in range(0, len(body), step):
        connection.send(body[offset : offset + step])
        sending.set()
        time.sleep(0.1)
    response = connection.getresponse()
    return f"{response.status} {response.reason}", time.monotonic()


def installed_version(target: Path, module: str) -> str:
    """The __version__ a `pip install --target` put there."""
    return re.findall(r'"(.+)"', (target / module / "__init__.py").read_text())[0]


def test_published_package_installs_and_survives_a_restart(
    image: str,
    run_container: object,
    volume: str,
    make_volume: Callable[[], str],
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    """Healthy as uid 10001; twine in, pip out (via the mirror); graceful stop; data kept."""
    fake_upstream.add_file("upstream-dep", *make_wheel("upstream-dep", "2.0"))
    shelf_app = write_dist(
        tmp_path, *make_wheel("shelf-app", "1.0", requires_dist=["upstream-dep"])
    )
    server: Container = run_container(  # type: ignore[operator]
        "-v", f"{volume}:/data", MIRROR_URL=fake_upstream.url, WEB_CONCURRENCY="2", THREADS="4"
    )
    print(f"healthy after {server.wait_healthy():.1f} s")
    [password] = GENERATED_PASSWORD.findall(server.logs())  # no ADMIN_PASSWORD: generated

    # `serve` becomes gunicorn's master, which forks the workers (app/ops/server.py)
    gunicorn = [(uid, args) for uid, args in server.processes() if args.endswith("-m app serve")]
    assert len(gunicorn) == 3, server.processes()  # the master and WEB_CONCURRENCY workers
    assert {uid for uid, _ in gunicorn} == {str(IMAGE_UID)}

    upload = run_twine(
        "upload", "--repository-url", f"{server.url}/admin/dev/",
        "-u", "admin", f"--password={password}", str(shelf_app),
    )  # fmt: skip
    assert upload.returncode == 0, upload.stdout + upload.stderr
    install = run_pip(
        "install", "--target", str(tmp_path / "site"),
        "-i", f"{server.url}/admin/dev/+simple/", "shelf-app",
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert installed_version(tmp_path / "site", "upstream_dep") == "2.0"  # through the mirror
    created = server.exec("pyshelf", "user", "create", "alice", "--password", "pw-a")  # on PATH
    assert created.returncode == 0, created.stderr

    # `podman stop` while an upload is still arriving: gunicorn lets it finish, then exits 0.
    sending = threading.Event()
    in_flight = make_wheel("shelf-app", "1.1", requires_dist=["upstream-dep"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        upload_status = pool.submit(
            upload_slowly, f"{server.url}/admin/dev/", password, in_flight, sending
        )
        assert sending.wait(10)
        started = time.monotonic()
        podman("stop", "--time", str(STOP_SECONDS), server.name, timeout=STOP_SECONDS + 30)
        stopped_in = time.monotonic() - started
        status, uploaded_at = upload_status.result()
    assert status == "200 OK"
    assert uploaded_at - started > 1, "the upload was not in flight when SIGTERM came"
    assert server.exit_code() == 0, server.logs()
    assert stopped_in < STOP_SECONDS, f"took {stopped_in:.1f} s: SIGTERM did not stop gunicorn"

    # While it is stopped: the cold backup of docs/operations.md, restored into a new volume, on
    # which a one-off container runs an admin command.
    as_root_tar = ("--user", "0", "--entrypoint", "tar", "-v", f"{tmp_path}:/backup")
    backup = run_once(
        image, "-czf", "/backup/pyshelf-data.tar.gz", "-C", "/data", ".",
        options=(*as_root_tar, "-v", f"{volume}:/data:ro"),
    )  # fmt: skip
    assert backup.returncode == 0, backup.stderr
    restored_volume = make_volume()
    restore = run_once(
        image, "-xzpf", "/backup/pyshelf-data.tar.gz", "--numeric-owner", "-C", "/data",
        options=(*as_root_tar, "-v", f"{restored_volume}:/data"),
    )  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    listed = run_once(image, "user", "list", options=("-v", f"{restored_volume}:/data"))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n")[:3] == ["admin (superuser)", "alice", "root (superuser)"]

    fake_upstream.stop()  # from now on, what pip gets comes from the volume
    podman("start", server.name)
    server.wait_healthy()
    again = run_pip(
        "install", "--target", str(tmp_path / "again"),
        "-i", f"{server.url}/admin/dev/+simple/", "shelf-app",
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert installed_version(tmp_path / "again", "shelf_app") == "1.1"  # the in-flight upload
    assert installed_version(tmp_path / "again", "upstream_dep") == "2.0"  # from the cache
    upload = run_twine(
        "upload", "--repository-url", f"{server.url}/admin/dev/",
        "-u", "admin", f"--password={password}",  # a generated password may start with '-'
        str(write_dist(tmp_path, *make_wheel("shelf-app", "1.2"))),
    )  # fmt: skip
    assert upload.returncode == 0, upload.stdout + upload.stderr  # the password survived
    assert len(GENERATED_PASSWORD.findall(server.logs())) == 1  # and was not made again


def one_line(result: subprocess.CompletedProcess) -> str:
    """The single line a refused start prints (on stderr), checked to be the only output."""
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    assert "\n" not in output, output
    return output


def test_read_only_volume_is_explained_in_one_line(image: str, volume: str) -> None:
    """A volume mounted :ro stops the start with what to change, not an SQLite traceback."""
    for command in ("serve", "user"):
        result = run_once(image, command, "list", options=("-v", f"{volume}:/data:ro"))

        assert one_line(result) == (
            "pyshelf: /data is mounted read-only, but pyshelf writes its database and files "
            "there; mount the volume read-write (no :ro after -v ...:/data)"
        )


def test_foreign_owned_volume_is_explained_with_the_chown_that_fixes_it(
    image: str, tmp_path: Path
) -> None:
    """A host directory owned by root: the one line names the chown; running it fixes the start."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    os.chown(data, 0, 0)
    mount = ("-v", f"{data}:/data")

    refused = run_once(image, "user", "list", options=mount)
    message = one_line(refused)
    assert message.startswith("pyshelf: /data belongs to uid:gid 0:0 and is not writable by uid")
    owner = f"{IMAGE_UID}:{IMAGE_UID}"
    assert f"--user 0 -v VOLUME:/data --entrypoint chown IMAGE -R {owner} /data" in message

    chowned = run_once(image, "-R", f"{IMAGE_UID}:{IMAGE_UID}", "/data",
                       options=("--user", "0", "--entrypoint", "chown", *mount))  # fmt: skip
    assert chowned.returncode == 0, chowned.stderr
    prepared = run_once(image, "prepare", options=(*mount, "-e", "ADMIN_PASSWORD=pw"))
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert (data / "pyshelf.sqlite3").stat().st_uid == IMAGE_UID


def test_https_below_a_path_prefix_needs_no_trusted_host(
    run_container: object, volume: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """TLS_CERT/TLS_KEY make gunicorn speak HTTPS; SCRIPT_NAME puts every link below /pypi."""
    certs = tmp_path / "certs"
    certs.mkdir()
    certs.chmod(0o755)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    (certs / "key.pem").chmod(0o644)  # readable by uid 10001 in the container (test only)
    dep, dep_bytes = make_wheel("tls-dep", "1.0")
    fake_upstream.add_file("tls-dep", dep, dep_bytes)
    server: Container = run_container(  # type: ignore[operator]
        "-v", f"{volume}:/data", "-v", f"{certs}:/certs:ro",
        scheme="https", MIRROR_URL=fake_upstream.url, ADMIN_PASSWORD="pw", WEB_CONCURRENCY="1",
        TLS_CERT="/certs/cert.pem", TLS_KEY="/certs/key.pem", SCRIPT_NAME="/pypi",
    )  # fmt: skip
    server.wait_healthy()

    # The clients trust the certificate: here it is their whole CA store. (REQUESTS_CA_BUNDLE,
    # which this machine sets, would win over both that store and pip's --cert.)
    cert = str(certs / "cert.pem")
    env = clean_env(SSL_CERT_FILE=cert, REQUESTS_CA_BUNDLE=cert)
    env.pop("SSL_CERT_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
         "-d", str(tmp_path / "dl"), "-i", f"{server.url}/pypi/root/pypi/+simple/", "tls-dep"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "dl" / dep).is_file()
    log = server.logs()
    assert "Listening at: https://127.0.0.1" in log
    file_request = rf'"GET /pypi/root/pypi/(\+|%2B)f/\S+/{dep} HTTP/1.1" 200'  # pip quotes +
    assert re.search(file_request, log), log  # the file link kept the /pypi prefix


def test_a_certificate_without_its_key_is_refused_in_one_line(image: str, volume: str) -> None:
    """TLS_CERT alone would serve plain HTTP to clients that expect HTTPS: refused at start."""
    result = run_once(
        image, options=("-v", f"{volume}:/data", "-e", "TLS_CERT=/etc/ssl/certs/none.pem")
    )

    assert result.returncode == 2, result.stdout + result.stderr  # `prepare` refused it
    lines = result.stderr.strip().splitlines()
    assert lines[-3:-1] == [  # every problem at once: the pair, then the missing file
        "pyshelf: invalid configuration:",
        "  TLS_CERT and TLS_KEY go together: set both, or neither",
    ]
    assert lines[-1].startswith("  TLS_CERT=/etc/ssl/certs/none.pem is not a file readable by")
