"""Web pages render with their key content, and shared URLs answer JSON or HTML by Accept."""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

import pytest
from sqlalchemy import select

from app import create_app
from app.core.config import Settings
from app.data.db import Database
from app.data.models import MirrorPage
from app.http.web import pages
from app.ops.prepare import bootstrap, migrate
from app.services.mirror_description import latest_version, version_key
from tests.builders import make_wheel, wheel_metadata
from tests.fake_upstream import FakeUpstream
from tests.web.helpers import ADMIN, HTML, JSON, login, upload


def text(response: Any) -> str:
    """The response body as text."""
    return response.get_data(as_text=True)


def test_home_lists_every_index_with_type_bases_and_project_count(client: Any) -> None:
    upload(client)

    response = client.get("/", headers=HTML)

    assert response.status == "200 OK"
    body = text(response)
    assert 'href="/admin/dev/"' in body
    assert 'href="/root/pypi/"' in body
    assert "stage" in body
    assert "mirror" in body
    assert 'id="search-form"' in body
    assert 'name="q"' in body
    assert 'id="login-link"' in body
    assert "<script" not in body  # usable without JavaScript: there is none


def test_the_stylesheet_is_served(client: Any) -> None:
    response = client.get("/+static/style.css")

    assert response.status == "200 OK"
    assert response.mimetype == "text/css"
    assert b"@media" in response.data  # responsive


def test_user_page_lists_the_users_indexes(client: Any) -> None:
    response = client.get("/admin", headers=HTML)

    assert response.status == "200 OK"
    assert response.mimetype == "text/html"
    assert 'href="/admin/dev/"' in text(response)


def test_index_page_describes_its_settings_in_words_with_copy_ready_snippets(client: Any) -> None:
    response = client.get("/admin/dev/", headers=HTML)

    assert response.status == "200 OK"
    body = text(response)
    assert "Stage: holds uploaded packages" in body
    assert 'href="/root/pypi/"' in body  # bases
    assert "No: released files cannot be replaced or deleted" in body  # not volatile
    assert "admin, and superusers." in body  # acl_upload
    assert (
        "pip install -i http://localhost/admin/dev/+simple/ --trusted-host localhost NAME" in body
    )
    assert "index-url = http://localhost/admin/dev/+simple/" in body
    assert "repository = http://localhost/admin/dev/" in body
    assert "username = __token__" in body


def test_index_page_over_https_needs_no_trusted_host(client: Any) -> None:
    body = text(client.get("/admin/dev/", headers=HTML, base_url="https://pkgs.example"))

    assert "pip install -i https://pkgs.example/admin/dev/+simple/ NAME" in body
    assert "--trusted-host" not in body


def test_index_page_without_slash_redirects_browsers(client: Any) -> None:
    response = client.get("/admin/dev", headers=HTML)

    assert response.status_code == 308
    assert response.headers["Location"] == "/admin/dev/"


def test_mirror_index_page_never_shows_upstream_credentials(client: Any) -> None:
    response = client.patch(
        "/root/pypi",
        json={"mirror_url": "https://mirror-user:s3cret-pw@127.0.0.1:9/simple/"},
        headers=ADMIN,
    )
    assert response.status_code == 200

    body = text(client.get("/root/pypi/", headers=HTML))

    assert "s3cret-pw" not in body
    assert "mirror-user" not in body
    assert "https://***:***@127.0.0.1:9/simple/" in body
    assert "Nothing cached yet." in body


