"""Search over project names and summaries of every index, private and cached mirror ones."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.data.db import begin_write
from app.data.models import Index, MirrorPage
from app.services import fulltext
from tests.web.helpers import ADMIN, HTML, upload

RESULT_RE = re.compile(r'<tr>\s*<td><a href="(/[^"]+/)">')


def results(client: Any, query: str, page: int = 1) -> list[str]:
    """The project URLs the search page lists, in order."""
    response = client.get("/+search", query_string={"q": query, "page": page}, headers=HTML)
    assert response.status == "200 OK"
    body = response.get_data(as_text=True)
    table = body[body.index('id="search-results"') :]
    return RESULT_RE.findall(table)


def cache_mirror_pages(app: Any, *names: str, is_found: bool = True) -> None:
    """Record cached upstream pages on root/pypi and index them, as the mirror does."""
    with app.extensions["pyshelf.db"].session() as session:
        begin_write(session)
        mirror = session.query(Index).filter_by(name="pypi").one()
        for name in names:
            page = MirrorPage(
                index_id=mirror.id, normalized_name=name, name=name, is_found=is_found
            )
            session.add(page)
            session.flush()
            fulltext.index_mirror_page(session, page)
        session.commit()


def test_search_ranks_exact_then_prefix_then_substring_then_summary(client: Any) -> None:
    upload(client, "flask-thing", "1.0")
    upload(client, "flask", "1.0")
    upload(client, "my-flask", "1.0")
    upload(client, "other", "1.0", summary="Helpers for Flask apps")
    upload(client, "unrelated", "1.0")

    assert results(client, "Flask") == [
        "/admin/dev/flask/",
        "/admin/dev/flask-thing/",
        "/admin/dev/my-flask/",
        "/admin/dev/other/",
    ]


def test_search_matches_names_however_they_are_spelled(client: Any) -> None:
    upload(client, "Zope.Interface", "1.0")

    assert results(client, "zope_interface") == ["/admin/dev/zope-interface/"]
    assert results(client, "zope interface") == ["/admin/dev/zope-interface/"]


def test_search_includes_projects_cached_by_mirrors(app: Any, client: Any) -> None:
    upload(client, "requests-private", "1.0")
    cache_mirror_pages(app, "requests")
    cache_mirror_pages(app, "requests-gone", is_found=False)  # an upstream 404: not listed

    assert results(client, "requests") == [
        "/root/pypi/requests/",
        "/admin/dev/requests-private/",
    ]


def test_search_treats_like_wildcards_literally(client: Any) -> None:
    upload(client, "abc", "1.0", summary="nothing special")

    assert results(client, "%") == []
    assert results(client, "!") == []  # the escape character itself
    assert results(client, "a_c") == []  # '_' is a separator, and never a wildcard


def test_search_pages_its_results(client: Any, monkeypatch: Any) -> None:
    for number in range(3):
        upload(client, f"pkg{number}", "1.0")
    from app.http.web import search

    monkeypatch.setattr(search, "SEARCH_PAGE_SIZE", 2)

    # equal ranks: the most recent upload first
    assert results(client, "pkg*") == ["/admin/dev/pkg2/", "/admin/dev/pkg1/"]
    assert results(client, "pkg*", page=2) == ["/admin/dev/pkg0/"]


def test_empty_search_explains_itself(client: Any) -> None:
    body = client.get("/+search", headers=HTML).get_data(as_text=True)

    assert "quoted phrases" in body


def test_search_escapes_what_it_shows(client: Any) -> None:
    upload(client, "xss-pkg", "1.0", summary="<script>alert(1)</script>")

    body = client.get("/+search?q=<script>", headers=HTML).get_data(as_text=True)

    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


@pytest.mark.empty_database
def test_the_migration_fills_summaries_of_projects_uploaded_before_it(tmp_path: Any) -> None:
    """Revision 0002 adds projects.summary and fills it from each project's latest upload."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from app.core.config import Settings
    from app.data.schema import MIGRATIONS_DIR

    settings = Settings(data_dir=tmp_path)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = settings.database_url
    command.upgrade(config, "0001")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash, is_superuser, created_at) "
                "VALUES (1, 'u', 'x', false, '2020-01-01');"
            )
        )
        connection.execute(
            text(
                "INSERT INTO indexes (id, owner_id, name, type, bases, volatile, acl_upload, "
                "mirror_whitelist, title, description, created_at) "
                "VALUES (1, 1, 'dev', 'stage', '[]', false, '[]', '[]', '', '', '2020-01-01');"
            )
        )
        connection.execute(
            text(
                "INSERT INTO projects (id, index_id, name, normalized_name, created_at) "
                "VALUES (1, 1, 'demo', 'demo', '2020-01-01');"
            )
        )
        for number, (summary, day) in enumerate([("Old words", "01"), ("New words", "02")]):
            connection.execute(
                text(
                    "INSERT INTO files (project_id, filename, version, filetype, pyversion, "
                    "sha256, blake2_256, md5, size, yanked, core_metadata, uploader, uploaded_at)"
                    " VALUES (1, :filename, '1.0', 'sdist', 'source', 'a', 'b', 'c', 1, false, "
                    ":meta, 'u', :at)"
                ),
                {
                    "filename": f"demo-{number}.tar.gz",
                    "meta": f'{{"summary": "{summary}"}}',
                    "at": f"2020-01-{day}",
                },
            )

    command.upgrade(config, "head")

    with engine.connect() as connection:
        assert connection.scalar(text("SELECT summary FROM projects")) == "New words"
    engine.dispose()


def test_a_broad_search_lists_named_projects_then_the_most_recent(
    client: Any, monkeypatch: Any
) -> None:
    """Past BROAD_MATCHES matches nothing is weighed: named projects first, then the most
    recently indexed, pages included."""
    from app.http.web import search as page
    from app.services import search

    upload(client, "flask", "1.0")
    upload(client, "older", "1.0", summary="Helpers for Flask apps")
    upload(client, "flask-login", "1.0")
    upload(client, "newer", "1.0", summary="More flask")
    monkeypatch.setattr(search, "BROAD_MATCHES", 2)
    monkeypatch.setattr(page, "SEARCH_PAGE_SIZE", 3)

    assert results(client, "flask") == [
        "/admin/dev/flask/",
        "/admin/dev/flask-login/",
        "/admin/dev/newer/",
    ]
    assert results(client, "flask", page=2) == ["/admin/dev/older/"]


def test_documents_of_an_index_the_caller_may_not_read_do_not_change_the_answer(
    client: Any, monkeypatch: Any
) -> None:
    """Whether a search is broad (past BROAD_MATCHES nothing is weighed) is counted among the
    documents the caller may read: a private index full of matches must not change, and so
    reveal itself in, what an anonymous search lists."""
    from app.services import search

    # Weighed, the summary's match ranks first; listed as broad, the newest would.
    upload(client, "older", "1.0", summary="Helpers for flask")
    upload(client, "newer", "1.0", summary="Other helpers", description="About flask")
    monkeypatch.setattr(search, "BROAD_MATCHES", 2)
    before = results(client, "flask")
    created = client.put("/admin/secret", json={"acl_read": ["admin"]}, headers=ADMIN)
    assert created.status_code == 201, created.get_data(as_text=True)
    for number in range(3):
        response = upload(client, f"secret-{number}", "1.0", index="admin/secret", summary="flask")
        assert response.status_code == 200

    assert results(client, "flask") == before == ["/admin/dev/older/", "/admin/dev/newer/"]
