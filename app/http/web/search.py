"""GET /+search: full-text search over every index the caller may read (app/services/search.py), as
HTML with highlighted snippets or as JSON; `?query=` (devpi-web's name) works as `?q=`. And the
hook that has what a request queued (app/services/fulltext.py) indexed once its response is sent."""

from __future__ import annotations

from flask import Response, current_app, jsonify, render_template, request

from app.data.db import get_session
from app.http.auth import current_reader
from app.http.errors import HTTPError
from app.http.web.base import bp, doc_url, page_number, project_url
from app.services import fulltext
from app.services.indexer import IdleIndexer
from app.services.indexes import readable_index_ids
from app.services.search import Hit, InvalidQuery, parse_query, search

SEARCH_PAGE_SIZE = 50
MAX_SEARCH_PAGE = 20  # 1,000 hits: past that, a narrower query finds it faster than paging


def hit_url(hit: Hit) -> str:
    """Where a hit leads: the page inside the docs, or the project's page."""
    if hit.kind == "docs":
        return doc_url(hit.index_path, hit.normalized_name, hit.version, hit.path)
    return project_url(hit.index_path, hit.normalized_name)


def hit_json(hit: Hit) -> dict[str, str]:
    """A hit as the JSON API answers it."""
    return {
        "kind": hit.kind,
        "name": hit.name,
        "index": hit.index_path,
        "version": hit.version,
        "title": hit.title,
        "summary": hit.summary,
        "path": hit.path,
        "url": request.host_url.rstrip("/") + hit_url(hit),
        "snippet": hit.snippet_text,
        "snippet_html": str(hit.snippet_html),
    }


@bp.get("/+search", endpoint="search")
def search_page() -> Response | str:
    """Releases, docs pages and mirrored projects matching `q`, best first (HTML or JSON)."""
    query = (request.args.get("q") or request.args.get("query") or "").strip()
    page = page_number()
    if page > MAX_SEARCH_PAGE:
        raise HTTPError(
            400, f"Search pages stop at {MAX_SEARCH_PAGE}; add words to narrow the search."
        )
    hits: list[Hit] = []
    if query:
        try:
            parsed = parse_query(query)
        except InvalidQuery as exc:
            raise HTTPError(400, str(exc)) from None
        # What is still queued is indexed first: a search finds all that was queued before it.
        indexer: IdleIndexer = current_app.extensions["pyshelf.indexer"]
        indexer.catch_up()
        session = get_session()
        try:
            hits = search(
                session,
                parsed,
                limit=SEARCH_PAGE_SIZE + 1,
                offset=(page - 1) * SEARCH_PAGE_SIZE,
                index_ids=readable_index_ids(session, current_reader()),
            )
        except InvalidQuery as exc:
            raise HTTPError(400, str(exc)) from None
    has_next = len(hits) > SEARCH_PAGE_SIZE and page < MAX_SEARCH_PAGE
    hits = hits[:SEARCH_PAGE_SIZE]
    accept = request.accept_mimetypes
    if accept.quality("application/json") > accept.quality("text/html"):  # not for */*
        return jsonify(
            {
                "query": query,
                "page": page,
                "has_next": has_next,
                "hits": [hit_json(h) for h in hits],
            }
        )
    return render_template(
        "search.html",
        query=query,
        hits=hits,
        hit_url=hit_url,
        page=page,
        has_next=has_next,
    )


def index_after_response(response: Response) -> Response:
    """After a request that queued something for search (an upload, a stored mirror page),
    wake the worker's indexer once the response is sent (app/services/indexer.py), or index it
    before the response with SEARCH_INDEX_IN_REQUEST (after_request hook)."""
    if not fulltext.take_queued():
        return response
    indexer: IdleIndexer = current_app.extensions["pyshelf.indexer"]
    if current_app.config["PYSHELF_SETTINGS"].search_index_in_request:
        indexer.index_now()
    else:
        response.call_on_close(indexer.wake)  # once the request's transaction is committed
    return response