def test_index_page_lists_projects_with_latest_version_and_pages_them(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(client, "alpha", "1.0")
    upload(client, "alpha", "2.0")
    upload(client, "alpha", "3.0rc1")  # a pre-release is not "latest" while a final exists
    upload(client, "beta", "0.1", summary="The beta project")
    monkeypatch.setattr(pages, "PAGE_SIZE", 1)

    first = text(client.get("/admin/dev/", headers=HTML))
    second = text(client.get("/admin/dev/?page=2", headers=HTML))

    assert 'href="/admin/dev/alpha/2.0/">2.0</a>' in first
    assert "beta" not in first
    assert 'rel="next"' in first
    assert 'href="/admin/dev/beta/0.1/">0.1</a>' in second
    assert "The beta project" in second


@pytest.mark.parametrize(
    ("accept", "kind"),
    [
        ("application/json", "json"),
        ("*/*", "json"),  # curl and requests: the JSON API answers as it always did
        (None, "json"),
        ("text/html", "html"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "html"),  # browsers
        ("application/json, text/html;q=0.5", "json"),
    ],
)
@pytest.mark.parametrize("path", ["/admin", "/admin/dev/", "/admin/dev"])
def test_user_and_index_urls_answer_json_or_html_by_accept(
    client: Any, path: str, accept: str | None, kind: str
) -> None:
    response = client.get(path, headers={"Accept": accept} if accept else {})

    if kind == "json":
        assert response.status == "200 OK"
        assert response.mimetype == "application/json"
        assert response.json["type"] in ("userconfig", "indexconfig")
    elif path.endswith("dev"):
        assert response.status_code == 308  # browsers go to the canonical page URL
    else:
        assert response.status == "200 OK"
        assert response.mimetype == "text/html"
        assert "<!DOCTYPE html>" in text(response)


def test_project_page_shows_versions_newest_first_with_file_details(client: Any) -> None:
    upload(client, "demo-pkg", "1.0.0", requires_python=">=3.8")
    upload(client, "demo-pkg", "1.10.0")
    upload(client, "demo-pkg", "1.2.0")

    response = client.get("/admin/dev/demo-pkg/", headers=HTML)

    assert response.status == "200 OK"
    body = text(response)
    assert body.index(">1.10.0</a>") < body.index(">1.2.0</a>") < body.index(">1.0.0</a>")
    assert "demo_pkg-1.0.0-py3-none-any.whl" in body
    assert "&gt;=3.8" in body  # requires-python, escaped
    assert "UTC" in body  # upload times
    _, data = make_wheel("demo-pkg", "1.0.0", requires_python=">=3.8")
    import hashlib

    assert hashlib.sha256(data).hexdigest() in body
    assert "bytes" in body or "KiB" in body
    assert 'id="refresh"' not in body  # nothing came from a mirror


def test_project_url_with_another_spelling_redirects_to_the_normalized_name(
    client: Any,
) -> None:
    upload(client, "Demo.Pkg", "1.0.0")

    response = client.get("/admin/dev/Demo.Pkg/", headers=HTML)

    assert response.status_code == 301
    assert response.headers["Location"] == "/admin/dev/demo-pkg/"


def test_unknown_project_is_a_404(client: Any) -> None:
    upload(client)
    response = client.get("/admin/other/demo-pkg/", headers=HTML)

    assert response.status == "404 Index admin/other does not exist."


MALICIOUS_MARKDOWN = """\
# Title

<script>alert("pwned")</script>
<img src="x.png" onerror="alert(1)">
<a href="javascript:alert(2)">click</a>
<iframe src="https://evil.example"></iframe>
<p style="color: red" onclick="alert(3)">styled</p>

```python
print("hello")
```
"""


def test_description_is_rendered_and_sanitized_so_no_script_can_run(client: Any) -> None:
    upload(
        client,
        description=MALICIOUS_MARKDOWN,
        description_content_type="text/markdown",
    )

    body = text(client.get("/admin/dev/demo-pkg/", headers=HTML))
    description = body[body.index('id="description"') :]

    assert "<h1" in description  # Markdown became HTML
    assert "<script" not in description
    assert "onerror" not in description
    assert "onclick" not in description
    assert "javascript:" not in description
    assert "<iframe" not in description
    assert "style=" not in description
    assert "print" in description


def test_rst_description_with_raw_html_is_shown_as_escaped_text(client: Any) -> None:
    rst = "Title\n=====\n\n.. raw:: html\n\n   <script>alert(1)</script>\n"
    upload(client, description=rst, description_content_type="text/x-rst")

    body = text(client.get("/admin/dev/demo-pkg/", headers=HTML))
    description = body[body.index('id="description"') :]

    assert "<script>" not in description
    assert "&lt;script&gt;" in description


def test_plain_text_description_is_escaped(client: Any) -> None:
    upload(client, description="a <b>bold</b> claim", description_content_type="text/plain")

    body = text(client.get("/admin/dev/demo-pkg/", headers=HTML))

    assert "a &lt;b&gt;bold&lt;/b&gt; claim" in body


def test_version_page_shows_files_and_metadata(client: Any) -> None:
    extra = (
        "Classifier: Programming Language :: Python :: 3\n"
        "Project-URL: Source, https://example.invalid/src\n"
    )
    upload(client, "demo-pkg", "2.0", requires_dist=["requests>=2"], extra_metadata=extra)

    response = client.get("/admin/dev/demo-pkg/2.0/", headers=HTML)

    assert response.status == "200 OK"
    body = text(response)
    assert "demo_pkg-2.0-py3-none-any.whl" in body
    assert "requests&gt;=2" in body
    assert "Programming Language :: Python :: 3" in body
    assert 'href="https://example.invalid/src"' in body
    assert "A demo package" in body


def test_latest_as_version_redirects_to_the_latest_version(client: Any) -> None:
    upload(client, "demo-pkg", "1.0")
    upload(client, "demo-pkg", "1.1")

    response = client.get("/admin/dev/demo-pkg/latest/", headers=HTML)

    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/dev/demo-pkg/1.1/"


def test_unknown_version_is_a_404(client: Any) -> None:
    upload(client, "demo-pkg", "1.0")

    response = client.get("/admin/dev/demo-pkg/9.9/", headers=HTML)

    assert response.status == "404 demo-pkg 9.9 is not on index admin/dev."


def test_project_and_version_pages_answer_json_when_it_is_preferred(client: Any) -> None:
    upload(client, "demo-pkg", "1.0", requires_dist=["click"])
    upload(client, "demo-pkg", "2.0")

    project = client.get("/admin/dev/demo-pkg/", headers=JSON)
    version = client.get("/admin/dev/demo-pkg/1.0/", headers=JSON)

    assert project.status == "200 OK"
    assert project.json["type"] == "projectconfig"
    assert list(project.json["result"]) == ["2.0", "1.0"]
    data = project.json["result"]["1.0"]
    assert data["name"] == "demo-pkg"
    assert data["requires_dist"] == ["click"]
    (link,) = data["+links"]
    assert link["rel"] == "releasefile"
    assert link["href"].startswith("http://localhost/admin/dev/+f/")
    assert link["hash_spec"].startswith("sha256=")
    assert version.json == {"type": "versiondata", "result": data}


# --- mirrored projects -----------------------------------------------------------------------


@pytest.fixture
def mirror_client(settings: Settings, fake_upstream: FakeUpstream) -> Any:
    """A client of an app whose root/pypi mirrors the fake upstream."""
    mirror_settings = dataclasses.replace(settings, mirror_url=fake_upstream.url)
    mirror_settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    migrate(mirror_settings)
    database = Database(mirror_settings.database_url)
    with database.session() as session, open(os.devnull, "w") as devnull:
        bootstrap(session, mirror_settings, out=devnull)
    database.engine.dispose()
    app = create_app(mirror_settings)
    app.config.update(TESTING=True, WTF_CSRF_ENABLED=False)
    return app.test_client()


def test_mirror_project_page_shows_cache_state_last_fetch_and_a_refresh_button(
    mirror_client: Any, fake_upstream: FakeUpstream
) -> None:
    filename, data = make_wheel(
        "mirrored", "1.0", description="Mirrored *docs*", description_content_type="text/markdown"
    )
    fake_upstream.add_file("mirrored", filename, data, metadata=wheel_metadata(data))

    anonymous = text(mirror_client.get("/root/pypi/mirrored/", headers=HTML))
    before = text(mirror_client.get("/root/pypi/mirrored/", headers={**HTML, **ADMIN}))
    file_url = f"/root/pypi/+f/{__import__('hashlib').sha256(data).hexdigest()}/{filename}"
    assert mirror_client.get(file_url).status_code == 200
    assert mirror_client.get(file_url + ".metadata").status_code == 200
    after = text(mirror_client.get("/root/pypi/mirrored/", headers=HTML))

    assert "not cached" in before
    assert 'id="refresh"' in before
    assert 'id="refresh"' not in anonymous  # strangers may not refresh (issue #15 item 11)
    assert "last fetched" in before
    assert "not cached" not in after.split('id="description"')[-1]
    assert 'class="badge cached"' in after
    assert "<em>docs</em>" in after  # the description, from the cached METADATA sidecar


def test_refresh_button_makes_the_mirror_fetch_the_page_again(
    mirror_client: Any, fake_upstream: FakeUpstream
) -> None:
    filename, data = make_wheel("mirrored", "1.0")
    fake_upstream.add_file("mirrored", filename, data)
    mirror_client.get("/admin/dev/mirrored/", headers=HTML)

    login(mirror_client)
    response = mirror_client.post("/admin/dev/mirrored/+refresh", headers=HTML)
    app = mirror_client.application
    with app.extensions["pyshelf.db"].session() as session:
        page = session.scalar(select(MirrorPage).where(MirrorPage.normalized_name == "mirrored"))

    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/dev/mirrored/"
    assert page is not None
    assert page.checked_at is None  # stale: the next request revalidates
    followed = text(mirror_client.get("/admin/dev/mirrored/", headers=HTML))
    assert "will be fetched again from root/pypi" in followed


def test_mirror_index_page_lists_the_cached_projects(
    mirror_client: Any, fake_upstream: FakeUpstream
) -> None:
    filename, data = make_wheel("mirrored", "2.5")
    fake_upstream.add_file("mirrored", filename, data)
    mirror_client.get("/root/pypi/+simple/mirrored/")

    body = text(mirror_client.get("/root/pypi/", headers=HTML))

    assert 'href="/root/pypi/mirrored/"' in body
    assert 'href="/root/pypi/mirrored/2.5/">2.5</a>' in body
    assert fake_upstream.count("/simple/") == 1  # the page only; never the upstream list


def test_links_carry_a_proxys_path_prefix_once(client: Any) -> None:
    from tests.web.helpers import doc_upload_form, docs_zip

    upload(client, "demo-pkg", "1.0")
    client.post("/admin/dev/", data=doc_upload_form("demo-pkg", "1.0", docs_zip()), headers=ADMIN)
    prefix = {"base_url": "http://pkgs.example/pypi/"}

    page = text(client.get("/admin/dev/demo-pkg/", headers=HTML, **prefix))
    data = client.get("/admin/dev/demo-pkg/1.0/", headers=JSON, **prefix).json["result"]

    assert 'href="/pypi/admin/dev/demo-pkg/1.0/"' in page
    assert 'href="/pypi/admin/dev/demo-pkg/latest/+doc/"' in page
    assert data["doc_url"] == "http://pkgs.example/pypi/admin/dev/demo-pkg/1.0/+doc/"
    assert data["+links"][0]["href"].startswith("http://pkgs.example/pypi/admin/dev/+f/")


def test_latest_version_is_the_highest_final_release_not_yanked() -> None:
    """As PyPI shows it: pre-releases, dev releases and yanked versions count only when nothing
    else exists; an invalid version sorts below every valid one. Checked against the plain
    definition (sort everything, take the first that qualifies) on random version sets."""
    pool = ["1.0", "1.0.post1", "2.0rc1", "2.0.dev3", "1.10", "0.9", "3!0.1", "not-a-version",
            "zzz", "1.0a1", "2.0", "10.0b2"]  # fmt: skip
    rng = random.Random(21)  # noqa: S311 - test data, not a secret
    for _ in range(400):
        versions = {v: rng.random() < 0.3 for v in rng.sample(pool, rng.randint(1, len(pool)))}
        ordered = sorted(versions, key=version_key, reverse=True)
        candidates = [v for v in ordered if not versions[v]] or ordered
        finals = [
            v for v in candidates
            if version_key(v)[0] and not version_key(v)[1].is_prerelease
            and not version_key(v)[1].is_devrelease
        ]  # fmt: skip
        assert latest_version(versions) == (finals or candidates)[0], versions
    assert latest_version({}) is None
    assert latest_version({"2.0rc1": False, "1.0": True}) == "2.0rc1"
    assert latest_version({"2.0": True, "1.0": True}) == "2.0"
