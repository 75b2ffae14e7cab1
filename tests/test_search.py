"""Full-text search on the real server (SQLite, or PostgreSQL with PYSHELF_TEST_DATABASE):
releases uploaded with twine, a Sphinx-like docs zip, the query language, keeping in step
with yank/delete/index deletion, reindex, and input that must never be a 500."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from app.services.search import InvalidQuery, Term, parse_query
from tests.builders import make_wheel, zip_bytes
from tests.conftest import LiveServer, basic_auth
from tests.e2e.helpers import ADMIN, api, cli, multipart, publish, settles_to

AUTH = {"Authorization": basic_auth(*ADMIN)}
JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
README = """\
# Invoice tools

Parses our **invoice** format into ledgers; the café edition handles accents.

```python
parse_invoice("x.inv")
```
"""
XSS_DESCRIPTION = (
    'Ordinary words then <img src=x onerror="alert(1)"> zebrafish <script>x()</script>'
)


def sphinx_page(title: str, body: str) -> bytes:
    """An HTML page shaped like Sphinx's: navigation, a script, then the body."""
    return (
        f"<!DOCTYPE html><html><head><title>{title} — invoicer docs</title>"
        "<script>var hiddenscriptword = 1;</script><style>.navy{}</style></head><body>"
        '<nav><a href="index.html">navigationonlyword</a></nav>'
        f'<div class="body" role="main"><section><h1>{title}</h1>{body}</section></div>'
        "</body></html>"
    ).encode()


DOCS = zip_bytes(
    {
        "html/index.html": sphinx_page("Welcome", "<p>Start at the API reference.</p>"),
        "html/api/reading.html": sphinx_page(
            "Reading invoices",
            "<p>The function <code>read_ledger</code> understands the "
            "<em>quarterly reconciliation manifest</em> of every supplier.</p>",
        ),
        "html/genindex.html": sphinx_page("Index", "<p>quarterly reconciliation manifest</p>"),
        "html/_static/basic.css": b".quarterly { }",
    }
)


def search(server: LiveServer, query: str, headers: dict[str, str] | None = None) -> Any:
    """The JSON answer of /+search?q=QUERY; asserts a 200."""
    status, _headers, body, reason = server.get(
        f"/+search?q={quote(query)}", headers={**JSON, **(headers or {})}
    )
    assert (status, reason) == (200, "OK"), body
    return json.loads(body)


def found(server: LiveServer, query: str, headers: dict[str, str] | None = None) -> list[str]:
    """kind:index/name[/path] of each hit, in order."""
    return [
        f"{h['kind']}:{h['index']}/{h['name']}" + (f"/{h['path']}" if h["path"] else "")
        for h in search(server, query, headers)["hits"]
    ]


def doc_upload(server: LiveServer, index: str, name: str, version: str, data: bytes) -> None:
    """devpi-client's `:action=doc_upload` of a zip."""
    body, content_type = multipart(
        [(":action", "doc_upload"), ("name", name), ("version", version)], "docs.zip", data
    )
    status, _headers, answer, _reason = server.get(
        f"/{index}/", headers={**AUTH, "Content-Type": content_type}, method="POST", data=body
    )
    assert status == 200, answer


