"""The web blueprint `bp` and what its view modules share: page URLs, the login and form
redirects, the index lookup and content negotiation."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from flask import Blueprint, redirect, request, url_for
from werkzeug.wrappers import Response  # what redirect() returns: Flask's is a subclass

from app.core.dists import normalize_name
from app.http.errors import index_or_404 as index_or_404  # the web forms import it from here

bp = Blueprint(
    "web",
    "app.http.web",  # the package: its templates and static folders
    template_folder="templates",
    static_folder="static",
    static_url_path="/+static",  # "/static" would shadow a user named "static"
)


def index_url(path: str) -> str:
    """The web page of an index."""
    return f"{request.script_root}/{quote(path)}/"


def project_url(index_path: str, name: str) -> str:
    """The web page of a project on an index."""
    return f"{request.script_root}/{quote(index_path)}/{quote(normalize_name(name))}/"


def version_url(index_path: str, name: str, version: str) -> str:
    """The web page of a version."""
    return f"{project_url(index_path, name)}{quote(version)}/"


def doc_url(index_path: str, name: str, version: str, path: str = "") -> str:
    """Where a version's documentation is served."""
    return f"{version_url(index_path, name, version)}+doc/{quote(path)}"


def file_url(path: str) -> str:
    """A release file's `+f` URL from its path below the site root."""
    return f"{request.script_root}/{path}"


def wants_json() -> bool:
    """Whether the client ranks JSON at least as high as HTML.

    Browsers always name text/html (and rank `*/*` lower); API clients name application/json;
    a bare `*/*` (curl, requests) or no Accept at all ties, and gets the JSON it always got.
    """
    accept = request.accept_mimetypes
    return accept.quality("application/json") >= accept.quality("text/html")


def page_number() -> int:
    """The `?page=` argument, 1 when absent or invalid."""
    try:
        return max(1, int(request.args.get("page", "1")))
    except ValueError:
        return 1


def safe_next(target: str | None) -> str:
    """A local path to go back to after login; anything else (other sites) goes home."""
    home_url = f"{request.script_root}/"
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return home_url
    if any(ord(c) < 0x20 for c in target):
        return home_url
    parts = urlsplit(target)
    return home_url if parts.scheme or parts.netloc else target


def current_location() -> str:
    """This request's path and query, to come back to after logging in."""
    full = request.script_root + request.full_path
    return full[:-1] if full.endswith("?") else full


def login_redirect() -> Response:
    """Send an anonymous visitor to the login page, and back here afterwards."""
    return redirect(url_for("web.login", next=current_location()))


def back(default: str) -> Response:
    """Redirect after a form: to the form's `next` field when local, else `default`."""
    target = request.form.get("next")
    return redirect(safe_next(target) if target else default, 303)
