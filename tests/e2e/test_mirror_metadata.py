"""A mirror of a plain PEP 503 upstream (no sizes, no sidecars) on a live server: once a file is
cached, its size and the core metadata inside it show on every page (PEP 658, 700, 714)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import make_sdist
from tests.conftest import ROOT, LiveServer, clean_env, run_pip
from tests.e2e.test_mirror import add_wheel, file_entry, page, pip_install, start_mirror
from tests.e2e.test_mirror import wheel_metadata as metadata_in
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

HTML = {"Accept": "text/html"}
DESCRIPTION = "Plain *upstream*, rich page.\n\nThe **description** comes from the wheel.\n"
# uv comes with the test venv (requirements-dev.txt); PYSHELF_TEST_UV may name another one.
UV = os.environ.get("PYSHELF_TEST_UV") or shutil.which("uv", path=str(Path(sys.executable).parent))
# poetry and pdm live in their own venv (their pins would fight the test venv's): make test
# makes it from requirements-clients.txt.
CLIENTS_BIN = Path(os.environ.get("PYSHELF_TEST_CLIENTS_BIN") or ROOT / ".venv-clients" / "bin")
FILE_GET_RE = r'"GET /root/pypi/(?:\+|%2B)f/[0-9a-f]{{64}}/{name} '  # pip quotes the +


def plain_upstream(upstream: FakeUpstream) -> dict[str, tuple[str, bytes]]:
    """A PEP 503 HTML-only upstream with an app (wheel) needing a lib (wheel), and an app sdist."""
    upstream.html_only = True  # HTML pages: no size, no upload time (PEP 503)
    app = add_wheel(
        upstream,
        "plain-app",
        "2.0.0",
        with_metadata=False,  # no PEP 658 sidecar upstream
        requires_dist=["plain-lib>=1"],
        description=DESCRIPTION,
        description_content_type="text/markdown",
    )
    lib = add_wheel(upstream, "plain-lib", "1.1.0", with_metadata=False)
    sdist = make_sdist("plain-app", "2.0.0", description="The sdist's text.")
    upstream.add_file("plain-app", *sdist)
    return {"app": app, "lib": lib, "sdist": sdist}


def file_gets(server: LiveServer, filename: str) -> int:
    """How many GETs of `filename` (not its .metadata) the server's access log shows."""
    return len(re.findall(FILE_GET_RE.format(name=re.escape(filename)), server.log()))