@pytest.fixture(scope="module")
def site(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """The live server with invoicer (a Markdown README, keywords, classifiers, docs),
    flask-family names, and an XSS attempt in a description, all uploaded with twine."""
    folder = tmp_path_factory.mktemp("dists")
    extra = (
        "Keywords: billing,accounting\nClassifier: Topic :: Office/Business :: Financial\n"
        "Author: Ada Lovelace\nProject-URL: Tracker, https://tracker.example/invoicer\n"
    )
    publish(
        live_server,
        "admin/dev",
        folder,
        make_wheel(
            "invoicer",
            "1.0",
            summary="Invoice parsing",
            description=README,
            description_content_type="text/markdown",
            extra_metadata=extra,
        ),
        make_wheel("flask", "2.0", summary="A web framework"),
        make_wheel("flask-login", "0.6", summary="User sessions"),
        make_wheel("ledgerlite", "1.0", summary="Mentions flask in its summary"),
        make_wheel("xsspkg", "1.0", summary="Harmless", description=XSS_DESCRIPTION),
    )
    doc_upload(live_server, "admin/dev", "invoicer", "1.0", DOCS)
    settles_to(lambda: found(live_server, "xsspkg"), ["release:admin/dev/xsspkg"])
    settles_to(
        lambda: found(live_server, "docs:supplier"), ["docs:admin/dev/invoicer/api/reading.html"]
    )
    return live_server


def test_description_words_are_found_case_accent_and_stem_insensitively(site: Any) -> None:
    """Words only in the rendered README: any case, without the accent, another word form."""
    for query in ("LEDGERS", "cafe", "Café", "parses", "parsing invoices"):
        assert "release:admin/dev/invoicer" in found(site, query), query


def test_keywords_classifiers_author_and_urls_are_found(site: Any) -> None:
    """Keywords, classifiers, the author and project URLs are indexed with the release."""
    for query in ("accounting", "financial", "lovelace", "tracker"):
        assert found(site, query) == ["release:admin/dev/invoicer"], query


def test_a_phrase_only_in_a_docs_page_finds_that_page_with_a_deep_link(site: Any) -> None:
    """The hit names the page; its URL serves it; Sphinx's genindex and static files and
    text in scripts and navigation are not indexed."""
    answer = search(site, '"quarterly reconciliation manifest"')

    assert [(h["kind"], h["path"], h["version"]) for h in answer["hits"]] == [
        ("docs", "api/reading.html", "1.0")
    ]
    hit = answer["hits"][0]
    assert hit["url"] == f"{site.url}/admin/dev/invoicer/1.0/+doc/api/reading.html"
    assert hit["title"] == "Reading invoices — invoicer docs"
    assert "<mark>quarterly" in hit["snippet_html"]  # FTS5 marks the phrase, PostgreSQL words
    status, _headers, body, _reason = site.get(hit["url"].removeprefix(site.url))
    assert status == 200
    assert b"quarterly reconciliation manifest" in body
    for hidden in ("hiddenscriptword", "navigationonlyword", "navy"):
        assert found(site, hidden) == [], hidden


def test_a_phrase_must_match_in_order(site: Any) -> None:
    """Quoted words must be adjacent; unquoted ones may be anywhere."""
    assert found(site, '"manifest reconciliation"') == []
    assert found(site, "manifest reconciliation") == ["docs:admin/dev/invoicer/api/reading.html"]


def test_ranking_is_exact_name_then_prefix_then_field_weights(site: Any) -> None:
    """flask itself, then flask-login (name prefix), then a summary that mentions it."""
    assert found(site, "flask")[:3] == [
        "release:admin/dev/flask",
        "release:admin/dev/flask-login",
        "release:admin/dev/ledgerlite",
    ]


def test_prefix_and_scopes(site: Any) -> None:
    """prefix*, name:, summary:, docs: and index: narrow the search."""
    assert "release:admin/dev/invoicer" in found(site, "invoi*")
    assert found(site, "name:flask") == ["release:admin/dev/flask", "release:admin/dev/flask-login"]
    assert found(site, "summary:flask") == ["release:admin/dev/ledgerlite"]
    assert found(site, "docs:supplier") == ["docs:admin/dev/invoicer/api/reading.html"]
    assert found(site, "docs:accents") == []  # in the README, not in the docs
    assert found(site, "supplier index:admin/dev") == ["docs:admin/dev/invoicer/api/reading.html"]
    assert found(site, "supplier index:root/pypi") == []


def test_html_page_escapes_snippets_of_descriptions(site: Any) -> None:
    """A description's markup comes back as text in the snippet, never as elements."""
    status, _headers, body, _reason = site.get("/+search?q=zebrafish", headers=HTML)
    page = body.decode()

    assert status == 200
    assert 'href="/admin/dev/xsspkg/"' in page
    assert "<mark>zebrafish</mark>" in page
    assert "<img" not in page
    assert "<script>x()" not in page


def test_json_is_answered_to_api_clients_and_on_the_devpi_web_url(site: Any) -> None:
    """Accept: application/json gets JSON; /+search?query= (devpi-web) answers like ?q=."""
    status, headers, body, _reason = site.get("/+search?query=lovelace", headers=JSON)

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    hit = json.loads(body)["hits"][0]
    assert (hit["name"], hit["index"], hit["version"]) == ("invoicer", "admin/dev", "1.0")
    assert hit["url"] == f"{site.url}/admin/dev/invoicer/"
    html_status, _h, page, _r = site.get("/+search?query=lovelace", headers=HTML)
    assert html_status == 200
    assert b'href="/admin/dev/invoicer/"' in page


@pytest.mark.parametrize(
    "query",
    [
        '"unclosed phrase',
        "AND OR NOT",
        "NEAR(a b)",
        "* ^ - + ( ) { } :",
        "name:",
        'name:"',
        "col:umn:word",
        "a" * 5000,
        "\x00\x01 nul",
        "'; DROP TABLE files; --",
        "émoji 🎉 *",
        "\\",
    ],
)
def test_odd_queries_never_fail(site: Any, query: str) -> None:
    """FTS5 and tsquery syntax typed by a person is read as words: a 200, never a 500."""
    status, _headers, body, _reason = site.get(f"/+search?q={quote(query)}", headers=JSON)

    assert status == 200, body


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (
            "/+search?q=x+index:nonsense",
            "index: takes an index as USER/INDEX (index:alice/dev), not 'nonsense'.",
        ),
        (
            "/+search?q=" + "+".join(f"w{n}" for n in range(17)),
            "The search has 17 words and phrases; at most 16.",
        ),
        ("/+search?q=flask&page=21", "Search pages stop at 20; add words to narrow the search."),
    ],
)
def test_queries_that_cannot_run_get_a_400_with_the_reason(
    site: Any, path: str, reason: str
) -> None:
    """A bad index filter, too many terms, or a page past the bound."""
    status, _headers, _body, got = site.get(path, headers=JSON)

    assert (status, got) == (400, reason)


