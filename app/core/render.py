"""Project descriptions as safe HTML: readme_renderer does the formats, nh3 the sanitizing.

A description is untrusted input from whoever uploaded the package. It is rendered the way
PyPI renders it (reStructuredText by default, Markdown or plain text by
Description-Content-Type, PEP 566) and then cleaned with nh3 against readme_renderer's tag
allowlist, so no script, event handler or style survives. Only the cleaned string is ever
marked safe.
"""

from __future__ import annotations

import functools
from email.message import Message

import nh3
from markupsafe import Markup, escape

# readme_renderer (with docutils and pygments: ~10 MiB) is imported when a description is first
# rendered, not at startup: most workers serve pages and files and never render one.

MAX_DESCRIPTION_CHARS = 512 * 1024  # 512 KiB: longer descriptions are shown as plain text
URL_SCHEMES = {"http", "https", "mailto"}


def _content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """Parse `text/markdown; variant=GFM; charset=UTF-8` into its type and parameters."""
    message = Message()
    message["Content-Type"] = value or "text/x-rst"
    params = {k.lower(): v for k, v in (message.get_params() or [])[1:]}
    return message.get_content_type(), params


def sanitize(html: str) -> str:
    """Clean rendered HTML with nh3: readme_renderer's allowlist, http(s)/mailto links only."""
    from readme_renderer.clean import ALLOWED_ATTRIBUTES, ALLOWED_TAGS

    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="nofollow noopener noreferrer",
    )


def _plain(text: str) -> str:
    return f'<pre class="description-text">{escape(text)}</pre>'


@functools.lru_cache(maxsize=64)  # a pure function of its input: safe to share per process
def _render(text: str, content_type: str | None) -> str:
    kind, params = _content_type(content_type)
    rendered: str | None = None
    if len(text) > MAX_DESCRIPTION_CHARS or kind == "text/plain":
        return _plain(text)
    import readme_renderer.markdown
    import readme_renderer.rst

    if kind == "text/markdown":
        # None when the Markdown extra (comrak) is missing: then plain text below.
        rendered = readme_renderer.markdown.render(text, variant=params.get("variant", "GFM"))
    else:  # text/x-rst, and what PEP 566 says to assume for anything unknown
        rendered = readme_renderer.rst.render(text)
    if rendered is None:  # invalid reStructuredText: show it as PyPI does, as text
        return _plain(text)
    return sanitize(rendered)


def render_description(text: str | None, content_type: str | None) -> Markup | None:
    """The description as sanitized HTML, or None when there is none."""
    if not text or not text.strip() or text.strip() == "UNKNOWN":
        return None
    return Markup(_render(text, content_type))  # noqa: S704 - nh3-cleaned or escaped above