def test_a_cached_wheel_offers_its_own_metadata_and_size_on_every_page(
    server_factory, fake_upstream, tmp_path
):
    """After one pip install through the mirror, the JSON and HTML pages offer the METADATA
    inside each cached wheel as PEP 658/714 metadata with its size; the web page renders it."""
    files = plain_upstream(fake_upstream)
    (app_wheel, app_data), (lib_wheel, lib_data) = files["app"], files["lib"]
    sdist_name = files["sdist"][0]
    server = start_mirror(server_factory, fake_upstream)

    # Nothing cached yet: no size known (PEP 700 defines none below api-version 1.1), no sidecar.
    status, _headers, before = page(server, "root/pypi", "plain-app")
    assert status == 200
    assert before["meta"]["api-version"] == "1.0"
    assert "size" not in file_entry(before, app_wheel)
    assert file_entry(before, app_wheel)["core-metadata"] is False
    status, _headers, body, _reason = server.get("/root/pypi/plain-app/", headers=HTML)
    assert status == 200
    assert "The description of 2.0.0 appears once a file of it has been cached." in body.decode()

    pip_install(server, "root/pypi", tmp_path / "first", "plain-app")
    assert (tmp_path / "first" / "plain_lib" / "__init__.py").is_file()

    for project, wheel, data in (
        ("plain-app", app_wheel, app_data),
        ("plain-lib", lib_wheel, lib_data),
    ):
        status, _headers, document = page(server, "root/pypi", project)
        entry = file_entry(document, wheel)
        metadata = metadata_in(data)
        assert entry["size"] == len(data)
        assert entry["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}
        status, headers, served, _reason = server.get(f"{entry['url']}.metadata")
        assert (status, served) == (200, metadata)  # byte for byte the wheel's own METADATA
        assert headers["Cache-Control"].startswith("public")
    # The sdist was never fetched: its size is unknown, and the page says so by its version.
    status, _headers, document = page(server, "root/pypi", "plain-app")
    assert "size" not in file_entry(document, sdist_name)
    assert document["meta"]["api-version"] == "1.0"
    assert file_entry(document, sdist_name)["core-metadata"] is False
    status, _headers, document = page(server, "root/pypi", "plain-lib")
    assert document["meta"]["api-version"] == "1.4"  # every file has its size

    status, _headers, body, _reason = server.get("/root/pypi/+simple/plain-app/", headers=HTML)
    value = f"sha256={hashlib.sha256(metadata_in(app_data)).hexdigest()}"
    line = next(line for line in body.decode().splitlines() if f">{app_wheel}<" in line)
    assert f'data-core-metadata="{value}"' in line
    assert f'data-dist-info-metadata="{value}"' in line

    status, _headers, body, _reason = server.get("/root/pypi/plain-app/", headers=HTML)
    web = body.decode()
    assert status == 200
    assert "<em>upstream</em>" in web
    assert "<strong>description</strong>" in web
    assert "appears once" not in web
    row = next(line for line in web.split("<tr") if app_wheel in line)
    assert "?" not in re.sub(r"<[^>]+>", "", row)  # the cached wheel's size is shown
    status, _headers, body, _reason = server.get(
        "/root/pypi/plain-app/", headers={"Accept": "application/json"}
    )
    links = json.loads(body)["result"]["2.0.0"]["+links"]
    assert next(link for link in links if link["basename"] == app_wheel)["size"] == len(app_data)


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_a_second_client_resolves_from_the_sidecar_without_the_wheel(
    server_factory, fake_upstream, tmp_path, client
):
    """pip and uv resolve a project whose wheel the mirror cached from a plain upstream by its
    extracted PEP 658 metadata: neither pyshelf nor the upstream sends the wheel again."""
    assert client != "uv" or UV is not None, "uv is missing from the venv: make test installs it"
    files = plain_upstream(fake_upstream)
    app_wheel, lib_wheel = files["app"][0], files["lib"][0]
    server = start_mirror(server_factory, fake_upstream)
    pip_install(server, "root/pypi", tmp_path / "first", "plain-app")
    assert file_gets(server, app_wheel) == 1
    fake_upstream.reset_counts()

    index_url = f"{server.url}/root/pypi/+simple/"
    if client == "pip":
        report = tmp_path / "report.json"
        result = run_pip(
            "install", "--dry-run", "--ignore-installed", "--report", str(report),
            "--index-url", index_url, "plain-app",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        resolved = {i["metadata"]["name"] for i in json.loads(report.read_text())["install"]}
    else:
        result = subprocess.run(
            [UV, "pip", "compile", "--no-config", "--no-cache", "--index-url", index_url, "-"],
            input="plain-app\n",
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        resolved = set(re.findall(r"^(plain-[a-z]+)==", result.stdout, re.MULTILINE))
    assert resolved == {"plain-app", "plain-lib"}
    assert file_gets(server, app_wheel) == 1  # still only the first install's download
    assert file_gets(server, lib_wheel) == 1
    assert fake_upstream.count("/files/") == 0


LOCKERS = {
    "poetry": (
        '[tool.poetry]\npackage-mode = false\n\n[[tool.poetry.source]]\nname = "shelf"\n'
        'url = "{index_url}"\npriority = "primary"\n',
        ["lock"],
    ),
    "pdm": (
        '[tool.pdm]\ndistribution = false\n\n[[tool.pdm.source]]\nname = "pypi"\n'
        'url = "{index_url}"\n',
        ["lock"],
    ),
}


@pytest.mark.parametrize("client", sorted(LOCKERS))
def test_poetry_and_pdm_lock_from_a_page_with_files_of_unknown_size(
    server_factory, fake_upstream, tmp_path, client
):
    """A JSON page with a never-fetched file announces api-version 1.0 (PEP 700 makes `size`
    mandatory from 1.1): poetry and pdm accept that page and lock from it, as pip and uv do."""
    program = CLIENTS_BIN / client
    assert program.exists(), f"{program} is missing: make test installs requirements-clients.txt"
    files = plain_upstream(fake_upstream)
    server = start_mirror(server_factory, fake_upstream)
    pip_install(server, "root/pypi", tmp_path / "first", "plain-app")  # the sdist stays unfetched
    status, _headers, document = page(server, "root/pypi", "plain-app")
    assert status == 200
    assert document["meta"]["api-version"] == "1.0"
    assert "size" not in file_entry(document, files["sdist"][0])
    project = tmp_path / "consumer"
    project.mkdir()
    source, command = LOCKERS[client]
    (project / "pyproject.toml").write_text(
        '[project]\nname = "consumer"\nversion = "0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["plain-app"]\n\n'
        + source.format(index_url=f"{server.url}/root/pypi/+simple/")
    )
    home = tmp_path / "home"
    result = subprocess.run(
        [str(program), *command],
        cwd=project,
        env=clean_env(
            HOME=str(home),
            XDG_CACHE_HOME=str(home / "cache"),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_DATA_HOME=str(home / "data"),
            POETRY_CACHE_DIR=str(home / "poetry-cache"),
            PDM_CACHE_DIR=str(home / "pdm-cache"),
            PDM_CHECK_UPDATE="false",
        ),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lock = next(project.glob("*.lock")).read_text()
    assert {"plain-app", "plain-lib"} <= set(re.findall(r'name = "(plain-[a-z]+)"', lock))
    assert fake_upstream.count("/files/") <= 2  # whatever they fetch, it is through pyshelf


def test_the_web_page_describes_the_newest_version_with_a_cached_file(
    server_factory, fake_upstream, tmp_path
):
    """An sdist's PKG-INFO describes its version on the web page (never as a sidecar); a newer
    version with nothing cached gets the hint, an older one's description meanwhile."""
    fake_upstream.html_only = True
    old_name, old_data = make_sdist("plain-old", "1.0.0", description="Text of *one*.")
    fake_upstream.add_file("plain-old", old_name, old_data)
    add_wheel(fake_upstream, "plain-old", "2.0.0", with_metadata=False, description="Two.")
    server = start_mirror(server_factory, fake_upstream)

    status, _headers, document = page(server, "root/pypi", "plain-old")
    sdist_url = file_entry(document, old_name)["url"]
    status, _headers, body, _reason = server.get(sdist_url)
    assert (status, body) == (200, old_data)

    status, _headers, document = page(server, "root/pypi", "plain-old")
    entry = file_entry(document, old_name)
    assert entry["size"] == len(old_data)
    assert entry["core-metadata"] is False  # PKG-INFO: dependencies not reliable, no sidecar
    status, _headers, _body, _reason = server.get(sdist_url + ".metadata")
    assert status == 404
    status, _headers, body, _reason = server.get("/root/pypi/plain-old/", headers=HTML)
    web = body.decode()
    assert "Text of <em>one</em>." in web  # the sdist's description (reStructuredText), 1.0.0
    assert "The description of 2.0.0 appears once a file of it has been cached." in web