def test_yank_delete_and_index_deletion_keep_the_index_in_step(site: Any, tmp_path: Path) -> None:
    """A yanked version's text goes (the newest unyanked one is indexed); deleting the files,
    docs and then the index removes what they held."""
    index = f"admin/scratch{secrets.token_hex(3)}"
    assert api(site, "PUT", f"/{index}", {"type": "stage", "volatile": True})[0] == 201
    publish(
        site,
        index,
        tmp_path,
        make_wheel("yankme", "1.0", description="Original wombat text."),
        make_wheel("yankme", "2.0", description="Newer platypus text."),
    )
    doc_upload(site, index, "yankme", "2.0", zip_bytes({"index.html": b"<p>echidna</p>"}))
    settles_to(lambda: found(site, f"platypus index:{index}"), [f"release:{index}/yankme"])
    settles_to(lambda: found(site, f"echidna index:{index}"), [f"docs:{index}/yankme/index.html"])

    status, _body, _reason = api(site, "PATCH", f"/{index}/yankme/2.0", {"yanked": True})
    assert status == 200
    assert found(site, f"platypus index:{index}") == []
    assert found(site, f"wombat index:{index}") == [f"release:{index}/yankme"]

    status, *_ = site.get(f"/{index}/yankme/2.0", headers=AUTH, method="DELETE")
    assert status == 200
    assert found(site, f"echidna index:{index}") == []  # the version's docs went with it
    assert found(site, f"wombat index:{index}") == [f"release:{index}/yankme"]

    status, *_ = site.get(f"/{index}", headers={**AUTH, **JSON}, method="DELETE")
    assert status == 200
    assert found(site, "wombat") == []


def test_reindex_rebuilds_the_same_answers(site: Any) -> None:
    """`entrypoint.sh reindex` next to the running server rebuilds every release and page."""
    before = {q: found(site, q) for q in ("flask", "supplier", "lovelace", "zebrafish")}

    done = cli(site.data_dir, "reindex", **site.env)

    assert done.returncode == 0, done.stderr
    assert "reindex: " in done.stdout
    assert {q: found(site, q) for q in before} == before


# --- the query language, without a server ---------------------------------------------------


def test_parse_query_reads_words_phrases_prefixes_scopes_and_index_filters() -> None:
    query = parse_query('Flask "Quick start" pars* name:zope.interface docs:"a b" index:al/dev')

    assert query.terms == (
        Term(("flask",)),
        Term(("quick", "start")),
        Term(("pars",), is_prefix=True),
        Term(("zope", "interface"), scope="name"),
        Term(("a", "b"), scope="docs"),
    )
    assert query.index_paths == ("al/dev",)


def test_parse_query_reads_unknown_fields_and_syntax_as_words() -> None:
    assert parse_query("http://x.example/a OR b").terms == (
        Term(("http", "x", "example", "a")),
        Term(("or",)),
        Term(("b",)),
    )


def test_parse_query_refuses_a_malformed_index_filter() -> None:
    with pytest.raises(InvalidQuery, match="USER/INDEX"):
        parse_query("index:alice")
